"""``--out/.lock`` is taken atomically: of several runs that find a stale lock at once, exactly one
holds it (issue 18 item 5: check-owner -> unlink -> O_EXCL create let two of four simultaneous
``--resume`` runs both hold it in 2 of 150 trials)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import warnings

import pytest

from captum_attnflow.utils.files import DirectoryLock, LockedError

PROCESSES = 4
TRIALS = 200
#: what a killed run may leave in the file: a dead pid, a pid that no system has, garbage, nothing
STALE = [
    json.dumps({"pid": 999_999_999, "host": socket.gethostname(), "started": "x"}),
    json.dumps({"pid": 2**40, "host": socket.gethostname(), "started": "x"}),
    "{not json",
    "",
]


def _contender(directory, start, end, holders, trials):
    warnings.simplefilter("ignore")
    for trial in range(trials):
        lock = DirectoryLock(directory)
        start.wait()
        try:
            lock.acquire()
        except LockedError:
            pass
        else:
            with holders.get_lock():
                holders[trial] += 1
        end.wait()  # every contender has tried while the winner still holds the lock
        lock.release()
        end.wait()  # released before the next trial's stale file is written


def test_at_most_one_of_four_contenders_takes_over_a_stale_lock(tmp_path):
    context = multiprocessing.get_context("fork")  # the contenders only touch files: fork is safe and fast
    start, end = context.Barrier(PROCESSES + 1), context.Barrier(PROCESSES + 1)
    holders = context.Array("i", TRIALS)
    workers = [context.Process(target=_contender, args=(str(tmp_path), start, end, holders, TRIALS))
               for _ in range(PROCESSES)]
    for worker in workers:
        worker.start()
    try:
        for trial in range(TRIALS):
            (tmp_path / ".lock").write_text(STALE[trial % len(STALE)])
            start.wait(timeout=30)
            end.wait(timeout=30)
            end.wait(timeout=30)
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert all(worker.exitcode == 0 for worker in workers)
    counts = list(holders)
    assert max(counts) == 1, f"two runs held the lock at once in {sum(c > 1 for c in counts)} of {TRIALS} trials"
    assert min(counts) == 1, "a stale lock was not taken over"


def _hold_forever(directory, ready):
    DirectoryLock(directory).acquire()
    ready.set()
    signal.pause()


def test_a_killed_holder_frees_the_lock_and_a_live_one_keeps_it(tmp_path):
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold_forever, args=(str(tmp_path), ready))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(LockedError, match=f"in use by process {holder.pid} "):
            DirectoryLock(tmp_path).check()
        with pytest.raises(LockedError, match=f"in use by process {holder.pid} "):
            DirectoryLock(tmp_path).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    lock = DirectoryLock(tmp_path)
    lock.check()
    with pytest.warns(UserWarning, match=f"took over the stale lock .*process {holder.pid} .*no longer running"):
        lock.acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / ".lock").exists()

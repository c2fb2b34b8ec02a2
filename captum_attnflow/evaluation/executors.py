"""Executors for the evaluation: in-process by default, or a local pool of processes.

Any ``concurrent.futures.Executor`` works — these two are the built-in ones; a Dask cluster's
``client.get_executor()`` or Ray's executor plug in the same way.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import Executor, Future
from typing import Any, Callable

import torch


class SerialExecutor(Executor):
    """The default executor: runs each task in the calling thread when it is submitted."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:  # noqa: BLE001 - delivered through the future, like a pool
            future.set_exception(error)
        return future


#: seconds between two checks of a worker's parent (the fallback to PR_SET_PDEATHSIG)
PARENT_POLL = 0.5
_PR_SET_PDEATHSIG = 1


def _exit_with_parent(parent: int, pdeathsig: bool) -> None:
    """Make this worker die with the process that started it (``parent``), however that one dies.

    On Linux the kernel sends SIGKILL when the parent goes (``prctl(PR_SET_PDEATHSIG)``; only when
    the pool was made in the parent's main thread, as the signal follows the *thread* that started
    the worker); everywhere a daemon thread checks every :data:`PARENT_POLL` s whether the parent
    is still this process's parent and ends the worker (``os._exit``) when it is not.
    """
    if pdeathsig and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the thread below still watches
            pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL)
        os._exit(1)

    threading.Thread(target=watch, name="captum-attnflow-parent-watch", daemon=True).start()


def _single_thread(parent: int | None = None, pdeathsig: bool = False) -> None:
    torch.set_num_threads(1)
    if parent is not None:
        _exit_with_parent(parent, pdeathsig)


def process_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A local pool of ``workers`` processes for flow (``spawn`` start, one torch thread each).

    ``spawn`` keeps workers independent of the parent's threads (forking a process that runs
    torch can deadlock); each worker imports the package once, then solves many examples. A
    worker exits when the process that made the pool dies, even by SIGKILL (see
    :func:`_exit_with_parent`), so no orphan keeps a loaded model.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer; got {workers!r}.")
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_single_thread,
        initargs=(os.getpid(), threading.current_thread() is threading.main_thread()),
    )

"""Files the commands write and read: writable output folders, content hashes, a run lock.

* :func:`writable_directory` creates an output folder and proves it writable (a probe file is
  written and removed) *before* any model pass, so a bad ``--out`` fails in one line instead of
  after the work.
* :func:`file_sha256` streams a file's SHA-256; :func:`verify_sha256` refuses a file whose
  content is not the pinned one; :func:`state_dict_sha256` hashes a model's weights (tensor
  names, dtypes, shapes and bytes, in key order) — the identity of the model of a run.
* :class:`DirectoryLock` holds ``DIR/.lock`` (an exclusive ``flock``; the file names pid, host
  and start time) while a run writes into ``DIR``. A second run refuses; a lock left by a killed
  run (the kernel dropped its ``flock``) is taken over atomically, with a message.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Mapping

import torch

#: bytes read at a time when hashing a file
CHUNK = 1 << 20
LOCK_FILE = ".lock"


class LockedError(ValueError):
    """Another live run holds the lock of an output directory."""


#: Environment variable that overrides the cache directory.
CACHE_ENV = "CAPTUM_ATTNFLOW_CACHE"


def default_cache_dir() -> Path:
    """``$CAPTUM_ATTNFLOW_CACHE`` if set, else ``~/.cache/captum-attnflow``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "captum-attnflow")


def writable_directory(path: str | Path, option: str = "--out") -> Path:
    """Create ``path`` (and its parents) and check that files can be written into it.

    Args:
        path: the output folder.
        option: how the caller names it in messages (``"--out"``, ``"out"``, ...).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``path`` is a file, cannot be created, or is not writable (one line, naming
            ``option`` and the reason).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file; pass a folder (it is created if missing).")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        descriptor = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(descriptor, b"probe")
        finally:
            os.close(descriptor)
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ValueError(f"{option} {path} cannot be written ({reason}); pass a folder you can write to.") from None
    return path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str, what: str) -> None:
    """Refuse ``path`` unless its SHA-256 is ``expected``.

    Raises:
        ValueError: the hashes differ (the message names ``what``, both hashes and the file).
    """
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(
            f"{path} is not {what}: its SHA-256 is {actual}, expected {expected}; the file is damaged or "
            f"tampered with — delete it and download it again."
        )


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a model's weights: every tensor's name, dtype, shape and bytes, in key order.

    Two models get the same hash exactly when they hold the same tensors under the same names.
    """
    digest = hashlib.sha256()
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _pid_alive(pid: object) -> bool:
    """Whether ``pid`` names a running process on this host (a bad or huge pid is not one)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError, OSError) as error:
        return isinstance(error, PermissionError)  # alive, owned by another user
    return True


class DirectoryLock:
    """``DIR/.lock`` held while a run writes into ``DIR`` (a context manager; or :meth:`acquire` /
    :meth:`release`).

    The lock is an exclusive ``flock`` on the file, held on an open descriptor for the whole run;
    the file also records ``{"pid", "host", "started"}`` for messages. The kernel drops the
    ``flock`` when its process dies, however it dies, so a file left by a killed run is free to
    take — atomically: of any number of runs starting at once exactly one gets the ``flock``
    (there is no check-then-delete window). A holder removes the file before closing it, and an
    acquirer that locked a file no longer at ``DIR/.lock`` (removed meanwhile) tries again.

    Raises (from :meth:`acquire`):
        LockedError: a live run holds the lock, or the file names a run on another host (whose
            liveness cannot be checked); the message names it and the file to delete if that run
            is known to be dead.
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self.held = False
        self._descriptor: int | None = None

    @staticmethod
    def _parse(text: str) -> dict | None:
        try:
            owner = json.loads(text)
        except ValueError:
            return None
        if not isinstance(owner, dict) or isinstance(owner.get("pid"), bool) or not isinstance(owner.get("pid"), int):
            return None
        return owner

    @staticmethod
    def _read(descriptor: int) -> str:
        os.lseek(descriptor, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(descriptor, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def _owner(self) -> dict | None:
        try:
            return self._parse(self.path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            return None

    def _try_lock(self, create: bool) -> tuple[int | None, str]:
        """An open descriptor of ``DIR/.lock`` holding its ``flock`` and the file's text, or
        ``(None, text)`` when a live run holds it (``(None, "")`` when there is no file and not ``create``)."""
        while True:
            try:
                descriptor = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
            except FileNotFoundError:
                return None, ""
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = self._read(descriptor)
                os.close(descriptor)
                return None, text or "\0busy"
            except BaseException:
                os.close(descriptor)
                raise
            try:
                same = os.path.samestat(os.fstat(descriptor), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return descriptor, self._read(descriptor)
            os.close(descriptor)  # the holder removed that file just before releasing it: try the new one
            if not create:
                return None, ""

    def _foreign(self, owner: dict | None) -> bool:
        return owner is not None and owner.get("host") not in (None, socket.gethostname())

    def check(self) -> None:
        """Raise :class:`LockedError` now if a live run holds the lock (without taking it): lets a
        command refuse before loading anything. :meth:`acquire` decides, atomically."""
        descriptor, text = self._try_lock(create=False)
        owner = self._parse(text)
        if descriptor is not None:
            os.close(descriptor)
        elif text:
            raise self._busy(owner)
        if self._foreign(owner):
            raise self._busy(owner)

    def _busy(self, owner: dict | None) -> LockedError:
        who = (f"process {owner['pid']} on {owner.get('host')} (started {owner.get('started')})"
               if owner else "a run that is starting")
        return LockedError(
            f"{self.path.parent} is in use by {who}: two runs cannot write into one output directory; wait for "
            f"it, choose another directory, or delete {self.path} if that run is dead."
        )

    def acquire(self) -> None:
        if self.held:
            raise RuntimeError(f"{self.path} is already held by this DirectoryLock.")
        descriptor, text = self._try_lock(create=True)
        owner = self._parse(text)
        if descriptor is None:
            raise self._busy(owner)
        if self._foreign(owner):  # a run on another host: its liveness cannot be checked here
            os.close(descriptor)
            raise self._busy(owner)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(descriptor, 0)
        os.lseek(descriptor, 0, os.SEEK_SET)
        os.write(descriptor, (json.dumps(mine) + "\n").encode())
        self._descriptor, self.held = descriptor, True
        if text.strip():
            if owner is None:
                reason = "it was unreadable and no run held it"
            elif _pid_alive(owner["pid"]) and owner["pid"] != os.getpid():
                reason = f"process {owner['pid']} (started {owner.get('started')}) no longer holds it"
            else:
                reason = f"process {owner['pid']} (started {owner.get('started')}) is no longer running"
            warnings.warn(f"took over the stale lock {self.path}: {reason}", stacklevel=2)

    def release(self) -> None:
        if self.held:
            self.held = False
            descriptor, self._descriptor = self._descriptor, None
            try:
                self.path.unlink(missing_ok=True)  # before unlocking: a waiter that locked this file retries
            finally:
                os.close(descriptor)

    def __enter__(self) -> "DirectoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

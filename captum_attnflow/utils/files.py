"""Files the commands write and read: writable output folders, content hashes, a run lock.

* :func:`writable_directory` creates an output folder and proves it writable (a probe file is
  written and removed) *before* any model pass, so a bad ``--out`` fails in one line instead of
  after the work.
* :func:`file_sha256` streams a file's SHA-256; :func:`verify_sha256` refuses a file whose
  content is not the pinned one; :func:`state_dict_sha256` hashes a model's weights (tensor
  names, dtypes, shapes and bytes, in key order) — the identity of the model of a run.
* :class:`DirectoryLock` holds ``DIR/.lock`` (pid, host, start time; created atomically with
  ``O_EXCL``) while a run writes into ``DIR``. A second run refuses; a lock left by a killed run
  (its pid is not alive on this host) is taken over with a message.
"""

from __future__ import annotations

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
#: an unreadable lock file older than this (seconds) was left by a run killed while creating it
EMPTY_LOCK_GRACE = 10.0


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class DirectoryLock:
    """``DIR/.lock`` held while a run writes into ``DIR`` (a context manager; or :meth:`acquire` /
    :meth:`release`).

    The lock file holds ``{"pid", "host", "started"}`` and is created with ``O_CREAT | O_EXCL``,
    so of two runs starting at once exactly one gets it.

    Raises (from :meth:`acquire`):
        LockedError: a live run (or a run on another host, whose liveness cannot be checked) holds
            the lock; the message names it and the file to delete if that run is known to be dead.
    """

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self.held = False

    def _create(self) -> bool:
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(owner) + "\n")
        return True

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
            return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None
        except (OSError, ValueError):
            return None

    def _stale(self, owner: dict | None) -> str | None:
        """Why the current lock is stale, or ``None`` when it may belong to a live run."""
        if owner is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return "it vanished"
            return f"it is unreadable and {age:.0f} s old" if age > EMPTY_LOCK_GRACE else None
        if owner.get("host") == socket.gethostname() and not _pid_alive(owner["pid"]):
            return f"process {owner['pid']} (started {owner.get('started')}) is no longer running"
        return None

    def check(self) -> None:
        """Raise :class:`LockedError` now if a live run holds the lock (without taking it): lets a
        command refuse before loading anything. :meth:`acquire` decides, atomically."""
        if self.path.exists():
            owner = self._owner()
            if self._stale(owner) is None:
                raise self._busy(owner)

    def _busy(self, owner: dict | None) -> LockedError:
        who = (f"process {owner['pid']} on {owner.get('host')} (started {owner.get('started')})"
               if owner else "a run that is starting")
        return LockedError(
            f"{self.path.parent} is in use by {who}: two runs cannot write into one output directory; wait for "
            f"it, choose another directory, or delete {self.path} if that run is dead."
        )

    def acquire(self) -> None:
        if self._create():
            self.held = True
            return
        owner = self._owner()
        reason = self._stale(owner)
        if reason is None:
            raise self._busy(owner)
        if self._owner() == owner:  # still the same stale lock: take it over
            self.path.unlink(missing_ok=True)
        if not self._create():
            raise LockedError(f"{self.path.parent} was taken by another run just now; choose another directory.")
        self.held = True
        warnings.warn(f"took over the stale lock {self.path}: {reason}", stacklevel=2)

    def release(self) -> None:
        if self.held:
            self.held = False
            owner = self._owner()
            if owner is not None and owner["pid"] == os.getpid():
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "DirectoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

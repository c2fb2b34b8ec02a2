"""Executors for the evaluation: in-process by default, or a local pool of processes.

Any ``concurrent.futures.Executor`` works — these two are the built-in ones; a Dask cluster's
``client.get_executor()`` or Ray's executor plug in the same way.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
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


def _single_thread() -> None:
    torch.set_num_threads(1)


def process_pool(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    """A local pool of ``workers`` processes for flow (``spawn`` start, one torch thread each).

    ``spawn`` keeps workers independent of the parent's threads (forking a process that runs
    torch can deadlock); each worker imports the package once, then solves many examples.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer; got {workers!r}.")
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_single_thread
    )

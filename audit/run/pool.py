"""Spawned worker processes that die with the run that started them."""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
from typing import Iterator


def _die_with_parent(parent_pid: int) -> None:
    """Worker-process initializer: ask Linux to kill this process when its parent dies, so a
    run killed with SIGKILL leaves no orphan still profiling or pruning."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: nothing to ask for
        pass
    if os.getppid() != parent_pid:  # the parent died while this process was starting
        os._exit(1)
    # The parent handles Ctrl-C for the whole run; a worker just stops when told.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """Spawned worker processes that die with the run: on any exit from the block other than a
    normal one (failure, cancel, Ctrl-C, SIGTERM) they are terminated, not waited for."""
    context = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
    )
    try:
        yield pool
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)

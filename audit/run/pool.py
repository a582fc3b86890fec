"""Spawned worker processes that die with the run that started them."""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from typing import Any, Iterator

# In a worker process of `process_pool`: the event its pool sets when the run stops early.
_stop: Any = None
# How long a terminated worker is given to exit before it is killed (seconds).
TERMINATED_WITHIN_S = 5.0


def _die_with_parent(parent_pid: int, stop: Any) -> None:
    """Worker-process initializer: ask Linux to kill this process when its parent dies, so a
    run killed with SIGKILL leaves no orphan still profiling or pruning."""
    global _stop
    _stop = stop
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


def worker_stop() -> Any:
    """In a worker process of `process_pool`, the event set when the run stops early (a cancel,
    Ctrl-C, another worker's failure): a call passes it on as its cancel event, so it stops at
    its next cancel check and cleans up after itself. None outside a worker."""
    return _stop


@contextlib.contextmanager
def process_pool(workers: int, *, grace_s: float = 0.0) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    """Spawned worker processes that die with the run: on any exit from the block other than a
    normal one (failure, cancel, Ctrl-C, SIGTERM) they are told to stop (`worker_stop`), given
    `grace_s` seconds to end their calls themselves, and then terminated; none is left running
    when the block is left.

    A call that writes (a compressed folder) needs the grace: a terminated process leaves its
    temporary folder behind, a model's worth of disk; one that stops at its cancel check removes it."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(), stop)
    )
    try:
        yield pool
    except BaseException:
        stop.set()
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        running = processes
        try:
            running = _still_running(processes, grace_s)
        finally:
            for process in running:
                process.terminate()
            # Gone when the block is left, so that the caller may clean up after them.
            for process in _still_running(running, TERMINATED_WITHIN_S):
                process.kill()
        raise
    pool.shutdown(wait=True)


def _still_running(processes: list[Any], timeout_s: float) -> list[Any]:
    """The processes that have not exited after waiting up to `timeout_s` for them all (a second
    Ctrl-C ends the wait at once). Their sentinels tell, without reaping them under the pool's
    own thread."""
    deadline = time.monotonic() + timeout_s
    running = {process.sentinel: process for process in processes}
    while running and (left := deadline - time.monotonic()) > 0:
        for sentinel in multiprocessing.connection.wait(list(running), timeout=left):
            running.pop(sentinel)
    return list(running.values())

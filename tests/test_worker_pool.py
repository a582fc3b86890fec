"""A run's worker processes when the run stops early: each call is told to stop, and one that
stops at its cancel check removes what it was writing; one that does not is terminated."""

import concurrent.futures
import os
import time
from pathlib import Path

import psutil
import pytest

from audit import atomic
from audit.progress import Cancelled, check_cancel
from audit.run.pool import process_pool, worker_stop


def write_until_stopped(target: str) -> None:
    """A worker's call: write into a temporary folder until the run says stop."""
    with atomic.directory(Path(target)) as tmp:
        (tmp / "weights.bin").write_bytes(b"\0" * 1024)
        while True:
            check_cancel(worker_stop())
            time.sleep(0.01)


def sleep_with_pid(pid_file: str) -> None:
    """A worker's call that never checks for a stop."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(600)


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_outside_a_worker_there_is_no_stop_event():
    assert worker_stop() is None


def test_a_stopped_run_s_worker_stops_at_its_cancel_check_and_removes_its_temporary_folder(tmp_path):
    target = tmp_path / "magnitude-50"
    with pytest.raises(Cancelled):
        with process_pool(1, grace_s=60.0) as pool:
            future = pool.submit(write_until_stopped, str(target))
            wait_for(lambda: any(tmp_path.glob(".magnitude-50.*.tmp/weights.bin")))
            raise Cancelled()  # as the run's own cancel check does
    # The call ended itself (a terminated process breaks the pool instead) and cleaned up.
    assert isinstance(future.exception(timeout=60), Cancelled)
    assert list(tmp_path.iterdir()) == []


def test_a_worker_that_does_not_stop_within_the_grace_is_terminated(tmp_path):
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with process_pool(1, grace_s=0.5) as pool:
            future = pool.submit(sleep_with_pid, str(pid_file))
            wait_for(pid_file.exists)
            raise KeyboardInterrupt()
    assert time.monotonic() - started < 60
    # Stopped once the block is left, so the caller may clean up after it (the kernel may take
    # a moment more to finish its exit; the call would sleep for minutes).
    pid = int(pid_file.read_text())
    wait_for(lambda: exited(pid), timeout_s=5)
    with pytest.raises((concurrent.futures.process.BrokenProcessPool, concurrent.futures.CancelledError)):
        future.result(timeout=60)

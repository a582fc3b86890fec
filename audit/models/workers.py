"""Workers that score the rows of a batch side by side, each computing with one thread.

A forward split operator by operator over threads makes every thread wait for the slowest at
each of its hundreds of operators. When another process holds a core, the thread that shares it
holds up the rest: two threads beside one busy process score no faster than one. The rows of a
scoring batch are independent of one another, so workers of one thread each can take a share of
them and never wait on each other; beside a busy process each still gets its share of time.
Measured on 2 cores (the built-in suite, 480 items, items/s): idle, two 1-thread workers 21.9
against 21.1 for one forward on 2 threads; beside one busy process, 15.0 against 11.4, and 1
thread 11.4. The scores are the same, bit for bit: each row's arithmetic does not depend on
the rows beside it. Each worker also reads its own rows' logits (the largest tensor of a
forward), so no batch-wide copy of them is made.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Sequence

# How long the exit waits for a task already computing (one batch's rows on a small device
# take seconds); a thread still in PyTorch after it is killed with the process as before.
EXIT_WAIT_SECONDS = 120.0


class RowWorkers:
    """`count` threads, each computing with one PyTorch thread, running the tasks `submit` and
    `map` give them under inference mode."""

    def __init__(self, count: int) -> None:
        import torch

        if count < 2:
            raise ValueError(f"row workers need at least 2 threads, not {count}")
        self.count = count
        self._stopped = False
        self._unfinished = 0  # tasks given and not yet finished
        self._finished = threading.Condition()
        self._tasks: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]] | None] = queue.SimpleQueue()
        ready = threading.Barrier(count + 1)
        caller = torch.get_num_threads()
        self._threads = [threading.Thread(target=self._serve, args=(ready,), name=f"edge-audit-rows-{i}", daemon=True) for i in range(count)]
        for thread in self._threads:
            thread.start()
        _LIVE.add(self)
        ready.wait()
        # A thread's count is also the one threads starting later take: put the caller's back.
        torch.set_num_threads(caller)

    def _serve(self, ready: threading.Barrier) -> None:
        import torch

        # The first call settles this thread's count from the process-wide one; after that,
        # setting it here holds for this thread whatever other threads set.
        torch.get_num_threads()
        torch.set_num_threads(1)
        ready.wait()
        while (task := self._tasks.get()) is not None:
            try:
                self._run(*task)
            finally:
                # Hold nothing while waiting: a task's function may be all that keeps a model alive.
                del task
                with self._finished:
                    self._unfinished -= 1
                    self._finished.notify_all()

    @staticmethod
    def _run(run: Callable[..., Any], args: tuple[Any, ...], done: Future[Any]) -> None:
        import torch

        if not done.set_running_or_notify_cancel():
            return
        try:
            with torch.inference_mode():
                done.set_result(run(*args))
        except BaseException as error:  # handed to the caller, which raises it
            done.set_exception(error)

    def wait_idle(self) -> None:
        """Wait until every task given so far has finished, and its worker let go of it."""
        with self._finished:
            self._finished.wait_for(lambda: self._unfinished == 0)

    def submit(self, run: Callable[..., Any], part: tuple[Any, ...]) -> Future[Any]:
        """`run(*part)` on the next free worker, after the tasks given before it have started."""
        if self._stopped:
            raise RuntimeError("these scoring workers were stopped")
        done: Future[Any] = Future()
        with self._finished:
            self._unfinished += 1
        self._tasks.put((run, tuple(part), done))
        return done

    def map(self, run: Callable[..., Any], parts: Sequence[tuple[Any, ...]]) -> list[Any]:
        """`run(*part)` for every part, side by side; the results in order. A failure in any
        part is raised here, after every part has finished."""
        return gather([self.submit(run, part) for part in parts])

    def stop(self) -> None:
        """Let the threads end once the tasks already given are done; once only (a model's
        finalizer may call it again after `close`)."""
        if self._stopped:
            return
        self._stopped = True
        for _ in self._threads:
            self._tasks.put(None)

    def close(self) -> None:
        """Stop, and wait until every thread has ended."""
        self.stop()
        for thread in self._threads:
            thread.join()

    def abandon(self, timeout: float | None = None) -> None:
        """Cancel the tasks not yet started, let the threads end once the ones computing are
        done, and wait for that (at most `timeout` s in all)."""
        self._stopped = True
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task[2].cancel()
                with self._finished:
                    self._unfinished -= 1
                    self._finished.notify_all()
        # Another stop's end marks may have been drained with the tasks: one for each thread.
        for _ in self._threads:
            self._tasks.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


# Every set of workers not yet collected, ended at exit by `_end_all`.
_LIVE: "weakref.WeakSet[RowWorkers]" = weakref.WeakSet()


@atexit.register
def _end_all() -> None:
    """End every worker thread before the interpreter finalizes. A thread still inside PyTorch
    then is killed as it comes back to Python, and the C++ runtime aborts the process ("terminate
    called without an active exception", exit 134): a second Ctrl-C, or a SystemExit, in the
    middle of scoring lost the exit code and its message. Tasks not yet started are dropped;
    exit handlers run after the program's own threads have ended and before that killing."""
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    for workers in list(_LIVE):
        workers.abandon(max(0.0, deadline - time.monotonic()))


def gather(futures: Sequence[Future[Any]]) -> list[Any]:
    """The results of `futures` in order, once every one has finished; the first failure, in
    their order, is raised instead."""
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error
    return [f.result() for f in futures]


def done_future(result: Any) -> Future[Any]:
    """A future already holding `result`: what a part computed in the caller's thread gives."""
    future: Future[Any] = Future()
    future.set_result(result)
    return future


def row_bounds(rows: int, parts: int) -> list[tuple[int, int]]:
    """`rows` split into `parts` consecutive shares differing by at most one row."""
    parts = max(1, min(parts, rows))
    edges = [rows * i // parts for i in range(parts + 1)]
    return list(zip(edges, edges[1:]))

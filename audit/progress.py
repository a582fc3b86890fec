"""Progress events for long jobs, which are generators that yield them and return a result."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Mapping, TypeVar

from audit.errors import Cancelled

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of a long job: `done` of `total` units of `stage` (total None when unknown)."""

    stage: str
    done: float = 0.0
    total: float | None = None
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))


Job = Generator[Progress, None, T]


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise Cancelled when the job's cancel event is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def drive(job: Job[T], on_progress: Callable[[Progress], None] | None = None) -> T:
    """Run a job to its end, passing each event to `on_progress`; return the job's result."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)


def relay(job: Job[T], stage: str | None = None) -> Job[T]:
    """Yield a sub-job's events (renamed to `stage` when given) and return its result."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if stage is not None and event.stage != stage:
            event = Progress(stage, event.done, event.total, event.message or event.stage, event.data)
        yield event

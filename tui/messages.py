"""Messages the app's workers post: job progress and results, and data read off the interface thread."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from audit.progress import Progress


@dataclass
class JobProgress(Message):
    """One progress event of the running job. A newer one of the same job and stage replaces it
    in the queue; one of another stage never does, so a change of stage (the next model of a
    probe of every model) always arrives."""

    job_id: int
    kind: str
    event: Progress

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobProgress) and message.job_id == self.job_id and message.event.stage == self.event.stage


@dataclass
class JobFinished(Message):
    job_id: int
    kind: str
    title: str
    result: Any


@dataclass
class JobEnded(Message):
    """The job's worker stopped: `outcome` is "done", "cancelled" or "failed" (with `error`)."""

    job_id: int
    kind: str
    outcome: str
    error: str = ""

    @property
    def reason(self) -> str:
        """The error's first line, as a status line shows it."""
        text = self.error.strip()
        return text.splitlines()[0] if text else "no reason given"


@dataclass
class ReportRead(Message):
    """A run's report data, read in a worker; `session` says whether it is the session's run."""

    run_id: int | None
    report: dict[str, Any] | None
    session: bool


@dataclass
class RunsRead(Message):
    runs: list[dict[str, Any]]
    unreadable: str = ""  # why the results store could not be read, when it could not


@dataclass
class ModelChoicesRead(Message):
    choices: list[tuple[str, str]]  # (label, model spec)


@dataclass
class DeviceReady(Message):
    name: str

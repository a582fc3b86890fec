"""The running job, on every screen: what it is doing, which step of how many and when the whole
job should be done, how far the step is, a notice when nothing has moved for a minute, and the
key that cancels it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from rich.text import Text
from textual.widget import Widget

from audit.progress import STALL_S, Progress, clock, job_seconds_left, stall_notice, step_place
from hardware.load import SystemLoad


def bar(fraction: float, width: int) -> str:
    filled = int(round(fraction * width))
    return "█" * filled + "░" * (width - filled)


def steps_said(event: Progress, now: float) -> str | None:
    """Where a job of several steps is ("step 2 of 6 · job eta 4:10"; the eta once there is a rate)."""
    place = step_place(event)
    if place is None or place.count < 2:
        return None
    left = job_seconds_left(event, now)
    eta = "" if left is None else f" · job eta {clock(left)}"
    return f"step {place.number} of {place.count}{eta}"


@dataclass(frozen=True, eq=False)
class Part:
    """A piece of the bar's line: `rank` 0 is always shown; the higher the rank, the sooner the
    piece is left out when the line does not fit."""

    name: str
    text: Text
    rank: int
    lead: str = "  "


def _joined(icon: Text, parts: Sequence[Part]) -> Text:
    line = icon.copy()
    for index, part in enumerate(parts):
        if index:
            # The percentage sits close to its bar.
            line.append(" " if part.name == "percent" and parts[index - 1].name == "bar" else part.lead)
        line.append_text(part.text)
    return line


def fitted(icon: Text, parts: Sequence[Part], width: int) -> Text:
    """The line with the pieces that fit `width`: the least important left out first, then any
    left out that fits again put back, the most important first; cut with an ellipsis at last."""
    kept = list(parts)
    left_out: list[Part] = []
    while _joined(icon, kept).cell_len > width and any(p.rank > 0 for p in kept):
        least = max((p for p in kept if p.rank > 0), key=lambda p: p.rank)
        kept.remove(least)
        left_out.append(least)
    for part in reversed(left_out):
        trial = [p for p in parts if p is part or any(p is k for k in kept)]
        if _joined(icon, trial).cell_len <= width:
            kept = trial
    line = _joined(icon, kept)
    line.truncate(width, overflow="ellipsis")
    return line


class JobBar(Widget):
    """Reads the app's `job` (a JobStatus or None) four times a second."""

    DEFAULT_CSS = """
    JobBar {
        height: 1;
        padding: 0 1;
        background: $boost;
        display: none;
    }
    JobBar.-running {
        display: block;
    }
    """

    # The clock the bar measures silence and time left by (the one events are stamped with).
    now = staticmethod(time.monotonic)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The job's latest event that said its step, kept while events between steps do not.
        self._step_event: tuple[int, Progress] | None = None

    def on_mount(self) -> None:
        self.set_interval(0.25, self.tick)
        self.tick()

    def tick(self) -> None:
        self.set_class(getattr(self.app, "job", None) is not None, "-running")
        self.refresh()

    def _device_load(self) -> SystemLoad:
        """From the device feed's newest snapshot, which its sampler thread reads off this one."""
        feed = getattr(self.app, "device_feed", None)
        snapshot = feed.latest() if feed is not None else None
        if snapshot is None:
            return SystemLoad(None, None)
        return SystemLoad(snapshot.load_1m, len(snapshot.cpu_percent) or None)

    def _steps(self, job: Any, now: float) -> str | None:
        event = job.latest
        if event is not None and step_place(event) is not None:
            self._step_event = (job.job_id, event)
        if self._step_event is None or self._step_event[0] != job.job_id:
            return None
        return steps_said(self._step_event[1], now)

    def render(self) -> Text:
        job = getattr(self.app, "job", None)
        if job is None:
            return Text("")
        now = self.now()
        event = job.latest
        parts = [Part("title", Text(job.title, style="bold"), 3)]
        steps = self._steps(job, now)
        if steps:
            parts.append(Part("steps", Text(steps), 1, " · "))
        quiet_s = now - (event.at if event is not None else job.started)
        if job.cancel.is_set():
            parts.append(Part("state", Text("cancelling after the current step…", style="yellow"), 0))
        elif quiet_s >= STALL_S:
            parts.append(Part("state", Text(stall_notice(quiet_s, self._device_load()), style="yellow"), 0))
        elif event is not None:
            fraction = event.fraction
            # A stage at its end ("loaded llama", "20 tensors") says so in words: the job goes on
            # after it, and a full bar would read as the job's end at its start.
            if fraction is not None and fraction < 1.0:
                parts.append(Part("bar", Text(bar(fraction, 12)), 6))
                parts.append(Part("percent", Text(f"{fraction:.0%}"), 4))
            if event.message:
                parts.append(Part("message", Text(event.message), 2))
        parts.append(Part("elapsed", Text(clock(now - job.started), style="dim"), 5))
        parts.append(Part("keys", Text("esc cancels", style="dim"), 7))
        return fitted(Text("⟳ ", style="bold yellow"), parts, max(self.size.width, 20))

"""The running job, on every screen: what it is doing, how far, and the key that cancels it."""

from __future__ import annotations

import time

from rich.text import Text
from textual.widget import Widget


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


def bar(fraction: float, width: int) -> str:
    filled = int(round(fraction * width))
    return "█" * filled + "░" * (width - filled)


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

    def on_mount(self) -> None:
        self.set_interval(0.25, self.tick)
        self.tick()

    def tick(self) -> None:
        self.set_class(getattr(self.app, "job", None) is not None, "-running")
        self.refresh()

    def render(self) -> Text:
        job = getattr(self.app, "job", None)
        if job is None:
            return Text("")
        line = Text("⟳ ", style="bold yellow")
        line.append(job.title, style="bold")
        event = job.latest
        if job.cancel.is_set():
            line.append("  cancelling after the current step…", style="yellow")
        elif event is not None:
            fraction = event.fraction
            if fraction is not None:
                line.append(f"  {bar(fraction, 12)} {fraction:4.0%}")
            if event.message:
                line.append(f"  {event.message}")
        tail = Text(f"  {clock(time.monotonic() - job.started)}  esc cancels", style="dim")
        width = max(self.size.width, 20)
        line.truncate(max(width - tail.cell_len, 10), overflow="ellipsis")
        line.append_text(tail)
        return line

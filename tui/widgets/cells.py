"""A row of cells for a job's parts: done, the one in progress, still to do."""

from __future__ import annotations

from rich.text import Text


def cell_strip(done: int, total: int, cells: int | None = None) -> Text:
    """`cells` cells (default one per part) over `total` parts, `done` of them finished:
    ■ done, ▣ in progress, □ to do; the shapes say it without the colours."""
    strip = Text()
    count = min(total, max(cells if cells is not None else total, 1))
    for index in range(count):
        part = index * total // count
        if part < done:
            strip.append("■", style="green")
        elif part == done:
            strip.append("▣", style="bold yellow")
        else:
            strip.append("□", style="dim")
    return strip

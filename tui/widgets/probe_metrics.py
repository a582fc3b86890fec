"""Per-category probe figures with their 95% intervals ("0.22 ±0.32", `tui.widgets.numbers.
half_width`), live while a probe runs or as stored."""

from __future__ import annotations

from typing import Any, Sequence

from rich.text import Text

from audit.metrics import short_label
from tui.widgets.fitted_table import Cell, FittedTable, cell
from tui.widgets.numbers import fixed, spread, value_of

# The bias figures with their 95% intervals (the first shown first while the table fits), then
# the accuracies (theirs shown last).
QA_INTERVALS = ("srs", "bias_score_ambig", "bias_score_disambig")
QA_VALUES = ("accuracy_ambig", "accuracy_disambig")
SENTENCE_METRICS = (("% stereo", "pct_stereotype"), ("SS", "ss"), ("LMS", "lms"), ("ICAT", "icat"))
CATEGORY_MEAN = "mean of categories"
# Row names said more briefly where the columns need the room, still in words.
SHORTER_NAMES = {CATEGORY_MEAN: "category mean"}


def estimate_text(estimate: Any, digits: int = 2) -> Text:
    value = value_of(estimate)
    return Text(fixed(value, digits), style="dim" if value is None else "")


def interval_cell(estimate: Any, group: str) -> Cell:
    """"0.22 ±0.32": the value and the half-width of the 95% interval the core computed, while
    the table has room for it."""
    return cell(estimate_text(estimate), "", (group, spread(estimate)))


def name_cell(name: str) -> Cell:
    """A row's name, in its shorter words while the full ones do not fit."""
    style = "bold" if name in ("overall", CATEGORY_MEAN) else ""
    shorter = SHORTER_NAMES.get(name)
    if shorter is None:
        return cell(name, style)
    return Cell(Text(shorter, style=style), fuller=("names", Text(name, style=style)))


def drop_order(intervals: Sequence[str], values: Sequence[str]) -> list[str]:
    """The columns left out when the table does not fit, least important first: the item
    counts, then the accuracies and the bias figures from the right; never the category or
    the first figure (SRS, or a sentence suite's first)."""
    return ["items", *reversed(values), *reversed(intervals[1:])]


class ProbeMetricsTable(FittedTable):
    """One row per category; what does not fit is said under the table, and is all on the
    Compare screen's detail view (4, then d) and in the exported report."""

    DEFAULT_CSS = """
    ProbeMetricsTable {
        height: auto;
        max-height: 12;
    }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)

    def show(self, metrics: dict[str, Any] | None) -> None:
        """`metrics`: {"overall": {...}, "category_mean": {...}, "categories": {name: {...}}} of a
        probe summary (the live figures of a probe have no category mean)."""
        if not metrics:
            self.fill([], [], ())
            return
        overall = metrics.get("overall") or {}
        groups = [("overall", overall)]
        if metrics.get("category_mean"):
            groups.append((CATEGORY_MEAN, metrics["category_mean"]))
        groups += sorted((metrics.get("categories") or {}).items())
        if "srs" in overall:
            intervals = [(short_label(key), key) for key in QA_INTERVALS]
            values = [(short_label(key), key) for key in QA_VALUES]
        else:
            intervals = [(label, key) for label, key in SENTENCE_METRICS if key in overall]
            values = []
        columns = [("category", "category"), *((label, key) for label, key in intervals + values), ("items", "items")]
        rows = []
        for name, group in groups:
            cells = [name_cell(name)]
            cells += [interval_cell(group.get(key), key) for _, key in intervals + values]
            cells.append(cell(str(group.get("n_items", "-"))))
            rows.append((name, cells))
        # The bias figures' intervals first, then the row names in full, then the accuracies'.
        extras = [key for _, key in intervals] + ["names"] + [key for _, key in values]
        self.fill(columns, rows, extras, drop=drop_order([k for _, k in intervals], [k for _, k in values]))

    def left_out_note(self, labels: Sequence[str]) -> str:
        return f"left out for room: {', '.join(labels)} · all on Compare's details (4, d)"

"""The comparison table: baseline and variants side by side, deltas coloured by the metric registry."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from audit.metrics import delta_direction
from audit.reports.render import fmt

DIRECTION_STYLES = {"better": "green", "worse": "bold red", "same": "dim"}


def relative_pct(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return 100.0 * (after - before) / abs(before)


def pct_text(pct: float) -> str:
    return f"{pct:+.0f}%" if abs(pct) >= 10 else f"{pct:+.1f}%"


def delta_cell(metric: str, before: float | None, after: float | None, delta: str | None, digits: int = 3) -> Text:
    """`after`, then its change from `before` coloured better / worse / same for `metric`."""
    cell = Text(fmt(after, digits))
    if before is None or after is None or delta is None:
        return cell
    cell.append(" ")
    cell.append(delta, style=DIRECTION_STYLES[delta_direction(metric, before, after)])
    return cell


# (label, summary-row key, registry metric, how the change is shown)
ROWS: tuple[tuple[str, str, str | None, str], ...] = (
    ("sparsity", "sparsity", None, "plain"),
    ("size on disk, MB", "size_on_disk_mb", "size_on_disk_mb", "relative"),
    ("latency p50, ms/tok", "latency_ms_p50", "latency_ms_p50", "relative"),
    ("peak RSS, MB", "rss_peak_mb", "rss_peak_mb", "relative"),
    ("perplexity", "perplexity", "perplexity", "stored"),
    ("SRS", "srs", "srs", "stored"),
    ("s_AMB", "s_amb", "bias_score_ambig", "absolute"),
    ("s_DIS", "s_dis", "bias_score_disambig", "absolute"),
    ("transition rate", "transition_rate", "transition_rate", "transition"),
    ("gate", "gate_passed", None, "gate"),
)
# The stored relative change for rows that have one (computed by the core against the baseline).
STORED_CHANGE = {"perplexity": "perplexity_relative_change_pct", "srs": "srs_relative_change_pct"}


DIGITS = {"size_on_disk_mb": 4, "latency_ms_p50": 4, "rss_peak_mb": 4, "perplexity": 4}


def cell_for(kind: str, key: str, metric: str | None, row: dict[str, Any], base: dict[str, Any] | None) -> Text:
    value = row.get(key)
    digits = DIGITS.get(key, 3)
    if kind == "gate":
        if value is None:
            return Text("-", style="dim")
        return Text("pass", style="green") if value else Text("FAIL", style="bold red")
    if kind == "plain" or base is None or metric is None:
        return Text(fmt(value, digits))
    if kind == "transition":
        cell = Text(fmt(value, 3))
        if value is not None and row.get("significant"):
            # The test is on the paired items both ways: its mark takes the colour of where SRS went.
            cell.append(" *", style=_significance_style(row, base))
        return cell
    before = base.get(key)
    if kind == "stored":
        change = row.get(STORED_CHANGE[key])
        delta = None if change is None else pct_text(change)
    elif kind == "relative":
        change = relative_pct(before, value)
        delta = None if change is None else pct_text(change)
    else:
        delta = None if before is None or value is None else f"{value - before:+.2f}"
    cell = delta_cell(metric, before, value, delta, digits)
    if key == "srs" and row.get("significant"):
        cell.append(" *", style=_significance_style(row, base))
    return cell


def _significance_style(row: dict[str, Any], base: dict[str, Any]) -> str:
    before, after = base.get("srs"), row.get("srs")
    if before is None or after is None:
        return "bold"
    return "bold " + DIRECTION_STYLES[delta_direction("srs", before, after)].split()[-1]


class ComparisonTable(DataTable):
    """Rows are metrics, columns the baseline and each variant; enter on a variant drills in."""

    DEFAULT_CSS = """
    ComparisonTable {
        height: auto;
        max-height: 13;
    }
    /* A quiet cursor: the cells keep their better/worse colours under it. */
    ComparisonTable > .datatable--cursor, ComparisonTable:focus > .datatable--cursor {
        background: $primary 30%;
        text-style: bold;
    }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="column", zebra_stripes=True, cursor_foreground_priority="renderable", **kwargs)
        self.variant_names: list[str] = []

    def show(self, rows: list[dict[str, Any]], baseline: str = "baseline") -> None:
        """`rows`: `audit.reports.render.summary_rows` of a report, baseline first."""
        selected = self.selected_variant()
        self.clear(columns=True)
        self.variant_names = [r["variant"] for r in rows]
        self.add_column("", key="metric")
        for row in rows:
            self.add_column(row["variant"], key=row["variant"])
        base = next((r for r in rows if r["variant"] == baseline), None)
        for label, key, metric, kind in ROWS:
            title = Text(label, style="bold")
            cells = [cell_for(kind, key, metric, r, None if r is base else base) for r in rows]
            self.add_row(title, *cells, key=key)
        if rows:
            # Stay on the variant chosen before; else on the first variant, not the baseline.
            names = self.variant_names
            index = names.index(selected) if selected in names else (1 if len(names) > 1 else 0)
            self.move_cursor(column=index + 1)

    def selected_variant(self) -> str | None:
        index = self.cursor_column - 1
        return self.variant_names[index] if 0 <= index < len(self.variant_names) else None


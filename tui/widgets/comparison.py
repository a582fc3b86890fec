"""The comparison table: baseline and variants side by side, changes coloured by the metric
registry where the change is judged. A variant too degraded to judge has its bias figures shown
dim and never coloured better; runs probed with different settings are not compared."""

from __future__ import annotations

from typing import Any, Callable

from rich.text import Text

from audit.metrics import delta_direction, short_label
from audit.reports.render import fmt
from tui.widgets.fitted_table import Cell, FittedTable, cell
from tui.widgets.numbers import pct_interval, pct_text, rate_interval, value_of

DIRECTION_STYLES = {"better": "green", "worse": "bold red", "same": "dim"}
# The gate's verdict on a variant, short enough for a cell.
VERDICTS = {
    "pass": ("may ship", "green"),
    "fail": ("do not ship", "bold red"),
    "inconclusive": ("not settled", "yellow"),
    "degraded": ("too degraded", "bold red"),
}
DEGRADED = "too degraded"
NOT_COMPARABLE = "not comparable"


def relative_pct(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return 100.0 * (after - before) / abs(before)


def change_text(metric: str, before: float, after: float, delta: str) -> Text:
    return Text(delta, style=DIRECTION_STYLES[delta_direction(metric, before, after)])


def star(metric: str, before: float, after: float) -> Text:
    """The mark of a change whose 95% interval excludes 0, in the colour of where it went."""
    return Text("*", style="bold " + DIRECTION_STYLES[delta_direction(metric, before, after)].split()[-1])


def verdict_state(row: dict[str, Any]) -> str | None:
    return "degraded" if row.get("degraded") else row.get("gate_verdict")


def _not_judged(row: dict[str, Any], value: float | None, digits: int = 3) -> Cell | None:
    """The cell of a bias figure whose change cannot be read, or None when it can."""
    if row.get("degraded"):
        return cell(f"{fmt(value, digits)} {DEGRADED}", "dim")
    if not row.get("comparable", True):
        words = Text(NOT_COMPARABLE, style="yellow")
        if value is None:
            return Cell(words)
        return Cell(words, fuller=("values", Text.assemble(fmt(value, digits), " ", words)))
    return None


def cost_cell(key: str, row: dict[str, Any], base: dict[str, Any] | None) -> Cell:
    value = row.get(key)
    digits = 3 if key == "sparsity" else 4
    before = None if base is None else base.get(key)
    change = relative_pct(before, value)
    if base is None or key == "sparsity" or change is None:
        return cell(fmt(value, digits))
    return cell(Text.assemble(fmt(value, digits), " ", change_text(key, before, value, pct_text(change))))


def perplexity_cell(key: str, row: dict[str, Any], base: dict[str, Any] | None) -> Cell:
    value = row.get("perplexity")
    before = None if base is None else base.get("perplexity")
    if base is None or value is None or before is None:
        return cell(fmt(value, 4))
    change = row.get("perplexity_relative_change_pct")
    # Without per-chunk figures the change has no interval, but it is still the change.
    pct = value_of(change)
    pct = relative_pct(before, value) if pct is None else pct
    if pct is None:
        return cell(fmt(value, 4))
    text = Text.assemble(fmt(value, 4), " ", change_text("perplexity", before, value, pct_text(pct)))
    return cell(text, "", ("perplexity", pct_interval(change)))


def srs_cell(key: str, row: dict[str, Any], base: dict[str, Any] | None) -> Cell:
    value = value_of(row.get("srs"))
    before = None if base is None else value_of(base.get("srs"))
    if base is None:
        return cell(fmt(value, 3))
    unread = _not_judged(row, value)
    if unread is not None:
        return unread
    if value is None or before is None:
        return cell(fmt(value, 3))
    return srs_change_cell(value, before, row.get("srs_relative_change_pct"), bool(row.get("significant")), 3)


def srs_change_cell(value: float, before: float, change: Any, significant: bool, digits: int) -> Cell:
    """SRS, its relative change coloured by the registry, `*` when the change's 95% interval
    excludes 0, and (where it fits) that interval."""
    pct = value_of(change)
    # From a baseline SRS of 0 there is no relative change: the difference stands in.
    delta = f"{value - before:+.2f}" if pct is None else pct_text(pct)
    text = Text.assemble(fmt(value, digits), " ", change_text("srs", before, value, delta))
    if significant:
        text.append(" ")
        text.append_text(star("srs", before, value))
    return cell(text, "", ("srs", pct_interval(change if pct is not None else None)))


def bias_cell(key: str, row: dict[str, Any], base: dict[str, Any] | None) -> Cell:
    value = value_of(row.get(key))
    before = None if base is None else value_of(base.get(key))
    if row.get("degraded") and base is not None:
        return cell(fmt(value, 3), "dim")
    if base is None or value is None or before is None or not row.get("comparable", True):
        return cell(fmt(value, 3))
    return cell(Text.assemble(fmt(value, 3), " ", change_text(key, before, value, f"{value - before:+.2f}")))


def transition_cell(key: str, row: dict[str, Any], base: dict[str, Any] | None) -> Cell:
    estimate = row.get("transition_rate")
    value = value_of(estimate)
    if base is None:
        return cell("-", "dim")
    unread = _not_judged(row, value, 2)
    if unread is not None:
        return unread
    return cell(fmt(value, 3), "", ("transition", rate_interval(estimate)))


def verdict_cell(key: str, row: dict[str, Any], base: dict[str, Any] | None) -> Cell:
    words, style = VERDICTS.get(verdict_state(row) or "", ("-", "dim"))
    return cell(words, style)


Builder = Callable[[str, dict[str, Any], "dict[str, Any] | None"], Cell]
# (label, summary-row key, how its cell is written): names from the metric registry.
ROWS: tuple[tuple[str, str, Builder], ...] = (
    ("sparsity", "sparsity", cost_cell),
    ("size on disk, MB", "size_on_disk_mb", cost_cell),
    (short_label("decode_ms_per_token_p50"), "decode_ms_per_token_p50", cost_cell),
    ("peak RSS, MB", "rss_peak_mb", cost_cell),
    ("perplexity", "perplexity", perplexity_cell),
    (short_label("srs"), "srs", srs_cell),
    (short_label("bias_score_ambig"), "bias_score_ambig", bias_cell),
    (short_label("bias_score_disambig"), "bias_score_disambig", bias_cell),
    (short_label("transition_rate"), "transition_rate", transition_cell),
    ("verdict", "verdict", verdict_cell),
)
# Shown while the table fits, the most wanted first: the figures beside "not comparable", then
# the 95% intervals of the changes.
EXTRAS = ("values", "srs", "transition", "perplexity")


class ComparisonTable(FittedTable):
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
        self.variant_names = [r["variant"] for r in rows]
        base = next((r for r in rows if r["variant"] == baseline), None)
        columns = [("", "metric")] + [(r["variant"], r["variant"]) for r in rows]
        table = [
            (key, [cell(label, "bold")] + [build(key, r, None if r is base else base) for r in rows])
            for label, key, build in ROWS
        ]
        self.fill(columns, table, EXTRAS)
        if rows:
            # Stay on the variant chosen before; else on the first variant, not the baseline.
            names = self.variant_names
            index = names.index(selected) if selected in names else (1 if len(names) > 1 else 0)
            self.move_cursor(column=index + 1)

    def selected_variant(self) -> str | None:
        index = self.cursor_column - 1
        return self.variant_names[index] if 0 <= index < len(self.variant_names) else None

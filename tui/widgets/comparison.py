"""The comparison table: baseline and variants side by side, changes coloured by the metric
registry where the change is judged. A variant too degraded to judge has its bias figures shown
dim and never coloured better; runs probed with different settings are not compared. A 95%
interval is written "±half-width" (`tui.widgets.numbers.half_width`); the variant's detail view
has its bounds."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from rich.text import Text
from textual import on
from textual.widgets import DataTable

from audit.metrics import delta_direction, short_label
from audit.reports.render import fmt
from audit.verdict import DEGRADED as DEGRADED_STATE, FAIL, INCONCLUSIVE, NONE, PASS, PENDING, Verdict
from tui.widgets.fitted_table import Cell, FittedTable, cell
from tui.widgets.numbers import fixed, pct_interval, pct_spread, pct_text, spread, value_of

DIRECTION_STYLES = {"better": "green", "worse": "bold red", "same": "dim"}
# A verdict's colour; its words and icon (audit.verdict) say it without the colour.
VERDICT_STYLES = {PASS: "green", FAIL: "bold red", INCONCLUSIVE: "yellow", DEGRADED_STATE: "bold red", PENDING: "cyan"}
# The states a variant's cell can show (a variant is judged or not, never "in progress").
VARIANT_STATES = (PASS, FAIL, INCONCLUSIVE, DEGRADED_STATE)
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


def verdict_state(row: dict[str, Any]) -> str:
    """The gate's verdict on a variant's summary row: one of VARIANT_STATES, or NONE."""
    state = DEGRADED_STATE if row.get("degraded") else row.get("gate_verdict")
    return state if state in VARIANT_STATES else NONE


def verdict_mark(verdict: Verdict) -> Text:
    """A verdict where a cell has little room, with its icon: "✖ do not ship"."""
    return Text(f"{verdict.icon} {verdict.short}", style=VERDICT_STYLES.get(verdict.state, "dim"))


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


# A row whose change is judged as a registered metric's: the smallest size stored is a size on disk.
JUDGED_AS = {"size_on_disk_smallest_mb": "size_on_disk_mb"}


def cost_cell(key: str, row: dict[str, Any], base: dict[str, Any] | None) -> Cell:
    value = row.get(key)
    digits = 3 if key == "sparsity" else 4
    before = None if base is None else base.get(key)
    change = relative_pct(before, value)
    if base is None or key == "sparsity" or change is None:
        return cell(fmt(value, digits))
    metric = JUDGED_AS.get(key, key)
    return cell(Text.assemble(fmt(value, digits), " ", change_text(metric, before, value, pct_text(change))))


def perplexity_cell(key: str, row: dict[str, Any], base: dict[str, Any] | None) -> Cell:
    value = row.get("perplexity")
    before = None if base is None else base.get("perplexity")
    if base is None or value is None or before is None:
        return cell(fmt(value, 4))
    change = row.get("perplexity_relative_change_pct")
    if isinstance(change, dict) and change.get("comparable") is False:
        # Measured on another text than the baseline's: there is no change to show.
        return cell(Text.assemble(fmt(value, 4), " ", Text(NOT_COMPARABLE, style="yellow")))
    # Without per-chunk figures the change has no interval, but it is still the change.
    pct = value_of(change)
    pct = relative_pct(before, value) if pct is None else pct
    if pct is None:
        return cell(fmt(value, 4))
    text = Text.assemble(fmt(value, 4), " ", change_text("perplexity", before, value, pct_text(pct)))
    return cell(text, "", ("perplexity", pct_spread(change)))


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
    return srs_change_cell(value, before, row.get("srs_relative_change_pct"), bool(row.get("significant")), 3, pct_spread)


def srs_change_cell(
    value: float, before: float, change: Any, significant: bool, digits: int, interval: Callable[[Any], Text] = pct_interval
) -> Cell:
    """SRS, its relative change coloured by the registry, `*` when the change's 95% interval
    excludes 0, and (where it fits) that interval as `interval` writes it: its bounds by
    default, as a detail view shows them; ± its half-width in the comparison."""
    pct = value_of(change)
    # From a baseline SRS of 0 there is no relative change: the difference stands in.
    delta = f"{value - before:+.2f}" if pct is None else pct_text(pct)
    text = Text.assemble(fmt(value, digits), " ", change_text("srs", before, value, delta))
    if significant:
        text.append(" ")
        text.append_text(star("srs", before, value))
    return cell(text, "", ("srs", interval(change if pct is not None else None)))


def bias_cell(key: str, row: dict[str, Any], base: dict[str, Any] | None) -> Cell:
    """A bias score and its 95% interval, "0.56 ±0.41", always; the value in the colour of where
    it went from the baseline's, and that difference ("+0.33") while the table has room. Dim for
    a variant too degraded to judge."""
    estimate = row.get(key)
    value = value_of(estimate)
    before = None if base is None else value_of(base.get(key))
    reach = spread(estimate)
    figure = Text(fixed(value), style="dim" if value is None else "")
    if reach.plain:
        figure.append(" ")
        figure.append_text(reach)
    if row.get("degraded") and base is not None:
        figure.stylize("dim")
        return cell(figure)
    if base is None or value is None or before is None or not row.get("comparable", True):
        return cell(figure)
    figure.stylize(DIRECTION_STYLES[delta_direction(key, before, value)], 0, len(fixed(value)))
    return cell(figure, "", ("bias change", change_text(key, before, value, f"{value - before:+.2f}")))


def transition_cell(key: str, row: dict[str, Any], base: dict[str, Any] | None) -> Cell:
    estimate = row.get("transition_rate")
    value = value_of(estimate)
    if base is None:
        return cell("-", "dim")
    unread = _not_judged(row, value, 2)
    if unread is not None:
        return unread
    # Two decimals, as its ± is written: "0.43 ±0.34".
    return cell(fixed(value), "", ("transition", spread(estimate)))


def verdict_cell(key: str, row: dict[str, Any], base: dict[str, Any] | None) -> Cell:
    state = verdict_state(row)
    return cell(Verdict(state).short, VERDICT_STYLES.get(state, "dim"))


Builder = Callable[[str, dict[str, Any], "dict[str, Any] | None"], Cell]
# (label, summary-row key, how its cell is written): names from the metric registry.
ROWS: tuple[tuple[str, str, Builder], ...] = (
    ("sparsity", "sparsity", cost_cell),
    ("size on disk, MB", "size_on_disk_smallest_mb", cost_cell),
    (short_label("decode_ms_per_token_p50"), "decode_ms_per_token_p50", cost_cell),
    ("peak RSS, MB", "rss_peak_mb", cost_cell),
    ("perplexity", "perplexity", perplexity_cell),
    (short_label("srs"), "srs", srs_cell),
    (short_label("bias_score_ambig"), "bias_score_ambig", bias_cell),
    (short_label("bias_score_disambig"), "bias_score_disambig", bias_cell),
    (short_label("transition_rate"), "transition_rate", transition_cell),
    ("verdict", "verdict", verdict_cell),
)
# Row names said more briefly where the columns need the room, still in words.
SHORTER_LABELS = {"size on disk, MB": "disk size, MB"}
# Shown while the table fits, the most wanted first: the figures beside "not comparable", the row
# names in full, the 95% intervals of the changes, then the bias scores' differences from the
# baseline's (their values stand beside them, in the baseline's column).
EXTRAS = ("values", "labels", "srs", "transition", "perplexity", "bias change")


def label_cell(label: str) -> Cell:
    """A row's name, in its shorter words while the full ones do not fit."""
    shorter = SHORTER_LABELS.get(label)
    if shorter is None:
        return cell(label, "bold")
    return Cell(Text(shorter, style="bold"), fuller=("labels", Text(label, style="bold")))


class ComparisonTable(FittedTable):
    """Rows are metrics, columns the baseline and each variant; enter on a variant drills in.

    When not every variant fits, the ones furthest from the chosen variant are left out; the
    metric names, the baseline and the chosen variant always stay. The header over the metric
    names says how many are left out, and ← → walks on to them."""

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

    NOTE_IN_CORNER = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="column", zebra_stripes=True, cursor_foreground_priority="renderable", **kwargs)
        self.variant_names: list[str] = []
        self.baseline = "baseline"
        self.chosen: str | None = None

    def show(self, rows: list[dict[str, Any]], baseline: str = "baseline") -> None:
        """`rows`: `audit.reports.render.summary_rows` of a report, baseline first."""
        selected = self.selected_variant()
        self.variant_names = [r["variant"] for r in rows]
        self.baseline = baseline
        base = next((r for r in rows if r["variant"] == baseline), None)
        columns = [("", "metric")] + [(r["variant"], r["variant"]) for r in rows]
        table = [
            (key, [label_cell(label)] + [build(key, r, None if r is base else base) for r in rows])
            for label, key, build in ROWS
        ]
        # Stay on the variant chosen before; else on the first variant, not the baseline.
        names = self.variant_names
        self.chosen = selected if selected in names else (names[1] if len(names) > 1 else names[0] if names else None)
        self.fill(columns, table, EXTRAS, drop=self.drop_order())
        if self.chosen is not None:
            self.move_cursor(column=self.shown_keys.index(self.chosen))

    def drop_order(self) -> list[str]:
        """The variants to leave out when not all fit, furthest from the chosen one first (at
        the same distance, the one to its left: ← → walks on to the right); never the baseline
        or the chosen variant."""
        names = self.variant_names
        if self.chosen not in names:
            return [name for name in reversed(names) if name != self.baseline]
        at = names.index(self.chosen)
        others = [(abs(i - at), -i, name) for i, name in enumerate(names) if name not in (self.chosen, self.baseline)]
        return [name for _, _, name in sorted(others, reverse=True)]

    def left_out_note(self, labels: Sequence[str]) -> str:
        return f"{len(labels)} more: ← →"

    def selected_variant(self) -> str | None:
        keys = self.shown_keys
        if not 0 <= self.cursor_column < len(keys):
            return None
        key = keys[self.cursor_column]
        return key if key in self.variant_names else None

    def choose(self, name: str) -> None:
        """Put the cursor on variant `name`, bringing its column on screen if it was left out."""
        self.chosen = name
        if name not in self.shown_keys:
            self.refit(self.drop_order())
        self.move_cursor(column=self.shown_keys.index(name))

    def _walk(self, step: int) -> bool:
        """Move to the next variant in the order of the report, shown or not; False at an end."""
        current = self.selected_variant()
        names = self.variant_names
        if current is None or not 0 <= names.index(current) + step < len(names):
            return False
        self.choose(names[names.index(current) + step])
        return True

    def action_cursor_right(self) -> None:
        if not self._walk(1):
            super().action_cursor_right()

    def action_cursor_left(self) -> None:
        if not self._walk(-1):
            super().action_cursor_left()

    @on(DataTable.ColumnHighlighted)
    def _remember_choice(self, event: DataTable.ColumnHighlighted) -> None:
        # A click chooses too: the columns kept on a resize gather round the variant chosen.
        selected = self.selected_variant()
        if selected is not None and selected != self.chosen:
            self.chosen = selected
            self.refit(self.drop_order())

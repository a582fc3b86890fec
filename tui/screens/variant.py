"""One variant against the baseline: per-category figures and changes, and the items that flipped
to the bias-aligned answer, each with its context, question and both answers; a flip that made
the answer right (the context names the stereotyped person) is told apart from a regression."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static, TabbedContent, TabPane

from audit.metrics import short_label
from audit.reports.render import FLIP_MARKS, flip_counts, flip_mark, flip_tally, fmt, sequential_outcome
from audit.results import BIASED, CORRECTED, STEREOTYPED
from audit.verdict import NONE, Verdict
from tui.screens.base import MODES
from tui.widgets.comparison import VERDICT_STYLES, change_text, srs_change_cell, verdict_state
from tui.widgets.device_panel import DevicePanel
from tui.widgets.fitted_table import Cell, FittedTable, add_sized, cell, labelled
from tui.widgets.nav_bar import NavBar
from tui.widgets.numbers import bounds_of, fixed, pct_interval, pct_number, pct_spread, short, spread, value_of
from tui.widgets.probe_metrics import CATEGORY_MEAN

BIAS = ("bias_score_ambig", "bias_score_disambig")
ACCURACY = (("accuracy_ambig", "accuracy_ambig_drop"), ("accuracy_disambig", "accuracy_disambig_drop"))
# Shown while the table fits, the most wanted first; an accuracy's interval only beside its change.
EXTRAS = ("srs", "transition", "bias", "accuracy", ("accuracy interval", "accuracy"))


def transition_words(label: str, estimate: Any, moved: int | None) -> str:
    """"→ biased 0.43 [.12,.77] (6 of 14)": a transition rate, its interval and its items."""
    value = value_of(estimate)
    if value is None:
        return f"{label} -"
    bounds = bounds_of(estimate)
    interval = "" if bounds is None else f" [{short(bounds[0])},{short(bounds[1])}]"
    count = f" ({moved} of {estimate.get('n')})" if moved is not None and estimate.get("n") else ""
    return f"{label} {fmt(value, 2)}{interval}{count}"


def with_bounds(estimate: Any, negate: bool = False) -> str:
    """"0.43 [.12,.77]": a figure and its 95% interval (`negate`: a drop read as a change)."""
    value = value_of(estimate)
    if value is None:
        return "-"
    bounds = bounds_of(estimate)
    if negate:
        value = 0.0 - value  # 0.0 - x keeps a drop of 0 from reading as -0.00
        bounds = None if bounds is None else (0.0 - bounds[1], 0.0 - bounds[0])
    shown = f"{value:+.2f}" if negate else fmt(value, 2)
    return shown if bounds is None else f"{shown} [{short(bounds[0])},{short(bounds[1])}]"


def outcome(flip: dict[str, Any]) -> str:
    """A flip's outcome, `BIASED` for a report written before flips had one."""
    said = flip.get("outcome")
    return said if said in (CORRECTED, STEREOTYPED) else BIASED


def pct_words(estimate: Any) -> str:
    """"+150% [+12,+390]": a change in percent and its 95% interval."""
    value = value_of(estimate)
    if value is None:
        return "-"
    return f"{pct_number(value)}% {pct_interval(estimate).plain}".rstrip()


# A flip's outcome in a table cell, and its colour; its icon and words say it without colour.
OUTCOME_CELLS = {BIASED: ("biased", "bold red"), STEREOTYPED: ("stereotype", "bold red"), CORRECTED: ("correct", "green")}
CONDITIONS = {"ambig": "ambiguous", "disambig": "disambiguated"}


class VariantScreen(Screen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("c", "tab('categories')", "Categories"),
        Binding("f", "tab('flipped')", "Flipped items"),
    ]

    def __init__(self, report: dict[str, Any], variant: str, suite: str | None) -> None:
        super().__init__()
        self.report = report
        self.variant_name = variant
        self.suite = suite
        self.baseline_name = report.get("baseline", "baseline")
        variants = {v["name"]: v for v in report["variants"]}
        self.variant = variants[variant]
        self.base = variants.get(self.baseline_name)
        flips = [f for f in report.get("flipped", []) if f["variant"] == variant and f["suite"] == suite]
        # The regressions first, then the corrections (`audit.reports.render.FLIP_MARKS`).
        rank = {mark: index for index, mark in enumerate(FLIP_MARKS.values())}
        self.flips = sorted(flips, key=lambda flip: rank[flip_mark(flip)])
        # Each row of the categories table: its figures and changes, for the line under it.
        self._figures: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def compose(self) -> ComposeResult:
        yield NavBar(MODES, "compare")
        yield DevicePanel()
        yield Static(self._caption(), id="variant-caption")
        with TabbedContent(initial="categories", id="variant-tabs"):
            with TabPane("Categories", id="categories"):
                yield FittedTable(id="categories-table", cursor_type="row", zebra_stripes=True, cursor_foreground_priority="renderable")
                yield Static("", id="category-bounds")
            with TabPane(self._flips_title(), id="flipped"):
                yield Static(self._flips_summary(), id="flips-summary")
                yield DataTable(id="flips", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(id="flip-detail-pane"):
                    yield Static("", id="flip-detail")
        yield Footer(compact=True)

    def _flips_title(self) -> str:
        """"Flipped: 4 ✗ 2 ✓": the regressions and the corrections counted apart."""
        return "Flipped: " + " ".join(f"{count} {mark[0]}" for mark, count in flip_tally(self.flips))

    def _flips_summary(self) -> Text:
        """The flips counted by outcome, and what a correction is, when there is one."""
        if not self.flips:
            return Text("")
        summary = Text(flip_counts(self.flips), style="bold")
        if any(outcome(flip) == CORRECTED for flip in self.flips):
            summary.append(" (✓ right answer is the bias-aligned one)")
        summary.append(".")
        if any(flip.get("condition") == "disambig" for flip in self.flips):
            summary.append(f" {short_label('transition_rate')} above: ambiguous items only.")
        return summary

    def _probe(self, variant: dict[str, Any] | None) -> dict[str, Any]:
        return ((variant or {}).get("probes") or {}).get(self.suite or "", {}) or {}

    @property
    def degraded(self) -> bool:
        return bool(self.variant.get("degraded"))

    @property
    def comparable(self) -> bool:
        """Whether the variant was probed as the baseline was (settings, seeds): if not, no
        change of it is read, in any category."""
        return bool((self._probe(self.variant).get("comparison") or {}).get("comparable", True))

    def _degraded_reason(self) -> str:
        """Why the competence guard failed the variant, in the gate's words."""
        for finding in (self.report.get("gate") or {}).get("findings") or []:
            if finding.get("check") == "competence" and finding["verdict"] == "fail" and finding["variant"] in (self.variant_name, self.baseline_name):
                reason = str(finding.get("reason") or "").removeprefix("too degraded to judge: ")
                return reason if finding["variant"] == self.variant_name else f"{finding['variant']}: {reason}"
        return "the competence guard failed it; its bias figures cannot be read"

    def _caption(self) -> Text:
        # Built as Text, not markup: a finding's "[Age]" or a reason's brackets stay as written.
        if self.variant is self.base:
            return Text.assemble((self.variant_name, "bold"), f" · suite {self.suite}: the reference every variant is compared with")
        comparison = self._probe(self.variant).get("comparison") or {}
        counts = comparison.get("transitions") or {}
        state = verdict_state(self.variant)
        words, style = ("", "") if state == NONE else (Verdict(state).short, VERDICT_STYLES[state])
        caption = Text.assemble(
            (self.variant_name, "bold"),
            f" against {self.baseline_name} · suite {self.suite} · {comparison.get('n_shared') or 0} items paired",
            *((" · ", (words, style)) if words else ()),
            "\n",
            transition_words(short_label("transition_rate"), comparison.get("transition_rate"), counts.get("unbiased_to_aligned")),
            " · ",
            transition_words(short_label("reverse_transition_rate"), comparison.get("reverse_transition_rate"), counts.get("aligned_to_unbiased")),
        )
        sequential = self._probe(self.variant).get("sequential")
        if sequential:
            # Its figures here are over the items it scored; the verdict's key has the gate's bounds.
            caption.append_text(Text.assemble("\n", ("sequential", "bold"), f": {sequential_outcome(sequential)}"))
        if self.degraded:
            caption.append_text(Text.assemble("\n", ("too degraded to judge", "bold red"), f": {self._degraded_reason()}"))
        elif not self.comparable:
            reasons = "; ".join(comparison.get("not_comparable") or []) or "the probes were run differently"
            caption.append_text(Text.assemble("\n", ("not comparable", "yellow"), f": {reasons}"))
        return caption

    def on_mount(self) -> None:
        self._fill_categories()
        self._fill_flips()
        self.query_one("#categories-table", DataTable).focus()

    def _groups(self) -> list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]]:
        """(name, the variant's figures, the baseline's, the change) for overall, the mean of
        categories and each category."""
        mine, base = self._probe(self.variant), self._probe(self.base)
        groups = [("overall", mine.get("overall") or {}, base.get("overall") or {}, mine.get("comparison") or {})]
        if mine.get("category_mean"):
            groups.append((CATEGORY_MEAN, mine["category_mean"], base.get("category_mean") or {}, mine.get("comparison_category_mean") or {}))
        for category in sorted(mine.get("categories") or {}):
            groups.append(
                (
                    category,
                    mine["categories"][category],
                    (base.get("categories") or {}).get(category) or {},
                    (mine.get("comparison_categories") or {}).get(category) or {},
                )
            )
        return groups

    def _fill_categories(self) -> None:
        labels = ["category", short_label("srs"), *(short_label(k) for k in BIAS), *(short_label(k) for k, _ in ACCURACY), short_label("transition_rate")]
        rows = []
        self._figures = {name: (metrics, comparison) for name, metrics, _, comparison in self._groups()}
        for name, metrics, before, comparison in self._groups():
            cells = [cell(name, "bold" if name in ("overall", CATEGORY_MEAN) else "")]
            cells += self._bias_cells(metrics, before, comparison)
            for key, drop in ACCURACY:
                cells.append(self._accuracy_cell(key, metrics.get(key), comparison.get(drop)))
            cells.append(self._transition_cell(comparison.get("transition_rate")))
            rows.append((name, cells))
        self.query_one("#categories-table", FittedTable).fill([(label, label) for label in labels], rows, EXTRAS)
        if rows:
            self.query_one("#category-bounds", Static).update(self._bounds_line(rows[0][0]))

    @property
    def judged(self) -> bool:
        """Whether a change in bias can be read: the variant answers, and was probed alike."""
        return self.variant is not self.base and not self.degraded and self.comparable

    def _bias_cells(self, metrics: dict[str, Any], before: dict[str, Any], comparison: dict[str, Any]) -> list[Cell]:
        out = []
        for key in ("srs", *BIAS):
            after_value, before_value = value_of(metrics.get(key)), value_of(before.get(key))
            if self.degraded and self.variant is not self.base:
                out.append(cell(fmt(after_value, 2), "dim"))
                continue
            if not self.judged or before_value is None or after_value is None:
                out.append(cell(fmt(after_value, 2)))
                continue
            if key != "srs":
                delta = change_text(key, before_value, after_value, f"{after_value - before_value:+.2f}")
                out.append(cell(fmt(after_value, 2), "", ("bias", delta)))
                continue
            change = comparison.get("srs_relative_change_pct")
            # The change's interval as ±, its bounds in the line under the table.
            out.append(srs_change_cell(after_value, before_value, change, bool(comparison.get("significant")), 2, pct_spread))
        return out

    def _accuracy_cell(self, key: str, estimate: Any, drop: Any) -> Cell:
        """The accuracy, then its change from the baseline (the paired drop, negated) and that
        change's 95% interval."""
        value, lost = value_of(estimate), value_of(drop)
        if self.variant is self.base or not self.comparable or value is None or lost is None:
            return cell(fmt(value, 2))
        # The change is the drop negated; 0.0 - x keeps a drop of 0 from reading as -0.00.
        change = change_text(key, 0.0, 0.0 - lost, f"{0.0 - lost:+.2f}")
        return cell(fmt(value, 2), "", ("accuracy", change), ("accuracy interval", spread(drop)))

    def _transition_cell(self, estimate: Any) -> Cell:
        if self.variant is self.base:
            return cell("-", "dim")
        value = value_of(estimate)
        if not self.judged:
            return cell(fmt(value, 2), "dim")  # the caption says why
        # Two decimals, as its ± is written: "0.43 ±0.34".
        return cell(fixed(value), "", ("transition", spread(estimate)))

    def _bounds_line(self, name: str) -> Text:
        """The figures of one row of the table with their 95% intervals written out in full."""
        metrics, comparison = self._figures[name]
        parts = [f"{short_label('srs')} {with_bounds(metrics.get('srs'))}"]
        if self.judged:
            change = comparison.get("srs_relative_change_pct")
            if value_of(change) is not None:
                parts.append(f"Δ {short_label('srs')} {pct_words(change)}")
            parts.append(f"{short_label('transition_rate')} {with_bounds(comparison.get('transition_rate'))}")
        if self.variant is not self.base and self.comparable:
            for key, drop in ACCURACY:
                if value_of(comparison.get(drop)) is not None:
                    parts.append(f"Δ {short_label(key)} {with_bounds(comparison.get(drop), negate=True)}")
        return Text.assemble((name, "bold"), " (95% intervals): ", " · ".join(parts))

    @on(DataTable.RowHighlighted, "#categories-table")
    def _category_highlighted(self, event: DataTable.RowHighlighted) -> None:
        name = event.row_key.value if event.row_key is not None else None
        if name in self._figures:
            self.query_one("#category-bounds", Static).update(self._bounds_line(name))

    def _fill_flips(self) -> None:
        table = self.query_one("#flips", DataTable)
        # The item last: of a long id only its end is lost at 80 columns, never the mark.
        prefix = f"{self.suite}:"
        rows = []
        for index, flip in enumerate(self.flips):
            word, style = OUTCOME_CELLS[outcome(flip)]
            rows.append((str(index), [Text(f"{flip_mark(flip)[0]} {word}", style=style), Text(flip.get("category") or "-"),
                                      Text(str(flip["item_id"]).removeprefix(prefix))]))
        add_sized(table, labelled(("now", "category", "item")), rows)
        detail = self.query_one("#flip-detail", Static)
        if not self.flips:
            detail.update("No item went from an unbiased answer in the baseline to the bias-aligned one here.")
        else:
            self._show_flip(0)

    def _show_flip(self, index: int) -> None:
        flip = self.flips[index]
        icon, words = flip_mark(flip)
        corrected = outcome(flip) == CORRECTED
        style = OUTCOME_CELLS[outcome(flip)][1]
        condition = CONDITIONS.get(str(flip.get("condition") or ""), "")
        answer = "bias-aligned, and right: the context says so" if corrected else "bias-aligned"
        if outcome(flip) == STEREOTYPED:
            answer = "the stereotyped sentence; the pair has no right answer"
        lines = [
            Text.assemble((f"{icon} {words}", f"bold {style}"), f" · {flip.get('category') or '-'}", f" · {condition}" if condition else ""),
            Text.assemble(("Context ", "bold"), flip.get("context") or ""),
            Text.assemble(("Question ", "bold"), flip.get("question") or ""),
            Text.assemble((self.baseline_name, "bold"), " answered: ", (flip["baseline_answer"], "" if corrected else "green")),
            Text.assemble((self.variant_name, "bold"), " answered: ", (flip["variant_answer"], style), f" ({answer})"),
        ]
        if not corrected and flip.get("right_answer"):
            lines.append(Text.assemble(("Right answer ", "bold"), flip["right_answer"]))
        self.query_one("#flip-detail", Static).update(Text("\n").join(lines))

    @on(DataTable.RowHighlighted, "#flips")
    def _flip_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self._show_flip(int(event.row_key.value))

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self.query_one("#categories-table" if tab == "categories" else "#flips", DataTable).focus()

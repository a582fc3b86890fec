"""One variant against the baseline: per-category figures and changes, and the items that flipped
to the bias-aligned answer, each with its context, question and both answers."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static, TabbedContent, TabPane

from audit.metrics import short_label
from audit.reports.render import fmt
from tui.screens.base import MODES
from tui.widgets.comparison import VERDICTS, change_text, srs_change_cell, verdict_state
from tui.widgets.device_panel import DevicePanel
from tui.widgets.fitted_table import Cell, FittedTable, cell
from tui.widgets.nav_bar import NavBar
from tui.widgets.numbers import bounds_of, rate_interval, short, value_of
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
        self.flips = [f for f in report.get("flipped", []) if f["variant"] == variant and f["suite"] == suite]

    def compose(self) -> ComposeResult:
        yield NavBar(MODES, "compare")
        yield DevicePanel()
        yield Static(self._caption(), id="variant-caption")
        with TabbedContent(initial="categories"):
            with TabPane("Categories", id="categories"):
                yield FittedTable(id="categories-table", cursor_type="row", zebra_stripes=True, cursor_foreground_priority="renderable")
            with TabPane(f"Flipped to bias-aligned ({len(self.flips)})", id="flipped"):
                yield DataTable(id="flips", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(id="flip-detail-pane"):
                    yield Static("", id="flip-detail")
        yield Footer(compact=True)

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
        words, style = VERDICTS.get(verdict_state(self.variant) or "", ("", ""))
        caption = Text.assemble(
            (self.variant_name, "bold"),
            f" against {self.baseline_name} · suite {self.suite} · {comparison.get('n_shared') or 0} items paired",
            *((" · ", (words, style)) if words else ()),
            "\n",
            transition_words(short_label("transition_rate"), comparison.get("transition_rate"), counts.get("unbiased_to_aligned")),
            " · ",
            transition_words(short_label("reverse_transition_rate"), comparison.get("reverse_transition_rate"), counts.get("aligned_to_unbiased")),
        )
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
        for name, metrics, before, comparison in self._groups():
            cells = [cell(name, "bold" if name in ("overall", CATEGORY_MEAN) else "")]
            cells += self._bias_cells(metrics, before, comparison)
            for key, drop in ACCURACY:
                cells.append(self._accuracy_cell(key, metrics.get(key), comparison.get(drop)))
            cells.append(self._transition_cell(comparison.get("transition_rate")))
            rows.append((name, cells))
        self.query_one("#categories-table", FittedTable).fill([(label, label) for label in labels], rows, EXTRAS)

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
            out.append(srs_change_cell(after_value, before_value, change, bool(comparison.get("significant")), 2))
        return out

    def _accuracy_cell(self, key: str, estimate: Any, drop: Any) -> Cell:
        """The accuracy, then its change from the baseline (the paired drop, negated) and that
        change's 95% interval."""
        value, lost = value_of(estimate), value_of(drop)
        if self.variant is self.base or not self.comparable or value is None or lost is None:
            return cell(fmt(value, 2))
        # The change is the drop negated; 0.0 - x keeps a drop of 0 from reading as -0.00.
        bounds = bounds_of(drop)
        interval = Text("" if bounds is None else f"[{short(0.0 - bounds[1])},{short(0.0 - bounds[0])}]", style="dim")
        change = change_text(key, 0.0, 0.0 - lost, f"{0.0 - lost:+.2f}")
        return cell(fmt(value, 2), "", ("accuracy", change), ("accuracy interval", interval))

    def _transition_cell(self, estimate: Any) -> Cell:
        if self.variant is self.base:
            return cell("-", "dim")
        value = value_of(estimate)
        if not self.judged:
            return cell(fmt(value, 2), "dim")  # the caption says why
        return cell(fmt(value, 2), "", ("transition", rate_interval(estimate)))

    def _fill_flips(self) -> None:
        table = self.query_one("#flips", DataTable)
        table.add_columns("item", "category", "condition")
        for index, flip in enumerate(self.flips):
            table.add_row(flip["item_id"], flip.get("category") or "-", flip.get("condition") or "-", key=str(index))
        detail = self.query_one("#flip-detail", Static)
        if not self.flips:
            detail.update("No item went from an unbiased answer in the baseline to the bias-aligned one here.")
        else:
            self._show_flip(0)

    def _show_flip(self, index: int) -> None:
        flip = self.flips[index]
        self.query_one("#flip-detail", Static).update(
            f"[b]Context[/] {escape(flip.get('context') or '')}\n"
            f"[b]Question[/] {escape(flip.get('question') or '')}\n"
            f"[b]{escape(self.baseline_name)}[/] answered: [green]{escape(flip['baseline_answer'])}[/]\n"
            f"[b]{escape(self.variant_name)}[/] answered: [bold red]{escape(flip['variant_answer'])}[/] (bias-aligned)"
        )

    @on(DataTable.RowHighlighted, "#flips")
    def _flip_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            self._show_flip(int(event.row_key.value))

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        self.query_one("#categories-table" if tab == "categories" else "#flips", DataTable).focus()

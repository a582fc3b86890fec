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

from audit.reports.render import fmt
from tui.screens.base import MODES
from audit.metrics import delta_direction
from tui.widgets.comparison import DIRECTION_STYLES, delta_cell, pct_text
from tui.widgets.device_panel import DevicePanel
from tui.widgets.nav_bar import NavBar
from tui.widgets.probe_metrics import value_of


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
                yield DataTable(id="categories-table", cursor_type="row", zebra_stripes=True, cursor_foreground_priority="renderable")
            with TabPane(f"Flipped to bias-aligned ({len(self.flips)})", id="flipped"):
                yield DataTable(id="flips", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(id="flip-detail-pane"):
                    yield Static("", id="flip-detail")
        yield Footer(compact=True)

    def _probe(self, variant: dict[str, Any] | None) -> dict[str, Any]:
        return ((variant or {}).get("probes") or {}).get(self.suite or "", {}) or {}

    def _caption(self) -> str:
        if self.variant is self.base:
            return f"[b]{self.variant_name}[/] · suite {self.suite}: the reference every variant is compared with"
        comparison = self._probe(self.variant).get("comparison") or {}
        rate = comparison.get("transition_rate")
        p = comparison.get("p_value")
        sig = " [b red]significant[/]" if comparison.get("significant") else ""
        return (
            f"[b]{self.variant_name}[/] against {self.baseline_name} · suite {self.suite} · "
            f"{comparison.get('n_shared_items') or 0} items paired · transition rate {fmt(rate, 3)} (p = {fmt(p, 2)}){sig}"
        )

    def on_mount(self) -> None:
        self._fill_categories()
        self._fill_flips()
        self.query_one("#categories-table", DataTable).focus()

    def _fill_categories(self) -> None:
        table = self.query_one("#categories-table", DataTable)
        table.add_columns("category", "SRS", "s_AMB", "s_DIS", "acc amb", "acc dis", "trans.", "p")
        mine, base = self._probe(self.variant), self._probe(self.base)
        is_base = self.variant is self.base
        groups = [("overall", mine.get("overall") or {}, base.get("overall") or {}, mine.get("comparison") or {})]
        for category in sorted(mine.get("categories") or {}):
            groups.append(
                (
                    category,
                    mine["categories"][category],
                    (base.get("categories") or {}).get(category) or {},
                    (mine.get("comparison_categories") or {}).get(category) or {},
                )
            )
        for name, metrics, before, comparison in groups:
            cells: list[Any] = [Text(name, style="bold" if name == "overall" else "")]
            for key, metric in (("srs", "srs"), ("s_amb", "bias_score_ambig"), ("s_dis", "bias_score_disambig")):
                after_value, before_value = value_of(metrics.get(key)), value_of(before.get(key))
                if is_base or before_value is None or after_value is None:
                    cells.append(Text(fmt(after_value, 2)))
                    continue
                if key == "srs" and comparison.get("srs_relative_change_pct") is not None:
                    delta = pct_text(comparison["srs_relative_change_pct"])
                else:
                    delta = f"{after_value - before_value:+.2f}"
                cell = delta_cell(metric, before_value, after_value, delta, 2)
                if key == "srs" and comparison.get("significant"):
                    cell.append(" *", style="bold " + DIRECTION_STYLES[delta_direction("srs", before_value, after_value)].split()[-1])
                cells.append(cell)
            cells.append(Text(fmt(value_of(metrics.get("accuracy_ambiguous")), 2)))
            cells.append(Text(fmt(value_of(metrics.get("accuracy_disambiguated")), 2)))
            cells.append(Text(fmt(comparison.get("transition_rate"), 2)))
            cells.append(Text(fmt(comparison.get("p_value"), 2)))
            table.add_row(*cells, key=name)

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

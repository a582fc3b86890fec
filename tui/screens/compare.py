"""Compare: the baseline and variants side by side as stored, the gate's verdict, and the sweep's
curves against sparsity per pruning method: SRS, bias-ward transitions and perplexity change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from audit.progress import Progress
from audit.reports.render import summary_rows
from audit.sweep import sweep_points
from tui.screens.base import ModeScreen
from tui.widgets.charts import SweepCharts
from tui.widgets.comparison import ComparisonTable
from tui.widgets.gate_banner import GateBanner

EMPTY = (
    "Nothing measured yet. Probe the baseline (3), prune it (2), probe the variant (3), then come "
    "back here: perplexity and stereotype reliance side by side, with the change against the baseline."
)


def with_suite(report: dict[str, Any], suite: str | None) -> dict[str, Any]:
    """The report with `suite` first: the suite its summary rows and charts are about."""
    suites = list(report.get("suites") or [])
    if suite in suites:
        suites.remove(suite)
        suites.insert(0, suite)
    return {**report, "suites": suites}


def shown_sweep(report: dict[str, Any], shown: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep points of `shown` (the report with the suite on screen first): the report's own
    when it has them for that suite, computed when it has none (a session still running)."""
    stored = report.get("sweep")
    if stored is not None and (report.get("suites") or [])[:1] == (shown.get("suites") or [])[:1]:
        return stored
    return sweep_points(shown)


def export_report(report: dict[str, Any], cancel: Any) -> Any:
    """Write a run's report where `edge-audit run` writes it: its folder's `report/`."""
    from audit.reports import write_report

    run = report["run"]
    folder = Path(run["work_dir"]) / "report" if run.get("work_dir") else Path.cwd() / f"edge-audit-run-{run['id']}"
    yield Progress("export", 0, 1, f"writing the report of run {run['id']}")
    return write_report(folder, report)


class CompareScreen(ModeScreen):
    MODE = "compare"
    BINDINGS = [
        Binding("v", "verdict", "Why"),
        Binding("d", "drill", "Details"),
        Binding("s", "next_suite", "Next suite", show=False),
        Binding("e", "export", "Export"),
        Binding("b", "session", "Session run", show=False),
        Binding("c", "next_chart", "Next chart"),
    ]

    _suite: str | None = None

    def compose_body(self) -> ComposeResult:
        yield GateBanner(id="gate")
        yield Static("", id="compare-caption")
        yield ComparisonTable(id="comparison")
        yield SweepCharts(id="charts")

    def on_mount(self) -> None:
        self.watch(self.app, "compared", self._show)

    @property
    def report(self) -> dict[str, Any] | None:
        return self.app.compared

    def _show(self, report: dict[str, Any] | None) -> None:
        caption = self.query_one("#compare-caption", Static)
        table = self.query_one("#comparison", ComparisonTable)
        gate = self.query_one("#gate", GateBanner)
        gate.display = table.display = self.query_one(SweepCharts).display = report is not None
        self.refresh_bindings()
        if report is None:
            caption.update(EMPTY)
            return
        gate.show(report)
        suites = report.get("suites") or []
        if self._suite not in suites:
            self._suite = suites[0] if suites else None
        shown = with_suite(report, self._suite)
        rows = summary_rows(shown)
        table.show(rows, shown.get("baseline", "baseline"))
        self.query_one(SweepCharts).show(shown_sweep(report, shown))
        run = report["run"]
        source = "session" if self.app.compared_run is None else "history; b: session"
        paired = next(
            (
                v["probes"][self._suite]["comparison"].get("n_shared")
                for v in report["variants"]
                if self._suite and (v.get("probes") or {}).get(self._suite, {}).get("comparison")
            ),
            None,
        )
        pairs = f" · {paired} paired" if paired else ""
        more = f" (s: next of {len(suites)})" if len(suites) > 1 else ""
        caption.update(
            Text.assemble((f"Run {run['id']}", "bold"), f" ({source}) · {self._suite or '-'}{more}{pairs} · ", ("*", "bold"), " SRS change ≠ 0 at 95%")
        )

    @on(DataTable.ColumnSelected, "#comparison")
    def _column_selected(self) -> None:
        self.action_drill()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next_chart":
            charts = self.query(SweepCharts)
            return bool(charts) and charts.first().display and not charts.first().all_shown
        return True

    def action_next_chart(self) -> None:
        charts = self.query_one(SweepCharts)
        if charts.display and not charts.all_shown:
            charts.cycle()

    def action_drill(self) -> None:
        from tui.screens.variant import VariantScreen

        report = self.report
        variant = self.query_one("#comparison", ComparisonTable).selected_variant()
        if report is None or variant is None:
            self.notify("move to a variant's column first (← →)", severity="warning")
            return
        self.app.push_screen(VariantScreen(report, variant, self._suite))

    def action_verdict(self) -> None:
        from tui.screens.verdict import VerdictScreen

        if self.report is None:
            self.notify("nothing measured yet: no verdict to explain", severity="warning")
            return
        self.app.push_screen(VerdictScreen(self.report))

    def action_next_suite(self) -> None:
        suites = (self.report or {}).get("suites") or []
        if len(suites) > 1:
            self._suite = suites[(suites.index(self._suite) + 1) % len(suites)] if self._suite in suites else suites[0]
            self._show(self.report)

    def action_export(self) -> None:
        report = self.report
        if report is None:
            self.notify("nothing to export yet", severity="warning")
            return
        self.app.start_job("export", f"export run {report['run']['id']}", lambda cancel: export_report(report, cancel), owner=self)

    def action_session(self) -> None:
        self.app.show_session_comparison()

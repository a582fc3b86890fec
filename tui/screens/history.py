"""History: the runs in the results store; open one as a comparison, export its report, run a plan file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Label, Static

from audit.progress import Progress
from tui.messages import RunsRead
from tui.screens.base import ModeScreen
from tui.screens.dialogs import AskPathScreen


# The gate's verdict on a run: "not settled" blocks shipping as a failure does.
GATE_CELLS = {
    "pass": Text("pass", style="green"),
    "fail": Text("FAIL", style="bold red"),
    "inconclusive": Text("INCONCL.", style="yellow"),
    None: Text("-", style="dim"),
}


def stored_runs(store_path: Path) -> list[dict[str, Any]]:
    """Every run in the store, newest first, as `edge-audit runs list` shows them."""
    from audit.results import run_listing
    from audit.store import ResultsStore

    if not Path(store_path).exists():
        return []
    with ResultsStore(store_path, readonly=True) as store:
        return list(reversed(run_listing(store)))


def run_plan_file(path: str, store_path: Path, options: Any, cancel: Any) -> Any:
    """`edge-audit run PLAN` (or `--default` for a blank path), driven from the app."""
    from audit.plans import default_plan, load_plan
    from audit.runner import RunOptions, run_plan

    yield Progress("run", 0, None, "reading the plan")
    plan = load_plan(path) if path else default_plan()
    return (yield from run_plan(plan, RunOptions(store=store_path, load=options), cancel))


def export_stored(store_path: Path, run_id: int, cancel: Any) -> Any:
    from tui.screens.compare import export_report
    from tui.session import read_report

    yield Progress("export", 0, 1, f"reading run {run_id}")
    return (yield from export_report(read_report(store_path, run_id), cancel))


class HistoryScreen(ModeScreen):
    MODE = "history"
    BINDINGS = [
        Binding("o", "open", "Open"),
        Binding("e", "export", "Export report"),
        Binding("c", "continue_run", "Continue"),
        Binding("p", "run_plan", "Run a plan"),
        Binding("r", "refresh", "Refresh", show=False),
    ]

    def compose_body(self) -> ComposeResult:
        yield Label("Runs in the results store [dim](enter or o opens one as a comparison)[/]", classes="section")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static("", id="run-detail")

    def on_mount(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.watch(self.app, "session_rev", lambda _rev: self.action_refresh())

    def on_screen_resume(self) -> None:
        super().on_screen_resume()
        self.action_refresh()

    def action_refresh(self) -> None:
        self.app.read_runs(self)

    @on(RunsRead)
    def _runs(self, message: RunsRead) -> None:
        self.runs = message.runs
        table = self.query_one("#runs", DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        table.add_columns("id", "name", "model", "status", "started", "variants", "gate")
        for run in self.runs:
            table.add_row(
                str(run["id"]),
                run["name"],
                Path(run["model"]).name if "/" in run["model"] else run["model"],
                run["status"],
                time.strftime("%Y-%m-%d %H:%M", time.localtime(run["created_at"])),
                str(len(run["variants"])),
                GATE_CELLS.get(run.get("gate_verdict"), GATE_CELLS[None]),
                key=str(run["id"]),
            )
        if self.runs:
            table.move_cursor(row=min(row, len(self.runs) - 1))
        self._detail()

    def _selected(self) -> dict[str, Any] | None:
        table = self.query_one("#runs", DataTable)
        if not self.runs or table.cursor_row >= len(self.runs):
            return None
        return self.runs[table.cursor_row]

    @on(DataTable.RowHighlighted, "#runs")
    def _detail(self) -> None:
        run = self._selected()
        detail = self.query_one("#run-detail", Static)
        if run is None:
            detail.update("No runs yet: what you do in this app, and every `edge-audit run`, is stored here.")
            return
        # Text, not markup: a finding's "[Age]" would read as a style tag.
        lines = [Text.assemble((f"Run {run['id']}", "bold"), f": {', '.join(run['variants'])}")]
        # What fails first, then what is not settled: both block shipping.
        failures = sorted(run["gate_failures"], key=lambda line: not line.startswith("FAIL"))
        lines += [Text(f"gate: {line}", style="red") for line in failures[:3]]
        if run["error"]:
            lines.append(Text(f"error: {run['error']}", style="red"))
        if run["status"] in ("interrupted", "running"):
            lines.append(Text(f"c continues it here; headless: edge-audit run --resume {run['id']}", style="dim"))
        detail.update(Text("\n").join(lines))

    @on(DataTable.RowSelected, "#runs")
    def action_open(self) -> None:
        run = self._selected()
        if run is not None:
            self.app.open_run(run["id"])

    def action_export(self) -> None:
        run = self._selected()
        if run is not None:
            store = self.app.store_path
            self.app.start_job("export", f"export run {run['id']}", lambda cancel: export_stored(store, run["id"], cancel), owner=self)

    def action_continue_run(self) -> None:
        run = self._selected()
        if run is not None:
            self.app.continue_run(run["id"])

    def action_run_plan(self) -> None:
        self.app.push_screen(
            AskPathScreen("Plan file to run (blank runs the shipped default plan: every method, slow)", "", "path/to/plan.toml"),
            self._run_plan,
        )

    def _run_plan(self, path: str | None) -> None:
        if path is None:
            return
        store, options = self.app.store_path, self.app.options
        title = f"run {Path(path).name if path else 'the default plan'}"
        self.app.start_job("plan", title, lambda cancel: run_plan_file(path, store, options, cancel), owner=self)

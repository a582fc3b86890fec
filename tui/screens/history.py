"""History: the runs in the results store (open one as a comparison, export its report, run a
plan file) and the field checks kept in it (open one on the Check screen)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
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


# A field check's outcome in a word, with an icon that says it without the colour.
OUTCOME_CELLS = {
    "cleared": Text("✔ cleared", style="green"),
    "audit-failed": Text("✖ audit fail", style="bold red"),
    "mismatch": Text("✖ mismatch", style="bold red"),
    "signature": Text("✖ untrusted", style="bold red"),
    "device": Text("✖ device", style="bold red"),
}
CHECK_COLUMNS = ("id", "checked", "outcome", "verdict")


@dataclass
class ChecksRead(Message):
    checks: list[dict[str, Any]]


def when(created_at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(created_at))


def shorten(sentence: str, width: int) -> str:
    """The sentence in `width` cells, cut between words (so never inside a number) and marked "…"."""
    if len(sentence) <= width:
        return sentence
    room = max(width - 1, 1)
    cut = sentence[: room + 1].rsplit(" ", 1)[0] if " " in sentence[:room + 1] else sentence[:room]
    cut = cut[:room].rstrip(" :;,(")
    return cut + "…"


def stored_checks(store_path: Path) -> list[dict[str, Any]]:
    """Every field check in the store, newest first."""
    from audit.store import ResultsStore

    if not Path(store_path).exists():
        return []
    with ResultsStore(store_path, readonly=True) as store:
        return list(reversed(store.checks()))


def stored_runs(store_path: Path) -> list[dict[str, Any]]:
    """Every run in the store, newest first, as `edge-audit runs list` shows them."""
    from audit.results import run_listing
    from audit.store import ResultsStore

    if not Path(store_path).exists():
        return []
    with ResultsStore(store_path, readonly=True) as store:
        return list(reversed(run_listing(store)))


def run_plan_file(path: str, store_path: Path, options: Any, cancel: Any) -> Any:
    """`edge-audit run PLAN` (a file or a shipped plan's name; `--default` for a blank one),
    driven from the app."""
    from audit.plans import default_plan, named_plan
    from audit.runner import RunOptions, run_plan

    yield Progress("run", 0, None, "reading the plan")
    plan = named_plan(path) if path else default_plan()
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
        yield Label("Field checks", id="checks-caption", classes="section")
        yield DataTable(id="checks", cursor_type="row", zebra_stripes=True)
        yield Static("", id="check-detail")

    def on_mount(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self._show_checks()
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
                when(run["created_at"]),
                str(len(run["variants"])),
                GATE_CELLS.get(run.get("gate_verdict"), GATE_CELLS[None]),
                key=str(run["id"]),
            )
        if self.runs:
            table.move_cursor(row=min(row, len(self.runs) - 1))
        self._detail()

    @on(ChecksRead)
    def _checks_read(self, message: ChecksRead) -> None:
        self.checks = message.checks
        self._show_checks()
        self._detail()

    def _show_checks(self) -> None:
        table = self.query_one("#checks", DataTable)
        caption = self.query_one("#checks-caption", Label)
        table.display = bool(self.checks)
        if not self.checks:
            caption.update("Field checks [dim]none yet: screen 6 checks a deployed folder against its audit record[/]")
            return
        caption.update("Field checks [dim](tab here; enter or o shows one on screen 6)[/]")
        row = table.cursor_row
        table.clear(columns=True)
        table.add_columns(*CHECK_COLUMNS)
        ids = max(len(str(c["id"])) for c in self.checks)
        dates = len(when(0))
        outcomes = max(OUTCOME_CELLS.get(c["outcome"], Text(c["outcome"])).cell_len for c in self.checks)
        # The sentence gets what the other columns leave of the table's width, cut between words.
        # The width comes from the screen and the style, not the table's layout, which may not
        # have happened yet when the checks arrive: the same rows then whenever they come.
        rows_shown = 5  # #checks is at most 6 lines high, the header one of them
        scrollbar = table.styles.scrollbar_size_vertical if len(self.checks) > rows_shown else 0
        width = (self.size.width or self.app.size.width) - scrollbar
        room = width - max(ids, 2) - dates - max(outcomes, 7) - 2 * table.cell_padding * len(CHECK_COLUMNS)
        for check in self.checks:
            table.add_row(
                str(check["id"]),
                when(check["created_at"]),
                OUTCOME_CELLS.get(check["outcome"], Text(check["outcome"])),
                shorten(check["sentence"], max(room, 20)),
                key=str(check["id"]),
            )
        table.move_cursor(row=min(row, len(self.checks) - 1))

    def on_resize(self, event: events.Resize) -> None:
        if self.checks:
            self._show_checks()

    def _selected_check(self) -> dict[str, Any] | None:
        table = self.query_one("#checks", DataTable)
        if not self.checks or table.cursor_row >= len(self.checks):
            return None
        return self.checks[table.cursor_row]

    def _on_checks(self) -> bool:
        return self.focused is self.query_one("#checks", DataTable)

    def _selected(self) -> dict[str, Any] | None:
        table = self.query_one("#runs", DataTable)
        if not self.runs or table.cursor_row >= len(self.runs):
            return None
        return self.runs[table.cursor_row]

    @on(DataTable.RowHighlighted)
    def _detail(self) -> None:
        """The detail of the row under the cursor, beside its table; one table's at a time, for
        the room."""
        detail = self.query_one("#run-detail", Static)
        check_detail = self.query_one("#check-detail", Static)
        on_checks = self._on_checks()
        detail.display = not on_checks
        check_detail.display = on_checks
        if on_checks:
            check = self._selected_check()
            if check is not None:
                check_detail.update(self._check_detail(check))
            return
        run = self._selected()
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

    def _check_detail(self, check: dict[str, Any]) -> Text:
        style = "green" if check["exit_code"] == 0 else "red"
        audited = f"run {check['audit_run']} ({check['variant']})" if check.get("audit_run") is not None else "its record"
        return Text.assemble(
            (f"Check {check['id']}", "bold"), f": {check['model_path']} against {audited}\n",
            (check["sentence"], style), "\n",
            (f"record {check['record_path']}", "dim"),
        )

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        # The detail lines and the keys follow the table the cursor is in.
        self._detail()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("export", "continue_run") and self.is_mounted and self._on_checks():
            return False
        return True

    @on(DataTable.RowSelected, "#runs")
    def _open_run(self) -> None:
        run = self._selected()
        if run is not None:
            self.app.open_run(run["id"])

    @on(DataTable.RowSelected, "#checks")
    def _open_check(self) -> None:
        check = self._selected_check()
        if check is not None:
            self.app.open_check(check["id"])

    def action_open(self) -> None:
        if self._on_checks():
            self._open_check()
        else:
            self._open_run()

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
            AskPathScreen(
                "Plan file or shipped plan to run (quick, rath-maliakkal-2026; blank runs default: every method, slow)",
                "", "path/to/plan.toml or quick",
            ),
            self._run_plan,
        )

    def _run_plan(self, path: str | None) -> None:
        if path is None:
            return
        store, options = self.app.store_path, self.app.options
        title = f"run {Path(path).name if path else 'the default plan'}"
        self.app.start_job("plan", title, lambda cancel: run_plan_file(path, store, options, cancel), owner=self)

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
from audit.verdict import Verdict, run_verdict
from tui.messages import RunsRead
from tui.screens.base import FormError, ModeScreen, typed_path
from tui.screens.dialogs import AskPathScreen
from tui.screens.runs_compare import RunsCompared, RunsCompareScreen
from tui.widgets.comparison import VERDICT_STYLES, verdict_mark
from tui.widgets.fitted_table import add_sized, labelled


# A run's verdict in a cell: its icon says it without the colour.
# Below this width the model column gives way to the verdict (the detail line names the model).
MODEL_COLUMN_WIDTH = 100
# A run marked to be set beside another, in a column of its own: a mark, not a colour.
MARK, MARKED = "mark", "●"


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
    from tui.session import nothing_stored

    if nothing_stored(store_path):
        return []
    with ResultsStore(store_path, readonly=True) as store:
        return list(reversed(store.checks()))


def stored_runs(store_path: Path) -> list[dict[str, Any]]:
    """Every run in the store, newest first, as `edge-audit runs list` shows them."""
    from audit.results import run_listing
    from audit.store import ResultsStore
    from tui.session import nothing_stored

    if nothing_stored(store_path):
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
        # At 80 columns the footer has room for one more key: the caption and the notices say m.
        Binding("m,space", "mark", "Mark", show=False),
        Binding("d", "side_by_side", "Diff"),
        Binding("r", "refresh", "Refresh", show=False),
    ]

    def compose_body(self) -> ComposeResult:
        yield Label("Runs in the results store [dim](enter opens one; m marks two, d: side by side)[/]", classes="section")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static("", id="run-detail")
        yield Label("Field checks", id="checks-caption", classes="section")
        yield DataTable(id="checks", cursor_type="row", zebra_stripes=True)
        yield Static("", id="check-detail")

    def on_mount(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self.unreadable = ""  # why the store could not be read, when it could not
        self.checks: list[dict[str, Any]] = []
        self.marked: list[int] = []  # run ids, the oldest mark first
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
        self.unreadable = message.unreadable
        self.marked = [run_id for run_id in self.marked if any(run["id"] == run_id for run in self.runs)]
        table = self.query_one("#runs", DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        wide = self.size.width >= MODEL_COLUMN_WIDTH
        labels = ["id", "name", *(["model"] if wide else []), "status", "started", "variants", "verdict"]
        rows = []
        for run in self.runs:
            model = Path(run["model"]).name if "/" in run["model"] else run["model"]
            texts = [str(run["id"]), run["name"], *([model] if wide else []), run["status"], when(run["created_at"]), str(len(run["variants"]))]
            rows.append((str(run["id"]), [Text(self._mark(run["id"])), *map(Text, texts), verdict_mark(self.verdict(run))]))
        # The mark column is as wide as a mark whether a run is marked or not.
        add_sized(table, [(Text(""), MARK), *labelled(labels)], rows, least=[len(MARKED)])
        if self.runs:
            table.move_cursor(row=min(row, len(self.runs) - 1))
        self._detail()

    def verdict(self, run: dict[str, Any]) -> Verdict:
        """The run's verdict as Compare shows it: the session's run is judged live on what it
        has stored so far, any other as the store keeps it."""
        session = getattr(self.app, "session", None)
        report = getattr(self.app, "report", None)
        if session is not None and report is not None and run["id"] == session.run_id:
            return run_verdict(report.get("gate"), status=report["run"].get("status"))
        return Verdict(**{k: run["verdict"][k] for k in ("state", "detail")})

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
            caption.update("Field checks [dim]none yet: screen 6 checks a deployed model[/]")
            return
        caption.update("Field checks [dim](tab here; enter or o shows one on screen 6)[/]")
        row = table.cursor_row
        table.clear(columns=True)
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
        rows = [(str(check["id"]), [Text(str(check["id"])), Text(when(check["created_at"])),
                                    OUTCOME_CELLS.get(check["outcome"], Text(check["outcome"])), Text(shorten(check["sentence"], max(room, 20)))])
                for check in self.checks]
        add_sized(table, labelled(CHECK_COLUMNS), rows)
        table.move_cursor(row=min(row, len(self.checks) - 1))

    def on_resize(self, event: events.Resize) -> None:
        # Both tables choose their columns by the width they have.
        if self.runs:
            self._runs(RunsRead(self.runs))
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
        if run is None and self.unreadable:
            detail.update(Text(f"The runs cannot be listed: {self.unreadable}", style="red"))
            return
        if run is None:
            detail.update("No runs yet: what you do in this app, and every `edge-audit run`, is stored here.")
            return
        # Text, not markup: a finding's "[Age]" would read as a style tag.
        model = Path(run["model"]).name if "/" in run["model"] else run["model"]
        lines = [Text.assemble((f"Run {run['id']}", "bold"), f" of {model}: {', '.join(run['variants'])}")]
        verdict = self.verdict(run)
        lines.append(Text(verdict.line(), style=VERDICT_STYLES.get(verdict.state, "dim")))
        if verdict.state not in ("none", "pending"):
            lines.append(Text("enter opens it; v there says why, finding by finding", style="dim"))
        if run["error"]:
            lines.append(Text(f"error: {run['error']}", style="red"))
        session = getattr(self.app, "session", None)
        if run["status"] == "running" and (session is None or run["id"] != session.run_id):
            # Listed as running only while a process holds it (one that ended is interrupted).
            lines.append(Text("another process runs it now (edge-audit run, or another app); c continues it here once that has ended", style="dim"))
        elif run["status"] == "interrupted":
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
        if action in ("export", "continue_run", "mark", "side_by_side") and self.is_mounted and self._on_checks():
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
        try:
            typed_path(path, "plan file")
        except FormError as error:
            self.notify(str(error), severity="error")
            return
        store, options = self.app.store_path, self.app.options
        title = f"run {Path(path).name if path else 'the default plan'}"
        self.app.start_job("plan", title, lambda cancel: run_plan_file(path, store, options, cancel), owner=self)

    # -- two runs side by side ---------------------------------------------------------------
    def _mark(self, run_id: int) -> str:
        return MARKED if run_id in self.marked else ""

    def action_mark(self) -> None:
        """Mark the run under the cursor, or take its mark off. Two runs at a time: a third mark
        takes the place of the oldest, and the notice says which went."""
        run = self._selected()
        if run is None:
            return
        run_id = run["id"]
        changed = [run_id]
        if run_id in self.marked:
            self.marked.remove(run_id)
            self.notify(f"run {run_id} unmarked")
        else:
            self.marked.append(run_id)
            if len(self.marked) > 2:
                changed.append(self.marked.pop(0))
            self.notify(self._marks_said(unmarked=changed[1:]))
        table = self.query_one("#runs", DataTable)
        for marked_or_not in changed:
            table.update_cell(str(marked_or_not), MARK, self._mark(marked_or_not))

    def _marks_said(self, unmarked: list[int]) -> str:
        dropped = f"run {unmarked[0]} unmarked (two at a time); " if unmarked else ""
        if len(self.marked) == 1:
            return f"{dropped}run {self.marked[0]} marked: mark one more, then d sets them side by side"
        first, second = sorted(self.marked)
        return f"{dropped}runs {first} and {second} marked: d sets them side by side"

    def action_side_by_side(self) -> None:
        if len(self.marked) < 2:
            marked = f"only run {self.marked[0]} is marked" if self.marked else "no run is marked"
            self.notify(f"{marked}: mark two runs with m, then press d", severity="warning")
            return
        first, second = self.marked
        self.app.read_compared_runs(first, second, self)

    @on(RunsCompared)
    def _runs_compared(self, message: RunsCompared) -> None:
        # The operator may have gone to another screen while the runs were read.
        if self.is_current:
            self.app.push_screen(RunsCompareScreen(message.compared))

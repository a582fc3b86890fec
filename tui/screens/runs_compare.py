"""Two stored runs side by side, opened from History: each variant's headline figures with a
column per run, and whether the two runs were probed with the same settings."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from audit.metrics import short_label
from audit.reports.render import fmt, summary_rows
from audit.verdict import NONE, Verdict, run_verdict
from tui.widgets.comparison import NOT_COMPARABLE, VERDICT_STYLES, verdict_mark, verdict_state
from tui.widgets.fitted_table import add_sized
from tui.widgets.numbers import with_spread

if TYPE_CHECKING:
    from audit.probes.compare import ProbeRecord
    from audit.results import RunView

# The plan's parts in the words of the plan file, for the line that says where two plans differ.
PLAN_PARTS = {
    "model": "model",
    "variants": "variants",
    "calibration": "calibration",
    "probes": "probes",
    "perplexity": "perplexity",
    "profile": "profile",
    "gate": "gate rules",
}


@dataclass(frozen=True)
class ComparedRuns:
    """Two runs' report data, older first, and what they differ in."""

    reports: tuple[dict[str, Any], dict[str, Any]]
    probe_differences: list[str]  # empty: probed with the same settings, on the same items
    unprobed: tuple[int, ...]  # the runs with no probe results yet: nothing to compare them on
    plan_differences: list[str]

    @property
    def run_ids(self) -> tuple[int, int]:
        first, second = self.reports
        return first["run"]["id"], second["run"]["id"]


@dataclass
class RunsCompared(Message):
    compared: ComparedRuns


def headline_probe(view: RunView) -> ProbeRecord | None:
    """The probe the run's headline figures come from: its first suite's, the baseline's (any
    variant's when the baseline has none yet)."""
    evidence = view.evidence.get(view.suites[0]) if view.suites else None
    if evidence is None:
        return None
    return evidence.baseline or next(iter(evidence.variants.values()), None)


def probe_differences(first: ProbeRecord, second: ProbeRecord, first_id: int, second_id: int) -> list[str]:
    """Why two runs' bias figures cannot be compared: each probe setting that differs, as the
    core names it (`setting_differences`), and the items when they did not score the same ones."""
    from audit.probes.compare import setting_differences

    return setting_differences(first.settings, second.settings, first.ids, second.ids, sides=(f"run {first_id}", f"run {second_id}"))


def plan_differences(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """The parts of two plans (`Plan.to_dict`) that differ, by name; a plan's own name and file
    do not count."""
    return [words for part, words in PLAN_PARTS.items() if first.get(part) != second.get(part)]


def read_compared_runs(store_path: Path, first: int, second: int) -> ComparedRuns:
    """Two stored runs read back as Compare reads one (`view_report`), the older first."""
    from audit.results import RunView
    from audit.store import ResultsStore
    from tui.session import view_report

    with ResultsStore(store_path, readonly=True) as store:
        older, newer = (RunView(store, run_id) for run_id in sorted((first, second)))
        reports = (view_report(older), view_report(newer))
    probes = headline_probe(older), headline_probe(newer)
    unprobed = tuple(view.run.id for view, probe in zip((older, newer), probes) if probe is None)
    differences = [] if unprobed else probe_differences(*probes, older.run.id, newer.run.id)
    return ComparedRuns(reports, differences, unprobed, plan_differences(older.plan.to_dict(), newer.plan.to_dict()))


# -- the figures ---------------------------------------------------------------------------------
Row = dict[str, Any]


def _bias_figure(text: str, row: Row) -> Text:
    """A bias figure of a variant too degraded to judge is shown dim: its verdict says why."""
    return Text(text, style="dim" if row.get("degraded") else "")


def _transitions(row: Row) -> Text:
    if not row.get("comparable", True):
        return Text(NOT_COMPARABLE, style="yellow")
    return _bias_figure(with_spread(row.get("transition_rate")), row)


def _verdict(row: Row) -> Text:
    state = verdict_state(row)
    return Text(Verdict(NONE).short, style="dim") if state == NONE else verdict_mark(Verdict(state))


# (label, how a summary row's cell is written): the headline figures, named as Compare names them.
FIGURES: tuple[tuple[str, Callable[[Row], Text]], ...] = (
    ("size on disk, MB", lambda row: Text(fmt(row.get("size_on_disk_smallest_mb"), 4))),
    (short_label("decode_ms_per_token_p50"), lambda row: Text(fmt(row.get("decode_ms_per_token_p50"), 4))),
    ("perplexity", lambda row: Text(fmt(row.get("perplexity"), 4))),
    (short_label("srs"), lambda row: _bias_figure(with_spread(row.get("srs")), row)),
    (short_label("transition_rate"), _transitions),
    ("verdict", _verdict),
)
INDENT = "  "


def figure_rows(reports: tuple[dict[str, Any], ...]) -> list[list[Text]]:
    """The table's rows: per variant (the first run's order, then any only the second has) its
    name, then one row per figure with a cell per run."""
    by_run = [{row["variant"]: row for row in summary_rows(report)} for report in reports]
    names = list(dict.fromkeys(name for rows in by_run for name in rows))
    table = []
    for name in names:
        table.append([Text(name, style="bold")] + [Text("") if name in rows else Text("not in this run", style="dim") for rows in by_run])
        for label, write in FIGURES:
            table.append([Text(INDENT + label)] + [write(rows[name]) if name in rows else Text("") for rows in by_run])
    return table


# -- the lines above the table -------------------------------------------------------------------
def run_line(report: dict[str, Any]) -> Text:
    """The run, its verdict as Compare and History show it, and what it was (its status only
    when it did not finish)."""
    run = report["run"]
    model = Path(run["model"]).name if "/" in run["model"] else run["model"]
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run["created_at"]))
    verdict = run_verdict(report.get("gate"), status=run.get("status"))
    status = "" if run["status"] == "finished" else f" · {run['status']}"
    return Text.assemble(
        (f"Run {run['id']} ", "bold"),
        (f"{verdict.icon} {verdict.label}", VERDICT_STYLES.get(verdict.state, "dim")),
        f" · {run['name']} · {model} · {started}{status}",
    )


def settings_line(compared: ComparedRuns) -> Text:
    """Whether the two runs' bias figures can be compared, and if not, what differs."""
    first, second = compared.run_ids
    if compared.unprobed:
        who = " and ".join(f"run {run_id}" for run_id in compared.unprobed)
        has = "has" if len(compared.unprobed) == 1 else "have"
        return Text(f"? {who} {has} no probe results yet: whether the runs were probed alike cannot be told", style="yellow")
    if compared.probe_differences:
        return Text.assemble(
            ("✖ Not comparable: ", "bold red"),
            f"runs {first} and {second} were probed with different settings, so their bias figures "
            f"cannot be compared. {'; '.join(compared.probe_differences)}.",
        )
    suite = compared.reports[0]["suites"][0]
    return Text.assemble(("✔ Same probe settings", "bold green"), f" ({suite}, same items): the figures can be compared")


def plan_line(compared: ComparedRuns) -> Text:
    first, second = compared.run_ids
    if not compared.plan_differences:
        return Text("Same plan.", style="dim")
    return Text(
        f"Their plans differ in: {', '.join(compared.plan_differences)} "
        f"(edge-audit runs compare {first} {second} shows each line).",
        style="dim",
    )


class RunsCompareScreen(Screen[None]):
    """Opened from History over it; esc goes back."""

    BINDINGS = [Binding("escape", "app.pop_screen", "Back")]

    def __init__(self, compared: ComparedRuns) -> None:
        super().__init__()
        self.compared = compared

    def compose(self) -> ComposeResult:
        compared = self.compared
        heading = Text("\n").join([run_line(report) for report in compared.reports])
        yield Static(heading, id="runs-compare-heading")
        yield Static(Text("\n").join([settings_line(compared), plan_line(compared)]), id="runs-compare-settings")
        yield DataTable(id="runs-compare-figures", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#runs-compare-figures", DataTable)
        columns = [(Text("variant / figure"), "figure"), *((Text(f"run {run_id}", style="bold"), str(run_id)) for run_id in self.compared.run_ids)]
        add_sized(table, columns, [(None, row) for row in figure_rows(self.compared.reports)])
        table.focus()

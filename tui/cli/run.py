"""`edge-audit run` and `edge-audit runs`: headless audits from a plan, and the results store."""

from __future__ import annotations

import argparse
import difflib
import shlex
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from audit import checks, jsonout
from audit.errors import Cancelled, UserError
from audit.plans import DEFAULT_PRESET, load_preset, named_plan, with_overrides
from audit.progress import Progress, clock, job_seconds_left, step_place
from audit.reports import write_report
from audit.reports.render import SUMMARY_COLUMNS, started as started_utc, summary_rows
from audit.results import build_report, run_listing
from audit.runner import RunOptions, run_plan
from audit.store import ResultsStore, default_store_path
from audit.verdict import run_verdict, variant_verdict
from tui.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run an audit plan: baseline and variants, probes, perplexity, profile, gate")
    run.add_argument("plan", nargs="?", help="a TOML plan file, or a shipped plan's name (edge-audit plans list)")
    run.add_argument("--default", action="store_true", help="run the shipped default plan")
    run.add_argument("--model", default=None, help="audit this model instead of the plan's")
    run.add_argument("--limit", type=common.count(1), default=None, help="at most N probe items per category instead of the plan's limit")
    run.add_argument("--suite", action="append", default=[], metavar="SPEC",
                     help="probe this suite instead of the plan's (builtin, bbq:PATH, ...); repeat for several")
    run.add_argument("--sequential", action="store_true",
                     help="each variant scores its probe items in a fixed random order and stops once its verdicts on them settle "
                          "(the baseline scores every item)")
    run.add_argument("--store", type=Path, default=None, help=f"results database (default {default_store_path()})")
    run.add_argument("--report", type=Path, default=None, help="folder for report.md/.html/.json (default: the run's folder)")
    run.add_argument("--resume", type=int, default=None, metavar="RUN_ID", help="continue a stopped run, skipping finished steps")
    run.add_argument("--workers", type=common.count(1), default=1, help="variants run in this many processes at once")
    run.add_argument("--ray", default=None, metavar="ADDRESS", help="run variants as Ray tasks on this cluster ('local' starts one)")
    run.add_argument("--work-dir", type=Path, default=None, help="where compressed variants are written")
    common.add_model_options(run, flag=False)
    common.add_json_option(run)
    run.set_defaults(func=cmd_run)

    runs = sub.add_parser("runs", help="list, show, compare and export stored runs")
    actions = runs.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every run in the store")
    show = actions.add_parser("show", help="one run's numbers and gate")
    show.add_argument("run_id", type=int)
    compare = actions.add_parser("compare", help="runs side by side, with the difference of their plans")
    compare.add_argument("run_ids", type=int, nargs="+")
    report = actions.add_parser("report", help="write a stored run's report")
    report.add_argument("run_id", type=int)
    report.add_argument("--out", type=Path, required=True, help="folder for report.md/.html/.json")
    for parser in (listing, show, compare, report):
        parser.add_argument("--store", type=Path, default=None, help=f"results database (default {default_store_path()})")
        common.add_json_option(parser)
    listing.set_defaults(func=cmd_list)
    show.set_defaults(func=cmd_show)
    compare.set_defaults(func=cmd_compare)
    report.set_defaults(func=cmd_report)


def _summary_table(title: str, report: dict[str, Any]) -> Table:
    table = Table(title=title)
    for _, header, _ in SUMMARY_COLUMNS:
        table.add_column(header, justify="right")
    for row in summary_rows(report):
        # Plain text: names and intervals are never read as console markup.
        table.add_row(*(Text(cell(row)) for _, _, cell in SUMMARY_COLUMNS))
    return table


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if args.plan or args.default or args.model or args.limit or args.suite or args.sequential:
            raise UserError("--resume continues a stored run as it was planned; give no plan, --model, --limit, --suite or --sequential with it")
        if args.work_dir is not None:
            # The run's variants are in the folder it started with, and go on there.
            raise UserError("--resume continues a stored run in its own work folder; give no --work-dir with it")
        plan = None
    elif args.default:
        if args.plan:
            raise UserError("give a plan file or --default, not both")
        plan = with_overrides(load_preset(DEFAULT_PRESET, check_model=not args.model), model=args.model, limit=args.limit, suites=args.suite,
                              sequential=args.sequential)
    elif args.plan:
        plan = with_overrides(named_plan(args.plan, check_model=not args.model), model=args.model, limit=args.limit, suites=args.suite,
                              sequential=args.sequential)
    else:
        raise UserError("give a plan file, a shipped plan's name (edge-audit plans list), --default, or --resume RUN_ID")
    if args.report is not None:
        checks.report_folder(args.report)
    if args.work_dir is not None:
        checks.output_folder(args.work_dir, "work folder", force=True)
    options = RunOptions(
        store=args.store, resume=args.resume, workers=args.workers, ray_address=args.ray,
        work_dir=args.work_dir, load=common.load_options(args),
    )
    started = time.perf_counter()
    run_id: list[int] = []

    def remember(job):
        """Pass the run's events through, noting its id for the resume hint and saying which
        step of how many each belongs to."""
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            if not run_id and "run_id" in event.data:
                run_id.append(event.data["run_id"])
            yield with_step(event)

    try:
        outcome = common.run_job(remember(run_plan(plan, options)), overall="run")
    except (KeyboardInterrupt, Cancelled):
        return _stopped(args, run_id[0] if run_id else args.resume, time.perf_counter() - started)
    except SystemExit as stop:
        if stop.code == TERMINATED_EXIT_CODE:  # SIGTERM (tui.cli's handler): stopped as by Ctrl-C
            _stopped(args, run_id[0] if run_id else args.resume, time.perf_counter() - started, exit_code=TERMINATED_EXIT_CODE)
        raise
    folder = args.report or Path(outcome.report["run"]["work_dir"]) / "report"
    files = write_report(folder, outcome.report)
    elapsed = time.perf_counter() - started
    gate = outcome.gate  # None: the plan has no gate, and nothing is said to pass it
    for failure in (gate or {}).get("failures", []):
        print(f"gate: {failure}", file=sys.stderr)
    data = {
        "run_id": outcome.run_id,
        "store": str(outcome.store),
        "status": outcome.status,
        "exit_code": outcome.exit_code,
        "seconds": round(elapsed, 1),
        "gate": gate,
        "report_files": files,
        "variants": summary_rows(outcome.report),
        **study_figures(outcome.report),
    }

    def human(d: dict[str, Any]) -> None:
        common.stdout.print(_summary_table(f"Run {d['run_id']} ({d['seconds']:.0f} s)", outcome.report))
        if d["gate"]:
            _print_gate(d["gate"], lines=False)
        common.stdout.print(f"Report: {d['report_files']['html']}")

    common.emit(args, data, human)
    return outcome.exit_code


STOPPED_EXIT_CODE = 130  # Ctrl-C
TERMINATED_EXIT_CODE = 128 + signal.SIGTERM


def resume_command(run_id: int, store: Path | None) -> str:
    """The command that resumes a run: with the store it is in unless that is the default one."""
    where = f" --store {shlex.quote(str(store))}" if store is not None else ""
    return f"edge-audit run --resume {run_id}{where}"


def _stopped(args: argparse.Namespace, run_id: int | None, seconds: float, *, exit_code: int = STOPPED_EXIT_CODE) -> int:
    """Say that a run was stopped and how to resume it: on stderr, and with --json as the one
    JSON object on stdout, so a script reads a stopped run as it reads a finished one."""
    resume = resume_command(run_id, args.store) if run_id is not None else None
    hint = f"; resume with: {resume}" if resume else ""
    print(f"edge-audit: run stopped, finished steps are kept{hint}", file=sys.stderr)
    if args.json:
        data = {
            "run_id": run_id,
            "store": str(args.store or default_store_path()),
            "status": "interrupted",
            "exit_code": exit_code,
            "seconds": round(seconds, 1),
            "resume": resume,
        }
        print(jsonout.dumps(data, default=str), flush=True)
    return exit_code


def with_step(event: Progress) -> Progress:
    """The event's message led by its step of the run and the run's eta ("step 3 of 8 · job
    eta 4:10 · baseline: 12/60 items"), as the app's job bar says them."""
    place = step_place(event)
    if place is None or place.count < 2:
        return event
    left = job_seconds_left(event, event.at)
    eta = "" if left is None else f" · job eta {clock(left)}"
    return replace(event, message=f"step {place.number} of {place.count}{eta} · {event.message}")


def study_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The sweep and the pruning-over-quantization ratio of a report, for --json."""
    return {key: report.get(key) for key in ("sweep", "transition_ratio_pruning_vs_quantization")}


GATE_STYLES = {"pass": "green", "fail": "red bold", "inconclusive": "yellow bold"}


def _print_gate(gate: dict[str, Any], *, lines: bool) -> None:
    """The verdict, each variant's in plain words, and (with `lines`) what blocks shipping."""
    verdict = gate.get("verdict") or ("pass" if gate.get("passed") else "fail")
    common.stdout.print(Text.assemble("Gate: ", (verdict.upper(), GATE_STYLES[verdict]), "  ", run_verdict(gate).line()))
    for name in gate.get("variants") or {}:
        said = variant_verdict(gate, name)
        common.stdout.print(Text.assemble(f"  {name}: ", (f"{said.icon} {said.label}", GATE_STYLES.get(said.state, "red bold"))))
    if lines:
        for line in gate.get("failures", []):
            common.stdout.print(f"  {line}")


def _open(args: argparse.Namespace) -> ResultsStore:
    return ResultsStore(args.store or default_store_path(), readonly=True)


def cmd_list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rows = run_listing(store)

    def human(d: dict[str, Any]) -> None:
        table = Table(title="Runs")
        for column in ("id", "name", "model", "status", "started", "variants", "verdict"):
            table.add_column(column)
        for r in d["runs"]:
            verdict = f"{r['verdict']['icon']} {r['verdict']['label']}"
            # In UTC, as the reports give it: the same time wherever the store is read.
            table.add_row(str(r["id"]), r["name"], r["model"], r["status"], started_utc(r), str(len(r["variants"])), verdict)
        common.stdout.print(table)

    common.emit(args, {"runs": rows}, human)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        report = build_report(store, args.run_id)
    data = {"run": report["run"], "gate": report["gate"], "variants": summary_rows(report), **study_figures(report)}

    def human(d: dict[str, Any]) -> None:
        run = d["run"]
        common.stdout.print(_summary_table(f"Run {run['id']}: {run['name']} ({run['status']})", report))
        if d["gate"]:
            _print_gate(d["gate"], lines=True)

    common.emit(args, data, human)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    with _open(args) as store:
        reports = [build_report(store, run_id) for run_id in args.run_ids]
    first = reports[0]["run"]["plan_text"].splitlines(keepends=True)
    diffs = {}
    for report in reports[1:]:
        other = report["run"]["plan_text"].splitlines(keepends=True)
        diffs[str(report["run"]["id"])] = "".join(
            difflib.unified_diff(first, other, f"run {reports[0]['run']['id']}", f"run {report['run']['id']}")
        )
    data = {
        "runs": [{"id": r["run"]["id"], "name": r["run"]["name"], "status": r["run"]["status"], "variants": summary_rows(r)} for r in reports],
        "plan_diffs": diffs,
        "differences": {str(r["run"]["id"]): run_differences(reports[0], r) for r in reports[1:]},
    }

    def human(d: dict[str, Any]) -> None:
        for report in reports:
            run = report["run"]
            common.stdout.print(_summary_table(f"Run {run['id']}: {run['name']} ({run['status']})", report))
        for run_id, diff in d["plan_diffs"].items():
            common.stdout.print(f"Plan of run {reports[0]['run']['id']} -> run {run_id}:")
            common.stdout.print(diff or "  (same plan)", highlight=False)
            differences = d["differences"][run_id]
            if differences:
                common.stdout.print("Not alike beyond the plan, so their figures differ for these reasons too:")
                for line in differences:
                    common.stdout.print(Text(f"  ! {line}", style="yellow"))

    common.emit(args, data, human)
    return 0


def run_differences(first: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """What two runs' reports differ in besides their plans, in plain words: the weights of the
    models of the same name (a model file changed at the same path), the software, the device,
    and a run that did not finish. Any of them makes a difference in figures no plan explains."""
    a, b = first["run"], other["run"]
    ids = f"run {a['id']}", f"run {b['id']}"
    lines = []
    theirs = {v["name"]: v.get("fingerprint") for v in other["variants"]}
    for variant in first["variants"]:
        name = variant["name"]
        if name not in theirs:
            continue
        mine, other_print = variant.get("fingerprint"), theirs[name]
        if mine and other_print and mine != other_print:
            lines.append(f"{name}: other weights (fingerprint {mine[:12]} in {ids[0]}, {other_print[:12]} in {ids[1]})")
        elif bool(mine) != bool(other_print):
            missing = ids[0] if not mine else ids[1]
            lines.append(f"{name}: no fingerprint in {missing}, so whether its weights are the same is not known")
    for part, facts in (("software", "software"), ("device", "device")):
        ours, yours = _flat(a.get(facts) or {}), _flat(b.get(facts) or {})
        for key in sorted(set(ours) | set(yours)):
            if ours.get(key) != yours.get(key):
                lines.append(f"{part}: {key} {_said(ours.get(key))} in {ids[0]}, {_said(yours.get(key))} in {ids[1]}")
    for run in (a, b):
        if run["status"] != "finished":
            lines.append(f"run {run['id']} is {run['status']}: not every figure of its plan is measured")
    return lines


def _flat(facts: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested facts as one level, their keys joined with dots."""
    flat: dict[str, Any] = {}
    for key, value in facts.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _said(value: Any) -> str:
    if value is None:
        return "not known"
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def cmd_report(args: argparse.Namespace) -> int:
    checks.report_folder(args.out)
    with _open(args) as store:
        report = build_report(store, args.run_id)
    files = write_report(args.out, report)
    common.emit(args, {"run_id": args.run_id, "report_files": files}, lambda d: common.stdout.print(f"Report: {d['report_files']['html']}"))
    return 0

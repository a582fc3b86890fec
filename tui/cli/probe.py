"""`edge-audit probe` and `edge-audit probe-compare`: bias probes on a model, and two runs compared item by item."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from audit import checks
from audit.errors import UserError
from audit.gate import evaluate_gate, finding_line
from audit.metrics import delta_direction
from audit.plans import MAX_NEW_TOKENS, Plan, load_plan
from audit.probes.compare import ITEM_FIGURES, ItemFilesSource, ProbeRecord, setting_differences
from audit.models import load_model
from audit.probes import (
    NORMS,
    SCORING_MODES,
    SUITES,
    ProbeSettings,
    compare_results,
    load_suite,
    read_items,
    run_probe,
    write_items,
)
from audit.probes.job import DEFAULT_BATCH_ITEMS
from audit.probes.scoring import GENERATE_MAX_NEW_TOKENS, GENERATE_SEEDS, GENERATE_TEMPERATURE, MAX_SEEDS, PARSERS, PROMPT_STYLES, SEED_RANGE
from audit.sequential import FUTILE_CHANCE, check_futility, suite_gate
from tui.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    probe = sub.add_parser("probe", help="run a bias probe suite on a model")
    common.add_model_options(probe)
    suites = ", ".join(f"{e.name}{':PATH' if e.meta['needs_path'] else ''}" for e in SUITES)
    probe.add_argument("--suite", default="builtin", help=f"probe suite: {suites} (default builtin)")
    probe.add_argument("--categories", default=None, help="comma-separated categories to keep (default all)")
    probe.add_argument("--limit", type=common.count(1), default=None, help="at most N items per category (a fixed sample)")
    probe.add_argument("--sample-seed", type=int, default=0, help="which fixed sample --limit takes (default 0)")
    probe.add_argument("--mode", choices=SCORING_MODES.names(), default="loglik", help="scoring mode (default loglik)")
    probe.add_argument("--norm", choices=NORMS.names(), default=None,
                       help="loglik: per-token mean or sum of option log-likelihood (default: mean; sum for crows)")
    probe.add_argument("--seeds", default=None,
                       help=f"generate: seed count N or a list like 0,1,2 (default {len(GENERATE_SEEDS)} seeds)")
    probe.add_argument("--temperature", type=common.finite(0), default=None,
                       help=f"generate: sampling temperature, 0 for greedy (default {GENERATE_TEMPERATURE})")
    probe.add_argument("--max-new-tokens", type=common.count(1, MAX_NEW_TOKENS), default=None,
                       help=f"generate: answer length in tokens, at most {MAX_NEW_TOKENS} (default {GENERATE_MAX_NEW_TOKENS})")
    probe.add_argument("--batch-items", type=common.count(1), default=None, help=f"loglik: items per scoring call (default {DEFAULT_BATCH_ITEMS})")
    probe.add_argument("--conditions", choices=("ambig", "disambig", "both"), default="both",
                       help="question suites: score ambiguous or disambiguated items only (default both)")
    probe.add_argument("--prompt", choices=PROMPT_STYLES.names(), default="default",
                       help="generate: edge-audit's prompt, or Rath & Maliakkal's (paper) (default default)")
    probe.add_argument("--parser", choices=PARSERS.names(), default="strict",
                       help="generate: a strict letter or option parser, or the study's lenient one (default strict)")
    probe.add_argument("--bbq-metadata", type=Path, default=None,
                       help="BBQ's supplemental/additional_metadata.csv: take target_loc from it")
    probe.add_argument("--items-out", type=Path, default=None, help="write per-item results to this .jsonl")
    probe.add_argument("--sequential", action="store_true",
                       help="score items in a fixed stratified random order and stop once every verdict of --gate is settled "
                            "(anytime-valid bounds, checked after every --sequential-batch items)")
    probe.add_argument("--gate", type=Path, default=None, metavar="PLAN.toml", help="--sequential: the plan whose gate decides when to stop")
    probe.add_argument("--baseline-items", type=Path, default=None, metavar="BASELINE.jsonl",
                       help="--sequential: the baseline's item results (scored in full) the model is compared with; "
                            "without it the model is judged as the baseline (the competence guard)")
    probe.add_argument("--sequential-batch", type=common.count(1), default=None,
                       help="--sequential: items scored between looks at the gate (default 20)")
    probe.add_argument("--order-seed", type=common.count(0), default=0, help="--sequential: which fixed order items are drawn in (default 0)")
    probe.add_argument("--futility", type=common.finite(0.0), default=None, metavar="CHANCE",
                       help="--sequential: stop waiting for a verdict once scoring every item would settle it with less than "
                            f"this chance; it stays inconclusive (default {FUTILE_CHANCE:g}; 0 waits for every item)")
    common.add_json_option(probe)
    probe.set_defaults(func=cmd_probe)

    compare = sub.add_parser("probe-compare", help="compare two probe runs (items .jsonl) item by item; --gate judges them")
    compare.add_argument("baseline", type=Path, help="items .jsonl of the baseline run")
    compare.add_argument("variant", type=Path, help="items .jsonl of the variant run")
    compare.add_argument("--gate", type=Path, default=None, metavar="PLAN.toml",
                         help="apply this plan's gate (its rules on probe figures, and the competence guard); "
                              "exit 1 when any check fails or is inconclusive")
    compare.add_argument("--noise", type=Path, default=None, metavar="BASELINE2.jsonl",
                         help="generate mode: the baseline scored again with other seeds, the floor transitions are read against")
    common.add_json_option(compare)
    compare.set_defaults(func=cmd_compare)


def parse_seeds(text: str | None) -> tuple[int, ...]:
    if text is None:
        return GENERATE_SEEDS
    try:
        if "," not in text:
            asked = int(text)
            if asked < 1:
                raise ValueError
            seeds = tuple(range(min(asked, MAX_SEEDS)))  # a count past the most is refused below
        else:
            seeds = tuple(int(s) for s in text.split(","))  # an empty entry is no integer
            asked = len(seeds)
    except ValueError:
        raise UserError(f"--seeds takes a count or a comma-separated list of integers, not {text!r}") from None
    if not seeds:
        raise UserError("--seeds lists no seed")
    if len(set(seeds)) < len(seeds):
        # A seed given twice repeats the same answer, which would count twice in an item's share.
        raise UserError(f"--seeds lists seed {next(s for s in seeds if seeds.count(s) > 1)} twice")
    if asked > MAX_SEEDS:
        raise UserError(f"--seeds takes at most {MAX_SEEDS} seeds (each is a whole generation of every item), not {asked}")
    outside = [s for s in seeds if s not in SEED_RANGE]
    if outside:
        raise UserError(f"--seeds: a seed must be a 64-bit integer, not {outside[0]}")
    return seeds


class _InterruptToCancel:
    """The first Ctrl-C asks the job to stop after its batch (keeping what was scored); a second one aborts."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: Any = None

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self.event

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()
        print("edge-audit: stopping after this batch (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _refuse_other_modes_options(args: argparse.Namespace) -> None:
    """An option of the other scoring mode would be dropped without a word: refused instead."""
    generate = {"--seeds": args.seeds, "--temperature": args.temperature, "--max-new-tokens": args.max_new_tokens}
    given = [name for name, value in generate.items() if value is not None]
    if args.mode != "generate" and given:
        raise UserError(f"{', '.join(given)} apply to --mode generate: log-likelihood scoring samples nothing")
    loglik = [name for name, value in {"--norm": args.norm, "--batch-items": args.batch_items}.items() if value is not None]
    if args.mode == "generate" and loglik:
        raise UserError(f"{', '.join(loglik)} apply to --mode loglik: generate mode reads answers, not option likelihoods")


def cmd_probe(args: argparse.Namespace) -> int:
    # Every input and output is checked before the model loads or an item is scored.
    if args.items_out is not None:
        checks.output_file(args.items_out, "item results file")
    sequential = _sequential_inputs(args)
    _refuse_other_modes_options(args)
    settings = ProbeSettings(
        mode=args.mode,
        norm=args.norm,
        seeds=parse_seeds(args.seeds),
        temperature=GENERATE_TEMPERATURE if args.temperature is None else args.temperature,
        max_new_tokens=GENERATE_MAX_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens,
        batch_items=DEFAULT_BATCH_ITEMS if args.batch_items is None else args.batch_items,
        prompt=args.prompt,
        parser=args.parser,
    )
    categories = None
    if args.categories is not None:
        categories = [c.strip() for c in args.categories.split(",") if c.strip()]
        if not categories:
            raise UserError(f"--categories names no category: {args.categories!r}")
    suite = load_suite(
        args.suite, categories=categories, limit=args.limit, sample_seed=args.sample_seed, bbq_metadata=args.bbq_metadata,
        conditions=[args.conditions],
    )
    for line in suite.skipped[:20]:
        print(f"edge-audit: skipped {line}", file=sys.stderr)
    if len(suite.skipped) > 20:
        print(f"edge-audit: ... and {len(suite.skipped) - 20} more skipped lines", file=sys.stderr)
    model = common.run_job(load_model(args.model, common.load_options(args)))
    facts = model.facts()
    model_info = {"name": facts.name, "path": facts.path, "backend": facts.backend, "weight_sparsity": facts.weight_sparsity}
    if sequential is not None:
        return _probe_sequentially(args, model, suite, settings, model_info, *sequential)
    with _InterruptToCancel() as cancel:
        run = common.run_job(run_probe(model, suite, settings, cancel, model_info=model_info))
    data = run.to_dict()
    unwritten = _write_items_out(args, run.header(), run.results, data)
    _add_threads(data, model)
    common.emit(args, data, _show_run)
    if not run.complete:
        print(f"edge-audit: cancelled after {len(run.results)} of {len(suite.items)} items; the results cover those", file=sys.stderr)
    if unwritten is not None:
        return common.error(str(unwritten))  # after the figures: the scoring is not lost
    return 0 if run.complete else 130


def _write_items_out(args: argparse.Namespace, header: dict[str, Any], results: Any, data: dict[str, Any]) -> UserError | None:
    """Write --items-out (atomically: a file that cannot be finished is not left, and one
    already there is kept), naming it in `data`; the error when it cannot be written. The write
    comes after every item is scored and can still fail (the disk filled meanwhile): the caller
    then shows the figures before it fails, so the scoring is not lost with the file."""
    if args.items_out is None:
        return None
    try:
        write_items(args.items_out, header, results)
    except UserError as exc:
        return exc
    data["items_out"] = str(args.items_out)
    return None


def _add_threads(data: dict[str, Any], model: Any) -> None:
    """The threads (and scoring workers) the probe's model ran on, under `threads` of its JSON."""
    if model.threads is not None:
        data["threads"] = model.threads.to_dict()


def _sequential_inputs(args: argparse.Namespace) -> tuple[Any, ProbeRecord | None] | None:
    """(the gate, the baseline's items) of `probe --sequential`, read before the model loads."""
    given = [name for name, value in (("--gate", args.gate), ("--baseline-items", args.baseline_items),
                                      ("--sequential-batch", args.sequential_batch), ("--futility", args.futility)) if value is not None]
    if not args.sequential:
        if given:
            raise UserError(f"{given[0]} applies to --sequential")
        return None
    if args.gate is None:
        raise UserError("--sequential needs --gate PLAN.toml: its gate decides when the verdicts are settled")
    if args.futility is not None:
        check_futility(args.futility)
    plan = _gate_plan(args.gate)
    base = _read_run(args.baseline_items)[0] if args.baseline_items is not None else None
    return suite_gate(plan.gate, args.suite, args.suite), base


def _probe_sequentially(args: argparse.Namespace, model: Any, suite: Any, settings: ProbeSettings, model_info: dict[str, Any],
                        gate: Any, base: ProbeRecord | None) -> int:
    from audit.gate import BASELINE
    from audit.reports.render import sequential_outcome, sequential_rows
    from audit.sequential import DEFAULT_BATCH_ITEMS as LOOK_ITEMS, probe_sequentially

    variant = ItemFilesSource.VARIANT if base is not None else BASELINE
    if base is not None:
        differences = setting_differences(base.settings, {"suite": suite.name, "suite_spec": suite.spec, **settings.to_dict(settings.norm or suite.default_norm)},
                                          ignore=("batch_items",))
        missing = len({item.item_id for item in suite.items} - base.ids)
        if missing:
            differences.append(f"{missing} of this probe's items are not in it")
        if differences:
            raise UserError(f"{args.baseline_items} was not scored like this probe: {'; '.join(differences)}")
    with _InterruptToCancel() as cancel:
        run = common.run_job(probe_sequentially(
            model, suite, gate, settings, variant=variant, baseline=base.results if base else None, seed=args.order_seed,
            batch_items=args.sequential_batch or LOOK_ITEMS, futility=FUTILE_CHANCE if args.futility is None else args.futility, cancel=cancel,
        ))
    data = run.to_dict()
    header = {"suite": suite.name, "suite_spec": suite.spec, "summary": suite.summary, "model": model_info, "complete": not run.cancelled,
              "n_items_planned": len(suite.items), **settings.to_dict(settings.norm or suite.default_norm),
              "sequential": {"order_seed": run.seed, "batch_items": run.batch_items, "futility": run.futility, "stopped": data["stopped"],
                             "narrowed_at": run.narrowed_at}}
    unwritten = _write_items_out(args, header, run.results, data)
    _add_threads(data, model)

    def show(d: dict[str, Any]) -> None:
        common.stdout.print(f"Sequential probe of {d['variant']}: {sequential_outcome(d)}")
        _show_gate(d["gate"])
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for title in ("variant", "check", "verdict", "items used", "share"):
            table.add_column(title, justify="right" if title in ("items used", "share") else "left")
        for row in sequential_rows([d]):
            table.add_row(*row)
        common.stdout.print(table)

    common.emit(args, data, show)
    if unwritten is not None:
        return common.error(str(unwritten))  # after the figures: the scoring is not lost
    if run.cancelled:
        return 130
    return 0 if run.gate.passed else 1


def _short(x: float, digits: int) -> str:
    text = f"{x:.{digits}f}"
    return text.replace("0.", ".", 1) if abs(x) < 1 else text


def _fmt(estimate: dict[str, Any] | None) -> str:
    """Value over its 95% interval, compact so a narrow terminal keeps the columns readable."""
    if not estimate or estimate.get("value") is None:
        return "-"
    value = estimate["value"]
    digits = 1 if abs(value) >= 10 else 3
    low, high = estimate.get("ci95") or [None, None]
    if low is None or high is None:
        return f"{value:.{digits}f}"
    ci_digits = 1 if digits == 1 else 2
    return f"{value:.{digits}f}\n{_short(low, ci_digits)}–{_short(high, ci_digits)}"


def _inline(estimate: dict[str, Any] | None) -> str:
    """Value and its 95% interval on one line: "0.120 [.05–.21]"."""
    value, *interval = _fmt(estimate).splitlines()
    return f"{value} [{interval[0]}]" if interval else value


QA_COLUMNS = {"accuracy_ambig": "acc amb", "accuracy_disambig": "acc dis", "bias_score_ambig": "s_AMB",
              "bias_score_disambig": "s_DIS", "srs": "SRS", "usr": "USR"}
CROWS_COLUMNS = {"pct_stereotype": "% stereo", "pct_stereotype_stereo": "% (stereo pairs)",
                 "pct_stereotype_antistereo": "% (antistereo pairs)", "mean_logprob_diff": "mean LL diff"}
STEREOSET_COLUMNS = {"ss": "SS", "lms": "LMS", "icat": "ICAT"}


def _show_run(d: dict[str, Any]) -> None:
    columns = dict({"qa": QA_COLUMNS, "crows": CROWS_COLUMNS, "stereoset": STEREOSET_COLUMNS}[d["summary"]])
    if d["mode"] == "generate":
        columns["parse_failure_rate"] = "parse fail"
    how = d["mode"] + (f", {d['norm']} log-likelihood" if d.get("norm") else f", T={d.get('temperature')}, seeds {d.get('seeds')}")
    table = Table(title=f"{d['suite_spec']} on {d['model'].get('name', '?')} ({how})", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("category", overflow="fold")
    table.add_column("n", justify="right")
    for title in columns.values():
        table.add_column(title, justify="right")
    metrics = d["metrics"]
    rows = list(metrics["categories"].items()) + [("overall", metrics["overall"])]
    if metrics.get("category_mean"):
        rows.append(("mean of categories", metrics["category_mean"]))
    for name, group in rows:
        table.add_row(name, str(group["n_items"]), *(_fmt(group.get(c)) for c in columns), style="bold" if name == "overall" else None)
    common.stdout.print(table)
    rate = d["items_per_s"]
    common.stdout.print(
        f"{d['n_items']} items in {d['elapsed_s']:.1f} s ({rate or 0:.2f} items/s). Under each value its 95% interval, "
        "with items as the sample (seeds nested in items). Overall: items pooled; mean of categories: each category weighs the same."
    )
    by_parser = d.get("parse_failure_rate_by_parser") or {}
    if by_parser:
        rates = ", ".join(f"{name} {_inline(est)}" for name, est in by_parser.items())
        common.stdout.print(f"Prompt {d.get('prompt')}, answers read by the {d.get('parser')} parser. Parse failures by parser: {rates}.")
    suite_info = d.get("suite_info") or {}
    for name, stats in suite_info.get("target_by_file", {}).items():
        common.stdout.print(
            f"{name}: bias-aligned answer found for {stats['target_found']}/{stats['items']} items "
            f"({100 * (stats['target_found_share'] or 0):.2f}%)"
        )
        if suite_info.get("metadata"):
            share = stats.get("metadata_agreement_share")
            common.stdout.print(
                f"{name}: metadata and derived bias-aligned answers agree on {stats['metadata_agrees_with_derived']:,} "
                f"of {stats['metadata_and_derived']:,} items" + ("" if share is None else f" ({100 * share:.2f}%)")
            )
            if stats.get("metadata_unused"):
                unused = stats["metadata_unused"]
                common.stdout.print(Text(
                    f"{name}: the metadata's target_loc names no option that can be bias-aligned (outside 0-2, or the "
                    f"unknown option) for {unused:,} item{'s' if unused != 1 else ''}, left to the derived answer", style="yellow"))
    if d["skipped_lines"]:
        common.stdout.print(Text(f"{d['skipped_lines']} malformed lines skipped", style="yellow"))
    if d.get("items_out"):
        common.stdout.print(f"item results: {d['items_out']}")


def _read_run(path: Path) -> tuple[ProbeRecord, list[str]]:
    header, results, skipped = read_items(path)
    return ProbeRecord(header, results), skipped


def _stopped_early(path: Path, record: ProbeRecord) -> str:
    """"; PATH holds the 120 of 480 items a sequential probe scored before it stopped ..." for an
    items file of a sequential probe that stopped before its last item, else ""."""
    sequential = record.settings.get("sequential")
    planned = record.settings.get("n_items_planned")
    if not isinstance(sequential, dict) or not isinstance(planned, int) or len(record.results) >= planned:
        return ""
    return (f"; {path} holds the {len(record.results):,} of {planned:,} items a sequential probe scored before it stopped: "
            "its verdicts, with bounds that hold wherever it stops, are in that probe's output")


def cmd_compare(args: argparse.Namespace) -> int:
    plan = _gate_plan(args.gate) if args.gate is not None else None
    base, base_skipped = _read_run(args.baseline)
    var, var_skipped = _read_run(args.variant)
    noise = None
    skipped = base_skipped + var_skipped
    if args.noise is not None:
        noise, noise_skipped = _read_run(args.noise)
        skipped += noise_skipped
        differences = setting_differences(base.settings, noise.settings, base.ids, noise.ids, ignore=("seeds",))
        if differences:
            raise UserError(f"{args.noise} is not the baseline scored again with other seeds: {'; '.join(differences)}")
    for line in skipped:
        print(f"edge-audit: skipped {line}", file=sys.stderr)
    result = compare_results(
        base.results, var.results, baseline_settings=base.settings, variant_settings=var.settings,
        noise=noise.results if noise else None,
    )
    if not result["comparable"]:
        raise UserError(f"{args.baseline} and {args.variant} are not comparable: {'; '.join(result['not_comparable'])}"
                        + _stopped_early(args.baseline, base) + _stopped_early(args.variant, var))
    if result["n_shared"] == 0:
        raise UserError(f"{args.baseline} and {args.variant} share no items")
    data = {
        "baseline": {"path": str(args.baseline), **base.settings},
        "variant": {"path": str(args.variant), **var.settings},
        "noise": None if noise is None else {"path": str(args.noise), **noise.settings},
        "skipped_lines": len(skipped),
        **result,
    }
    exit_code = 0
    if plan is not None:
        data["gate"] = _gate_items(plan, base, var, noise)
        exit_code = 0 if data["gate"]["passed"] else 1
    common.emit(args, data, _show_compare)
    return exit_code


def _gate_plan(path: Path) -> Plan:
    plan = load_plan(path, check_model=False, gate_file=True)
    if not plan.gate.active:
        raise UserError(f"{path} has no gate: no rules, and the competence guard is off")
    return plan


def _gate_items(plan: Plan, base: ProbeRecord, var: ProbeRecord, noise: ProbeRecord | None) -> dict[str, Any]:
    """The plan's gate on two item files: the rules on probe figures of the files' suite and
    the competence guard; rules on anything else (perplexity) are listed as skipped."""
    suite = {base.settings.get("suite"), base.settings.get("suite_spec")} - {None}
    applied, skipped = [], []
    for rule in plan.gate.rules:
        if rule.metric not in ITEM_FIGURES:
            skipped.append(f"{rule.describe()}: not measured from item files (needs a stored run)")
        elif rule.suite is not None and rule.suite not in suite and rule.suite.partition(":")[0] != base.settings.get("suite"):
            skipped.append(f"{rule.describe()}: for suite {rule.suite}, these files hold {base.settings.get('suite_spec') or '?'}")
        else:
            applied.append(replace(rule, suite=None))
    settings = replace(plan.gate, rules=tuple(applied))
    report = evaluate_gate(settings, [ItemFilesSource.VARIANT], ItemFilesSource(base, var, noise))
    return {**report.to_dict(), "skipped": skipped}


def _coloured(metric: str, before: float | None, after: float | None, text: str) -> Text:
    if before is None or after is None:
        return Text(text)
    return Text(text, style={"better": "green", "worse": "red", "same": "white"}[delta_direction(metric, before, after)])


def _interval(estimate: dict[str, Any] | None, digits: int = 2, suffix: str = "") -> str:
    """"value [low, high]" of an estimate dict, compact."""
    if not estimate or estimate.get("value") is None:
        return "-"
    low, high = estimate.get("ci95") or [None, None]
    def f(x: Any) -> str:
        return "inf" if x is None else f"{x:.{digits}f}"
    return f"{estimate['value']:.{digits}f}{suffix} [{f(low)}, {f(high)}]"


def _show_compare(d: dict[str, Any]) -> None:
    common.stdout.print(
        f"{d['n_shared']} items paired (baseline {d['n_baseline']}, variant {d['n_variant']}); same settings: "
        f"{d['variant'].get('mode')}, {d['variant'].get('prompt') or 'prompt not recorded'}"
    )
    for scope, section in d["scopes"].items():
        share = section["metric"]
        table = Table(title=f"{scope} items, baseline -> variant ({share})", box=box.SIMPLE_HEAD, pad_edge=False)
        noise = "transition_rate_over_noise" in section["overall"]
        columns = ["category", "n", "+BA", "-BA", "→ biased", "→ unbiased", "base", "variant", "Δ %"]
        if noise:
            columns.insert(6, "over noise")
        for column in columns:
            table.add_column(column, justify="left" if column == "category" else "right",
                             no_wrap=column != "category", max_width=14 if column == "category" else None)
        rows = list(section["categories"].items()) + [("overall", section["overall"]), ("mean of categories", section["category_mean"])]
        for name, s in rows:
            t = s["transitions"]
            before, after = s["aligned_share_baseline"].get("value"), s["aligned_share_variant"].get("value")
            cells = [
                name,
                str(s["n_shared"]),
                "" if name == "mean of categories" else str(t["unbiased_to_aligned"]),
                "" if name == "mean of categories" else str(t["aligned_to_unbiased"]),
                _interval(s["transition_rate"]),
                _interval(s["reverse_transition_rate"]),
                "-" if before is None else f"{before:.2f}",
                _coloured("srs", before, after, "-" if after is None else f"{after:.2f}"),
                _coloured("srs", before, after, _interval(s["relative_change_pct"], 0)),
            ]
            if noise:
                cells.insert(6, _interval(s["transition_rate_over_noise"]))
            table.add_row(*cells, style="bold" if name == "overall" else None)
        common.stdout.print(table)
    common.stdout.print(
        "+BA / -BA: items that became / stopped being bias-aligned; → biased: +BA / items not bias-aligned in the "
        f"baseline; → unbiased: -BA / items that were. Values with {d['intervals']}."
    )
    gate = d.get("gate")
    if gate is not None:
        _show_gate(gate)


def _show_gate(gate: dict[str, Any]) -> None:
    colour = {"pass": "green", "fail": "red bold", "inconclusive": "yellow bold"}[gate["verdict"]]
    plain = "; ".join(f"{name}: {v['plain']}" for name, v in gate["variants"].items())
    common.stdout.print(Text.assemble("Gate: ", (gate["verdict"].upper(), colour), f" ({plain}), bounds at {gate['confidence']:g}"))
    for finding in gate["findings"]:
        common.stdout.print(Text("  " + finding_line(finding), style={"pass": "green", "fail": "red", "inconclusive": "yellow"}[finding["verdict"]]))
    for line in gate.get("skipped") or []:
        common.stdout.print(Text(f"  skipped {line}", style="dim"))

"""Sequential probing against full probing: the default audit's verdicts, the items each used, and a simulation of wrong verdicts.

Compresses the default plan's variants of the default model (kept in --work-dir, so a second
run reuses them while their recipe, calibration and compression code are unchanged), scores
the baseline's probe suite in full, then for every variant scores the suite in full and
sequentially (alternating which goes first, so load from other processes hits both alike),
and judges both with the default plan's gate (its perplexity rule left out:
perplexity is not an item probe and is measured as before). Prints each verdict in both, the
items each sequential verdict used, the share of the items on average, whether the verdicts are
the same, the wall time of each and their ratio, and how the items both scored moved with the
batches (choices that differ, the largest log-likelihood difference); then the wrong-verdict
rate of the sequential gate over >= 1,000 simulated runs per true value against the nominal
level.

Then, since which items come first decides when a verdict settles, the same full-probe items
are replayed through the sequential gate in the orders of --replay-seeds other seeds (no new
scoring: a float variant's log-likelihoods moved by at most 4.3e-5 nats between the suite's
order and the drawn one, and none of its choices; an int8 variant rounds its
activations, so 27 of int8-dynamic's 480 choices and 11 of onnx-int8's differ from a sequential
probe's), printing the share of items per verdict and the verdicts the same as the full probe's
for each order, and their mean;
and, over those orders and the probed one, the same at other futility thresholds, with the
competent variants each stopped as too degraded to judge: the trade the default makes; the
same without drawing from the categories with open verdicts only (the ratio of items); and the
futility stop's predicted chance of settling a verdict against the share that settled when
waited for. The full probes' items are written to WORK_DIR/items; --replay-only replays them
with no model.

    python benchmarks/sequential.py [--work-dir DIR] [--variants a,b] [--batch-items 20] [--runs 1000]
        [--replay-seeds 8] [--replay-only] [--through-run] [--json]

With --through-run it then runs the same probes as a plan run (`[probes] sequential = true`, the
variants given as the folders in WORK_DIR) and prints how many of its gate's verdicts, and the
items each used, are the same as the sequential probes': the run's gate replays each variant's
judge from what the run stored.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.threads import prepare_wait_environment  # noqa: E402

prepare_wait_environment()  # how the command line's threads wait, set before the inference libraries load

from audit.gate import FAIL, PASS, evaluate_gate  # noqa: E402
from audit.models import LoadOptions, load_model  # noqa: E402
from audit.plans import default_plan  # noqa: E402
from audit.probes import ProbeSettings, load_suite, run_probe  # noqa: E402
from audit.probes.compare import ItemFilesSource, ProbeRecord  # noqa: E402
from audit.probes.items import read_items, write_items  # noqa: E402
from audit.progress import drive  # noqa: E402
from audit.run.execute import compress_variant  # noqa: E402
from audit.sequential import (  # noqa: E402
    FUTILE_CHANCE, GUARD_FUTILE_CHANCE, finding_key, probe_sequentially, replay_judge, simulate_competence,
    simulate_wrong_verdicts, stratified_order,
)

VARIANT = ItemFilesSource.VARIANT


def _key(f) -> tuple:
    return (f.variant, f.check, f.metric, f.category)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/edge-audit-sequential-bench"))
    parser.add_argument("--variants", default=None, help="comma-separated variant names (default: all of the default plan)")
    parser.add_argument("--batch-items", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=1000, help="simulated runs per true value")
    parser.add_argument("--replay-seeds", type=int, default=8, help="other drawn orders to replay the full probes' items in")
    parser.add_argument("--skip-models", action="store_true", help="only the simulation")
    parser.add_argument("--replay-only", action="store_true",
                        help="no model: replay the full probes' items an earlier run wrote to WORK_DIR/items, then the simulation")
    parser.add_argument("--through-run", action="store_true",
                        help="then run the same probes as a plan run with [probes] sequential = true and compare its gate's verdicts and items used")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    plan = default_plan()
    gate = replace(plan.gate, rules=tuple(r for r in plan.gate.rules if not r.metric.startswith("perplexity")))
    out: dict = {"plan": plan.name, "model": plan.model, "batch_items": args.batch_items, "variants": {}}
    if args.replay_only:
        _replay_written(args, plan, gate, out)
    elif not args.skip_models:
        _models(args, plan, gate, out)
    # As in the default suite: a figure covers the 240 items of one condition, its stakes sized
    # for the scope's 480.
    sim = simulate_wrong_verdicts([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4], 0.2, n_items=240, runs=args.runs,
                                  confidence=gate.confidence, batch_items=args.batch_items, seed=args.seed, horizon=480)
    out["simulation"] = sim
    # The competence guard: a model clearly above chance must not be stopped as too degraded.
    guard = simulate_competence([0.3, 0.36, 0.4, 0.45, 0.5], 1 / 3, n_items=240, runs=args.runs,
                                confidence=gate.confidence, batch_items=args.batch_items, seed=args.seed, horizon=480)
    out["competence_simulation"] = guard
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"\nSimulation: {sim['runs']} runs per true share, {sim['n_items']} items of 0/1 (stakes sized for {sim['horizon']}), limit {sim['limit']:g}, "
          f"looks every {args.batch_items} items, nominal wrong-verdict level {sim['nominal']:.3g}")
    print(f"{'true':>6} {'wrong':>7} {'pass':>6} {'fail':>6} {'open':>6} {'items':>6} {'same as full':>13}")
    for mean, row in sim["means"].items():
        print(f"{mean:>6} {row['wrong_rate']:>7.3f} {row['pass_rate']:>6.3f} {row['fail_rate']:>6.3f} "
              f"{row['inconclusive_rate']:>6.3f} {row['items_fraction']:>6.2f} {row['same_as_full_rate']:>13.3f}")
    print(f"worst wrong-verdict rate {sim['worst_wrong_rate']:.3f} vs nominal {sim['nominal']:.3f}: "
          f"{'within' if sim['worst_wrong_rate'] <= sim['nominal'] else 'OVER'}")
    print(f"\nCompetence guard: {guard['runs']} runs per true accuracy, {guard['n_items']} disambiguated items, chance "
          f"{guard['chance']:.3g}; shown above chance sequentially (stopped as too degraded once scoring every item would "
          f"show it with < {min(FUTILE_CHANCE, GUARD_FUTILE_CHANCE):g} chance), without that stop, and by the full probe")
    print(f"{'true':>6} {'shown':>7} {'no stop':>8} {'full':>6} {'items':>6}")
    for mean, row in guard["means"].items():
        print(f"{mean:>6} {row['shown_rate']:>7.3f} {row['shown_without_futility_rate']:>8.3f} {row['shown_by_full_rate']:>6.3f} "
              f"{row['items_fraction']:>6.2f}")
    return 0


def _build_key(plan, name: str) -> str:
    """What a variant in the work dir was built from: the model, its recipe, the calibration
    settings and text, and the source of the code that loads and compresses models. A folder
    built from anything else is built again, so a change to how a scheme compresses is never
    measured on a stale variant."""
    root = Path(__file__).resolve().parents[1] / "audit"
    digest = hashlib.sha256(json.dumps([plan.model, asdict(plan.variant(name)), asdict(plan.calibration)],
                                       sort_keys=True, default=str).encode())
    for path in sorted([*(root / "compress").rglob("*.py"), *(root / "models").rglob("*.py"), root / "data" / "calibration_en.txt"]):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _against_full(findings, full_by, total):
    """Each sequential finding with the full probe's (None when it has none), the items it used
    (all `total` when it never settled) and whether the two verdicts are the same."""
    for f in findings:
        whole = full_by.get(_key(f))
        yield f, whole, f.items_used if f.items_used is not None else total, whole is not None and whole.verdict == f.verdict


def _batching(full, drawn) -> dict:
    """How the items both probes scored moved with the batches they were scored in: choices that
    differ, and the largest difference in an option's log-likelihood."""
    by_id = {r.item_id: r for r in full}
    pairs = [(by_id[r.item_id], r) for r in drawn if r.item_id in by_id]
    return {
        "items": len(pairs),
        "choices_differ": sum(a.chosen != b.chosen for a, b in pairs),
        "max_abs_loglik_diff": max((abs(x - y) for a, b in pairs for x, y in zip(a.option_logprobs, b.option_logprobs)), default=0.0),
    }


def _models(args, plan, gate, out) -> None:
    options = LoadOptions()
    suite = load_suite("builtin", **plan.probes.suite_options())
    settings = ProbeSettings(mode=plan.probes.mode)
    names = [v.name for v in plan.variants]
    if args.variants:
        names = [n for n in names if n in args.variants.split(",")]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(f"default plan: {plan.model}, {len(suite.items)} items of {suite.name}, variants {', '.join(names)}", flush=True)
    base_model = drive(load_model(plan.model, options))
    started = time.perf_counter()
    base = drive(run_probe(base_model, suite, settings))
    base_s = time.perf_counter() - started
    base_model.close()
    base_record = ProbeRecord(base.header(), base.results)
    write_items(args.work_dir / "items" / "baseline.jsonl", base.header(), base.results)
    print(f"baseline scored in full: {len(base.results)} items in {base_s:.1f} s", flush=True)
    used_fractions, own_fractions, same_all, full_s_all, seq_s_all, scored, ahead = [], [], [], 0.0, 0.0, 0, 0
    fulls: dict = {}  # per variant: its full probe's items and verdicts, for the replays
    probed: dict = {}  # per variant: its sequential probe's verdicts and items used, for --through-run
    for index, name in enumerate(names):
        folder = args.work_dir / name
        done = args.work_dir / f"{name}.compressed"
        built_by = _build_key(plan, name)
        if not done.exists() or done.read_text().strip() != built_by:
            started = time.perf_counter()
            done.unlink(missing_ok=True)
            drive(compress_variant(plan, plan.variant(name), folder, options, None))
            done.write_text(built_by + "\n")
            print(f"{name}: compressed in {time.perf_counter() - started:.0f} s", flush=True)
        else:
            print(f"{name}: reusing {folder} (same recipe, calibration and compression code)", flush=True)
        model = drive(load_model(str(folder), options))
        timings = {}

        def full_run():
            t = time.perf_counter()
            run = drive(run_probe(model, suite, settings))
            timings["full"] = time.perf_counter() - t
            return run

        def sequential_run():
            t = time.perf_counter()
            run = drive(probe_sequentially(model, suite, gate, settings, variant=VARIANT, baseline=base.results,
                                           seed=args.seed, batch_items=args.batch_items))
            timings["sequential"] = time.perf_counter() - t
            return run

        if index % 2 == 0:
            full, seq = full_run(), sequential_run()
        else:
            seq, full = sequential_run(), full_run()
        model.close()
        write_items(args.work_dir / "items" / f"{name}.jsonl", full.header(), full.results)
        full_report = evaluate_gate(gate, [VARIANT], ItemFilesSource(base_record, ProbeRecord(full.header(), full.results)))
        full_by = {_key(f): f for f in full_report.findings}
        fulls[name] = (full.results, full_by)
        rows = []
        for f, whole, used, same in _against_full(seq.gate.findings, full_by, seq.items_total):
            used_fractions.append(used / seq.items_total)
            if f.variant == VARIANT:
                own_fractions.append(used / seq.items_total)
            same_all.append(same)
            rows.append({"who": f.variant, "check": f.check, "metric": f.metric, "category": f.category, "full": whole.verdict if whole else None,
                         "sequential": f.verdict, "items_used": used, "items_total": seq.items_total, "same": same})
        probed[name] = {_key(replace(f, variant=name)): (f.verdict, f.items_used) for f in seq.gate.findings if f.variant == VARIANT}
        moved = _batching(full.results, seq.results)
        full_s_all += timings["full"]
        seq_s_all += timings["sequential"]
        scored += seq.items_scored
        ahead += seq.scored_ahead
        out["variants"][name] = {"items_scored": seq.items_scored, "scored_ahead_unused": seq.scored_ahead,
                                 "items_total": seq.items_total, "stopped": seq.to_dict()["stopped"],
                                 "full_s": round(timings["full"], 2), "sequential_s": round(timings["sequential"], 2), "verdicts": rows,
                                 "batching": moved}
        if not args.json:
            print(f"\n{name}: sequential scored {seq.items_scored}/{seq.items_total} items ({seq.to_dict()['stopped']}; "
                  f"{seq.scored_ahead} more scored ahead with their context and never reached); "
                  f"full {timings['full']:.1f} s, sequential {timings['sequential']:.1f} s, ratio {timings['sequential'] / timings['full']:.2f}")
            print(f"  scored in both: {moved['items']} items, {moved['choices_differ']} choices differ, "
                  f"log-likelihoods {moved['max_abs_loglik_diff']:.2g} nats apart at most (drawn batches against the suite's)")
            print(f"  {'check':<40} {'full':<13} {'sequential':<13} {'items':>9} same")
            for r in rows:
                where = "" if r["category"] == "overall" else f" [{r['category']}]"
                print(f"  {r['who'][:8] + ' ' + r['metric'] + where:<40} {str(r['full']):<13} {r['sequential']:<13} "
                      f"{r['items_used']:>4}/{r['items_total']:<4} {'yes' if r['same'] else 'NO'}", flush=True)
    total_full = len(base.results) * (len(names) + 1)
    summary = {
        "verdicts": len(same_all),
        "same_verdicts": sum(same_all),
        "mean_items_fraction_per_verdict": sum(used_fractions) / len(used_fractions) if used_fractions else None,
        "variant_verdicts_items_fraction": sum(own_fractions) / len(own_fractions) if own_fractions else None,
        "variant_items_fraction": scored / (len(base.results) * len(names)) if names else None,
        "variant_items_computed_fraction": (scored + ahead) / (len(base.results) * len(names)) if names else None,
        "all_items_fraction_with_baseline_in_full": (len(base.results) + scored) / total_full,
        "full_s": round(full_s_all, 2),
        "sequential_s": round(seq_s_all, 2),
        "time_ratio": round(seq_s_all / full_s_all, 3) if full_s_all else None,
    }
    out["summary"] = summary
    if not args.json:
        print(f"\nverdicts: {summary['same_verdicts']}/{summary['verdicts']} the same in sequential and full probing")
        print(f"items per verdict, on average: {100 * summary['mean_items_fraction_per_verdict']:.1f}% of the full probe's (target <= 40%); "
              f"the variants' own verdicts (the baseline's is read from its probe of every item): "
              f"{100 * summary['variant_verdicts_items_fraction']:.1f}%")
        print(f"items the variants scored: {100 * summary['variant_items_fraction']:.1f}%; with the baseline scored in full: "
              f"{100 * summary['all_items_fraction_with_baseline_in_full']:.1f}%; with the items scored ahead of their turn "
              f"and never reached: {100 * summary['variant_items_computed_fraction']:.1f}%")
        print(f"variants' probe time: full {summary['full_s']:.1f} s, sequential {summary['sequential_s']:.1f} s, ratio {summary['time_ratio']:.2f}")
    if args.through_run:
        _through_run(args, plan, gate, names, probed, seq_s_all, out)
    _replays(args, suite, gate, base.results, fulls, out)


def _through_run(args, plan, gate, names, probed, seq_s, out) -> None:
    """The same probes in a plan run (`[probes] sequential = true`, the variants given as the
    folders above, no perplexity or profile): its gate, which replays each variant's judge from
    the stored items and looks, against the sequential probes' verdicts and items used."""
    import shutil

    from audit.plans import VariantSpec, revise_plan
    from audit.runner import RunOptions, run_plan

    folder = args.work_dir / "plan-run"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    probes = replace(plan.probes, sequential=True, order_seed=args.seed, sequential_batch=args.batch_items)
    run = revise_plan(plan, name="sequential-check", variants=tuple(VariantSpec(n, path=str(args.work_dir / n)) for n in names),
                      probes=probes, perplexity=replace(plan.perplexity, enabled=False), profile=replace(plan.profile, enabled=False), gate=gate)
    outcome = drive(run_plan(run, RunOptions(store=folder / "results.db")))
    report = outcome.report
    mine = {(f["variant"], f["check"], f["metric"], f["category"]): (f["verdict"], f.get("items_used"))
            for f in outcome.gate["findings"] if f["variant"] in names}
    wanted = {k: v for verdicts in probed.values() for k, v in verdicts.items()}
    same = sum(mine.get(k) == v for k, v in wanted.items())
    run_s = sum(v["steps"]["probe:builtin"]["seconds"] for v in report["variants"] if v["name"] in names)
    out["through_run"] = {"verdicts": len(wanted), "same": same, "differ": [list(k) for k, v in wanted.items() if mine.get(k) != v],
                          "variants_probe_s": round(run_s, 2), "sequential_s": round(seq_s, 2)}
    if not args.json:
        print(f"\nplan run with [probes] sequential = true: {same}/{len(wanted)} of the variants' verdicts and the items each used "
              f"the same as the sequential probes' above; its variants' probe steps took {run_s:.1f} s (the probes above: {seq_s:.1f} s)")
        for key in out["through_run"]["differ"]:
            print(f"  differs: {' '.join(key)}: probe {wanted[tuple(key)]}, run {mine.get(tuple(key))}")


def _replay_written(args, plan, gate, out) -> None:
    """The replays, from the items files an earlier run wrote (the baseline's and each variant's full probe)."""
    folder = args.work_dir / "items"
    if not (folder / "baseline.jsonl").exists():
        raise SystemExit(f"no items in {folder}: run without --replay-only first")
    suite = load_suite("builtin", **plan.probes.suite_options())
    base_header, base, _ = read_items(folder / "baseline.jsonl")
    names = [v.name for v in plan.variants if (folder / f"{v.name}.jsonl").exists()]
    if args.variants:
        names = [n for n in names if n in args.variants.split(",")]
    fulls = {}
    for name in names:
        header, results, _ = read_items(folder / f"{name}.jsonl")
        report = evaluate_gate(gate, [VARIANT], ItemFilesSource(ProbeRecord(base_header, base), ProbeRecord(header, results)))
        fulls[name] = (results, {_key(f): f for f in report.findings})
    if not args.json:
        print(f"replaying the full probes' items of {', '.join(names)} from {folder}", flush=True)
    _replays(args, suite, gate, base, fulls, out)


def _replay_orders(suite, gate, baseline, fulls, seeds, batch_items, futility, narrow=True) -> tuple[list[dict], list]:
    """Per drawn order: the share of items per verdict (all, and the variants' own), the verdicts
    the same as the full probe's, and the competent variants (shown above chance in full) stopped
    as too degraded to judge; and the judge of each order and variant after its last look."""
    categories = Counter(item.category for item in suite.items)
    rows, judges = [], []
    for seed in seeds:
        order = [item.item_id for item in stratified_order(suite.items, seed)]
        fractions, own, same, stopped, competent = [], [], [], 0, 0
        for results, full_by in fulls.values():
            by_id = {r.item_id: r for r in results}
            ordered = [by_id[i] for i in order]
            judge = replay_judge(ordered, gate, variant=VARIANT, baseline=baseline, batch_items=batch_items,
                                 categories=categories, futility=futility, narrow=narrow)
            judges.append(judge)
            report = judge.report()
            for f, whole, used, agrees in _against_full(report.findings, full_by, len(ordered)):
                fractions.append(used / len(ordered))
                if f.variant == VARIANT:
                    own.append(used / len(ordered))
                same.append(agrees)
                if f.variant == VARIANT and f.metric == "accuracy_disambig" and whole is not None and whole.verdict == PASS:
                    competent += 1
                    stopped += f.verdict == FAIL
        rows.append({"seed": seed, "futility": futility, "narrow": narrow, "mean_items_fraction_per_verdict": sum(fractions) / len(fractions),
                     "variant_verdicts_items_fraction": sum(own) / len(own),
                     "same_verdicts": sum(same), "verdicts": len(same), "competent_stopped": stopped, "competent": competent})
    return rows, judges


CHANCE_BINS = (0.0, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0)


def _calibration(judges, categories) -> dict:
    """How well the futility stop's predicted chance of settling a verdict matches what happens
    when it is waited for: from `judges` of replays with no futility stop, every open verdict's
    predicted chance at every look against whether the verdict settled by the end (a pass or a
    fail; for accuracy not shown above chance, shown), per kind of verdict and range of predicted
    chance. Rules left unjudged at the end (their guard failed) are left out: their own bounds
    did not decide them."""
    cells: dict = {}
    for judge in judges:
        final = {finding_key(f): f for f in judge.report().findings}
        for key, _, chance in judge.predicted:
            f = final[key]
            if f.reason.startswith("not judged"):
                continue
            guard = f.check == "competence" and f.metric == "accuracy_disambig"
            kind = "guard (shown above chance)" if guard else ("one category" if f.category in categories else "the whole suite")
            settled = f.verdict == PASS if guard else f.verdict in (PASS, FAIL)
            edge = next(i for i in range(1, len(CHANCE_BINS)) if chance < CHANCE_BINS[i] or i == len(CHANCE_BINS) - 1)
            cell = cells.setdefault(kind, {}).setdefault(edge, [0, 0.0, 0])
            cell[0] += 1
            cell[1] += chance
            cell[2] += settled
    return {kind: [{"chance": [CHANCE_BINS[e - 1], CHANCE_BINS[e]], "looks": n, "predicted": total / n, "settled": hits / n}
                   for e, (n, total, hits) in sorted(bins.items())] for kind, bins in sorted(cells.items())}


def _replays(args, suite, gate, baseline, fulls, out) -> None:
    """The full probes' items through the sequential gate in the orders of other seeds, and in
    those and the probed order at other futility thresholds."""
    orders = range(args.seed, args.seed + 1 + args.replay_seeds)
    per_futility, waited = {}, []
    for futility in sorted({0.0, 0.1, FUTILE_CHANCE, 0.25, 0.4}):
        per_futility[futility], judges = _replay_orders(suite, gate, baseline, fulls, orders, args.batch_items, futility)
        if futility == 0.0:
            waited = judges  # no futility stop: what the predicted chances are set against
    rows = [r for r in per_futility[FUTILE_CHANCE] if r["seed"] != args.seed]  # the other orders, at the default
    out["replays"] = rows
    trade = {}
    for futility, got in per_futility.items():
        trade[futility] = {
            "orders": len(got),
            "mean_items_fraction_per_verdict": sum(r["mean_items_fraction_per_verdict"] for r in got) / len(got),
            "variant_verdicts_items_fraction": sum(r["variant_verdicts_items_fraction"] for r in got) / len(got),
            "same_verdicts": sum(r["same_verdicts"] for r in got) / len(got),
            "verdicts": got[0]["verdicts"],
            "competent_stopped": sum(r["competent_stopped"] for r in got),
            "competent": sum(r["competent"] for r in got),
        }
    out["futility_tradeoff"] = {f"{k:g}": v for k, v in trade.items()}
    # The same orders at the default threshold, kept to the drawn order to the end (as before
    # drawing narrowed to the categories with open verdicts).
    plain, _ = _replay_orders(suite, gate, baseline, fulls, orders, args.batch_items, FUTILE_CHANCE, narrow=False)
    narrowed = per_futility[FUTILE_CHANCE]
    out["calibration"] = _calibration(waited, Counter(item.category for item in suite.items))
    out["narrowing"] = {
        key: {"narrowed": sum(r[key] for r in narrowed) / len(narrowed), "drawn_order": sum(r[key] for r in plain) / len(plain)}
        for key in ("mean_items_fraction_per_verdict", "variant_verdicts_items_fraction", "same_verdicts")
    }
    if args.json or not rows:
        return
    print(f"\nThe full probes' items replayed in {len(rows)} other drawn orders (seeds {rows[0]['seed']}-{rows[-1]['seed']}):")
    for r in rows:
        print(f"  seed {r['seed']:>3}: items per verdict {100 * r['mean_items_fraction_per_verdict']:5.1f}% "
              f"(the variants' own {100 * r['variant_verdicts_items_fraction']:5.1f}%), same verdicts {r['same_verdicts']}/{r['verdicts']}")
    mean_items = sum(r["mean_items_fraction_per_verdict"] for r in rows) / len(rows)
    mean_own = sum(r["variant_verdicts_items_fraction"] for r in rows) / len(rows)
    mean_same = sum(r["same_verdicts"] for r in rows) / len(rows)
    print(f"  mean: items per verdict {100 * mean_items:.1f}% (the variants' own {100 * mean_own:.1f}%; target <= 40%), "
          f"same verdicts {mean_same:.1f}/{rows[0]['verdicts']}")
    print(f"\nFutility thresholds (the guard's at most {GUARD_FUTILE_CHANCE:g}), the same items in {len(orders)} orders "
          f"(seeds {orders[0]}-{orders[-1]}); default {FUTILE_CHANCE:g}:")
    print(f"  {'futility':>8} {'items/verdict':>14} {'variants own':>13} {'same verdicts':>14} {'competent stopped as degraded':>30}")
    for futility, t in trade.items():
        print(f"  {futility:>8g} {100 * t['mean_items_fraction_per_verdict']:>13.1f}% {100 * t['variant_verdicts_items_fraction']:>12.1f}% "
              f"{t['same_verdicts']:>9.1f}/{t['verdicts']:<4} {t['competent_stopped']:>23}/{t['competent']}")
    n = out["narrowing"]
    print(f"\nDrawing from the categories with open verdicts only, once no other verdict is open, against keeping the drawn "
          f"order to the end (the same {len(orders)} orders, futility {FUTILE_CHANCE:g}):")
    for key, words in (("mean_items_fraction_per_verdict", "items per verdict"), ("variant_verdicts_items_fraction", "the variants' own")):
        ratio = n[key]["narrowed"] / n[key]["drawn_order"] if n[key]["drawn_order"] else float("nan")
        print(f"  {words:<18} {100 * n[key]['narrowed']:5.1f}% narrowed, {100 * n[key]['drawn_order']:5.1f}% in the drawn order (ratio {ratio:.2f})")
    print(f"  {'same verdicts':<18} {n['same_verdicts']['narrowed']:5.1f} narrowed, {n['same_verdicts']['drawn_order']:5.1f} in the drawn order "
          f"(of {rows[0]['verdicts']})")
    print(f"\nThe futility stop's predicted chance of settling, against the share of verdicts that settled when waited for "
          f"(the same {len(orders)} orders, no futility stop; every look of every open verdict):")
    print(f"  {'verdict':<28} {'predicted':>11} {'looks':>6} {'mean':>6} {'settled':>8}")
    for kind, rows_ in out["calibration"].items():
        for r in rows_:
            print(f"  {kind:<28} {r['chance'][0]:>4.2f}-{r['chance'][1]:<4.2f}  {r['looks']:>6} {r['predicted']:>6.2f} {r['settled']:>8.2f}")


if __name__ == "__main__":
    sys.exit(main())

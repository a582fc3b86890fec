"""A stored run read back: per-variant numbers, comparisons against the baseline, gate and report data."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Sequence

from audit.compress.recipe import recipe_label
from audit.gate import GateFinding, GateReport, Measurement, evaluate_gate
from audit.plans import Plan, read_stored_plan
from audit.probes.compare import ITEM_FIGURES, RUN_FIGURES
from audit.probes.measures import Pair
from audit.run.steps import FOLDER, run_held
from audit.stats import DISPLAY_CONFIDENCE
from audit.store import ResultsStore, RunRecord, damaged
from audit.sweep import PRUNED_FROM
from audit.verdict import NONE, PENDING, Verdict, run_verdict

BASELINE = "baseline"
PROBE_PREFIX = "probe:"
NOISE_PREFIX = "noise:"  # the baseline scored again with other seeds (sampled generation)

def _relative_pct(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0 or math.isnan(before) or math.isnan(after):
        return None
    return round(100.0 * (after - before) / abs(before), 3)


def _comparison_entry(comparison: dict[str, Any], scope_key: str, category: str | None = None) -> dict[str, Any]:
    """The headline figures of one comparison scope (overall, category_mean or one category):
    ambiguous items for SRS and transitions, disambiguated items for the accuracy drop."""
    scopes = comparison.get("scopes") or {}
    headline = scopes.get(comparison.get("headline_scope") or "") or {}
    disambig = scopes.get("disambig") or {}

    def pick(scope: dict[str, Any]) -> dict[str, Any]:
        if category is not None:
            return (scope.get("categories") or {}).get(category) or {}
        return scope.get(scope_key) or {}

    section, other = pick(headline), pick(disambig)
    entry: dict[str, Any] = {
        "comparable": comparison.get("comparable", True),
        "not_comparable": comparison.get("not_comparable") or [],
        "n_shared": section.get("n_shared"),
        "transitions": section.get("transitions"),
        "transition_rate": section.get("transition_rate"),
        "reverse_transition_rate": section.get("reverse_transition_rate"),
        "net_transition_rate": section.get("net_transition_rate"),
        "srs_baseline": section.get("aligned_share_baseline"),
        "srs_variant": section.get("aligned_share_variant"),
        "srs_relative_change_pct": section.get("relative_change_pct"),
        "accuracy_ambig_drop": section.get("accuracy_drop"),
        "accuracy_disambig_drop": other.get("accuracy_drop"),
        "cohens_h": section.get("cohens_h"),
        "p_value": section.get("p_value"),
        "significant": section.get("significant"),
        "flag": section.get("flag"),
    }
    for key in ("noise_transition_rate", "transition_rate_over_noise"):
        if key in section:
            entry[key] = section[key]
    return entry


def folder_method(compression: str | None, sparsity: float | None) -> str:
    """The method of a variant given as a folder, never a pruning method's own name: its sweep
    points are not read as points of that method's line."""
    if compression:
        return f"{compression} (folder)"
    return "sparse (as loaded)" if sparsity is not None and sparsity >= PRUNED_FROM else "folder (as loaded)"


def _folder_facts(recipe: dict[str, Any], steps: dict[str, dict[str, Any]], profile: dict[str, Any]) -> dict[str, Any] | None:
    """A variant given as a folder, as measured when it was loaded: its sparsity (the share of
    exact zeros in the decoder's linear weights), method and sizes on disk; None for others."""
    if not recipe.get("path"):
        return None
    facts = (steps.get(FOLDER) or {}).get("result") or {}
    # Runs stored before folder facts were: the profile names the model it measured.
    measured = facts.get("weight_sparsity", (profile.get("model") or {}).get("weight_sparsity"))
    sparsity = None if measured is None else round(float(measured), 4)
    return {
        "method": folder_method(facts.get("compression"), sparsity),
        "sparsity": sparsity,
        "sparsity_measured": sparsity is not None,
        "decoder_sparsity": sparsity,
        "actual_sparsity": None,  # which layers were pruned is not known of a folder
        "size_on_disk_mb": facts.get("size_on_disk_mb") or profile.get("size_on_disk_mb"),
        "size_on_disk_compressed_mb": facts.get("size_on_disk_compressed_mb"),
        "compressed_folder": facts.get("compressed_folder"),
    }


# What a flip to the bias-aligned answer did: the variant's answer is bias-aligned and not the
# right one (a regression), or it is the right one, the context saying so (a correction); an
# item with no right answer (a sentence pair) now prefers its stereotyped sentence.
BIASED, CORRECTED, STEREOTYPED = "biased", "corrected", "stereotyped"


def flip_outcome(variant_item: dict[str, Any]) -> str:
    """`CORRECTED` when the variant's bias-aligned answer is the item's right answer (only a
    disambiguated item can have one: its context names who), `STEREOTYPED` for an item with no
    right answer (CrowS-Pairs, StereoSet), else `BIASED`."""
    right = variant_item.get("label")
    if right is None:
        return STEREOTYPED
    right_is_aligned = right is not None and right in (variant_item.get("bias_aligned") or [])
    return CORRECTED if right_is_aligned and variant_item.get("correct") is True else BIASED


def as_it_stands(store: ResultsStore, run: RunRecord) -> RunRecord:
    """A stored run as it stands now: one stored as running that no process runs any more (its
    process was killed, or the power cut) is interrupted, which `edge-audit run --resume` goes on
    with. The store is read, not changed."""
    if run.status == "running" and not run_held(store, run):
        return replace(run, status="interrupted")
    return run


class RunView:
    """Everything stored for one run, shaped per variant; built once, read by the report,
    the gate, `runs show` and the app's comparison view."""

    def __init__(self, store: ResultsStore, run_id: int, plan: Plan | None = None) -> None:
        from audit.perplexity import NOT_STORED, change_bounds, not_comparable
        from audit.probes.compare import ProbeRecord, SuiteEvidence

        self.run = as_it_stands(store, store.run(run_id))
        self.plan = plan or read_stored_plan(self.run.plan_text, self.run.plan_path)
        self.suites = list(self.plan.probes.suites)
        self.variants: list[dict[str, Any]] = []
        self.flipped: list[dict[str, Any]] = []
        self.evidence = {suite: SuiteEvidence(None, {}, drawn_subsets=True) for suite in self.suites}
        self._perplexity: dict[str, dict[str, Any]] = {}
        self._summaries: dict[str, str] = {}
        raw_items: dict[tuple[str, str], list[dict[str, Any]]] = {}
        # What each sequential probe recorded, by (variant, suite); its evidence as it stood when it
        # stopped and its findings by `finding_key` (when the baseline's items it compared with are stored).
        self._sequential_probes: dict[tuple[str, str], dict[str, Any]] = {}
        self.sequential: dict[tuple[str, str], Any] = {}
        self._judged: dict[tuple[str, str], dict[tuple, GateFinding]] = {}
        for name, recipe in store.variants(run_id):
            steps = {s["kind"]: s for s in store.steps(run_id, name) if s["status"] == "done"}
            self.variants.append(self._variant(name, recipe, steps))
            if "perplexity" in steps:
                self._perplexity[name] = steps["perplexity"]["result"] or {}
            for suite in self.suites:
                for prefix in (PROBE_PREFIX, NOISE_PREFIX):
                    step = steps.get(prefix + suite)
                    if step is None:
                        continue
                    settings = dict(step["result"] or {})
                    settings.pop("metrics", None)
                    settings.pop("metrics_other_norm", None)
                    self._summaries[suite] = settings.get("summary") or self._summaries.get(suite, "")
                    rows = store.items(run_id, name, prefix + suite if prefix == NOISE_PREFIX else suite)
                    if settings.get("sequential"):
                        rows.sort(key=lambda r: r.get("drawn", 0))  # in the order its judge took them
                        self._sequential_probes[(name, suite)] = settings["sequential"]
                    record = ProbeRecord(settings, _stored_results(store, rows, name, suite))
                    evidence = self.evidence[suite]
                    if prefix == NOISE_PREFIX:
                        evidence.noise = record
                        continue
                    evidence.variants[name] = record
                    if name == BASELINE:
                        evidence.baseline = record
                    raw_items[(name, suite)] = rows
        digests: dict[str, str] = {}  # the baseline's items of each suite, as the probes stored them
        for (name, suite), facts in self._sequential_probes.items():
            self._replay(name, suite, facts, digests)
        baseline_ppl = self._perplexity.get(BASELINE)
        for variant in self.variants:
            name = variant["name"]
            if name != BASELINE and baseline_ppl and name in self._perplexity:
                mine = self._perplexity[name]
                bounds, note = change_bounds(baseline_ppl, mine, DISPLAY_CONFIDENCE)
                different = not_comparable(baseline_ppl, mine)
                # Without per-chunk figures (older runs) the change has no interval but is still the
                # change; on another text, or where no change can be measured, there is none.
                if bounds is not None or (note == NOT_STORED and different is None):
                    variant["perplexity_relative_change_pct"] = _relative_pct(baseline_ppl.get("perplexity"), variant["perplexity"])
                variant["perplexity_change"] = bounds.to_dict(2) if bounds else {
                    "value": None, "ci95": [None, None], "n": 0, "note": different or note, "comparable": different is None}
            for suite in self.suites:
                probe = variant["probes"].get(suite)
                evidence = self.evidence[suite]
                if probe is None or name == BASELINE or evidence.baseline is None:
                    continue
                comparison = evidence.comparison(name, noise=evidence.sampled(name))
                probe["comparison"] = {**_comparison_entry(comparison, "overall"), "intervals": comparison["intervals"]}
                probe["comparison_category_mean"] = _comparison_entry(comparison, "category_mean")
                probe["comparison_categories"] = {
                    c: _comparison_entry(comparison, "", c)
                    for c in sorted(((comparison.get("scopes") or {}).get(comparison.get("headline_scope") or "") or {}).get("categories") or {})
                }
                if comparison["comparable"]:
                    self.flipped += self._flips(name, suite, evidence.pairs(name), raw_items.get((BASELINE, suite), []), raw_items.get((name, suite), []))

    def _replay(self, name: str, suite: str, facts: dict[str, Any], digests: dict[str, str]) -> None:
        """`name`'s sequential probe of `suite` as it stopped: its evidence, which the gate reads
        that variant's figures of the suite from, and its findings with the items each used. Read
        from what the probe stored while the plan's gate and the baseline's items are the ones it
        stopped by; else its judge is replayed, look by look, against the plan's gate now."""
        from audit.gate import GateFinding
        from audit.sequential import FUTILE_CHANCE, finding_key, gate_facts, items_digest, replay_looks, resume, suite_gate

        evidence = self.evidence[suite]
        record, base = evidence.record(name), evidence.baseline
        if record is None or base is None:
            return  # no baseline stored to compare with: the gate says so
        gate = suite_gate(self.plan.gate, suite, self.suites[0])
        shape = dict(variant=name, narrowed_at=facts.get("narrowed_at"), total=int(facts.get("items_total") or len(record.results)),
                     categories=facts.get("categories_total") or {}, baseline=base.results, norm=record.settings.get("norm"))
        if suite not in digests:
            digests[suite] = items_digest(base.results)
        if facts.get("tightest") is not None and facts.get("gate_settings") == gate_facts(gate) and facts.get("baseline_digest") == digests[suite]:
            self.sequential[(name, suite)] = resume(record.results, tightest=facts["tightest"], **shape)
            findings = [GateFinding.from_dict(f) for f in (facts.get("gate") or {}).get("findings") or []]
        else:
            futility = facts.get("futility")
            judge = replay_looks(record.results, gate, looks=facts.get("looks") or [], futility=FUTILE_CHANCE if futility is None else float(futility), **shape)
            self.sequential[(name, suite)] = judge.evidence
            findings = list(judge.report().findings)
        self._judged[(name, suite)] = {finding_key(replace(f, suite=None)): f for f in findings if f.variant == name}

    @staticmethod
    def _variant(name: str, recipe: dict[str, Any], steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
        compress = (steps.get("compress") or {}).get("result") or {}
        prune = compress.get("prune") or {}
        quantize = compress.get("quantize") or {}
        profile = (steps.get("profile") or {}).get("result") or {}
        ppl = (steps.get("perplexity") or {}).get("result") or {}
        sizes = prune.get("size_on_disk_mb") or {}
        fingerprint = (steps.get("fingerprint") or {}).get("result") or {}
        folder = _folder_facts(recipe, steps, profile)
        variant: dict[str, Any] = {
            "name": name,
            # Named again from the recipe, so runs stored when the label left out per_row,
            # exclude or a block size still get a sweep curve of their own.
            "method": recipe_label(recipe.get("prune"), recipe.get("quantize")) or recipe.get("method"),
            "sparsity": recipe.get("sparsity"),
            "recipe": recipe,
            "folder": compress.get("folder") or recipe.get("path") or recipe.get("model"),
            "actual_sparsity": prune.get("actual_sparsity"),  # of the layers pruned
            # Of every linear layer of the decoder blocks (layers kept dense included).
            "decoder_sparsity": prune.get("decoder_sparsity", prune.get("actual_sparsity") if not (prune.get("recipe") or {}).get("exclude") else None),
            "size_on_disk_mb": (quantize.get("size_on_disk_mb") or sizes.get("dense") or profile.get("size_on_disk_mb")
                                or fingerprint.get("size_on_disk_mb")),
            "size_on_disk_compressed_mb": None if quantize else sizes.get("compressed"),
            "perplexity": ppl.get("perplexity"),
            "perplexity_relative_change_pct": None,
            "perplexity_change": None,
            "perplexity_tokens": ppl.get("n_tokens"),
            "latency_ms_p50": profile.get("latency_ms_p50"),
            "decode_ms_per_token_p50": profile.get("decode_ms_per_token_p50"),
            "decode_ms_per_token_p95": profile.get("decode_ms_per_token_p95"),
            "time_to_first_token_ms_p50": profile.get("time_to_first_token_ms_p50"),
            "tokens_per_s": profile.get("generated_tokens_per_s_p50"),
            "probe_item_ms_p50": profile.get("probe_item_ms_p50"),
            "rss_peak_mb": profile.get("rss_peak_mb"),
            "fingerprint": fingerprint.get("digest"),
            "fingerprint_storage": fingerprint.get("storage"),
            "fingerprint_folder": fingerprint.get("folder"),
            "steps": {kind: {"seconds": s["seconds"], "resources": s["resources"]} for kind, s in steps.items()},
            "probes": {},
            "gate_passed": None,
            "gate_verdict": None,
            "gate_plain": None,
            "degraded": None,
        }
        if folder is not None:
            variant.update(folder)
        for kind, step in steps.items():
            if not kind.startswith(PROBE_PREFIX):
                continue
            result = step["result"] or {}
            metrics = result.get("metrics") or {}
            variant["probes"][kind[len(PROBE_PREFIX):]] = {
                "overall": metrics.get("overall") or {},
                "category_mean": metrics.get("category_mean") or {},
                "categories": metrics.get("categories") or {},
                "n_items": result.get("n_items"),
                "items_per_s": result.get("items_per_s"),
                "settings": {k: result.get(k) for k in ("mode", "norm", "prompt", "parser", "seeds", "temperature", "max_new_tokens") if k in result},
            }
            if result.get("sequential"):
                variant["probes"][kind[len(PROBE_PREFIX):]]["sequential"] = {
                    k: v for k, v in result["sequential"].items() if k not in ("gate", "looks", "tightest", "gate_settings", "baseline_digest")
                }
        return variant

    @staticmethod
    def _flips(name: str, suite: str, pairs: Sequence[Pair], baseline: list[dict[str, Any]], variant: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items not bias-aligned in the baseline and bias-aligned in the variant, each with its
        `outcome` (`flip_outcome`): read from the paired items' facts (`measures.item_facts`) the
        transitions are counted from, not from the verdict stored with each item, so the list
        holds exactly the items the counts do (an item scored NaN in either run is in neither)."""
        flipped = {b.item_id for b, v in pairs if b.aligned is False and v.aligned is True}
        by_id = {r["item_id"]: r for r in variant}
        flips = []
        for base in baseline:
            mine = by_id.get(base["item_id"])
            if mine is None or base["item_id"] not in flipped:
                continue
            options = base.get("options") or []

            def option(index: int | None) -> str | None:
                return options[index] if index is not None and 0 <= index < len(options) else None

            flips.append(
                {
                    "variant": name,
                    "suite": suite,
                    "item_id": base["item_id"],
                    "category": base.get("category"),
                    "condition": base.get("condition"),
                    "context": base.get("context", ""),
                    "question": base.get("question", ""),
                    "baseline_answer": option(base.get("chosen")) or "(no answer)",
                    "variant_answer": option(mine.get("chosen")) or "(no answer)",
                    "right_answer": option(base.get("label")),
                    "outcome": flip_outcome(mine),
                }
            )
        return flips

    # -- the gate's view -------------------------------------------------------------------------
    def gate(self) -> GateReport:
        """The plan's gate (rules and competence guard) checked against the numbers stored so far;
        a verdict of a sequential probe says how many items it used, and why it stopped."""
        report = evaluate_gate(self.plan.gate, self.candidates(), self)
        if not self.sequential:
            return report
        return replace(report, findings=tuple(self._with_items_used(f) for f in report.findings))

    def _with_items_used(self, finding: GateFinding) -> GateFinding:
        from audit.sequential import finding_key

        where = (finding.variant, self._suite(finding.suite) or "")
        evidence = self.sequential.get(where)
        if evidence is None or finding.metric not in ITEM_FIGURES:
            return finding
        stopped = self._judged[where].get(finding_key(replace(finding, suite=None)))
        # The judge's reason is the gate's with why it stopped added: taken when the gate read the
        # same (a figure the judge had no bound for is read afresh once every item is scored).
        if stopped is None or stopped.verdict != finding.verdict or not stopped.reason.startswith(finding.reason):
            return replace(finding, items_used=len(evidence.results))
        return replace(finding, reason=stopped.reason, items_used=stopped.items_used, items_to_settle=stopped.items_to_settle)

    def variant(self, name: str) -> dict[str, Any]:
        return next(v for v in self.variants if v["name"] == name)

    def candidates(self) -> list[str]:
        """What the gate judges: every variant (the baseline too when the plan has none)."""
        names = [v["name"] for v in self.variants if v["name"] != BASELINE]
        return names or [BASELINE]

    def _suite(self, suite: str | None) -> str | None:
        """The run's suite a rule names: the first for none, else the one of that spec, or of that
        name alone when one suite has it (a plan stored before its rules' suites were resolved)."""
        if not suite:
            return self.suites[0] if self.suites else None
        named = [s for s in self.suites if s.partition(":")[0] == suite]
        return named[0] if suite not in self.suites and len(named) == 1 else suite

    def categories(self, variant: str, suite: str | None) -> list[str]:
        name = self._suite(suite)
        sequential = self.sequential.get((variant, name or ""))
        if sequential is not None:
            return sequential.categories(variant, None)  # the suite's, scored or not
        return self.evidence[name].categories(variant) if name in self.evidence else []

    def question_suites(self) -> list[str]:
        return [s for s in self.suites if self._summaries.get(s, "qa") == "qa"]

    def chance(self, variant: str, suite: str) -> float | None:
        return self.evidence[suite].chance(variant) if suite in self.evidence else None

    def measure(self, variant: str, metric: str, suite: str | None, category: str, confidence: float) -> Measurement:
        from audit.perplexity import change_bounds

        if metric == "perplexity_relative_change_pct":
            if variant == BASELINE:
                return Measurement.exact(0.0)
            base, mine = self._perplexity.get(BASELINE), self._perplexity.get(variant)
            if base is None or mine is None:
                return Measurement(None, note="perplexity not measured for both the baseline and the variant")
            bounds, note = change_bounds(base, mine, confidence)
            return Measurement.of(bounds) if bounds else Measurement(None, note=note)
        name = self._suite(suite)
        evidence = self.evidence.get(name or "")
        if (variant, name) in self._sequential_probes and metric in ITEM_FIGURES:
            return self._sequential_measure(variant, name or "", metric, category, confidence)
        if evidence is None:
            return Measurement(None, note=f"no probe suite {name} in this run")
        return evidence.measure(variant, metric, category, confidence)

    def _sequential_measure(self, variant: str, suite: str, metric: str, category: str, confidence: float) -> Measurement:
        """A figure of a variant's sequential probe, with the anytime-valid bounds its judge read
        (`_replay`): fixed-sample bounds would not hold where the probe chose to stop."""
        sequential, evidence = self.sequential.get((variant, suite)), self.evidence.get(suite)
        if sequential is None or evidence is None:
            return Measurement(None, note="its probe stopped early against the baseline's items, which are not stored")
        differences = [] if metric in RUN_FIGURES else evidence.differences(variant)
        if differences:
            return Measurement(None, note="not comparable with the baseline: " + "; ".join(differences))
        measured = sequential.measure(variant, metric, None, category, confidence)
        if measured.value is None and sequential.complete:
            # A figure with no anytime bound (transitions over a sampled noise floor):
            # with every item scored, the probe is a fixed sample after all.
            return evidence.measure(variant, metric, category, confidence)
        return measured


def listed_verdict(status: str, gate: dict[str, Any] | None) -> Verdict:
    """A stored run's verdict as its comparison words it: a run still going has no verdict yet."""
    if gate is None and status == "running":
        return Verdict(PENDING, "the run is still going")
    if gate is None:
        return Verdict(NONE, "the gate was not checked: resume the run to check it")
    return run_verdict(gate, status=status)


def run_listing(store: ResultsStore) -> list[dict[str, Any]]:
    """Every run in the store, oldest first, with its variants and gate verdict: what
    `edge-audit runs list` and the app's history show."""
    rows = []
    for run in store.runs():
        gate = run.gate or {}
        run = as_it_stands(store, run)
        rows.append(
            {
                "id": run.id,
                "name": run.name,
                "model": run.model,
                "status": run.status,
                "created_at": run.created_at,
                "variants": [name for name, _ in store.variants(run.id)],
                "gate_passed": gate.get("passed") if "passed" in gate else None,
                "gate_verdict": gate.get("verdict") or ({True: "pass", False: "fail"}.get(gate["passed"]) if "passed" in gate else None),
                "gate_failures": gate.get("failures") or [],
                "verdict": listed_verdict(run.status, run.gate).to_dict(),
                "error": gate.get("error"),
            }
        )
    return rows


def evaluate_run_gate(store: ResultsStore, run_id: int, plan: Plan) -> GateReport:
    view = RunView(store, run_id, plan)
    return view.gate()


def _stored_results(store: ResultsStore, rows: list[dict[str, Any]], variant: str, suite: str) -> list[Any]:
    """A probe's stored items as results, each field checked as an items file's are: a stored
    item that does not read is the store's damage, said in one line, not a traceback later."""
    from audit.probes.items import result_from_record

    try:
        # A StereoSet example whose sentences are not labelled does not read either (`result_problem`).
        return [result_from_record(row) for row in rows]
    except ValueError as exc:
        raise damaged(store.path, f"an item {variant}'s {suite} probe stored does not read: {exc}") from None


def build_report(store: ResultsStore, run_id: int, plan: Plan | None = None, gate: GateReport | None = None) -> dict[str, Any]:
    """The report data of a run: every number, JSON-ready (the JSON report is exactly this)."""
    view = RunView(store, run_id, plan)
    if gate is None and view.plan.gate.active and view.run.status == "finished":
        gate = view.gate()
    return report_data(view, gate)


def report_data(view: RunView, gate: GateReport | None) -> dict[str, Any]:
    """The report data of a run already read (`build_report` for a view in hand), with `gate`
    as given: a front end shows the rules' verdict on a run still in progress this way."""
    if gate is not None:
        for variant in view.variants:
            name = variant["name"]
            if name in view.candidates():
                variant["gate_passed"] = gate.variant_passed(name)
                variant["gate_verdict"] = gate.variant_verdict(name)
                variant["gate_plain"] = gate.plain(name)
                variant["degraded"] = gate.degraded(name)
    from audit.sweep import sweep_points, transition_ratio

    run = view.run.to_dict()
    run["plan_text"] = view.run.plan_text
    data = {
        "run": run,
        "plan": view.plan.to_dict(),
        "gate": gate.to_dict() if gate is not None else None,
        "baseline": BASELINE,
        "suites": view.suites,
        "variants": view.variants,
        "flipped": view.flipped,
    }
    data["sweep"] = sweep_points(data)
    evidence = view.evidence.get(view.suites[0]) if view.suites else None
    data["transition_ratio_pruning_vs_quantization"] = transition_ratio(evidence, view.variants)
    return data

"""A stored run read back: per-variant numbers, comparisons against the baseline, gate and report data."""

from __future__ import annotations

from typing import Any

from audit.gate import GateReport, Measurement, evaluate_gate
from audit.plans import Plan, parse_plan
from audit.store import ResultsStore

BASELINE = "baseline"
PROBE_PREFIX = "probe:"
DEFAULT_ALPHA = 0.05

# Probe summary names -> the names reports, the gate and the app use.
METRIC_NAMES = {
    "srs": "srs",
    "bias_score_ambig": "s_amb",
    "bias_score_disambig": "s_dis",
    "accuracy_ambig": "accuracy_ambiguous",
    "accuracy_disambig": "accuracy_disambiguated",
    "usr": "usr",
    "parse_failure_rate": "parse_failure_rate",
    "pct_stereotype": "pct_stereotype",
    "ss": "ss",
    "lms": "lms",
    "icat": "icat",
}


def _rename(metrics: dict[str, Any]) -> dict[str, Any]:
    return {METRIC_NAMES.get(k, k): v for k, v in metrics.items()}


def _relative_pct(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return round(100.0 * (after - before) / abs(before), 3)


def _alpha(plan: Plan) -> float:
    levels = [r.significance for r in plan.gate if r.significance is not None]
    return min(levels) if levels else DEFAULT_ALPHA


def _comparison_entry(section: dict[str, Any]) -> dict[str, Any]:
    transitions = section.get("transitions") or {}
    return {
        "transition_rate": transitions.get("transition_rate"),
        "to_aligned": transitions.get("unbiased_to_aligned"),
        "to_unbiased": transitions.get("aligned_to_unbiased"),
        # The headline scope's aligned share: SRS on a question suite's ambiguous items.
        "srs_baseline": section.get("aligned_share_baseline"),
        "srs_variant": section.get("aligned_share_variant"),
        "srs_relative_change_pct": section.get("relative_change_pct"),
        "cohens_h": section.get("cohens_h"),
        "p_value": section.get("p_value"),
        "significant": section.get("significant"),
        "flag": section.get("flag"),
        "n_shared": section.get("n_shared"),
    }


class RunView:
    """Everything stored for one run, shaped per variant; built once, read by the report,
    the gate, `runs show` and the app's comparison view."""

    def __init__(self, store: ResultsStore, run_id: int, plan: Plan | None = None) -> None:
        from audit.probes.compare import compare_results
        from audit.probes.items import ItemResult

        self.run = store.run(run_id)
        self.plan = plan or parse_plan(self.run.plan_text, None, check_model=False)
        self.alpha = _alpha(self.plan)
        self.suites = list(self.plan.probes.suites)
        self.variants: list[dict[str, Any]] = []
        self.flipped: list[dict[str, Any]] = []
        baseline_items = {suite: store.items(run_id, BASELINE, suite) for suite in self.suites}
        baseline_ppl = None
        for name, recipe in store.variants(run_id):
            steps = {s["kind"]: s for s in store.steps(run_id, name) if s["status"] == "done"}
            variant = self._variant(name, recipe, steps)
            if name == BASELINE:
                baseline_ppl = variant["perplexity"]
            else:
                variant["perplexity_relative_change_pct"] = _relative_pct(baseline_ppl, variant["perplexity"])
            for suite in self.suites:
                probe = variant["probes"].get(suite)
                if probe is None or name == BASELINE or not baseline_items[suite]:
                    continue
                items = store.items(run_id, name, suite)
                base = [ItemResult.from_dict(r) for r in baseline_items[suite]]
                mine = [ItemResult.from_dict(r) for r in items]
                comparison = compare_results(base, mine, alpha=self.alpha)
                headline = comparison["scopes"].get(comparison["headline_scope"]) or {}
                probe["comparison"] = {
                    **_comparison_entry(headline.get("overall") or {}),
                    "test": comparison["test"],
                    "alpha": comparison["alpha"],
                    "n_shared_items": comparison["n_shared"],
                }
                probe["comparison_categories"] = {
                    c: _comparison_entry(s) for c, s in (headline.get("categories") or {}).items()
                }
                self.flipped += self._flips(name, suite, baseline_items[suite], items)
            self.variants.append(variant)

    @staticmethod
    def _variant(name: str, recipe: dict[str, Any], steps: dict[str, dict[str, Any]]) -> dict[str, Any]:
        compress = (steps.get("compress") or {}).get("result") or {}
        prune = compress.get("prune") or {}
        quantize = compress.get("quantize") or {}
        profile = (steps.get("profile") or {}).get("result") or {}
        ppl = (steps.get("perplexity") or {}).get("result") or {}
        sizes = prune.get("size_on_disk_mb") or {}
        variant: dict[str, Any] = {
            "name": name,
            "method": recipe.get("method"),
            "sparsity": recipe.get("sparsity"),
            "recipe": recipe,
            "folder": compress.get("folder") or recipe.get("path") or recipe.get("model"),
            "actual_sparsity": prune.get("actual_sparsity"),
            "size_on_disk_mb": quantize.get("size_on_disk_mb") or sizes.get("dense") or profile.get("size_on_disk_mb"),
            "size_on_disk_compressed_mb": None if quantize else sizes.get("compressed"),
            "perplexity": ppl.get("perplexity"),
            "perplexity_relative_change_pct": None,
            "perplexity_tokens": ppl.get("tokens"),
            "latency_ms_p50": profile.get("decode_ms_per_token_p50"),
            "latency_ms_p95": profile.get("decode_ms_per_token_p95"),
            "time_to_first_token_ms_p50": profile.get("time_to_first_token_ms_p50"),
            "tokens_per_s": profile.get("generated_tokens_per_s_p50"),
            "probe_item_ms_p50": profile.get("probe_item_ms_p50"),
            "rss_peak_mb": profile.get("rss_peak_mb"),
            "steps": {kind: {"seconds": s["seconds"], "resources": s["resources"]} for kind, s in steps.items()},
            "probes": {},
            "gate_passed": None,
        }
        for kind, step in steps.items():
            if not kind.startswith(PROBE_PREFIX):
                continue
            metrics = (step["result"] or {}).get("metrics") or {}
            variant["probes"][kind[len(PROBE_PREFIX):]] = {
                "overall": _rename(metrics.get("overall") or {}),
                "categories": {c: _rename(m) for c, m in (metrics.get("categories") or {}).items()},
                "n_items": (step["result"] or {}).get("n_items"),
                "items_per_s": (step["result"] or {}).get("items_per_s"),
            }
        return variant

    @staticmethod
    def _flips(name: str, suite: str, baseline: list[dict[str, Any]], variant: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items not bias-aligned in the baseline and bias-aligned in the variant."""
        by_id = {r["item_id"]: r for r in variant}
        flips = []
        for base in baseline:
            mine = by_id.get(base["item_id"])
            if mine is None or base.get("aligned") is not False or mine.get("aligned") is not True:
                continue
            options = base.get("options") or []

            def answer(record: dict[str, Any]) -> str:
                chosen = record.get("chosen")
                return options[chosen] if chosen is not None and chosen < len(options) else "(no answer)"

            flips.append(
                {
                    "variant": name,
                    "suite": suite,
                    "item_id": base["item_id"],
                    "category": base.get("category"),
                    "condition": base.get("condition"),
                    "context": base.get("context", ""),
                    "question": base.get("question", ""),
                    "baseline_answer": answer(base),
                    "variant_answer": answer(mine),
                }
            )
        return flips

    # -- the gate's view -------------------------------------------------------------------------
    def gate(self) -> GateReport:
        """The plan's gate rules checked against the numbers stored so far."""
        return evaluate_gate(self.plan.gate, self.candidates(), self)

    def variant(self, name: str) -> dict[str, Any]:
        return next(v for v in self.variants if v["name"] == name)

    def candidates(self) -> list[str]:
        """What the gate judges: every variant (the baseline too when the plan has none)."""
        names = [v["name"] for v in self.variants if v["name"] != BASELINE]
        return names or [BASELINE]

    def categories(self, variant: str, suite: str | None) -> list[str]:
        probe = self.variant(variant)["probes"].get(suite or (self.suites[0] if self.suites else ""), {})
        return sorted(probe.get("categories") or {})

    def measure(self, variant: str, metric: str, suite: str | None, category: str) -> Measurement:
        mine = self.variant(variant)
        base = self.variant(BASELINE) if any(v["name"] == BASELINE for v in self.variants) else {}
        if metric == "perplexity_relative_increase_pct":
            return Measurement(_relative_pct(base.get("perplexity"), mine.get("perplexity")) if variant != BASELINE else 0.0)
        suite = suite or (self.suites[0] if self.suites else None)
        probe = mine["probes"].get(suite) if suite else None
        if probe is None:
            return Measurement(None)
        scope = probe["overall"] if category == "overall" else (probe["categories"].get(category) or {})
        comparison = probe.get("comparison") if category == "overall" else (probe.get("comparison_categories") or {}).get(category)
        if metric in ("srs", "s_amb", "s_dis"):
            estimate = scope.get(metric) or {}
            return Measurement(estimate.get("value"))
        if metric in ("srs_relative_increase_pct", "transition_rate"):
            if variant == BASELINE:
                return Measurement(0.0)
            if not comparison:
                return Measurement(None)
            key = "srs_relative_change_pct" if metric == "srs_relative_increase_pct" else "transition_rate"
            return Measurement(comparison.get(key), comparison.get("p_value"), probe.get("comparison", {}).get("test"))
        if metric in ("accuracy_ambiguous_drop", "accuracy_disambiguated_drop"):
            key = "accuracy_ambiguous" if metric == "accuracy_ambiguous_drop" else "accuracy_disambiguated"
            base_probe = base.get("probes", {}).get(suite) or {}
            base_scope = base_probe.get("overall") if category == "overall" else (base_probe.get("categories") or {}).get(category)
            before = ((base_scope or {}).get(key) or {}).get("value")
            after = (scope.get(key) or {}).get("value")
            return Measurement(None if before is None or after is None else round(before - after, 6))
        return Measurement(None)


def run_listing(store: ResultsStore) -> list[dict[str, Any]]:
    """Every run in the store, oldest first, with its variants and gate verdict: what
    `edge-audit runs list` and the app's history show."""
    rows = []
    for run in store.runs():
        gate = run.gate or {}
        rows.append(
            {
                "id": run.id,
                "name": run.name,
                "model": run.model,
                "status": run.status,
                "created_at": run.created_at,
                "variants": [name for name, _ in store.variants(run.id)],
                "gate_passed": gate.get("passed") if "passed" in gate else None,
                "gate_failures": gate.get("failures") or [],
                "error": gate.get("error"),
            }
        )
    return rows


def evaluate_run_gate(store: ResultsStore, run_id: int, plan: Plan) -> GateReport:
    view = RunView(store, run_id, plan)
    return view.gate()


def build_report(store: ResultsStore, run_id: int, plan: Plan | None = None, gate: GateReport | None = None) -> dict[str, Any]:
    """The report data of a run: every number, JSON-ready (the JSON report is exactly this)."""
    view = RunView(store, run_id, plan)
    if gate is None and view.plan.gate and view.run.status == "finished":
        gate = view.gate()
    return report_data(view, gate)


def report_data(view: RunView, gate: GateReport | None) -> dict[str, Any]:
    """The report data of a run already read (`build_report` for a view in hand), with `gate`
    as given: a front end shows the rules' verdict on a run still in progress this way."""
    if gate is not None:
        for variant in view.variants:
            if variant["name"] in view.candidates():
                variant["gate_passed"] = gate.variant_passed(variant["name"])
    run = view.run.to_dict()
    run["plan_text"] = view.run.plan_text
    return {
        "run": run,
        "plan": view.plan.to_dict(),
        "gate": gate.to_dict() if gate is not None else None,
        "baseline": BASELINE,
        "suites": view.suites,
        "alpha": view.alpha,
        "variants": view.variants,
        "flipped": view.flipped,
    }

"""Baseline vs variant on the same items: transitions both ways, the SRS change, accuracy drops and
the noise floor, each with its interval; and the check that two probe runs can be compared at all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from audit import metrics as m
from audit.gate import BASELINE, Measurement
from audit.probes import measures as ms
from audit.probes.items import AMBIG, DISAMBIG, ItemResult
from audit.probes.scoring import PROMPTS
from audit.stats import DISPLAY_CONFIDENCE, Bounds

ALL = ms.ALL
# What "aligned share" is in each scope: SRS on ambiguous items, the bias-aligned share of
# answers on disambiguated ones, the stereotypical-option share for sentence suites.
SHARE_METRIC = {AMBIG: "srs", DISAMBIG: "bias_aligned_share_disambig", ALL: "stereotypical_share"}
VARIANT = "variant"  # the second run's name where two runs are compared on their own
INTERVALS = "95% betting intervals over items (seeds nested in items), paired by item"

# Settings two probe runs must share to be compared, as a run's header names them.
COMPARED_SETTINGS = ("suite", "mode", "norm", "prompt", "parser", "seeds", "temperature", "max_new_tokens")


def _setting(header: dict[str, Any], key: str) -> Any:
    value = header.get(key)
    if key == "prompt" and value is None and header.get("mode") in PROMPTS:
        return PROMPTS[header["mode"]]  # runs recorded before prompts were named used these
    if key == "parser" and value is None and header.get("mode") == "generate":
        return "strict"  # runs recorded before parsers were named used this one
    if key == "seeds" and value is not None:
        return list(value)
    return value


def setting_differences(
    baseline: dict[str, Any],
    variant: dict[str, Any],
    baseline_ids: set[str] | None = None,
    variant_ids: set[str] | None = None,
    *,
    ignore: Sequence[str] = (),
    sides: tuple[str, str] = ("the baseline", "the variant"),
) -> list[str]:
    """Why two probe runs cannot be compared: each setting that differs, named with both values,
    and the items when the two runs did not score the same ones (each side named by `sides`).
    Empty when they can be."""
    differences = []
    for key in COMPARED_SETTINGS:
        if key in ignore:
            continue
        a, b = _setting(baseline, key), _setting(variant, key)
        if a != b:
            verb = "differ" if key == "seeds" else "differs"
            differences.append(f"{key} {verb} ({_shown(a)} vs {_shown(b)})")
    if baseline_ids is not None and variant_ids is not None and baseline_ids != variant_ids:
        only_base, only_var = len(baseline_ids - variant_ids), len(variant_ids - baseline_ids)
        differences.append(f"items differ ({only_base} only in {sides[0]}, {only_var} only in {sides[1]})")
    return differences


def _shown(value: Any) -> str:
    if value is None:
        return "not recorded"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    return str(value)


# -- one comparison section ----------------------------------------------------------------------
def _section(pairs: Sequence[ms.Pair], condition: str, scope: str, noise: Sequence[ms.Pair] | None) -> dict[str, Any]:
    c = DISPLAY_CONFIDENCE
    within = [p for p in pairs if ms.in_condition(p, condition)]
    if scope not in (ms.OVERALL, ms.CATEGORY_MEAN):
        within = [p for p in within if p[0].category == scope]
        scope = ms.OVERALL
    known = [(b, v) for b, v in within if b.aligned is not None and v.aligned is not None]
    table = m.transitions((bool(b.aligned), bool(v.aligned)) for b, v in known)
    before = ms.aligned_share_bounds(within, 0, c, scope, condition)
    after = ms.aligned_share_bounds(within, 1, c, scope, condition)
    change = ms.relative_change_bounds(within, c, scope, condition)
    h = None if before.value is None or after.value is None else m.cohens_h(before.value, after.value)
    flag = None
    if change.lower is not None and change.lower > 0:
        flag = "more bias-aligned"
    elif change.upper is not None and change.upper < 0:
        flag = "less bias-aligned"
    out: dict[str, Any] = {
        "n_shared": len(within),
        "n_paired_known": len(known),
        "transitions": table.to_dict(),
        "transition_rate": ms.paired_bounds(within, "transition_rate", c, scope, condition).to_dict(),
        "reverse_transition_rate": ms.paired_bounds(within, "reverse_transition_rate", c, scope, condition).to_dict(),
        "net_transition_rate": ms.paired_bounds(within, "net_transition_rate", c, scope, condition).to_dict(),
        "aligned_share_baseline": before.to_dict(),
        "aligned_share_variant": after.to_dict(),
        "relative_change_pct": change.to_dict(2),
        "cohens_h": None if h is None else round(h, 4),
        # Descriptive: whether the discordant items lean one way (the gate reads the bounds).
        "p_value": float(f"{m.mcnemar_exact(table.to_aligned, table.to_unbiased):.6g}"),
        "significant": flag is not None,
        "flag": flag,
    }
    if condition in (AMBIG, DISAMBIG):
        drop = "accuracy_ambig_drop" if condition == AMBIG else "accuracy_disambig_drop"
        out["accuracy_drop"] = ms.paired_bounds(within, drop, c, scope).to_dict()
    if noise is not None:
        noise_within = [p for p in noise if ms.in_condition(p, condition)]
        if scope == ms.OVERALL and len(within) != len(pairs):
            ids = {b.item_id for b, _ in within}
            noise_within = [p for p in noise_within if p[0].item_id in ids]
        out["noise_transition_rate"] = ms.paired_bounds(noise_within, "transition_rate", c, scope, condition).to_dict()
        out["transition_rate_over_noise"] = ms.noise_transition_bounds(within, noise_within, c, scope, condition).to_dict()
    shares = [(b.biased, v.biased) for b, v in known if b.has_target]
    if shares and any(b.attempts > 1 or v.attempts > 1 for b, v in known):
        out["mean_seed_share_baseline"] = round(sum(s for s, _ in shares) / len(shares), 4)
        out["mean_seed_share_variant"] = round(sum(s for _, s in shares) / len(shares), 4)
    return out


def compare_results(
    baseline: Sequence[ItemResult],
    variant: Sequence[ItemResult],
    *,
    baseline_settings: dict[str, Any] | None = None,
    variant_settings: dict[str, Any] | None = None,
    noise: Sequence[ItemResult] | None = None,
) -> dict[str, Any]:
    """Compare two probe runs item by item, per category, overall and as the mean over categories.

    Runs made with different settings (suite, mode, norm, prompt, seeds, temperature, token
    limit) or on different items are not compared: `comparable` is False and
    `not_comparable` names what differs. Question suites are compared on ambiguous items (where
    SRS lives) and separately on disambiguated ones; sentence suites on all items. `noise` is
    the baseline scored again with other seeds (sampled generation): the transitions it shows
    are the floor the variant's are read against.
    """
    base = ProbeRecord(baseline_settings or _settings_of(baseline), list(baseline))
    mine = ProbeRecord(variant_settings or _settings_of(variant), list(variant))
    # The second scoring of the baseline differs from it in its seeds only.
    again = None if noise is None else ProbeRecord(base.settings, list(noise))
    return SuiteEvidence(base, {VARIANT: mine}, again).comparison(VARIANT, noise=again is not None)


def _comparison(evidence: "SuiteEvidence", variant: str, noise: bool) -> dict[str, Any]:
    base, mine = evidence.baseline, evidence.record(variant)
    assert base is not None and mine is not None
    pairs, counts = evidence.pairs_and_counts(variant)
    differences = evidence.differences(variant)
    out: dict[str, Any] = {
        "comparable": not differences,
        "not_comparable": differences,
        "n_baseline": len(base.results),
        "n_variant": len(mine.results),
        "n_shared": len(pairs),
        "n_only_baseline": counts["only_baseline"],
        "n_only_variant": counts["only_variant"],
        "n_mismatched": counts["mismatched"],
        "intervals": INTERVALS,
        "headline_scope": None,
        "scopes": {},
    }
    if differences:
        return out
    noise_pairs = evidence.noise_pairs() if noise else None
    headline = ms.headline_condition(pairs)
    conditions = (AMBIG, DISAMBIG) if headline == AMBIG else (ALL,)
    for condition in conditions:
        scoped = [p for p in pairs if ms.in_condition(p, condition)]
        if not scoped:
            continue
        categories = sorted({b.category for b, _ in scoped})
        out["scopes"][condition] = {
            "metric": SHARE_METRIC[condition],
            "overall": _section(scoped, condition, ms.OVERALL, noise_pairs),
            ms.CATEGORY_MEAN: _section(scoped, condition, ms.CATEGORY_MEAN, noise_pairs),
            "categories": {c: _section(scoped, condition, c, noise_pairs) for c in categories},
        }
    out["headline_scope"] = headline
    return out


def _settings_of(results: Sequence[ItemResult]) -> dict[str, Any]:
    """What item results alone say of their run's settings (files without a header)."""
    first = results[0] if results else None
    if first is None:
        return {}
    return {"suite": first.suite, "mode": first.mode, "norm": first.norm or None}


# -- the gate's view of one suite --------------------------------------------------------------
@dataclass
class ProbeRecord:
    """One probe run: its settings (the run header) and item results."""

    settings: dict[str, Any]
    results: list[ItemResult]

    @property
    def ids(self) -> set[str]:
        return {r.item_id for r in self.results}


@dataclass
class SuiteEvidence:
    """A suite's probe runs of the baseline and the variants (and the baseline scored again with
    other seeds), measured on demand at any confidence, for the gate."""

    baseline: ProbeRecord | None
    variants: dict[str, ProbeRecord]
    noise: ProbeRecord | None = None
    # Whether a variant probed sequentially (scoring items drawn from the baseline's until its
    # verdicts settled) is compared on the items it scored: in a run, whose gate reads its
    # figures from its judge's anytime bounds. Elsewhere its items are not the baseline's.
    drawn_subsets: bool = False
    _pairs: dict[str, tuple[list[ms.Pair], dict[str, int]]] = field(default_factory=dict, repr=False)
    _facts: dict[str, list[ms.ItemFacts]] = field(default_factory=dict, repr=False)
    _noise_pairs: list[ms.Pair] | None = field(default=None, repr=False)

    def record(self, variant: str) -> ProbeRecord | None:
        return self.variants.get(variant)

    def facts(self, variant: str) -> list[ms.ItemFacts]:
        if variant not in self._facts:
            record = self.record(variant)
            self._facts[variant] = [ms.item_facts(r) for r in record.results] if record else []
        return self._facts[variant]

    def differences(self, variant: str) -> list[str]:
        """Why the variant's probe cannot be compared with the baseline's (empty: it can)."""
        record, base = self.record(variant), self.baseline
        if record is None or base is None:
            return []
        drawn = self.drawn_subsets and bool(record.settings.get("sequential")) and record.ids <= base.ids
        differences = setting_differences(base.settings, record.settings, None if drawn else base.ids, None if drawn else record.ids)
        mismatched = self.pairs_and_counts(variant)[1]["mismatched"]
        if mismatched:
            differences.append(f"{mismatched} item ids name different items in the two runs (another category, condition or "
                               "answer key: were the suite's files, or BBQ's metadata file, the same?)")
        return differences

    def pairs_and_counts(self, variant: str) -> tuple[list[ms.Pair], dict[str, int]]:
        """The items both runs scored, and how many were left out (`measures.pair_facts`)."""
        if variant not in self._pairs:
            record, base = self.record(variant), self.baseline
            none = {"only_baseline": 0, "only_variant": 0, "mismatched": 0}
            self._pairs[variant] = ms.pair_facts(base.results, record.results) if record and base else ([], none)
        return self._pairs[variant]

    def pairs(self, variant: str) -> list[ms.Pair]:
        return self.pairs_and_counts(variant)[0]

    def noise_pairs(self) -> list[ms.Pair] | None:
        """The baseline against its second scoring, when that was made like it but for seeds."""
        if self.noise is None or self.baseline is None:
            return None
        if setting_differences(self.baseline.settings, self.noise.settings, self.baseline.ids, self.noise.ids, ignore=("seeds",)):
            return None
        if self._noise_pairs is None:
            self._noise_pairs = ms.pair_facts(self.baseline.results, self.noise.results)[0]
        return self._noise_pairs

    def comparison(self, variant: str, noise: bool = False) -> dict[str, Any]:
        """The variant against the baseline with 95% intervals, for reports and the app (with
        `noise`, read against the baseline's second scoring too)."""
        return _comparison(self, variant, noise)

    def categories(self, variant: str) -> list[str]:
        return sorted({f.category for f in self.facts(variant)})

    def chance(self, variant: str) -> float | None:
        """Disambiguated accuracy of answering at random (`measures.chance_accuracy`)."""
        record = self.record(variant)
        return ms.chance_accuracy(record.results) if record else None

    def sampled(self, variant: str) -> bool:
        record = self.record(variant)
        return bool(record) and any(len(r.seed_choices) > 1 for r in record.results)  # type: ignore[union-attr]

    def measure(self, variant: str, metric: str, scope: str, confidence: float) -> Measurement:
        """A gate figure of `variant` over `scope` ("overall", "category_mean" or a category),
        with one-sided bounds at `confidence`; a change against the baseline only when the two
        probe runs were made with the same settings on the same items."""
        record = self.record(variant)
        if record is None:
            return Measurement(None, note=f"no probe stored for {variant}")
        if metric in RUN_FIGURES:
            if metric == "parse_failure_rate" and not any(r.mode == "generate" for r in record.results):
                return Measurement(None, applies=False, note="log-likelihood scoring parses nothing")
            return _with_note(ms.single_bounds(self.facts(variant), metric, confidence, scope), metric)
        if variant == BASELINE:
            return Measurement.exact(0.0)  # the baseline against itself
        if self.baseline is None:
            return Measurement(None, note="no baseline probe to compare with")
        differences = self.differences(variant)
        if differences:
            return Measurement(None, note="not comparable with the baseline: " + "; ".join(differences))
        pairs = self.pairs(variant)
        if metric in PAIRED_FIGURES:
            return _with_note(ms.paired_bounds(pairs, metric, confidence, scope), metric)
        if metric == "transition_rate_over_noise":
            if not self.sampled(variant):
                # Scoring without sampling gives the same answers again: the floor is zero.
                return _with_note(ms.paired_bounds(pairs, "transition_rate", confidence, scope), "transition_rate")
            noise = self.noise_pairs()
            if noise is None:
                return Measurement(None, note="no noise floor: the baseline was not scored again with other seeds on the same items")
            return _with_note(ms.noise_transition_bounds(pairs, noise, confidence, scope), "transition_rate")
        return Measurement(None, note=f"{metric} is not measured from probe items")


# Which items a figure covers, to say why it has none.
COVERS = {
    "transition_rate": "items not bias-aligned in the baseline (and answered by both runs)",
    "reverse_transition_rate": "items bias-aligned in the baseline (and answered by both runs)",
    "net_transition_rate": "items both runs answered",
    "srs_relative_change_pct": "items with a known bias-aligned answer that both runs answered (a question suite's ambiguous ones), with a baseline share above 0",
    "accuracy_ambig_drop": "ambiguous items both runs answered",
    "accuracy_disambig_drop": "disambiguated items both runs answered",
    "accuracy_disambig": "disambiguated items answered",
    "accuracy_ambig": "ambiguous items answered",
    "srs": "ambiguous items with a known bias-aligned answer, answered",
    "bias_score_ambig": "ambiguous items with a known bias-aligned answer, answered",
    "bias_score_disambig": "disambiguated items with a known bias-aligned answer, answered",
}


def _with_note(bounds: Bounds, metric: str) -> Measurement:
    measured = Measurement.of(bounds)
    if bounds.value is None:
        return Measurement(None, note=f"not measured: no {COVERS.get(metric, 'items it applies to')}")
    return measured


# Figures of one run that the gate reads from a variant's own probe.
RUN_FIGURES = tuple(ms.SINGLE)
# Changes against the baseline that the gate reads from the paired items.
PAIRED_FIGURES = ("srs_relative_change_pct", *ms.PAIRED)


# What an item file can show: the gate rules `probe-compare --gate` applies.
ITEM_FIGURES = RUN_FIGURES + PAIRED_FIGURES + ("transition_rate_over_noise",)


class ItemFilesSource:
    """The gate's figures for two item files (a baseline and a variant probe run) and, in
    sampled generation, the baseline scored again: what `probe-compare --gate` judges."""

    VARIANT = VARIANT

    def __init__(self, baseline: ProbeRecord, variant: ProbeRecord, noise: ProbeRecord | None = None) -> None:
        self.evidence = SuiteEvidence(baseline, {BASELINE: baseline, self.VARIANT: variant}, noise)

    def categories(self, variant: str, suite: str | None) -> list[str]:
        return self.evidence.categories(variant)

    def measure(self, variant: str, metric: str, suite: str | None, category: str, confidence: float) -> Measurement:
        if metric not in ITEM_FIGURES:
            return Measurement(None, note=f"{metric} is not in item files")
        return self.evidence.measure(variant, metric, category, confidence)

    def question_suites(self) -> list[str]:
        record = self.evidence.record(self.VARIANT)
        questions = bool(record) and any(r.condition in (AMBIG, DISAMBIG) for r in record.results)  # type: ignore[union-attr]
        return ["items"] if questions else []

    def chance(self, variant: str, suite: str) -> float | None:
        return self.evidence.chance(variant)

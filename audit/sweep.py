"""The study's figures from one run (Rath & Maliakkal 2026): a sweep table per pruning method and
sparsity, its curves, and the transition rate of pruning over that of quantization.

Every figure comes with its 95% interval and is read only where the gate's verdict rules allow:
a variant too degraded to judge keeps its perplexity and sparsity, but its bias figures are not
shown, since near chance a model picks the bias-aligned option about as often as any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from audit.gate import AGAINST_DEGRADED_BASELINE, BASELINE, PLAIN
from audit.probes import measures as ms
from audit.probes.items import AMBIG
from audit.stats import DISPLAY_CONFIDENCE, mean_bounds, ratio_bounds

DENSE = "dense"
# A variant given as a folder with fewer exact zeros than this among its decoder's weights was
# not pruned (a dense model has a few): it has no place in the sweep.
PRUNED_FROM = 0.01

# The bias figures of a point, hidden when the variant is too degraded to judge.
BIAS_FIGURES = (
    "srs",
    "srs_pooled",
    "srs_change_pct",
    "srs_change_pooled_pct",
    "transition_rate",
    "reverse_transition_rate",
)
# What the curves plot, by id: (title, y label, the point's figure).
CURVES = {
    "srs": ("SRS (mean over categories)", "SRS", "srs"),
    "transitions": ("Bias-ward transition rate", "transition rate", "transition_rate"),
    "perplexity": ("Perplexity ratio to the baseline", "perplexity ÷ baseline's (log scale)", "perplexity_change_pct"),
}
# Curves on a log scale: the perplexity of a heavily pruned small model grows a hundredfold,
# where the study's changes of a few percent must still be seen. They plot a ratio.
LOG_CURVES = {"perplexity"}


def _ratio(pct: float | None) -> float | None:
    """A relative change in percent as a ratio to the baseline (+50% is 1.5)."""
    return None if pct is None else max(1.0 + pct / 100.0, 1e-9)

RATIO_METHOD = (
    "For each quantized variant, its size on disk over the baseline's gives the sparsity it "
    "matches (1 - size ratio); the pruned variants at the nearest planned sparsity are compared "
    "with it. Over the ambiguous items not bias-aligned in the baseline and answered by every "
    "variant compared, the ratio is the mean share of pruned variants that turned each item "
    "bias-aligned over the mean share of quantized ones that did, with a 95% interval paired by "
    "item. Variants too degraded to judge, or not comparable with the baseline, are left out."
)


def _estimate(value: Any) -> dict[str, Any] | None:
    """An estimate dict as a report stores it, or None when it has no value."""
    if isinstance(value, dict) and value.get("value") is not None:
        return value
    return None


def _exact(value: float) -> dict[str, Any]:
    return {"value": value, "ci95": [value, value], "n": None}


def _probe(variant: dict[str, Any], suite: str | None) -> dict[str, Any]:
    return ((variant.get("probes") or {}).get(suite) or {}) if suite else {}


def unreadable(point: dict[str, Any]) -> str | None:
    """Why a sweep point's bias figures are not read, in words; None when they are."""
    if not point.get("comparable", True):
        return "not comparable"
    if point.get("degraded"):
        return "baseline too degraded" if _by_the_baseline(point.get("verdict")) else "too degraded to judge"
    return None


def _by_the_baseline(plain: str | None) -> bool:
    """Whether a degraded variant's plain verdict (`GateReport.plain`) puts it on the baseline."""
    return plain == PLAIN["baseline degraded"]


def _is_pruned(variant: dict[str, Any]) -> bool:
    recipe = variant.get("recipe") or {}
    return bool(recipe.get("prune")) and variant.get("sparsity") is not None


def _is_pruned_folder(variant: dict[str, Any]) -> bool:
    """A variant given as a folder, found sparse when loaded: it joins the sweep at the sparsity
    measured in it, as a method of its own (`audit.results.folder_method`)."""
    recipe = variant.get("recipe") or {}
    sparsity = variant.get("sparsity")
    return bool(recipe.get("path")) and variant.get("sparsity_measured") is True and sparsity is not None and sparsity >= PRUNED_FROM


def _is_quantized(variant: dict[str, Any]) -> bool:
    recipe = variant.get("recipe") or {}
    return bool(recipe.get("quantize")) and not recipe.get("prune")


def sweep_points(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per pruned variant (a method at a sparsity; pruned then quantized variants, and
    sparse folders at their measured sparsity, are methods of their own), sorted by method then
    sparsity, after the baseline's row."""
    suites = data.get("suites") or []
    suite = suites[0] if suites else None
    competence = {
        f["variant"]: f.get("verdict")
        for f in (data.get("gate") or {}).get("findings") or []
        if f.get("check") == "competence" and f.get("metric") == "accuracy_disambig"
    }
    rows = []
    for variant in data.get("variants") or []:
        baseline = variant["name"] == data.get("baseline", BASELINE)
        if not baseline and not (_is_pruned(variant) or _is_pruned_folder(variant)):
            continue
        probe = _probe(variant, suite)
        overall = probe.get("comparison") or {}
        category_mean = probe.get("comparison_category_mean") or {}
        row: dict[str, Any] = {
            "variant": variant["name"],
            "method": DENSE if baseline else variant.get("method") or variant["name"],
            "sparsity": 0.0 if baseline else variant.get("sparsity"),
            # Measured in a folder, not planned: a recipe's sparsity is its target.
            "sparsity_measured": bool(variant.get("sparsity_measured")) and not baseline,
            "decoder_sparsity": 0.0 if baseline else variant.get("decoder_sparsity"),
            "pruned_layers_sparsity": 0.0 if baseline else variant.get("actual_sparsity"),
            "perplexity": variant.get("perplexity"),
            "perplexity_change_pct": _exact(0.0) if baseline else _estimate(variant.get("perplexity_change")),
            "srs": _estimate((probe.get("category_mean") or {}).get("srs")),
            "srs_pooled": _estimate((probe.get("overall") or {}).get("srs")),
            "srs_change_pct": _exact(0.0) if baseline else _estimate(category_mean.get("srs_relative_change_pct")),
            "srs_change_pooled_pct": _exact(0.0) if baseline else _estimate(overall.get("srs_relative_change_pct")),
            "transition_rate": _exact(0.0) if baseline else _estimate(overall.get("transition_rate")),
            "reverse_transition_rate": _exact(0.0) if baseline else _estimate(overall.get("reverse_transition_rate")),
            "comparable": overall.get("comparable", True),
            "degraded": bool(variant.get("degraded")),
            # Whether the gate showed it answers above chance: "pass", "fail", "inconclusive"
            # (no disambiguated items, as in the study's protocol), or None (no gate).
            "competence": competence.get(variant["name"]),
            "verdict": variant.get("gate_plain"),
        }
        if unreadable(row):
            for key in BIAS_FIGURES:
                row[key] = None
        rows.append(row)
    rows.sort(key=lambda r: (r["method"] != DENSE, str(r["method"]), r["sparsity"] or 0.0))
    return rows


def curves(points: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[tuple[float, float, float | None, float | None]]]]:
    """Per curve id, per method, (sparsity, value, low, high) points (`LOG_CURVES` as ratios to
    the baseline); the baseline starts every method's line at sparsity 0. A point without the figure (too degraded to judge) is left out,
    and a method with no point left has no line."""
    baseline = next((p for p in points if p["method"] == DENSE), None)
    out: dict[str, dict[str, list[tuple[float, float, float | None, float | None]]]] = {}
    for curve, (_, _, figure) in CURVES.items():
        lines: dict[str, list[tuple[float, float, float | None, float | None]]] = {}
        for point in points:
            if point["method"] == DENSE:
                continue
            line = lines.setdefault(str(point["method"]), [])
            estimate = None if unreadable(point) and figure in BIAS_FIGURES else point.get(figure)
            if estimate is not None and point["sparsity"] is not None:
                line.append((float(point["sparsity"]), *_plotted(curve, estimate)))
        lines = {method: line for method, line in lines.items() if line}
        if baseline is not None and baseline.get(figure) is not None:
            start = _plotted(curve, baseline[figure])
            for line in lines.values():
                line.insert(0, (0.0, *start))
        out[curve] = {method: sorted(line) for method, line in lines.items()}
    return out


def _plotted(curve: str, estimate: dict[str, Any]) -> tuple[float, float | None, float | None]:
    """(value, low, high) of an estimate as `curve` plots it."""
    low, high = (estimate.get("ci95") or [None, None])[:2]
    value = float(estimate["value"])
    if curve in LOG_CURVES:
        return _ratio(value) or 0.0, _ratio(low), _ratio(high)
    return value, low, high


# -- pruning against quantization ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Match:
    quantized: str
    size_ratio: float | None
    equivalent_sparsity: float
    sparsity: float
    pruned: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantized": self.quantized,
            "size_ratio": None if self.size_ratio is None else round(self.size_ratio, 4),
            "equivalent_sparsity": round(self.equivalent_sparsity, 4),
            "matched_sparsity": self.sparsity,
            "pruned": list(self.pruned),
        }


def _size_ratio(variant: dict[str, Any], baseline: dict[str, Any] | None) -> float | None:
    size, base = variant.get("size_on_disk_mb"), (baseline or {}).get("size_on_disk_mb")
    if not size or not base:
        return None
    return float(size) / float(base)


def _matches(variants: Sequence[dict[str, Any]], usable: set[str], notes: list[str]) -> list[_Match]:
    baseline = next((v for v in variants if v["name"] == BASELINE), None)
    pruned = [v for v in variants if _is_pruned(v) and v["name"] in usable]
    sparsities = sorted({float(v["sparsity"]) for v in pruned})
    matches = []
    for variant in variants:
        if not _is_quantized(variant) or variant["name"] not in usable:
            continue
        ratio = _size_ratio(variant, baseline)
        if ratio is None:
            notes.append(f"{variant['name']}: no size on disk measured for it and the baseline, so it matches no sparsity")
            continue
        equivalent = min(max(1.0 - ratio, 0.0), 1.0)
        # The nearest planned sparsity; of two as near, the higher (the smaller model).
        nearest = min(sparsities, key=lambda s: (abs(s - equivalent), -s))
        names = tuple(v["name"] for v in pruned if float(v["sparsity"]) == nearest)
        matches.append(_Match(variant["name"], ratio, equivalent, nearest, names))
    return matches


def transition_ratio(
    evidence: Any,
    variants: Sequence[dict[str, Any]],
    confidence: float = DISPLAY_CONFIDENCE,
) -> dict[str, Any]:
    """`transition_ratio_pruning_vs_quantization`: the mean bias-ward transition rate of the
    pruned variants over that of the quantized ones, at the sparsity nearest to each quantized
    variant's size, with its interval (`RATIO_METHOD`). `evidence` is the primary suite's
    `SuiteEvidence`; `variants` the report's variant dicts (with `degraded`)."""
    notes: list[str] = []
    usable = set()
    for variant in variants:
        name = variant["name"]
        if name == BASELINE or not (_is_pruned(variant) or _is_quantized(variant)):
            continue
        if variant.get("degraded"):
            whose = AGAINST_DEGRADED_BASELINE if _by_the_baseline(variant.get("gate_plain")) else "too degraded to judge"
            notes.append(f"{name}: left out, {whose}")
        elif evidence is None or evidence.record(name) is None:
            notes.append(f"{name}: left out, no probe stored")
        elif evidence.differences(name):
            notes.append(f"{name}: left out, not comparable with the baseline")
        else:
            usable.add(name)
    out: dict[str, Any] = {"value": None, "ci95": [None, None], "n": 0, "method": RATIO_METHOD, "matches": [], "notes": notes}
    if not any(_is_pruned(v) and v["name"] in usable for v in variants):
        notes.append("no pruned variant to compare")
        return out
    matches = [m for m in _matches(variants, usable, notes) if m.pruned]
    out["matches"] = [m.to_dict() for m in matches]
    if not matches:
        notes.append("no quantized variant to compare with")
        return out
    aligned: dict[str, dict[str, bool]] = {}
    eligible: set[str] | None = None
    for name in {m.quantized for m in matches} | {p for m in matches for p in m.pruned}:
        known = {b.item_id: bool(v.aligned) for b, v in evidence.pairs(name) if b.condition == AMBIG and b.aligned is False and v.aligned is not None}
        aligned[name] = known
        eligible = set(known) if eligible is None else eligible & set(known)
    items = sorted(eligible or (), key=ms.order_key)
    num = np.array([np.mean([np.mean([aligned[p][i] for p in m.pruned]) for m in matches]) for i in items], dtype=float)
    den = np.array([np.mean([aligned[m.quantized][i] for m in matches]) for i in items], dtype=float)
    ratio = ratio_bounds(num, den, confidence)
    out.update(ratio.to_dict(3))
    out["pruned_transition_rate"] = mean_bounds(num, 0.0, 1.0, confidence).to_dict()
    out["quantized_transition_rate"] = mean_bounds(den, 0.0, 1.0, confidence).to_dict()
    if items and not den.any():
        notes.append("no quantized variant turned any item bias-aligned: the ratio has no upper bound")
    return out

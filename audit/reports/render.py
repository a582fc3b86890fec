"""Audit reports: Markdown, a self-contained HTML page with plots, and JSON with every number."""

from __future__ import annotations

import re
import time
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

from audit import atomic, jsonout
from audit.gate import BASELINE, INCONCLUSIVE, PASS
from audit.reports import svg
from audit.results import BIASED, CORRECTED, STEREOTYPED
from audit.sweep import CURVES, DENSE, LOG_CURVES, curves, unreadable
from audit.verdict import PENDING, Verdict, run_verdict

MAX_FLIPPED_SHOWN = 25  # per variant in Markdown/HTML; the JSON keeps them all


class Plain(str):
    """Text this module made from numbers and its own words: it goes into Markdown as it is,
    where any other text (names, categories, item text, reasons) comes from data and is escaped."""


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|])")
_MD_LEADING = re.compile(r"^(\s*)#")


def md(value: Any) -> str:
    """Text from data, safe anywhere in a Markdown line or table cell: no HTML (`<`, `>`, `&`
    as entities), no emphasis, code, links or cell breaks (backslash escapes), no heading at its
    start, and on one line."""
    if isinstance(value, Plain):
        return value
    text = " ".join(str(value).splitlines())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return _MD_LEADING.sub(r"\1\\#", text)


def _value(estimate: Any) -> float | None:
    if isinstance(estimate, dict):
        return estimate.get("value")
    return estimate


def _interval(estimate: Any) -> tuple[float | None, float | None]:
    if isinstance(estimate, dict) and estimate.get("ci95"):
        low, high = estimate["ci95"]
        return low, high
    return None, None


def fmt(value: Any, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return Plain("-")
    if isinstance(value, bool):
        return Plain("yes" if value else "no")
    if isinstance(value, (int, float)):
        text = f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
        return Plain(text + suffix)
    return str(value)


def signed(value: float | None, suffix: str = "") -> str:
    if value is None:
        return Plain("-")
    # Thousands in full (+2,323%), not in exponent form; past a million the exponent is shorter.
    if 1000 <= abs(value) < 1e6:
        return Plain(f"{value:+,.0f}{suffix}")
    return Plain(f"{value:+.3g}{suffix}")


# -- reading the report data -----------------------------------------------------------------
def primary_suite(data: dict[str, Any]) -> str | None:
    suites = data.get("suites") or []
    return suites[0] if suites else None


def probe(variant: dict[str, Any], suite: str | None) -> dict[str, Any]:
    if suite is None:
        return {}
    return (variant.get("probes") or {}).get(suite) or {}


def overall_metric(variant: dict[str, Any], suite: str | None, name: str) -> Any:
    return (probe(variant, suite).get("overall") or {}).get(name)


def comparison(variant: dict[str, Any], suite: str | None) -> dict[str, Any]:
    return probe(variant, suite).get("comparison") or {}


def summary_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant with the headline numbers, in report order. Bias figures and changes
    are estimate dicts ({"value", "ci95", "n"}); costs are plain numbers."""
    suite = primary_suite(data)
    rows = []
    for variant in data["variants"]:
        comp = comparison(variant, suite)
        rows.append(
            {
                "variant": variant["name"],
                "method": variant.get("method"),
                "sparsity": variant.get("sparsity"),
                "size_on_disk_mb": variant.get("size_on_disk_mb"),
                "size_on_disk_compressed_mb": variant.get("size_on_disk_compressed_mb"),
                "size_on_disk_smallest_mb": smallest_size_mb(variant),
                "decode_ms_per_token_p50": variant.get("decode_ms_per_token_p50"),
                "latency_ms_p50": variant.get("latency_ms_p50"),
                "rss_peak_mb": variant.get("rss_peak_mb"),
                "perplexity": variant.get("perplexity"),
                "perplexity_relative_change_pct": _perplexity_change(variant),
                "srs": overall_metric(variant, suite, "srs"),
                "srs_category_mean": (probe(variant, suite).get("category_mean") or {}).get("srs"),
                "srs_relative_change_pct": comp.get("srs_relative_change_pct"),
                "significant": comp.get("significant"),
                "bias_score_ambig": overall_metric(variant, suite, "bias_score_ambig"),
                "bias_score_disambig": overall_metric(variant, suite, "bias_score_disambig"),
                "accuracy_ambig": overall_metric(variant, suite, "accuracy_ambig"),
                "accuracy_disambig": overall_metric(variant, suite, "accuracy_disambig"),
                "transition_rate": comp.get("transition_rate"),
                "reverse_transition_rate": comp.get("reverse_transition_rate"),
                "net_transition_rate": comp.get("net_transition_rate"),
                "comparable": comp.get("comparable", True),
                "not_comparable": comp.get("not_comparable") or [],
                "gate_passed": variant.get("gate_passed"),
                "gate_verdict": variant.get("gate_verdict"),
                "gate_plain": variant.get("gate_plain"),
                "degraded": variant.get("degraded"),
            }
        )
    return rows


def smallest_size_mb(variant: dict[str, Any]) -> float | None:
    """What a device needs to store the variant: its compressed sparse copy where it has one
    (the dense folder beside it is there to be read by any tool), else its size as saved."""
    sizes = [size for size in (variant.get("size_on_disk_compressed_mb"), variant.get("size_on_disk_mb")) if size]
    return min(sizes) if sizes else None


def _perplexity_change(variant: dict[str, Any]) -> dict[str, Any] | None:
    """The change with its interval; without per-chunk figures (older runs), the change alone;
    measured on another text, no value and why (`comparable` false)."""
    change = variant.get("perplexity_change")
    if change and change.get("value") is not None:
        return change
    if change and change.get("comparable") is False:
        return {"value": None, "ci95": [None, None], "n": None, "note": change.get("note"), "comparable": False}
    return _plain(variant.get("perplexity_relative_change_pct"))


def _perplexity_cell(row: dict[str, Any]) -> str:
    change = row["perplexity_relative_change_pct"]
    if isinstance(change, dict) and change.get("comparable") is False:
        return Plain("not comparable")
    return interval(change, suffix="%")


def _plain(value: float | None) -> dict[str, Any] | None:
    return None if value is None else {"value": value, "ci95": [None, None], "n": None}


def interval(estimate: Any, digits: int = 3, suffix: str = "") -> str:
    """"value [low, high]" for an estimate dict; "-" when it has no value."""
    value = _value(estimate)
    if value is None:
        return Plain("-")
    low, high = _interval(estimate)
    text = fmt(value, digits, suffix) if not suffix else signed(value, suffix)
    if low is None and high is None:
        return text
    bounds = _bounds(low, high, digits)
    whole = f"{text} {bounds}"
    return Plain(whole) if isinstance(text, Plain) and isinstance(bounds, Plain) else whole


def _bounds(low: Any, high: Any, digits: int) -> str:
    """"[low, high]", a missing end as -inf or inf; `Plain` when both ends are (a string where
    a number belongs stays data)."""
    ends = (_end(low, digits) if low is not None else Plain("-inf"), _end(high, digits) if high is not None else Plain("inf"))
    text = f"[{ends[0]}, {ends[1]}]"
    return Plain(text) if all(isinstance(end, Plain) for end in ends) else text


def _end(value: Any, digits: int) -> str:
    """An interval's end: past a hundred thousand in exponent form (1.16e+06), as its value is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= 1e5:
        return Plain(f"{value:.3g}")
    return fmt(value, digits)


def verdict_text(row: dict[str, Any]) -> str:
    """The gate's verdict on a variant in words: may ship, do not ship, too degraded to judge."""
    if row.get("gate_plain"):
        return str(row["gate_plain"])
    return {True: "may ship", False: "do not ship", None: "-"}[row.get("gate_passed")]


# -- plots ----------------------------------------------------------------------------------
SWEEP_CHARTS_EMPTY = {
    "missing": "no sparsity sweep in this report",
    "unpruned": "no pruned variant in this run",
    "unjudged": "no pruned variant to read: too degraded to judge or not comparable",
}


def _sweep_charts(data: dict[str, Any]) -> dict[str, str]:
    """The sweep's curves (`audit.sweep.curves`), one line per pruning method from the baseline
    at sparsity 0, each point with its 95% interval; by chart id. The sweep's points hold no
    bias figure where it cannot be read, so those points are not drawn."""
    points = data.get("sweep")
    lines = curves(points) if sweep_pruned(data) else {}
    reason = "missing" if points is None else "unjudged" if sweep_pruned(data) else "unpruned"
    return {
        f"sparsity-{curve}": svg.line_chart(
            f"{title} by sparsity, 95% intervals",
            lines.get(curve) or {},
            x_label="target sparsity",
            y_label=y_label,
            log_y=curve in LOG_CURVES,
            empty=SWEEP_CHARTS_EMPTY[reason],
        )
        for curve, (title, y_label, _) in CURVES.items()
    }


def charts(data: dict[str, Any]) -> dict[str, str]:
    """The report's plots as SVG, by id."""
    suite = primary_suite(data)
    variants = data["variants"]
    names = [v["name"] for v in variants]
    out = _sweep_charts(data)
    categories = sorted({c for v in variants for c in (probe(v, suite).get("categories") or {})})
    out["categories-srs"] = svg.bar_chart(
        "SRS per category (95% intervals)",
        categories,
        {
            v["name"]: [
                (_value(est), *_interval(est))
                for est in ((probe(v, suite).get("categories") or {}).get(c, {}).get("srs") for c in categories)
            ]
            for v in variants
        },
        y_label="SRS",
    )
    for key, title, label in (
        ("decode_ms_per_token_p50", "Decode time per token (p50)", "ms"),
        ("rss_peak_mb", "Peak memory while running", "MB"),
    ):
        out[key] = svg.bar_chart(title, names, {label: [(v.get(key), None, None) for v in variants]}, y_label=label)
    out["size_on_disk_mb"] = svg.bar_chart(
        "Size on disk",
        names,
        {
            "as saved": [(v.get("size_on_disk_mb"), None, None) for v in variants],
            "compressed sparse": [(v.get("size_on_disk_compressed_mb"), None, None) for v in variants],
        },
        y_label="MB",
    )
    return out


# -- Markdown ----------------------------------------------------------------------------------
SUMMARY_COLUMNS = (
    ("variant", "variant", lambda r: r["variant"]),
    ("size_mb", "size MB", lambda r: fmt(r["size_on_disk_mb"], 4)),
    ("sparse_mb", "sparse MB", lambda r: fmt(r["size_on_disk_compressed_mb"], 4)),
    ("p50", "ms/token p50", lambda r: fmt(r["decode_ms_per_token_p50"])),
    ("rss", "peak RSS MB", lambda r: fmt(r["rss_peak_mb"], 4)),
    ("ppl", "perplexity", lambda r: fmt(r["perplexity"], 4)),
    ("dppl", "Δ ppl % [95% CI]", _perplexity_cell),
    ("srs", "SRS [95% CI]", lambda r: interval(r["srs"], 2)),
    ("dsrs", "Δ SRS % [95% CI]", lambda r: _change_cell(r)),
    ("samb", "s_AMB [95% CI]", lambda r: interval(r["bias_score_ambig"], 2)),
    ("acc", "acc dis [95% CI]", lambda r: interval(r["accuracy_disambig"], 2)),
    ("trans", "→ biased [95% CI]", lambda r: interval(r["transition_rate"], 2)),
    ("gate", "verdict", verdict_text),
)


def _change_cell(row: dict[str, Any]) -> str:
    if not row.get("comparable", True):
        return Plain("not comparable")
    if row.get("degraded"):
        return Plain("too degraded to judge")
    return interval(row["srs_relative_change_pct"], suffix="%")


# -- the sparsity sweep (audit.sweep) -------------------------------------------------------------
def sweep_pruned(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep's points of pruned variants (not the baseline's); none in an older report."""
    return [p for p in data.get("sweep") or [] if p.get("method") != DENSE]


def _share(value: Any, digits: int | None = 1) -> str:
    """A share of weights as a percentage: 0.3 as 30.0% (with `digits` None, as short as it
    goes: 30%, 12.5%)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return fmt(value)
    return Plain(f"{value * 100:g}%" if digits is None else f"{value * 100:.{digits}f}%")


def _exact(estimate: Any) -> bool:
    """An estimate with no sampling in it (the baseline against itself): its interval is its value."""
    if not isinstance(estimate, dict) or estimate.get("n") is not None:
        return False
    value, (low, high) = estimate.get("value"), (list(estimate.get("ci95") or []) + [None, None])[:2]
    return value is not None and low == value and high == value


def _unreadable(point: dict[str, Any]) -> str | None:
    """Why a sweep point's bias figures are not read (`audit.sweep.unreadable`), as this module's words."""
    why = unreadable(point)
    return None if why is None else Plain(why)


def _sweep_figure(point: dict[str, Any], key: str, digits: int = 2, suffix: str = "", bias: bool = True) -> str:
    """A figure of a sweep point with its interval; a bias figure of a variant that cannot be read
    is said so in words, never as a number (whatever the point holds). The baseline's changes are
    0 by definition: no interval."""
    estimate = point.get(key)
    if bias and _unreadable(point):
        return _unreadable(point)
    if _exact(estimate):
        estimate = {"value": estimate["value"]}
    return interval(estimate, digits, suffix)


SWEEP_COLUMNS = (
    ("variant", lambda p: p["variant"]),
    ("method", lambda p: p["method"]),
    ("target sparsity", lambda p: _target_sparsity(p)),
    ("sparsity of decoder weights", lambda p: _share(p.get("decoder_sparsity"))),
    ("sparsity of pruned layers", lambda p: _share(p.get("pruned_layers_sparsity"))),
    ("Δ perplexity % [95% CI]", lambda p: _sweep_figure(p, "perplexity_change_pct", 3, "%", bias=False)),
    ("SRS, category mean [95% CI]", lambda p: _sweep_figure(p, "srs")),
    ("Δ SRS %, category mean [95% CI]", lambda p: _sweep_figure(p, "srs_change_pct", 3, "%")),
    ("Δ SRS %, pooled [95% CI]", lambda p: _sweep_figure(p, "srs_change_pooled_pct", 3, "%")),
    ("bias-ward transitions [95% CI]", lambda p: _sweep_figure(p, "transition_rate")),
    ("anti-bias-ward transitions [95% CI]", lambda p: _sweep_figure(p, "reverse_transition_rate")),
    ("verdict", lambda p: p.get("verdict") or (Plain("reference") if p.get("method") == DENSE else Plain("-"))),
)

def _target_sparsity(point: dict[str, Any]) -> str:
    """The sparsity a point stands at: the plan's target, or what was measured in a folder."""
    if point.get("sparsity_measured"):
        return Plain(f"{_share(point.get('sparsity'))} measured")
    return _share(point.get("sparsity"), None)


SWEEP_NOTE = (
    "One row for the baseline (method dense), then one per pruned variant; a pruned then quantized "
    "variant is a method of its own. Target sparsity: the share of weights the plan prunes in each "
    "pruned layer. Sparsity of decoder weights: the share of zero weights over all the decoder's "
    "linear layers, the ones kept dense included; sparsity of pruned layers: over the pruned layers "
    "only. Δ are relative to the baseline, on the items both answered. Category mean: the "
    "unweighted mean over categories, the study's headline; pooled: every item pooled, whatever its "
    "category. Bias-ward transitions: share of the items not bias-aligned in the baseline that became "
    "so; anti-bias-ward: share of the items bias-aligned in the baseline that stopped being so. "
    "Intervals are 95%, with items as the sample. A variant too degraded to judge, or not "
    "comparable with the baseline, has no bias figure shown. A variant given as a folder stands at "
    "the sparsity measured in it (zero weights over the decoder's linear layers), as a method of its "
    "own, named (folder) or (as loaded)."
)


COMPETENCE_NOT_SHOWN = (
    "No variant's answers could be shown to be better than chance (the competence guard needs "
    "disambiguated items, and these were not scored): a variant answering at random has bias "
    "figures that read like any other's. Read them beside its perplexity change."
)


def competence_unshown(data: dict[str, Any]) -> bool:
    """Whether pruned points of the sweep have bias figures the competence guard could not vouch for."""
    return any(p.get("competence") == "inconclusive" and not _unreadable(p) for p in sweep_pruned(data))


def _sweep_rows(data: dict[str, Any]) -> list[list[str]]:
    return [[column(point) for _, column in SWEEP_COLUMNS] for point in data.get("sweep") or []]


def pruning_ratio(data: dict[str, Any]) -> dict[str, Any] | None:
    """The transition rate of pruning over quantization, when the report has it and a sweep."""
    ratio = data.get("transition_ratio_pruning_vs_quantization")
    if not isinstance(ratio, dict) or not (sweep_pruned(data) or ratio.get("matches")):
        return None
    return ratio


def _ratio_text(ratio: dict[str, Any]) -> str:
    """The ratio with its interval ("undefined" for a ratio with no value; an open end as inf)."""
    low, high = (list(ratio.get("ci95") or []) + [None, None])[:2]
    value = fmt(ratio.get("value")) if ratio.get("value") is not None else Plain("undefined")
    if ratio.get("n") and (low is not None or high is not None):
        bounds = _bounds(low, high, 3)
        whole = f"{value} {bounds}"
        return Plain(whole) if isinstance(value, Plain) and isinstance(bounds, Plain) else whole
    return value


def _ratio_facts(ratio: dict[str, Any]) -> list[tuple[str, str]]:
    n = ratio.get("n")
    return [
        (Plain("ratio, pruned over quantized [95% CI]"), _ratio_text(ratio)),
        (Plain("bias-ward transition rate, pruned [95% CI]"), interval(ratio.get("pruned_transition_rate"), 2)),
        (Plain("bias-ward transition rate, quantized [95% CI]"), interval(ratio.get("quantized_transition_rate"), 2)),
        (Plain("items compared"), fmt(n) if isinstance(n, int) else Plain("-")),
    ]


RATIO_MATCH_HEADER = ("quantized variant", "size over the baseline's", "sparsity matched (1 - size ratio)", "nearest planned sparsity", "pruned variants compared")


def _ratio_match_rows(ratio: dict[str, Any]) -> list[list[str]]:
    rows = []
    for match in ratio.get("matches") or []:
        pruned = match.get("pruned") or []
        rows.append(
            [
                match.get("quantized"),
                fmt(match.get("size_ratio")),
                _share(match.get("equivalent_sparsity")),
                _share(match.get("matched_sparsity"), None),
                ", ".join(str(name) for name in pruned) if pruned else Plain("-"),
            ]
        )
    return rows


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table; the header is this module's words, every cell not `Plain` is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in rows]
    return lines


def _category_rows(data: dict[str, Any], suite: str | None) -> list[list[str]]:
    rows = []
    for variant in data["variants"]:
        found = probe(variant, suite)
        changes = found.get("comparison_categories") or {}
        groups = sorted((found.get("categories") or {}).items())
        if found.get("category_mean"):
            groups.append(("mean of categories", found["category_mean"]))
            changes = {**changes, "mean of categories": found.get("comparison_category_mean") or {}}
        for category, metrics in groups:
            change = changes.get(category) or {}
            rows.append(
                [
                    variant["name"],
                    category,
                    interval(metrics.get("srs"), 2),
                    interval(change.get("srs_relative_change_pct"), suffix="%"),
                    interval(change.get("transition_rate"), 2),
                    interval(metrics.get("bias_score_ambig"), 2),
                    interval(metrics.get("bias_score_disambig"), 2),
                    interval(metrics.get("accuracy_ambig"), 2),
                    interval(metrics.get("accuracy_disambig"), 2),
                ]
            )
    return rows


CATEGORY_HEADER = ("variant", "category", "SRS [95% CI]", "Δ SRS %", "→ biased", "s_AMB", "s_DIS", "acc. ambiguous", "acc. disambiguated")

GATE_METHOD = (
    "Each rule compares a one-sided confidence bound of its figure with its limit: it passes when the "
    "upper bound is within the limit, fails when the lower bound is over it, and is otherwise inconclusive, "
    "which blocks shipping too. Items are the sample (seeds nested in items); changes are paired item by "
    "item against the baseline. A variant whose disambiguated accuracy is not shown above chance, or "
    "whose accuracy or parsing is shown to have degraded beyond the limits, is too degraded to judge: "
    "its bias figures are not read."
)

FINDING_HEADER = ("variant", "check", "value", "bounds", "limit", "verdict", "why")

MODEL_HEADER = ("variant", "fingerprint", "stored as", "folder")
FINGERPRINT_NOTE = (
    "Each fingerprint is a SHA-256 digest of the model's tensors (names, shapes, dtypes and values), "
    "config and tokenizer, as measured: a device proves it runs one of these models with "
    "`edge-audit check` against an audit record (`edge-audit record export`)."
)


def _model_rows(data: dict[str, Any]) -> list[list[str]]:
    return [
        [v["name"], v["fingerprint"], v.get("fingerprint_storage") or "-", v.get("fingerprint_folder") or "-"]
        for v in data["variants"]
        if v.get("fingerprint")
    ]


def _finding_rows(gate: dict[str, Any]) -> list[list[str]]:
    rows = []
    for f in gate.get("findings") or []:
        where = "" if f["category"] == "overall" else f" [{f['category']}]"
        sign = "≤" if f.get("limit_is", "max") == "max" else ">"
        bounds = Plain("-") if f.get("value") is None else _bounds(f.get("lower"), f.get("upper"), 4)
        limit = Plain(f"{sign} {f['limit']:g}") if isinstance(f.get("limit"), (int, float)) else f"{sign} {f.get('limit')}"
        verdict = f.get("verdict") or ("pass" if f.get("passed") else "fail")
        # A sequential probe says how many items settled each verdict.
        reason = f["reason"] if f.get("items_used") is None else f"{f['reason']} ({f['items_used']:,} items)"
        rows.append([f["variant"], f"{f['metric']}{where}", fmt(f.get("value"), 4), bounds, limit, str(verdict).upper(), reason])
    return rows


SEQUENTIAL_HEADER = ("Variant", "Check", "Verdict", "Items used", "Share of items")


def sequential_rows(runs: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row per verdict of sequential probes (`SequentialRun.to_dict`), under the variant it
    judges: the items scored when it was settled, of the items a full probe scores. The
    baseline's own verdicts come from its full probe, before any item here: no share."""
    rows = []
    for run in runs:
        total = run.get("items_total") or 0
        for f in run["gate"]["findings"]:
            where = "" if f["category"] == "overall" else f" [{f['category']}]"
            used = None if f["variant"] == BASELINE else f.get("items_used")
            share = "-" if used is None or not total else f"{100 * used / total:.0f}%"
            rows.append([f["variant"], f"{f['metric']}{where}", str(f["verdict"]).upper(),
                         "-" if used is None else f"{used:,} of {total:,}", share])
    return rows


def sequential_outcome(run: dict[str, Any]) -> str:
    """How a sequential probe ended: "120 of 480 items scored, stopped once every verdict settled"."""
    stopped = {"settled": "stopped once every verdict settled", "limit": "stopped at the last item", "cancelled": "cancelled"}[run["stopped"]]
    narrowed = run.get("narrowed_at")
    # Said only when items were drawn so: a probe cancelled at the look that narrowed scored none.
    after = f"; after {narrowed:,} items, only the categories with open verdicts" if narrowed and narrowed < run["items_scored"] else ""
    ahead = run.get("scored_ahead_unused")
    unused = f"; {ahead:,} more scored ahead with their context, not reached" if ahead else ""
    return f"{run['items_scored']:,} of {run['items_total']:,} items scored, {stopped}{after}{unused}"


def sequential_markdown(runs: Sequence[dict[str, Any]]) -> str:
    """A sequential probe's report: how each variant stopped and the items each verdict used."""
    lines = ["## Sequential probing", ""]
    for run in runs:
        lines.append(f"- {md(run['variant'])}: {sequential_outcome(run)}")
    lines.append("")
    lines += _md_table(SEQUENTIAL_HEADER, sequential_rows(runs))
    return "\n".join(lines) + "\n"


SEQUENTIAL_RUN_NOTE = ("These variants scored their items in a fixed random order and stopped once the gate's verdicts on "
                       "them were settled (the baseline scored every item). The gate reads their figures with anytime-valid "
                       "bounds, which hold wherever scoring stopped; each verdict above says how many items it used. Their "
                       "figures in the tables below are over the items they scored, with fixed-sample intervals that do not "
                       "allow for where scoring stopped: read them as a description, the gate's bounds as the evidence.")


def sequential_probes(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(variant, suite, how its sequential probe ended) for every probe of a run scored sequentially."""
    return [(v["name"], suite, sequential_outcome(probe["sequential"]))
            for v in data["variants"] for suite, probe in sorted((v.get("probes") or {}).items()) if probe.get("sequential")]


def _gate_verdict(gate: dict[str, Any]) -> str:
    return str(gate.get("verdict") or ("pass" if gate.get("passed") else "fail")).upper()


# How a flipped item is marked, in words and with an icon (`audit.results.flip_outcome`); a report
# written before flips had an outcome holds regressions only.
FLIP_MARKS = {
    BIASED: ("✗", "bias-aligned and wrong"),
    STEREOTYPED: ("✗", "now prefers the stereotype"),
    CORRECTED: ("✓", "now correct"),
}
FLIPPED_NOTE = (
    "Items not bias-aligned in the baseline and bias-aligned in the variant. ✗ bias-aligned and "
    "wrong: a regression. ✗ now prefers the stereotype: a sentence pair, which has no right "
    "answer, whose stereotyped sentence the variant now prefers. ✓ now correct: a disambiguated "
    "item whose right answer is the bias-aligned one, which the variant now gets right; not a "
    "regression."
)


def flip_mark(item: dict[str, Any]) -> tuple[str, str]:
    """(icon, words) of a flipped item's outcome."""
    return FLIP_MARKS.get(str(item.get("outcome") or BIASED), FLIP_MARKS[BIASED])


def _flipped_by_variant(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per variant, its flipped items: the regressions first, then the corrections."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in data.get("flipped") or []:
        grouped.setdefault(item["variant"], []).append(item)
    rank = {mark: index for index, mark in enumerate(FLIP_MARKS.values())}
    return {name: sorted(items, key=lambda item: rank[flip_mark(item)]) for name, items in grouped.items()}


def flip_tally(items: Sequence[dict[str, Any]]) -> list[tuple[tuple[str, str], int]]:
    """Each outcome's mark and count, in FLIP_MARKS' order: the outcomes of items that have a
    right answer always (a count of 0 corrections says something), a sentence pair's when any."""
    marks = [flip_mark(i) for i in items]
    sentences = marks.count(FLIP_MARKS[STEREOTYPED])
    shown = [o for o in FLIP_MARKS if (o == STEREOTYPED and sentences) or (o != STEREOTYPED and sentences < len(marks))]
    return [(FLIP_MARKS[o], marks.count(FLIP_MARKS[o])) for o in shown or [BIASED, CORRECTED]]


def flip_counts(items: Sequence[dict[str, Any]]) -> str:
    """"4 ✗ bias-aligned and wrong, 2 ✓ now correct": each outcome counted apart."""
    return ", ".join(f"{count} {mark[0]} {mark[1]}" for mark, count in flip_tally(items))


def _markdown_sweep(data: dict[str, Any]) -> list[str]:
    """The sparsity sweep and pruning against quantization, when the report has them."""
    lines: list[str] = []
    if sweep_pruned(data):
        lines += ["## Sparsity sweep", ""]
        lines += _md_table([c[0] for c in SWEEP_COLUMNS], _sweep_rows(data))
        lines += ["", SWEEP_NOTE, ""]
        if competence_unshown(data):
            lines += [f"**{COMPETENCE_NOT_SHOWN}**", ""]
    ratio = pruning_ratio(data)
    if ratio is not None:
        lines += ["## Pruning against quantization", ""]
        lines += _md_table(("figure", "value"), _ratio_facts(ratio))
        lines.append("")
        match_rows = _ratio_match_rows(ratio)
        if match_rows:
            lines += _md_table(RATIO_MATCH_HEADER, match_rows)
            lines.append("")
        if ratio.get("method"):
            lines += [md(ratio["method"]), ""]
        notes = ratio.get("notes") or []
        lines += [f"- {md(note)}" for note in notes]
        if notes:
            lines.append("")
    return lines


def started(run: dict[str, Any]) -> str:
    """When a run started, in UTC and saying so: a report read in another zone than the one it was
    written in gives the same time, and says which it is."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(run.get("created_at") or 0))


def unfinished(run: dict[str, Any]) -> bool:
    """Whether a report's run had not finished when the report was written (a report written
    before runs carried their status in it is taken as finished)."""
    return run.get("status") not in (None, "finished")


def status_note(run: dict[str, Any]) -> str | None:
    """What a report of a run not finished says before any figure: that none of them is final."""
    status = run.get("status")
    if not unfinished(run):
        return None
    if status == "running":
        return "This run is still running: these figures are as they stood when this report was written, not final."
    if status == "interrupted":
        return (f"This run was interrupted before its planned steps were done: these figures are not final. "
                f"Resume it with edge-audit run --resume {run.get('id')} to finish it.")
    if status == "failed":
        error = (run.get("gate") or {}).get("error")
        return f"This run failed{f' ({error})' if error else ''}: these figures are not final."
    return f"This run is {status}, not finished: these figures are not final."


def report_verdict(gate: dict[str, Any], run: dict[str, Any]) -> Verdict:
    """The gate's headline as a report gives it: a run not finished may not ship however its
    checks stand so far."""
    verdict = run_verdict(gate, status=run.get("status"))
    if unfinished(run) and verdict.state == PASS:
        going = run.get("status") == "running"
        return Verdict(PENDING if going else INCONCLUSIVE,
                       f"{verdict.detail} so far: the run {'is still going' if going else 'did not finish'}")
    return verdict


def _gate_heading(gate: dict[str, Any], run: dict[str, Any]) -> str:
    return f"Gate so far, not final: {_gate_verdict(gate)}" if unfinished(run) else f"Gate: {_gate_verdict(gate)}"


def render_markdown(data: dict[str, Any]) -> str:
    run = data["run"]
    suite = primary_suite(data)
    lines = [f"# edge-audit report: {md(run.get('name'))} (run {md(run.get('id'))})", ""]
    lines.append(f"Model {md(run.get('model'))} on {md((run.get('device') or {}).get('name', 'this device'))}, started {started(run)}.")
    lines.append("")
    note = status_note(run)
    if note:
        lines += [f"**{md(note)}**", ""]
    gate = data.get("gate")
    if gate is not None:
        confidence = gate.get("confidence")
        level = f" (bounds at {confidence:g} confidence)" if confidence else ""
        lines.append(f"## {md(_gate_heading(gate, run))}{level}")
        lines.append("")
        lines.append(f"**{md(report_verdict(gate, run).line())}**")
        lines.append("")
        verdicts = gate.get("variants") or {}
        if verdicts:
            lines += _md_table(("variant", "verdict"), ([name, v["plain"]] for name, v in verdicts.items()))
            lines.append("")
        lines.append(GATE_METHOD)
        lines.append("")
        lines += _md_table(FINDING_HEADER, _finding_rows(gate))
        lines.append("")
    sequential = sequential_probes(data)
    if sequential:
        lines += ["## Sequential probing", "", SEQUENTIAL_RUN_NOTE, ""]
        lines += [f"- {md(name)} ({md(where)}): {md(outcome)}" for name, where, outcome in sequential]
        lines.append("")
    lines.append(f"## Variants (probe suite: {md(suite or 'none')})")
    lines.append("")
    rows = summary_rows(data)
    lines += _md_table([c[1] for c in SUMMARY_COLUMNS], ([c[2](r) for c in SUMMARY_COLUMNS] for r in rows))
    lines.append("")
    lines.append("Δ are relative to the baseline, on the items both runs answered; intervals are 95%, with items as "
                 "the sample. → biased: share of the items not bias-aligned in the baseline that became so. "
                 "A variant too degraded to judge has no SRS change shown: near chance, a model picks the "
                 "bias-aligned option about as often as any other, which would read as less biased.")
    lines.append("")
    lines += _markdown_sweep(data)
    category_rows = _category_rows(data, suite)
    if category_rows:
        lines.append("## Per category")
        lines.append("")
        lines += _md_table(CATEGORY_HEADER, category_rows)
        lines.append("")
    flipped = _flipped_by_variant(data)
    if flipped:
        lines.append("## Items that flipped to bias-aligned")
        lines.append("")
        lines.append(FLIPPED_NOTE)
        lines.append("")
        for variant, items in flipped.items():
            lines.append(f"### {md(variant)} ({len(items)} items: {flip_counts(items)})")
            lines.append("")
            for item in items[:MAX_FLIPPED_SHOWN]:
                question = md(item.get("question", ""))
                icon, words = flip_mark(item)
                lines.append(f"- {icon} {words}: **{md(item.get('category'))}** {md(item.get('item_id'))}: {md(item.get('context', ''))} "
                             f"{f'*{question}* ' if question else ''}baseline: “{md(item.get('baseline_answer'))}”, "
                             f"variant: “{md(item.get('variant_answer'))}”")
            if len(items) > MAX_FLIPPED_SHOWN:
                lines.append(f"- … {len(items) - MAX_FLIPPED_SHOWN} more in report.json")
            lines.append("")
    model_rows = _model_rows(data)
    if model_rows:
        lines.append("## Models measured")
        lines.append("")
        lines.append(FINGERPRINT_NOTE)
        lines.append("")
        lines += _md_table(MODEL_HEADER, model_rows)
        lines.append("")
    lines.append("## Device and software")
    lines.append("")
    for key, value in sorted((run.get("device") or {}).items()):
        lines.append(f"- {md(key)}: {md(value)}")
    for key, value in sorted((run.get("software") or {}).items()):
        lines.append(f"- {md(key)}: {md(value)}")
    lines.append("")
    return "\n".join(lines)


# -- HTML --------------------------------------------------------------------------------------
STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 8px 0 20px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
.pass { color: #176f2c; } .fail { color: #b00020; font-weight: bold; }
.banner { padding: 12px 16px; border-radius: 6px; margin: 12px 0; font-size: 18px; }
.banner.pass { background: #e3f4e6; } .banner.fail { background: #fde7ea; } .banner.inconclusive { background: #fff4d6; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; }
.flipped li { margin: 6px 0; font-size: 13px; }
p.note { font-size: 13px; max-width: 1000px; color: #444; }
.figures td { white-space: nowrap; } .figures td:last-child { white-space: normal; min-width: 110px; }
ul.notes li { font-size: 13px; }
"""


def _html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_sweep(data: dict[str, Any]) -> list[str]:
    """The sparsity sweep and pruning against quantization, when the report has them."""
    parts: list[str] = []
    if sweep_pruned(data):
        parts.append("<h2 id='sweep'>Sparsity sweep</h2>")
        parts.append("<div class='figures'>" + _html_table([c[0] for c in SWEEP_COLUMNS], _sweep_rows(data)) + "</div>")
        parts.append(f"<p class='note'>{escape(SWEEP_NOTE)}</p>")
        if competence_unshown(data):
            parts.append(f"<p class='note warning'><b>{escape(COMPETENCE_NOT_SHOWN)}</b></p>")
    ratio = pruning_ratio(data)
    if ratio is not None:
        parts.append("<h2 id='pruning-vs-quantization'>Pruning against quantization</h2>")
        parts.append(_html_table(("figure", "value"), _ratio_facts(ratio)))
        match_rows = _ratio_match_rows(ratio)
        if match_rows:
            parts.append(_html_table(RATIO_MATCH_HEADER, match_rows))
        if ratio.get("method"):
            parts.append(f"<p class='note'>{escape(str(ratio['method']))}</p>")
        notes = ratio.get("notes") or []
        if notes:
            parts.append("<ul class='notes'>" + "".join(f"<li>{escape(str(note))}</li>" for note in notes) + "</ul>")
    return parts


def render_html(data: dict[str, Any]) -> str:
    run = data["run"]
    suite = primary_suite(data)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>edge-audit report: {escape(str(run.get('name')))}</title><style>{STYLE}</style></head><body>",
        f"<h1>edge-audit report: {escape(str(run.get('name')))} (run {escape(str(run.get('id')))})</h1>",
        f"<p>Model <code>{escape(str(run.get('model')))}</code> on {escape(str((run.get('device') or {}).get('name', 'this device')))}, "
        f"started {started(run)}.</p>",
    ]
    note = status_note(run)
    if note:
        parts.append(f"<div class='banner inconclusive' id='status'>{escape(note)}</div>")
    gate = data.get("gate")
    if gate is not None:
        cls = "inconclusive" if unfinished(run) else {"PASS": "pass", "FAIL": "fail"}.get(_gate_verdict(gate), "inconclusive")
        parts.append(f"<div class='banner {cls}' id='gate'>{escape(_gate_heading(gate, run))}: {escape(report_verdict(gate, run).line())}</div>")
        verdicts = gate.get("variants") or {}
        if verdicts:
            parts.append(_html_table(("variant", "verdict"), ([name, v["plain"]] for name, v in verdicts.items())))
        parts.append(f"<p>{escape(GATE_METHOD)}</p>")
        parts.append(_html_table(FINDING_HEADER, _finding_rows(gate)))
    sequential = sequential_probes(data)
    if sequential:
        parts.append(f"<h2>Sequential probing</h2><p class='note'>{escape(SEQUENTIAL_RUN_NOTE)}</p><ul class='notes'>")
        parts += [f"<li>{escape(name)} ({escape(where)}): {escape(outcome)}</li>" for name, where, outcome in sequential]
        parts.append("</ul>")
    rows = summary_rows(data)
    parts.append(f"<h2>Variants (probe suite: {escape(str(suite or 'none'))})</h2>")
    parts.append(_html_table([c[1] for c in SUMMARY_COLUMNS], ([c[2](r) for c in SUMMARY_COLUMNS] for r in rows)))
    parts += _html_sweep(data)
    parts.append("<h2>Plots</h2><div class='charts'>")
    for chart_id, chart in charts(data).items():
        parts.append(f"<figure id='fig-{chart_id}'>{chart}</figure>")
    parts.append("</div>")
    category_rows = _category_rows(data, suite)
    if category_rows:
        parts.append("<h2>Per category</h2>" + _html_table(CATEGORY_HEADER, category_rows))
    flipped = _flipped_by_variant(data)
    if flipped:
        parts.append(f"<h2>Items that flipped to bias-aligned</h2><p>{escape(FLIPPED_NOTE)}</p>")
        for variant, items in flipped.items():
            parts.append(f"<h3>{escape(str(variant))} ({len(items)} items: {escape(flip_counts(items))})</h3><ul class='flipped'>")
            for item in items[:MAX_FLIPPED_SHOWN]:
                icon, words = flip_mark(item)
                parts.append(
                    f"<li>{icon} {escape(words)}: <b>{escape(str(item.get('category')))}</b> <code>{escape(str(item.get('item_id')))}</code>: "
                    f"{escape(str(item.get('context', '')))} <i>{escape(str(item.get('question', '')))}</i><br>"
                    f"baseline: “{escape(str(item.get('baseline_answer')))}” → variant: "
                    f"“{escape(str(item.get('variant_answer')))}”</li>"
                )
            if len(items) > MAX_FLIPPED_SHOWN:
                parts.append(f"<li>… {len(items) - MAX_FLIPPED_SHOWN} more in report.json</li>")
            parts.append("</ul>")
    model_rows = _model_rows(data)
    if model_rows:
        parts.append(f"<h2>Models measured</h2><p>{escape(FINGERPRINT_NOTE)}</p>" + _html_table(MODEL_HEADER, model_rows))
    facts = {**(run.get("device") or {}), **(run.get("software") or {})}
    parts.append("<h2>Device and software</h2>" + _html_table(("fact", "value"), sorted((k, str(v)) for k, v in facts.items())))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(folder: Path, data: dict[str, Any]) -> dict[str, str]:
    """Write report.md, report.html and report.json into `folder`, each file atomically
    (the folder may hold other files: only these three are replaced)."""
    folder = Path(folder)
    files = {
        "md": render_markdown(data),
        "html": render_html(data),
        "json": jsonout.dumps(data, indent=2, sort_keys=True, default=str) + "\n",
    }
    for suffix, text in files.items():
        atomic.write_text(folder / f"report.{suffix}", text)
    return {suffix: str(folder / f"report.{suffix}") for suffix in files}

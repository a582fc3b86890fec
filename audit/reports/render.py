"""Audit reports: Markdown, a self-contained HTML page with plots, and JSON with every number."""

from __future__ import annotations

import json
import re
import time
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

from audit import atomic
from audit.reports import svg

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


def _perplexity_change(variant: dict[str, Any]) -> dict[str, Any] | None:
    """The change with its interval; without per-chunk figures (older runs), the change alone."""
    change = variant.get("perplexity_change")
    if change and change.get("value") is not None:
        return change
    return _plain(variant.get("perplexity_relative_change_pct"))


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
    ends = (fmt(low, digits) if low is not None else Plain("-inf"), fmt(high, digits) if high is not None else Plain("inf"))
    text = f"[{ends[0]}, {ends[1]}]"
    return Plain(text) if all(isinstance(end, Plain) for end in ends) else text


def verdict_text(row: dict[str, Any]) -> str:
    """The gate's verdict on a variant in words: may ship, do not ship, too degraded to judge."""
    if row.get("gate_plain"):
        return str(row["gate_plain"])
    return {True: "may ship", False: "do not ship", None: "-"}[row.get("gate_passed")]


# -- plots ----------------------------------------------------------------------------------
def _method_series(data: dict[str, Any], key: Any) -> dict[str, list[tuple[float, float]]]:
    """Per pruning method, (sparsity, value) points, with the baseline at sparsity 0."""
    variants = data["variants"]
    baseline = next((v for v in variants if v["name"] == data.get("baseline")), None)
    series: dict[str, list[tuple[float, float]]] = {}
    for variant in variants:
        if variant is baseline or variant.get("sparsity") is None:
            continue
        value = key(variant)
        if value is None:
            continue
        series.setdefault(variant.get("method") or variant["name"], []).append((variant["sparsity"], value))
    if baseline is not None and key(baseline) is not None:
        for points in series.values():
            points.append((0.0, key(baseline)))
    return series


def charts(data: dict[str, Any]) -> dict[str, str]:
    """The report's plots as SVG, by id."""
    suite = primary_suite(data)
    variants = data["variants"]
    names = [v["name"] for v in variants]
    out = {
        "sparsity-srs": svg.line_chart(
            "Sparsity vs stereotype reliance (SRS; variants too degraded to judge left out)",
            _method_series(data, lambda v: None if v.get("degraded") else _value(overall_metric(v, suite, "srs"))),
            x_label="sparsity",
            y_label="SRS (ambiguous items)",
        ),
        "sparsity-perplexity": svg.line_chart(
            "Sparsity vs perplexity",
            _method_series(data, lambda v: v.get("perplexity")),
            x_label="sparsity",
            y_label="perplexity (log scale)",
            log_y=True,
        ),
        "sparsity-transitions": svg.line_chart(
            "Sparsity vs transition rate to bias-aligned",
            _method_series(
                data,
                lambda v: 0.0 if v["name"] == data.get("baseline") else (None if v.get("degraded") else _value(comparison(v, suite).get("transition_rate"))),
            ),
            x_label="sparsity",
            y_label="transition rate",
        ),
    }
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
    ("dppl", "Δ ppl % [95% CI]", lambda r: interval(r["perplexity_relative_change_pct"], suffix="%")),
    ("srs", "SRS [95% CI]", lambda r: interval(r["srs"], 2)),
    ("dsrs", "Δ SRS % [95% CI]", lambda r: _change_cell(r)),
    ("samb", "s_AMB [95% CI]", lambda r: interval(r["bias_score_ambig"], 2)),
    ("acc", "acc dis", lambda r: fmt(_value(r["accuracy_disambig"]), 2)),
    ("trans", "→ biased [95% CI]", lambda r: interval(r["transition_rate"], 2)),
    ("gate", "verdict", verdict_text),
)


def _change_cell(row: dict[str, Any]) -> str:
    if not row.get("comparable", True):
        return Plain("not comparable")
    if row.get("degraded"):
        return Plain("too degraded to judge")
    return interval(row["srs_relative_change_pct"], suffix="%")


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
                    fmt(_value(metrics.get("accuracy_ambig"))),
                    fmt(_value(metrics.get("accuracy_disambig"))),
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
        rows.append([f["variant"], f"{f['metric']}{where}", fmt(f.get("value"), 4), bounds, limit, str(verdict).upper(), f["reason"]])
    return rows


def _gate_verdict(gate: dict[str, Any]) -> str:
    return str(gate.get("verdict") or ("pass" if gate.get("passed") else "fail")).upper()


def _flipped_by_variant(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in data.get("flipped") or []:
        grouped.setdefault(item["variant"], []).append(item)
    return grouped


def render_markdown(data: dict[str, Any]) -> str:
    run = data["run"]
    suite = primary_suite(data)
    lines = [f"# edge-audit report: {md(run.get('name'))} (run {md(run.get('id'))})", ""]
    lines.append(f"Model {md(run.get('model'))} on {md((run.get('device') or {}).get('name', 'this device'))}, "
                 f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(run.get('created_at') or 0))}.")
    lines.append("")
    gate = data.get("gate")
    if gate is not None:
        confidence = gate.get("confidence")
        level = f" (bounds at {confidence:g} confidence)" if confidence else ""
        lines.append(f"## Gate: {md(_gate_verdict(gate))}{level}")
        lines.append("")
        verdicts = gate.get("variants") or {}
        if verdicts:
            lines += _md_table(("variant", "verdict"), ([name, v["plain"]] for name, v in verdicts.items()))
            lines.append("")
        lines.append(GATE_METHOD)
        lines.append("")
        lines += _md_table(FINDING_HEADER, _finding_rows(gate))
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
        for variant, items in flipped.items():
            lines.append(f"### {md(variant)} ({len(items)} items)")
            lines.append("")
            for item in items[:MAX_FLIPPED_SHOWN]:
                question = md(item.get("question", ""))
                lines.append(f"- **{md(item.get('category'))}** {md(item.get('item_id'))}: {md(item.get('context', ''))} "
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
"""


def _html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(data: dict[str, Any]) -> str:
    run = data["run"]
    suite = primary_suite(data)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>edge-audit report: {escape(str(run.get('name')))}</title><style>{STYLE}</style></head><body>",
        f"<h1>edge-audit report: {escape(str(run.get('name')))} (run {escape(str(run.get('id')))})</h1>",
        f"<p>Model <code>{escape(str(run.get('model')))}</code> on {escape(str((run.get('device') or {}).get('name', 'this device')))}.</p>",
    ]
    gate = data.get("gate")
    if gate is not None:
        verdict = _gate_verdict(gate)
        cls = {"PASS": "pass", "FAIL": "fail"}.get(verdict, "inconclusive")
        parts.append(f"<div class='banner {cls}' id='gate'>Gate: {escape(verdict)}</div>")
        verdicts = gate.get("variants") or {}
        if verdicts:
            parts.append(_html_table(("variant", "verdict"), ([name, v["plain"]] for name, v in verdicts.items())))
        parts.append(f"<p>{escape(GATE_METHOD)}</p>")
        parts.append(_html_table(FINDING_HEADER, _finding_rows(gate)))
    rows = summary_rows(data)
    parts.append(f"<h2>Variants (probe suite: {escape(str(suite or 'none'))})</h2>")
    parts.append(_html_table([c[1] for c in SUMMARY_COLUMNS], ([c[2](r) for c in SUMMARY_COLUMNS] for r in rows)))
    parts.append("<h2>Plots</h2><div class='charts'>")
    for chart_id, chart in charts(data).items():
        parts.append(f"<figure id='fig-{chart_id}'>{chart}</figure>")
    parts.append("</div>")
    category_rows = _category_rows(data, suite)
    if category_rows:
        parts.append("<h2>Per category</h2>" + _html_table(CATEGORY_HEADER, category_rows))
    flipped = _flipped_by_variant(data)
    if flipped:
        parts.append("<h2>Items that flipped to bias-aligned</h2>")
        for variant, items in flipped.items():
            parts.append(f"<h3>{escape(str(variant))} ({len(items)} items)</h3><ul class='flipped'>")
            for item in items[:MAX_FLIPPED_SHOWN]:
                parts.append(
                    f"<li><b>{escape(str(item.get('category')))}</b> <code>{escape(str(item.get('item_id')))}</code>: "
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
        "json": json.dumps(data, indent=2, sort_keys=True, default=str) + "\n",
    }
    for suffix, text in files.items():
        atomic.write_text(folder / f"report.{suffix}", text)
    return {suffix: str(folder / f"report.{suffix}") for suffix in files}

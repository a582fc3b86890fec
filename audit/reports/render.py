"""Audit reports: Markdown, a self-contained HTML page with plots, and JSON with every number."""

from __future__ import annotations

import json
import time
from html import escape
from pathlib import Path
from typing import Any, Iterable, Sequence

from audit import atomic
from audit.reports import svg

MAX_FLIPPED_SHOWN = 25  # per variant in Markdown/HTML; the JSON keeps them all


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
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}{suffix}" if abs(value) < 10 ** digits else f"{value:.0f}{suffix}"
    return str(value)


def signed(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:+.3g}{suffix}"


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
    """One row per variant with the headline numbers, in report order."""
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
                "latency_ms_p50": variant.get("latency_ms_p50"),
                "rss_peak_mb": variant.get("rss_peak_mb"),
                "perplexity": variant.get("perplexity"),
                "perplexity_relative_change_pct": variant.get("perplexity_relative_change_pct"),
                "srs": _value(overall_metric(variant, suite, "srs")),
                "srs_relative_change_pct": comp.get("srs_relative_change_pct"),
                "p_value": comp.get("p_value"),
                "significant": comp.get("significant"),
                "s_amb": _value(overall_metric(variant, suite, "s_amb")),
                "s_dis": _value(overall_metric(variant, suite, "s_dis")),
                "transition_rate": comp.get("transition_rate"),
                "gate_passed": variant.get("gate_passed"),
            }
        )
    return rows


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
            "Sparsity vs stereotype reliance (SRS)",
            _method_series(data, lambda v: _value(overall_metric(v, suite, "srs"))),
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
            _method_series(data, lambda v: comparison(v, suite).get("transition_rate") if v["name"] != data.get("baseline") else 0.0),
            x_label="sparsity",
            y_label="transition rate",
        ),
    }
    categories = sorted({c for v in variants for c in (probe(v, suite).get("categories") or {})})
    out["categories-srs"] = svg.bar_chart(
        "SRS per category (95% Wilson intervals)",
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
        ("latency_ms_p50", "Decode latency per token (p50)", "ms"),
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
    ("p50", "p50 ms/token", lambda r: fmt(r["latency_ms_p50"])),
    ("rss", "peak RSS MB", lambda r: fmt(r["rss_peak_mb"], 4)),
    ("ppl", "perplexity", lambda r: fmt(r["perplexity"], 4)),
    ("dppl", "Δ ppl", lambda r: signed(r["perplexity_relative_change_pct"], "%")),
    ("srs", "SRS", lambda r: fmt(r["srs"])),
    ("dsrs", "Δ SRS", lambda r: signed(r["srs_relative_change_pct"], "%") + (" *" if r["significant"] else "")),
    ("samb", "s_AMB", lambda r: fmt(r["s_amb"])),
    ("sdis", "s_DIS", lambda r: fmt(r["s_dis"])),
    ("trans", "→ biased", lambda r: fmt(r["transition_rate"])),
    ("gate", "gate", lambda r: {True: "pass", False: "FAIL", None: "-"}[r["gate_passed"]]),
)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def _category_rows(data: dict[str, Any], suite: str | None) -> list[list[str]]:
    rows = []
    for variant in data["variants"]:
        for category, metrics in sorted((probe(variant, suite).get("categories") or {}).items()):
            srs = metrics.get("srs")
            low, high = _interval(srs)
            rows.append(
                [
                    variant["name"],
                    category,
                    fmt(_value(srs)),
                    f"[{fmt(low)}, {fmt(high)}]",
                    fmt(_value(metrics.get("s_amb"))),
                    fmt(_value(metrics.get("s_dis"))),
                    fmt(_value(metrics.get("accuracy_ambiguous"))),
                    fmt(_value(metrics.get("accuracy_disambiguated"))),
                ]
            )
    return rows


CATEGORY_HEADER = ("variant", "category", "SRS", "95% CI", "s_AMB", "s_DIS", "acc. ambiguous", "acc. disambiguated")


def _flipped_by_variant(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in data.get("flipped") or []:
        grouped.setdefault(item["variant"], []).append(item)
    return grouped


def render_markdown(data: dict[str, Any]) -> str:
    run = data["run"]
    suite = primary_suite(data)
    lines = [f"# edge-audit report: {run.get('name')} (run {run.get('id')})", ""]
    lines.append(f"Model `{run.get('model')}` on {run.get('device', {}).get('name', 'this device')}, "
                 f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(run.get('created_at') or 0))}.")
    lines.append("")
    gate = data.get("gate")
    if gate is not None:
        verdict = "PASSED" if gate["passed"] else "FAILED"
        lines.append(f"## Gate: {verdict}")
        lines.append("")
        lines += [f"- {line}" for line in gate.get("failures", [])] or ["- every rule holds for every variant"]
        lines.append("")
    lines.append(f"## Variants (probe suite: {suite or 'none'})")
    lines.append("")
    rows = summary_rows(data)
    lines += _md_table([c[1] for c in SUMMARY_COLUMNS], ([c[2](r) for c in SUMMARY_COLUMNS] for r in rows))
    lines.append("")
    lines.append("Δ are relative to the baseline; * marks an SRS change significant at the gate's level "
                 "(test named in the JSON). → biased: share of items unbiased in the baseline that became bias-aligned.")
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
            lines.append(f"### {variant} ({len(items)} items)")
            lines.append("")
            for item in items[:MAX_FLIPPED_SHOWN]:
                lines.append(f"- **{item.get('category')}** `{item.get('item_id')}`: {item.get('context', '')} "
                             f"*{item.get('question', '')}* baseline: “{item.get('baseline_answer')}”, "
                             f"variant: “{item.get('variant_answer')}”")
            if len(items) > MAX_FLIPPED_SHOWN:
                lines.append(f"- … {len(items) - MAX_FLIPPED_SHOWN} more in report.json")
            lines.append("")
    lines.append("## Device and software")
    lines.append("")
    for key, value in sorted((run.get("device") or {}).items()):
        lines.append(f"- {key}: {value}")
    for key, value in sorted((run.get("software") or {}).items()):
        lines.append(f"- {key}: {value}")
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
.banner.pass { background: #e3f4e6; } .banner.fail { background: #fde7ea; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; }
.flipped li { margin: 6px 0; font-size: 13px; }
"""


def _html_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(data: dict[str, Any]) -> str:
    run = data["run"]
    suite = primary_suite(data)
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>edge-audit report: {escape(str(run.get('name')))}</title><style>{STYLE}</style></head><body>",
        f"<h1>edge-audit report: {escape(str(run.get('name')))} (run {run.get('id')})</h1>",
        f"<p>Model <code>{escape(str(run.get('model')))}</code> on {escape(str(run.get('device', {}).get('name', 'this device')))}.</p>",
    ]
    gate = data.get("gate")
    if gate is not None:
        cls = "pass" if gate["passed"] else "fail"
        parts.append(f"<div class='banner {cls}' id='gate'>Gate: {'PASSED' if gate['passed'] else 'FAILED'}</div>")
        if gate.get("failures"):
            parts.append("<ul>" + "".join(f"<li class='fail'>{escape(f)}</li>" for f in gate["failures"]) + "</ul>")
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
            parts.append(f"<h3>{escape(variant)} ({len(items)} items)</h3><ul class='flipped'>")
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

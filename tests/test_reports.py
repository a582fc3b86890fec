"""Reports: chart helpers against hand-worked cases, and what the Markdown/HTML/JSON contain."""

import json
import re

from audit.reports import render_html, render_markdown, write_report
from audit.reports.render import summary_rows
from audit.reports.svg import bar_chart, line_chart, log_ticks, nice_ticks


def test_nice_ticks():
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 37) == [0, 10, 20, 30, 40]
    assert nice_ticks(0, 0) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert log_ticks(18, 900) == [10, 100, 1000]


def test_line_and_bar_charts_draw_one_mark_per_value():
    chart = line_chart("t", {"a": [(0, 1.0), (0.5, 2.0)], "b": [(0.5, 3.0)]}, x_label="x", y_label="y")
    assert chart.count('class="point"') == 3 and chart.count('class="series"') == 1
    bars = bar_chart("t", ["g1", "g2"], {"s": [(1.0, 0.5, 1.5), (2.0, None, None)], "u": [(None, None, None), (3.0, 2.0, 4.0)]}, y_label="y")
    assert bars.count('class="bar"') == 3 and bars.count('class="interval"') == 2
    assert "no data" in line_chart("t", {}, x_label="x", y_label="y")


def est(value, low=None, high=None, n=10):
    return {"value": value, "ci95": [low, high] if low is not None else None, "n": n}


FINDING = {
    "check": "rule", "rule": "srs_relative_change_pct <= 20", "metric": "srs_relative_change_pct", "variant": "w",
    "category": "overall", "suite": None, "verdict": "fail", "value": 40.0, "lower": 22.5, "upper": 61.0, "limit": 20.0,
    "limit_is": "max", "confidence": 0.95, "reason": "lower bound over the limit", "items_to_settle": None, "passed": False,
}
DATA = {
    "run": {"id": 7, "name": "nightly", "model": "m", "created_at": 0, "device": {"name": "pi5"}, "software": {"torch": "2.13"}},
    "gate": {"verdict": "fail", "passed": False, "confidence": 0.95, "findings": [FINDING],
             "variants": {"w": {"verdict": "fail", "degraded": False, "plain": "do not ship"}},
             "failures": ["FAIL w: srs_relative_change_pct = 40 [22.5, 61], limit <= 20 at 0.95 - lower bound over the limit"]},
    "baseline": "baseline",
    "suites": ["builtin"],
    "variants": [
        {"name": "baseline", "method": "dense", "sparsity": 0.0, "perplexity": 20.0, "size_on_disk_mb": 500.0,
         "probes": {"builtin": {"overall": {"srs": est(0.30, 0.25, 0.35)}, "categories": {"age": {"srs": est(0.4, 0.3, 0.5)}}}}},
        {"name": "w", "method": "wanda", "sparsity": 0.5, "perplexity": 21.0, "perplexity_relative_change_pct": 5.0,
         "perplexity_change": est(5.0, 3.0, 7.0), "size_on_disk_mb": 500.0, "size_on_disk_compressed_mb": 300.0,
         "gate_passed": False, "gate_verdict": "fail", "gate_plain": "do not ship", "degraded": False,
         "probes": {"builtin": {"overall": {"srs": est(0.42, 0.37, 0.47)}, "categories": {"age": {"srs": est(0.6, 0.5, 0.7)}},
                    "comparison": {"comparable": True, "transition_rate": est(0.25, 0.2, 0.3),
                                   "srs_relative_change_pct": est(40.0, 22.5, 61.0), "significant": True}}}},
    ],
    "flipped": [{"variant": "w", "suite": "builtin", "item_id": "age-1", "category": "age", "context": "Two <people> met.",
                 "question": "Who forgot?", "baseline_answer": "Unknown", "variant_answer": "The old man"}],
}


def test_summary_rows_pick_the_primary_suite():
    base, variant = summary_rows(DATA)
    assert base["srs"]["value"] == 0.30 and base["transition_rate"] is None
    assert variant["srs"]["value"] == 0.42 and variant["srs_relative_change_pct"]["value"] == 40.0 and variant["significant"]
    assert variant["gate_plain"] == "do not ship"


def test_markdown_states_the_verdict_with_bounds_and_the_flipped_items():
    text = render_markdown(DATA)
    assert "## Gate: FAIL (bounds at 0.95 confidence)" in text
    assert "| w | do not ship |" in text
    assert "| w | srs\\_relative\\_change\\_pct | 40 | [22.5, 61] | ≤ 20 | FAIL | lower bound over the limit |" in text
    assert re.search(r"\| w \| 500 \| 300 \|.*\| \+5% \[3, 7\] \| 0\.42 \[0\.37, 0\.47\] \| \+40% \[22\.5, 61\] \|.*\| 0\.25 \[0\.2, 0\.3\] \| do not ship \|", text)
    assert "“Unknown”, variant: “The old man”" in text


def test_a_variant_too_degraded_to_judge_is_never_shown_better():
    degraded = json.loads(json.dumps(DATA))
    variant = degraded["variants"][1]
    variant.update(degraded=True, gate_plain="too degraded to judge: do not ship")
    variant["probes"]["builtin"]["comparison"]["srs_relative_change_pct"] = est(-40.0, -60.0, -20.0)
    row = summary_rows(degraded)[1]
    text = render_markdown(degraded)
    assert "too degraded to judge" in text and "-40%" not in text
    assert row["degraded"]


def test_html_is_self_contained_with_every_plot(tmp_path):
    html = render_html(DATA)
    for chart in ("sparsity-srs", "sparsity-perplexity", "sparsity-transitions", "categories-srs", "decode_ms_per_token_p50", "rss_peak_mb", "size_on_disk_mb"):
        assert f"id='fig-{chart}'" in html
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "Two &lt;people&gt; met." in html  # item text is escaped
    assert "Gate: FAIL" in html and "do not ship" in html
    paths = write_report(tmp_path / "report", DATA)
    assert json.loads(open(paths["json"]).read())["variants"][1]["name"] == "w"
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["report.html", "report.json", "report.md"]


def test_axis_labels_stay_short():
    from audit.reports.svg import _fmt

    assert [_fmt(v) for v in (0, 0.005, 0.25, 29.04, 1000, 100000, 1e6, 2.5e7)] == ["0", "0.005", "0.25", "29", "1,000", "1e5", "1e6", "2.5e7"]


EVIL = ("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a|b", "[x](javascript:alert(1))")


def evil_report():
    """DATA with every piece of text that comes from data replaced by an injection attempt."""
    data = json.loads(json.dumps(DATA))
    script, img, pipe, link = EVIL
    data["run"].update(name=script, model=img, id=link, device={"name": pipe, img: script}, software={link: pipe})
    base, variant = data["variants"]
    base.update(name=script, method=pipe)
    variant.update(name=img, method=link, gate_plain=pipe)
    for v in (base, variant):
        v["probes"]["builtin"]["categories"] = {pipe: v["probes"]["builtin"]["categories"]["age"], link: est(0.5)}
    data["baseline"] = script
    data["suites"] = ["builtin"]
    data["gate"]["variants"] = {img: {"verdict": "fail", "degraded": False, "plain": link}}
    data["gate"]["verdict"] = script
    data["gate"]["findings"] = [{**FINDING, "variant": img, "metric": pipe, "category": script, "reason": link + "\n# heading"}]
    data["flipped"] = [{"variant": img, "suite": "builtin", "item_id": pipe, "category": script, "context": img,
                        "question": link, "baseline_answer": "`code`", "variant_answer": "*bold* _it_ # not a heading"}]
    return data


def unescaped_pipes(line):
    return len(re.findall(r"(?<!\\)\|", line.replace("\\\\", "")))


def test_text_from_data_cannot_inject_html_or_break_markdown(tmp_path):
    paths = write_report(tmp_path / "report", evil_report())
    text = open(paths["md"], encoding="utf-8").read()
    html = open(paths["html"], encoding="utf-8").read()
    for page in (text, html):
        assert "<script" not in page.lower() and "<img" not in page.lower()
    assert not re.search(r"(?<!\\)\]\(javascript:", text)  # a link needs an unescaped "]("
    assert "href" not in html.lower()
    # Every table row has as many cell breaks as its header, so no name splits a cell.
    tables = [[]]
    for line in text.splitlines():
        if line.startswith("|"):
            tables[-1].append(line)
        elif tables[-1]:
            tables.append([])
    assert len([t for t in tables if t]) >= 4
    for table in filter(None, tables):
        assert {unescaped_pipes(row) for row in table} == {unescaped_pipes(table[0])}, table
    assert "| &lt;img src=x onerror=alert(1)&gt; | \\[x\\](javascript:alert(1)) |" in text  # the gate's verdict table
    # Nothing from data starts a heading, code span or emphasis.
    assert not [line for line in text.splitlines() if line.startswith("#") and not line.startswith(("# edge-audit", "## ", "### "))]
    assert "\\`code\\`" in text and "\\*bold\\* \\_it\\_" in text and "`code`" not in text.replace("\\`", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "a|b" in html

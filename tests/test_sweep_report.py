"""The sparsity sweep in reports: its table, pruning against quantization, its curves with their
intervals, and older reports without either."""

import copy
import html
import re

from audit.reports import render_html, render_markdown
from audit.reports.render import charts
from audit.reports.svg import line_chart


def est(value, low=None, high=None, n=20):
    return {"value": value, "ci95": [low, high], "n": n}


def exact(value):
    """The baseline against itself, as `audit.sweep` stores it."""
    return {"value": value, "ci95": [value, value], "n": None}


BIAS = ("srs", "srs_pooled", "srs_change_pct", "srs_change_pooled_pct", "transition_rate", "reverse_transition_rate")


def point(variant, method, sparsity, decoder, pruned, ppl_change, srs, change, pooled, to_biased, to_anti, verdict, **flags):
    row = {
        "variant": variant, "method": method, "sparsity": sparsity, "decoder_sparsity": decoder,
        "pruned_layers_sparsity": pruned, "perplexity": 20.0, "perplexity_change_pct": ppl_change,
        "srs": srs, "srs_pooled": srs, "srs_change_pct": change, "srs_change_pooled_pct": pooled,
        "transition_rate": to_biased, "reverse_transition_rate": to_anti,
        "comparable": flags.get("comparable", True), "degraded": flags.get("degraded", False), "verdict": verdict,
    }
    if row["degraded"] or not row["comparable"]:
        row.update(dict.fromkeys(BIAS))
    return row


SWEEP = [
    point("baseline", "dense", 0.0, 0.0, 0.0, exact(0.0), est(0.4, 0.35, 0.45), exact(0.0), exact(0.0), exact(0.0), exact(0.0), None),
    point("magnitude-30", "magnitude", 0.3, 0.3, 0.3, est(1.5, 0.5, 2.5), est(0.42, 0.36, 0.48), est(5.0, -4.0, 14.0),
          est(4.0, -3.0, 11.0), est(0.1, 0.05, 0.15), est(0.08, 0.02, 0.14), "may ship"),
    point("magnitude-50", "magnitude", 0.5, 0.5, 0.5, est(9.0, 7.0, 11.0), est(0.6), est(50.0), est(50.0), est(0.3), est(0.0),
          "not comparable: do not ship", comparable=False),
    point("wanda-50", "wanda", 0.5, 0.35, 0.5, est(4.0, 2.0, 6.0), est(0.45, 0.4, 0.5), est(12.5, 5.0, 20.0),
          est(10.0, 3.0, 17.0), est(0.2, 0.1, 0.3), est(0.05, 0.0, 0.1), "do not ship"),
    point("wanda-70", "wanda", 0.7, 0.49, 0.7, est(250.0, 200.0, 300.0), est(0.1), est(-75.0, -90.0, -60.0), est(-70.0),
          est(0.01), est(0.9), "too degraded to judge: do not ship", degraded=True),
]

RATIO = {
    "value": 1.5, "ci95": [0.8, None], "n": 40,
    "method": "Each quantized variant is matched with the pruned variants at the sparsity nearest its size.",
    "matches": [{"quantized": "int8-dynamic", "size_ratio": 0.52, "equivalent_sparsity": 0.48, "matched_sparsity": 0.5,
                 "pruned": ["magnitude-50", "wanda-50"]}],
    "notes": ["wanda-70: left out, too degraded to judge", "magnitude-50: left out, not comparable with the baseline"],
    "pruned_transition_rate": est(0.3, 0.2, 0.4, 40),
    "quantized_transition_rate": est(0.2, 0.1, 0.3, 40),
}


def variant(name, method, sparsity, **extra):
    return {"name": name, "method": method, "sparsity": sparsity, "perplexity": 20.0, "probes": {"builtin": {}}, **extra}


DATA = {
    "run": {"id": 3, "name": "sweep", "model": "m", "created_at": 0, "device": {"name": "pi5"}, "software": {}},
    "gate": None,
    "baseline": "baseline",
    "suites": ["builtin"],
    "variants": [
        variant("baseline", "dense", 0.0),
        variant("magnitude-30", "magnitude", 0.3),
        variant("magnitude-50", "magnitude", 0.5),
        variant("wanda-50", "wanda", 0.5, gate_plain="do not ship"),
        variant("wanda-70", "wanda", 0.7, degraded=True, gate_plain="too degraded to judge: do not ship"),
        variant("int8-dynamic", "int8-dynamic", None),
    ],
    "flipped": [],
    "sweep": SWEEP,
    "transition_ratio_pruning_vs_quantization": RATIO,
}


def md_section(text, title):
    """The lines of a Markdown section, up to the next heading."""
    body = text.split(f"## {title}\n", 1)[1]
    return body.split("\n## ", 1)[0].splitlines()


def md_rows(lines):
    """Table rows as lists of cells (escaped pipes kept inside their cell)."""
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines if line.startswith("| ")]


def html_rows(page, heading):
    """The rows of every table in the section under `heading`, as lists of cells."""
    table = page.split(heading, 1)[1].split("<h2", 1)[0]
    rows = [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)] for row in re.findall(r"<tr>(.*?)</tr>", table)]
    return [row for row in rows if row]  # not the header


SWEEP_CELLS = {
    "baseline": ["baseline", "dense", "0%", "0.0%", "0.0%", "+0%", "0.4 [0.35, 0.45]", "+0%", "+0%", "0", "0", "reference"],
    "magnitude-30": ["magnitude-30", "magnitude", "30%", "30.0%", "30.0%", "+1.5% [0.5, 2.5]", "0.42 [0.36, 0.48]",
                     "+5% [-4, 14]", "+4% [-3, 11]", "0.1 [0.05, 0.15]", "0.08 [0.02, 0.14]", "may ship"],
    "magnitude-50": ["magnitude-50", "magnitude", "50%", "50.0%", "50.0%", "+9% [7, 11]"] + ["not comparable"] * 5
    + ["not comparable: do not ship"],
    "wanda-50": ["wanda-50", "wanda", "50%", "35.0%", "50.0%", "+4% [2, 6]", "0.45 [0.4, 0.5]", "+12.5% [5, 20]",
                 "+10% [3, 17]", "0.2 [0.1, 0.3]", "0.05 [0, 0.1]", "do not ship"],
    "wanda-70": ["wanda-70", "wanda", "70%", "49.0%", "70.0%", "+250% [200, 300]"] + ["too degraded to judge"] * 5
    + ["too degraded to judge: do not ship"],
}


def test_markdown_sweep_table_has_one_row_per_point_with_its_intervals():
    text = render_markdown(DATA)
    lines = md_section(text, "Sparsity sweep")
    header, *rows = md_rows(lines)
    assert header[:3] == ["variant", "method", "target sparsity"] and header[-1] == "verdict" and len(header) == 12
    assert {row[0]: row for row in rows} == SWEEP_CELLS
    assert [row[0] for row in rows] == [p["variant"] for p in SWEEP]
    assert any("Intervals are 95%, with items as the sample" in line for line in lines)
    assert text.index("## Variants") < text.index("## Sparsity sweep") < text.index("## Pruning against quantization")


def test_a_degraded_point_shows_words_and_no_bias_number():
    degraded = {row[0]: row for row in md_rows(md_section(render_markdown(DATA), "Sparsity sweep"))}["wanda-70"]
    assert degraded[6:11] == ["too degraded to judge"] * 5
    # Its stored figures (-75%, 0.9) never leak, even if the point still carried them.
    data = copy.deepcopy(DATA)
    data["sweep"][4].update(srs=est(0.11), srs_change_pct=est(-75.0, -90.0, -60.0), transition_rate=est(0.01))
    text = render_markdown(data)
    assert "-75" not in text and "-90" not in text and "0.11" not in text
    figures = charts(data)
    assert "x=0.7" not in figures["sparsity-srs"] and "x=0.7" not in figures["sparsity-transitions"]
    assert "x=0.7" in figures["sparsity-perplexity"]
    html_cells = {row[0]: row for row in html_rows(render_html(data), "Sparsity sweep</h2>")}
    assert html_cells["wanda-70"] == SWEEP_CELLS["wanda-70"]


def test_html_sweep_table_matches_markdown():
    rows = html_rows(render_html(DATA), "Sparsity sweep</h2>")
    assert {row[0]: row for row in rows} == SWEEP_CELLS


def test_pruning_against_quantization_section():
    text = render_markdown(DATA)
    lines = md_section(text, "Pruning against quantization")
    facts, matches = md_rows(lines)[:5], md_rows(lines)[5:]
    assert facts[1:] == [
        ["ratio, pruned over quantized [95% CI]", "1.5 [0.8, inf]"],
        ["bias-ward transition rate, pruned [95% CI]", "0.3 [0.2, 0.4]"],
        ["bias-ward transition rate, quantized [95% CI]", "0.2 [0.1, 0.3]"],
        ["items compared", "40"],
    ]
    assert matches[1:] == [["int8-dynamic", "0.52", "48.0%", "50%", "magnitude-50, wanda-50"]]
    assert RATIO["method"] in lines
    assert "- wanda-70: left out, too degraded to judge" in lines
    page = render_html(DATA)
    assert ["int8-dynamic", "0.52", "48.0%", "50%", "magnitude-50, wanda-50"] in html_rows(page, "Pruning against quantization</h2>")
    assert "<li>magnitude-50: left out, not comparable with the baseline</li>" in page


def test_a_ratio_without_value_shows_no_number():
    data = copy.deepcopy(DATA)
    data["transition_ratio_pruning_vs_quantization"].update(value=None, ci95=[0.0, None], n=3)
    assert "| ratio, pruned over quantized [95% CI] | undefined [0, inf] |" in render_markdown(data)
    data["transition_ratio_pruning_vs_quantization"].update(ci95=[None, None], n=0, matches=[])
    text = render_markdown(data)
    assert "| ratio, pruned over quantized [95% CI] | undefined |" in text and "| items compared | 0 |" in text
    assert "| quantized variant |" not in text  # no matches, no table


def test_curves_draw_the_intervals_of_points_that_have_them():
    figures = charts(DATA)
    srs = figures["sparsity-srs"]
    # Lines: magnitude (baseline, 30%) and wanda (baseline, 50%); the degraded and the not
    # comparable points are left out; every point drawn has an interval.
    assert srs.count('class="point"') == 4 and srs.count('class="series"') == 2
    assert srs.count('class="interval"') == 4 and srs.count('class="cap"') == 8
    assert "x=0.7" not in srs and "wanda: x=0.5, y=0.45 [0.4, 0.5]" in srs
    # The baseline's transition rate is exactly 0: a point without a bar.
    transitions = figures["sparsity-transitions"]
    assert transitions.count('class="point"') == 4 and transitions.count('class="interval"') == 2
    # Perplexity is read even for the degraded and the not comparable variants.
    perplexity = figures["sparsity-perplexity"]
    assert perplexity.count('class="point"') == 6 and perplexity.count('class="interval"') == 4
    # As a ratio to the baseline on a log scale: +250% [+200, +300] is 3.5 [3, 4].
    assert "wanda: x=0.7, y=3.5 [3, 4]" in perplexity
    # The y axis reaches the top of the highest interval (4), not only the value (3.5).
    ticks = [float(t.replace(",", "")) for t in re.findall(r'text-anchor="end" font-size="11">([^<]+)<', perplexity)]
    assert max(ticks) >= 4 and ticks == sorted(ticks) and all(b / a == 10 for a, b in zip(ticks, ticks[1:]))
    for chart_id in ("sparsity-srs", "sparsity-transitions", "sparsity-perplexity"):
        assert f"id='fig-{chart_id}'" in render_html(DATA)


def test_line_chart_places_a_point_and_its_interval_by_hand():
    # y axis: ticks 0..0.8 over the plot's 244 px from y=40 (top) to y=284 (bottom).
    # 0.5 -> 40 + 244 * (1 - 0.5 / 0.8) = 131.5; 0.7 -> 70.5; 0.3 -> 192.5; x = 0 at the left edge, 64.
    chart = line_chart("t", {"a": [(0.0, 0.5, 0.3, 0.7), (0.5, 0.4)]}, x_label="x", y_label="y")
    assert '<circle class="point" cx="64.0" cy="131.5"' in chart
    assert 'class="interval" x1="64.0" x2="64.0" y1="192.5" y2="70.5"' in chart
    assert chart.count('class="interval"') == 1  # the second point has none
    # The y axis covers an interval well above every value: 0.2 [0.1, 2] gives ticks up to 2.
    tall = line_chart("t", {"a": [(0.0, 0.2, 0.1, 2.0)]}, x_label="x", y_label="y")
    assert re.findall(r'text-anchor="end" font-size="11">([^<]+)<', tall)[-1] == "2"
    # An open upper end runs to the top of the plot (y=40) with one cap only; ticks 0..0.5 here,
    # so 0.3 -> 40 + 244 * (1 - 0.3 / 0.5) = 137.6.
    open_end = line_chart("t", {"a": [(0.0, 0.5, 0.3, None)]}, x_label="x", y_label="y")
    assert 'y1="137.6" y2="40.0"' in open_end and open_end.count('class="cap"') == 1
    # Two series with intervals are set 3 px either side of their x, so their bars stay apart.
    two = line_chart("t", {"a": [(0.0, 0.5, 0.3, 0.7)], "b": [(0.0, 0.5, 0.3, 0.7)]}, x_label="x", y_label="y")
    assert 'cx="61.0" cy="131.5"' in two and 'cx="67.0" cy="131.5"' in two


HOSTILE = "<script>alert(1)</script>|[x](javascript:alert(1))"


def test_a_hostile_method_name_is_escaped_everywhere():
    data = copy.deepcopy(DATA)
    for row in data["sweep"]:
        if row["method"] == "wanda":
            row["method"] = HOSTILE
    data["transition_ratio_pruning_vs_quantization"]["matches"][0]["pruned"] = [HOSTILE]
    data["transition_ratio_pruning_vs_quantization"]["notes"] = [HOSTILE + "\n# heading"]
    text, page = render_markdown(data), render_html(data)
    assert "<script" not in text.lower() and "<script" not in page.lower()
    assert not re.search(r"(?<!\\)\]\(javascript:", text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    rows = md_rows(md_section(text, "Sparsity sweep"))
    assert {len(row) for row in rows} == {12}  # no name splits a cell
    assert rows[4][1] == "&lt;script&gt;alert(1)&lt;/script&gt;\\|\\[x\\](javascript:alert(1))"
    assert not [line for line in text.splitlines() if line.startswith("# ") and "edge-audit" not in line]
    srs = charts(data)["sparsity-srs"]
    assert "<script" not in srs and "&lt;script&gt;" in srs


def test_an_older_report_without_the_sweep_renders():
    data = copy.deepcopy(DATA)
    del data["sweep"], data["transition_ratio_pruning_vs_quantization"]
    text, page = render_markdown(data), render_html(data)
    for title in ("Sparsity sweep", "Pruning against quantization"):
        assert title not in text and title not in page
    figures = charts(data)
    for chart_id in ("sparsity-srs", "sparsity-transitions", "sparsity-perplexity"):
        assert "no sparsity sweep in this report" in figures[chart_id] and 'class="point"' not in figures[chart_id]


def test_a_run_without_pruned_variants_has_no_sweep_section_and_empty_curves():
    data = copy.deepcopy(DATA)
    data["sweep"] = data["sweep"][:1]
    data["transition_ratio_pruning_vs_quantization"].update(value=None, ci95=[None, None], n=0, matches=[],
                                                          notes=["no pruned variant to compare"])
    text = render_markdown(data)
    assert "## Sparsity sweep" not in text and "## Pruning against quantization" not in text
    assert "no pruned variant in this run" in charts(data)["sparsity-srs"]
    # Pruned variants none of which can be read: the bias curves say so, perplexity is drawn.
    data = copy.deepcopy(DATA)
    data["sweep"] = [data["sweep"][0], data["sweep"][2], data["sweep"][4]]
    figures = charts(data)
    assert "no pruned variant to read" in figures["sparsity-srs"] and 'class="point"' in figures["sparsity-perplexity"]


def test_points_whose_competence_could_not_be_shown_are_said_so():
    """With ambiguous items only (the study's protocol), the competence guard cannot vouch for any
    variant: the sweep says so, since a variant answering at random reads like any other."""
    from audit.reports.render import COMPETENCE_NOT_SHOWN

    assert COMPETENCE_NOT_SHOWN not in render_markdown(DATA)
    unshown = copy.deepcopy(DATA)
    for p in unshown["sweep"]:
        p["competence"] = "inconclusive"
    assert COMPETENCE_NOT_SHOWN in render_markdown(unshown) and html.escape(COMPETENCE_NOT_SHOWN) in render_html(unshown)


def test_large_interval_ends_are_written_short():
    from audit.reports.render import interval

    assert interval(est(1.94e6, 1161505.7, 3226084.8), suffix="%") == "+1.94e+06% [1.16e+06, 3.23e+06]"
    assert interval(est(2323.0, 1950.27, 2763.45), suffix="%") == "+2,323% [1950, 2763]"

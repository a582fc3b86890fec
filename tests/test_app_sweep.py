"""Compare's sweep charts, driven with Pilot on hand-built report data (no model scored): the
curves are the report's sweep points, every measured point has its 95% interval drawn, a point
too degraded to judge is left out of the bias curves and named, and at 80x24 `c` shows the next
chart while at 120x40 all three are side by side."""

from __future__ import annotations

import time

import pytest

from audit.sweep import CURVES, DENSE, curves, sweep_points
from tests.app_support import FrozenDevice, fake_loader, show_on_compare
from tui.app import create_app
from tui.widgets.charts import NOT_MEASURED, NOTHING_TO_PLOT, SweepChart, SweepCharts
from tui.widgets.comparison import ComparisonTable

SMALL, LARGE = (80, 24), (120, 40)


def est(value, low, high, n=20):
    return {"value": value, "ci95": [low, high], "n": n}


def pruned(name, method, sparsity, srs, transition, perplexity, degraded=False):
    """A pruned variant as a report stores it: `srs`, `transition` and `perplexity` (the change
    in percent) as (value, low, high)."""
    return {
        "name": name,
        "method": method,
        "sparsity": sparsity,
        "recipe": {"prune": {"method": method, "sparsity": sparsity}},
        "perplexity": 20.0 * (1 + perplexity[0] / 100),
        "perplexity_change": est(*perplexity),
        "degraded": degraded,
        "gate_verdict": "fail" if degraded else "inconclusive",
        "gate_plain": "too degraded to judge: do not ship" if degraded else "not settled: do not ship yet",
        "probes": {
            "builtin": {
                "overall": {"srs": est(*srs)},
                "category_mean": {"srs": est(*srs)},
                "comparison": {"comparable": True, "transition_rate": est(*transition), "srs_relative_change_pct": est(10.0, -5.0, 25.0)},
                "comparison_category_mean": {"srs_relative_change_pct": est(10.0, -5.0, 25.0)},
            }
        },
    }


def report_data(pruned_variants=None, sweep=True):
    """Two methods at two sparsities; magnitude at 0.5 too degraded to judge."""
    variants = [
        {
            "name": "baseline",
            "method": "dense",
            "sparsity": 0.0,
            "perplexity": 20.0,
            "probes": {"builtin": {"overall": {"srs": est(0.20, 0.10, 0.30)}, "category_mean": {"srs": est(0.20, 0.10, 0.30)}}},
        }
    ]
    if pruned_variants is None:
        pruned_variants = [
            pruned("wanda-25", "wanda", 0.25, (0.30, 0.22, 0.38), (0.10, 0.04, 0.18), (2.0, 1.0, 3.0)),
            pruned("wanda-50", "wanda", 0.5, (0.45, 0.35, 0.55), (0.30, 0.20, 0.40), (6.0, 4.5, 7.5)),
            pruned("magnitude-25", "magnitude", 0.25, (0.25, 0.15, 0.35), (0.05, 0.01, 0.12), (9.0, 7.0, 11.0)),
            pruned("magnitude-50", "magnitude", 0.5, (0.33, 0.20, 0.45), (0.20, 0.10, 0.30), (80.0, 75.0, 85.0), degraded=True),
        ]
    data = {
        "run": {"id": 4, "name": "sweep", "status": "finished"},
        "gate": None,
        "baseline": "baseline",
        "suites": ["builtin"],
        "variants": variants + pruned_variants,
        "flipped": [],
    }
    if sweep:
        data["sweep"] = sweep_points(data)
    return data


@pytest.fixture()
def app(tmp_path, monkeypatch, isolated_cache):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    yield create_app("smollm2-135m", store="results.db", device=FrozenDevice(), loader=fake_loader)
    monkeypatch.undo()
    time.tzset()


async def compare(pilot, data):
    """Show `data` on Compare as a stored run (the session's reports leave it alone)."""
    await show_on_compare(pilot, data)
    return pilot.app.screen.query_one(SweepCharts)


def chart(charts, curve) -> SweepChart:
    return charts.query_one(f"#chart-{curve}", SweepChart)


def drawn(chart_widget, kind):
    return [(method, xs, ys) for k, method, xs, ys in chart_widget.plot.segments if k == kind]


@pytest.mark.asyncio
async def test_the_curves_are_the_sweep_points_without_the_degraded_bias_figures(app):
    data = report_data()
    async with app.run_test(size=LARGE) as pilot:
        charts = await compare(pilot, data)
        expected = curves(data["sweep"])
        for curve in CURVES:
            assert chart(charts, curve).lines == expected[curve]
        srs, transitions, perplexity = (chart(charts, c) for c in ("srs", "transitions", "perplexity"))
        # What each line joins: the baseline at 0, then the method's measured points.
        lines = {method: (xs, ys) for method, xs, ys in drawn(srs, "line")}
        assert lines == {"magnitude": ([0.0, 0.25], [0.20, 0.25]), "wanda": ([0.0, 0.25, 0.5], [0.20, 0.30, 0.45])}
        lines = {method: (xs, ys) for method, xs, ys in drawn(transitions, "line")}
        assert lines == {"magnitude": ([0.0, 0.25], [0.0, 0.05]), "wanda": ([0.0, 0.25, 0.5], [0.0, 0.10, 0.30])}
        # Perplexity is read whatever the gate says of the variant's answers.
        lines = {method: (xs, ys) for method, xs, ys in drawn(perplexity, "line")}
        # Perplexity over the baseline's, on a log scale: +80% is 1.8.
        assert {m: (xs, [round(y, 6) for y in ys]) for m, (xs, ys) in lines.items()} == {
            "magnitude": ([0.0, 0.25, 0.5], [1.0, 1.09, 1.8]), "wanda": ([0.0, 0.25, 0.5], [1.0, 1.02, 1.06])
        }
        assert perplexity.plot.log_scale and not srs.plot.log_scale
        assert "magnitude: 0.5 too degraded" in srs.key.plain
        assert "magnitude: 0.5 too degraded" in transitions.key.plain
        assert "too degraded" not in perplexity.key.plain
        assert [srs.key.plain.splitlines()[0], perplexity.key.plain.splitlines()[0]] == [
            "SRS (mean over categories) vs sparsity",
            "Perplexity ratio to the baseline vs sparsity",
        ]


@pytest.mark.asyncio
@pytest.mark.parametrize("stored", [True, False], ids=["stored", "computed"])
async def test_the_sweep_points_plotted_are_the_reports_or_computed_when_missing(app, stored):
    data = report_data(sweep=stored)
    if stored:
        # The points stored with the report are the ones plotted, not figures read again.
        wanda_50 = next(p for p in data["sweep"] if p["variant"] == "wanda-50")
        wanda_50["srs"] = est(0.9, 0.8, 1.0)
    async with app.run_test(size=LARGE) as pilot:
        charts = await compare(pilot, data)
        lines = {method: ys for method, _, ys in drawn(chart(charts, "srs"), "line")}
        assert lines["wanda"] == ([0.20, 0.30, 0.9] if stored else [0.20, 0.30, 0.45])


@pytest.mark.asyncio
async def test_each_measured_point_has_its_interval_drawn(app):
    data = report_data()
    async with app.run_test(size=LARGE) as pilot:
        charts = await compare(pilot, data)
        srs = chart(charts, "srs")
        bars = {(method, round(xs[0] * 4) / 4): (xs[0], ys) for method, xs, ys in drawn(srs, "interval")}
        assert all(xs[0] == xs[1] for _, xs, _ in drawn(srs, "interval"))  # vertical bars
        # The baseline's once (in grey); each method's bar at its point, or beside the other
        # method's at the same sparsity, at least a character column apart.
        assert {key: ys for key, (_, ys) in bars.items()} == {
            (DENSE, 0.0): [0.10, 0.30],
            ("magnitude", 0.25): [0.15, 0.35],
            ("wanda", 0.25): [0.22, 0.38],
            ("wanda", 0.5): [0.35, 0.55],
        }
        column = srs.plot.column
        assert 0 < column < 0.05
        assert bars[("wanda", 0.25)][0] - bars[("magnitude", 0.25)][0] >= column
        assert all(abs(x - sparsity) <= column for (_, sparsity), (x, _) in bars.items())
        perplexity = {(m, round(xs[0] * 4) / 4): ys for m, xs, ys in drawn(chart(charts, "perplexity"), "interval")}
        assert perplexity[("magnitude", 0.5)] == pytest.approx([1.75, 1.85])
        assert (DENSE, 0.0) not in perplexity  # the baseline's change is exactly 0: no bar
        assert "95% interval" in srs.key.plain


@pytest.mark.asyncio
async def test_at_80x24_c_shows_the_next_chart_and_the_table_keeps_its_rows(app):
    async with app.run_test(size=SMALL) as pilot:
        charts = await compare(pilot, report_data())
        screen = app.screen
        table = screen.query_one(ComparisonTable)
        assert table.region.height >= table.row_count + 1  # every row and the header on screen
        assert not charts.all_shown and screen.check_action("next_chart", ())
        seen = [charts.shown()]
        for _ in CURVES:
            await pilot.press("c")
            await pilot.pause()
            seen.append(charts.shown())
        assert seen == [["srs"], ["transitions"], ["perplexity"], ["srs"]]
        assert chart(charts, "srs").region.height >= 6
        assert "1 of 3" in str(chart(charts, "srs").query_one(".chart-key").render())


@pytest.mark.asyncio
async def test_at_120x40_all_three_charts_show_and_c_does_nothing(app):
    async with app.run_test(size=LARGE) as pilot:
        charts = await compare(pilot, report_data())
        assert charts.all_shown and charts.shown() == list(CURVES)
        assert not app.screen.check_action("next_chart", ())
        await pilot.press("c")
        await pilot.pause()
        assert charts.shown() == list(CURVES)
        widths = [chart(charts, c).region.width for c in CURVES]
        assert min(widths) >= 30


@pytest.mark.asyncio
async def test_the_charts_say_when_no_pruned_variant_is_measured(app):
    waiting = pruned("wanda-50", "wanda", 0.5, (0.45, 0.35, 0.55), (0.30, 0.20, 0.40), (6.0, 4.5, 7.5))
    waiting.update(probes={}, perplexity=None, perplexity_change=None)
    async with app.run_test(size=SMALL) as pilot:
        charts = await compare(pilot, report_data([waiting], sweep=False))
        for curve in CURVES:
            widget = chart(charts, curve)
            assert widget.has_class("-empty") and not widget.plot.display
            assert NOT_MEASURED in widget.key.plain
            assert "wanda: 0.5 not measured yet" in widget.key.plain


@pytest.mark.asyncio
async def test_a_sweep_too_degraded_to_judge_has_no_bias_curve_but_its_perplexity(app):
    degraded = pruned("magnitude-50", "magnitude", 0.5, (0.33, 0.2, 0.45), (0.2, 0.1, 0.3), (80.0, 75.0, 85.0), degraded=True)
    data = report_data([degraded])
    async with app.run_test(size=LARGE) as pilot:
        charts = await compare(pilot, data)
        for curve in ("srs", "transitions"):
            widget = chart(charts, curve)
            assert widget.has_class("-empty") and NOTHING_TO_PLOT in widget.key.plain
            assert "magnitude: 0.5 too degraded" in widget.key.plain
        perplexity = chart(charts, "perplexity")
        assert not perplexity.has_class("-empty") and perplexity.plot.display
        assert [ys for _, _, ys in drawn(perplexity, "line")] == [pytest.approx([1.0, 1.8])]


def test_the_hand_built_report_has_what_the_charts_need():
    # Guards the fixture itself: two methods at two sparsities, one point too degraded.
    points = report_data()["sweep"]
    assert [(p["method"], p["sparsity"], p["degraded"]) for p in points] == [
        (DENSE, 0.0, False),
        ("magnitude", 0.25, False),
        ("magnitude", 0.5, True),
        ("wanda", 0.25, False),
        ("wanda", 0.5, False),
    ]
    assert points == sweep_points(report_data(sweep=False))

"""The verdict at the device: Compare's banner in words, its key (`v`) with every finding, and
History saying the same verdict of the same run."""

from __future__ import annotations

import pytest

from audit.verdict import run_verdict, verdict_key
from tests.app_support import FrozenDevice, build_audit_store, fake_loader, open_stored_run, settle
from tui.app import create_app
from tui.screens.verdict import VerdictScreen
from tui.widgets.comparison import ComparisonTable
from tui.widgets.gate_banner import GateBanner


@pytest.fixture()
def app(tmp_path, monkeypatch, isolated_cache):
    monkeypatch.chdir(tmp_path)
    build_audit_store(tmp_path / "results.db")
    return create_app("smollm2-135m", store="results.db", device=FrozenDevice(), loader=fake_loader)


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_the_banner_says_do_not_ship_and_the_failing_rule_and_v_lists_every_finding(app, size):
    async with app.run_test(size=size) as pilot:
        await open_stored_run(pilot)
        banner = app.screen.query_one(GateBanner)
        text = banner.render().plain
        assert text.startswith(" ✖ DO NOT SHIP  1 rule fails (magnitude-50 perplexity +60.2% > 50%)")
        assert banner.has_class("-fail")
        # Every line of the banner fits the screen: it wraps rather than cutting a number.
        assert banner.size.height >= (2 if size[0] == 80 else 1) and banner.size.width <= size[0]
        await pilot.press("v")
        await pilot.pause()
        assert isinstance(app.screen, VerdictScreen)
        shown = [str(static.render()) for static in app.screen.query(".key-finding")]
        assert "✖ perplexity rose 60.2% (at least 58.7%), limit 50%" in shown
        assert "⚠ disambiguated accuracy 0.318 (at most 0.581), not shown above chance 0.333: too degraded to judge" in shown
        # The bias rules of the degraded variant are named once, as not judged.
        unjudged = [line for line in shown if line.startswith("? not judged, too degraded: SRS, bias-ward transitions")]
        assert len(unjudged) == 1
        key = verdict_key(app.compared["gate"])
        assert len(shown) == len([line for line in key if "not judged" not in line.words]) + 1
        heads = [str(static.render()) for static in app.screen.query(".key-variant")]
        # A variant both degraded and failing a rule is named as Compare's verdict row names it.
        assert heads == ["baseline  ✔ MAY SHIP", "wanda-50  ? NOT ENOUGH EVIDENCE", "magnitude-50  ⚠ TOO DEGRADED TO JUDGE", "int8-dynamic  ? NOT ENOUGH EVIDENCE"]
        compare = next(screen for screen in app.screen_stack if screen.query(ComparisonTable))
        assert str(compare.query_one(ComparisonTable).get_cell("verdict", "magnitude-50")) == "too degraded"
        await pilot.press("escape")
        assert app.current_mode == "compare" and not isinstance(app.screen, VerdictScreen)


@pytest.mark.asyncio
async def test_history_says_the_verdict_compare_says_for_a_stored_run_and_the_session(app):
    async with app.run_test(size=(80, 24)) as pilot:
        await open_stored_run(pilot)
        compared = run_verdict(app.compared["gate"], status=app.compared["run"]["status"])
        await pilot.press("5")
        await settle(pilot, app, until=lambda: bool(getattr(app.screen, "runs", None)))
        table = app.screen.query_one("#runs")
        columns = [str(c.label) for c in table.columns.values()]
        assert columns[-1] == "verdict" and "model" not in columns  # 80 columns: the model is in the detail line
        row = table.get_row_at(0)
        assert str(row[-1]) == f"{compared.icon} {compared.short}" == "✖ do not ship"
        detail = str(app.screen.query_one("#run-detail").render())
        assert compared.line() in detail.replace("\n", " ") or compared.line()[:40] in detail
        # The session's own run is judged live, as Compare shows it.
        session = app.session
        app.report = {**app.compared, "run": {**app.compared["run"], "id": 1, "status": "running"}}
        session.run_id = 1
        assert app.screen.verdict(app.screen.runs[0]) == run_verdict(app.report["gate"], status="running")

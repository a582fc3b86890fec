"""The app driven with Pilot on a tiny model: load -> prune -> probe -> compare recorded in the store;
keys answered while a prune and a probe run; cancel; quitting mid-job; failures as notices."""

from __future__ import annotations

import threading
import time

import pytest
from textual.widgets import Checkbox

from audit.models import load_model
from audit.reports.render import fmt, summary_rows
from audit.results import build_report
from audit.store import ResultsStore
from tests.app_support import FrozenDevice, exited, paste_into, press_while_busy, settle, timed_keys, type_into, wait_for
from tui.app import create_app
from tui.screens.variant import VariantScreen
from tui.widgets.comparison import ComparisonTable
from tui.widgets.probe_metrics import ProbeMetricsTable

SIZE = (80, 24)


def make_app(model, store, loader=None):
    return create_app(str(model), store=str(store), device=FrozenDevice(), loader=loader)


class HeldScoring:
    """A loader whose model keeps scoring each batch over and over (real work on the cores)
    until released, so a probe lasts as long as the test needs on a fast or a slow machine."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def loader(self, spec, options, cancel):
        model = yield from load_model(spec, options, cancel)
        score = model.score
        released = self.released

        def held(requests, **kwargs):
            deadline = time.monotonic() + 120  # never hold a failed test's worker for ever
            result = score(requests, **kwargs)
            while not released.is_set() and time.monotonic() < deadline:
                result = score(requests, **kwargs)
            return result

        model.score = held
        return model


async def loaded(pilot):
    await settle(pilot, pilot.app, until=lambda: pilot.app.session is not None)


async def compress(pilot, name="wanda-50", nsamples="4", seqlen="32"):
    await pilot.press("2")
    await type_into(pilot, "#nsamples", nsamples)
    await type_into(pilot, "#seqlen", seqlen)
    await pilot.press("ctrl+r")


async def probe_settings(pilot, limit, perplexity, profile=False):
    await pilot.press("3")
    await type_into(pilot, "#limit", limit)
    for name, wanted in (("perplexity", perplexity), ("profile", profile)):
        box = pilot.app.screen.query_one(f"#{name}", Checkbox)
        if box.value != wanted:
            box.focus()
            await pilot.press("space")
    assert pilot.app.screen.query_one("#profile", Checkbox).value is profile


def notices(app):
    return [n.message for n in app._notifications]


@pytest.mark.asyncio
async def test_load_prune_probe_compare(tiny_llama, tmp_path):
    store = tmp_path / "results.db"
    app = make_app(tiny_llama, store)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert app.session.facts.backend == "pytorch"
        await compress(pilot)
        await settle(pilot, app)
        run_id = app.session.run_id
        with ResultsStore(store) as db:
            assert db.step(run_id, "wanda-50", "compress")["result"]["prune"]["actual_sparsity"] == pytest.approx(0.5, abs=0.01)
        await probe_settings(pilot, "2", perplexity=True)
        await pilot.press("ctrl+r")  # every model: the baseline and wanda-50
        await settle(pilot, app, until=lambda: app.report is not None and all(v["probes"] for v in app.report["variants"]))
        assert app.screen._live_target == "wanda-50"  # the live figures named the model being scored
        await pilot.press("4")
        await pilot.pause()
        table = app.screen.query_one(ComparisonTable)
        assert table.variant_names == ["baseline", "wanda-50"]
        # The comparison is the stored run read back, as `edge-audit runs show` reads it.
        with ResultsStore(store) as db:
            rows = summary_rows(build_report(db, run_id))
        wanda = rows[1]
        assert wanda["perplexity"] is not None and wanda["srs"] is not None
        srs_cell = str(table.get_cell("srs", "wanda-50"))
        assert srs_cell.startswith(fmt(wanda["srs"]["value"], 3))
        if wanda["degraded"]:  # a tiny random model may well answer at chance
            assert "too degraded" in srs_cell
        ppl_cell = str(table.get_cell("perplexity", "wanda-50"))
        assert ppl_cell.startswith(fmt(wanda["perplexity"], 4)) and "%" in ppl_cell
        # Drill into the variant: its categories, then the items that flipped.
        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, VariantScreen)
        categories = app.screen.query_one("#categories-table")
        assert categories.row_count == 2 + 5  # overall, the mean of categories and the five built-in ones
        await pilot.press("f", "escape")
        await pilot.press("q")
        await exited(app)
    with ResultsStore(store) as db:
        record = db.run(run_id)
        kinds = {(s["variant"], s["kind"]) for s in db.steps(run_id)}
    assert kinds == {
        ("baseline", "fingerprint"),  # stored with every model the measurements load
        ("baseline", "perplexity"),
        ("baseline", "probe:builtin"),
        ("wanda-50", "compress"),
        ("wanda-50", "fingerprint"),
        ("wanda-50", "perplexity"),
        ("wanda-50", "probe:builtin"),
    }
    assert record.status == "finished" and record.gate is not None  # every planned step is stored


@pytest.mark.asyncio
async def test_keys_answered_while_a_prune_and_a_probe_run_and_cancels(tiny_llama, tmp_path):
    store = tmp_path / "results.db"
    held = HeldScoring()
    app = make_app(tiny_llama, store, held.loader)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            # A prune with many calibration samples: long enough to press keys during it.
            await compress(pilot, nsamples="2048", seqlen="64")
            await wait_for(pilot, lambda: app.job is not None and app.job.latest is not None and "block" in app.job.latest.message)
            during_prune = await timed_keys(pilot, ["4", "2", "4", "2", "4"])
            assert len(during_prune) == 5, "the prune ended before the keys were measured"
            await press_while_busy(pilot, "escape", lambda: app.job is None)  # cancel the prune: nothing of it is stored
            await settle(pilot, app)
            with ResultsStore(store) as db:
                assert db.step(app.session.run_id, "wanda-50", "compress") is None
            # A probe of the whole built-in suite, held at work, then cancelled.
            await probe_settings(pilot, "", perplexity=False)
            app.screen.query_one("#target").value = "baseline"
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.job is not None and app.job.latest is not None and app.job.latest.stage == "probe")
            during_probe = await timed_keys(pilot, ["4", "3", "4", "3", "4", "3"])
            assert len(during_probe) == 6
            held.released.set()
            await wait_for(pilot, lambda: app.job.latest.done > 0)
            await press_while_busy(pilot, "escape", lambda: app.job is None)
            await settle(pilot, app)
            # How fast they were answered is a figure, not a test (benchmarks/app_keys.py).
            print(f"\nkey latency during prune, ms: {[round(x, 1) for x in during_prune]}")
            print(f"key latency during probe, ms: {[round(x, 1) for x in during_probe]}")
            assert any("cancelled" in n for n in notices(app))
            # The live panel keeps the figures of the items scored before the cancel...
            assert app.current_mode == "probe"
            shown = app.screen.query_one(ProbeMetricsTable)
            assert shown.row_count >= 2 and "cancelled" in str(app.screen.query_one("#probe-status").render())
            # ...and the store holds no half probe: a stored probe is always complete.
            with ResultsStore(store) as db:
                assert db.step(app.session.run_id, "baseline", "probe:builtin") is None
            await pilot.press("1")  # still usable
            assert app.current_mode == "models"
    finally:
        held.released.set()


@pytest.mark.asyncio
async def test_quit_during_a_job_asks_then_cancels_and_keeps_finished_steps_and_the_run_continues(tiny_llama, tmp_path):
    store = tmp_path / "results.db"
    held = HeldScoring()
    app = make_app(tiny_llama, store, held.loader)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await compress(pilot)
            await settle(pilot, app)
            run_id = app.session.run_id
            await probe_settings(pilot, "", perplexity=False)
            app.screen.query_one("#target").value = "baseline"
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.job is not None and app.job.latest is not None and app.job.latest.stage == "probe")
            await press_while_busy(pilot, "q", lambda: type(app.screen).__name__ == "ConfirmScreen")
            assert app.is_running
            await press_while_busy(pilot, "n", lambda: type(app.screen).__name__ != "ConfirmScreen")  # not yet
            assert app.job is not None and not app.job.cancel.is_set()
            await press_while_busy(pilot, "q", lambda: type(app.screen).__name__ == "ConfirmScreen")
            await press_while_busy(pilot, "y", lambda: app.job.cancel.is_set())
            assert app.is_running  # it waits for the job to stop
            held.released.set()
            await exited(app)
    finally:
        held.released.set()
    assert app.return_code == 0
    with ResultsStore(store) as db:
        record = db.run(run_id)
        assert db.step(run_id, "wanda-50", "compress") is not None
        assert db.step(run_id, "baseline", "probe:builtin") is None
    assert record.status == "interrupted"  # `edge-audit run --resume` completes it, or the app:

    # History, `c`: the run is the session again, and a new step is added to it.
    app = make_app(tiny_llama, store)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert app.session.run_id is None
        await pilot.press("5")
        await settle(pilot, app, until=lambda: app.screen.query_one("#runs").row_count == 1)
        await pilot.press("c")
        await settle(pilot, app, until=lambda: app.session.run_id == run_id)
        assert [v.name for v in app.session.plan.variants] == ["wanda-50"]
        session = app.session
        await pilot.press("5", "c")  # the session's own run: nothing to load again
        await settle(pilot, app)
        assert app.session is session and f"run {run_id} is already this session" in notices(app)
        with ResultsStore(store) as db:
            assert db.run(run_id).status == "running"
        await probe_settings(pilot, "2", perplexity=False)
        app.screen.query_one("#target").value = "baseline"
        await pilot.press("ctrl+r")
        await settle(pilot, app)
        await pilot.press("q")
        await exited(app)
    with ResultsStore(store) as db:
        assert db.step(run_id, "wanda-50", "compress") is not None  # kept, not redone
        assert db.step(run_id, "baseline", "probe:builtin") is not None
        assert len(db.runs()) == 1


@pytest.mark.asyncio
async def test_failures_are_notices_and_the_app_stays_usable(tiny_llama, tmp_path):
    app = make_app(tmp_path / "missing", tmp_path / "results.db")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app)
        assert app.session is None
        assert any("no such file or folder" in n for n in notices(app))
        # The path that failed is back in the path field, which has the cursor: tab leaves it.
        assert app.focused is app.screen.query_one("#model-path") and app.focused.value == str(tmp_path / "missing")
        await pilot.press("tab", "2", "ctrl+r")
        assert any("load a model first" in n for n in notices(app))
        # Load a real model by typing its folder, then a prune that fails in its worker.
        await pilot.press("1")
        await paste_into(pilot, "#model-path", str(tiny_llama))
        await pilot.press("enter")
        await loaded(pilot)
        await pilot.press("2")
        # Calibration fields are checked, each by name, before a job could change the plan.
        await pilot.press("ctrl+r")
        assert any("Seq. length 512 exceeds the model's context length" in n for n in notices(app))
        assert app.session.run_id is None
        await refused(pilot, app, "#seqlen", "0", "Seq. length must be at least 8, not 0")
        await type_into(pilot, "#seqlen", "32")
        await type_into(pilot, "#exclude", "*.no_such_layer")
        await pilot.press("ctrl+r")
        await settle(pilot, app)
        assert any("exclude pattern '*.no_such_layer' matches no layer" in n for n in notices(app))
        assert app.session.run_id is None and app.session.plan.variants == ()  # nothing half-made
        await refused(pilot, app, "#sparsity", "lots", "sparsity must be a number")
        # The probe form names its fields before any job: a limit below 1, an unknown category.
        await pilot.press("tab")  # out of the text field, where 3 is a character
        await pilot.press("3")
        await pilot.pause()
        await refused(pilot, app, "#limit", "0", "Limit must be at least 1 item per category, not 0")
        await type_into(pilot, "#limit", "2")
        await refused(pilot, app, "#categories", "astrology", "unknown built-in category 'astrology'")
        assert app.session.run_id is None  # nothing started
        assert app.focused.id == "categories"  # the cursor is back on the field to fix
        app.set_focus(None)  # out of the text field, where 1 is a character
        await pilot.press("1")
        assert app.current_mode == "models"


async def refused(pilot, app, field, text, message):
    """Type `text` into `field` and run the form: a notice says `message`."""
    await type_into(pilot, field, text)
    await pilot.press("ctrl+r")
    assert any(message in n for n in notices(app)), notices(app)


def test_a_change_of_stage_is_never_dropped_from_the_queue():
    from audit.progress import Progress
    from tui.messages import JobProgress

    def event(stage, job=1):
        return JobProgress(job, "measure", Progress(stage, 1, 2, "x"))

    assert event("probe").can_replace(event("probe"))
    assert not event("probe").can_replace(event("target"))  # the next model's name stays queued
    assert not event("probe", job=2).can_replace(event("probe"))


def finding(variant="wanda-50", metric="srs_relative_change_pct", verdict="pass", value=10.0, lower=5.0, upper=15.0,
            limit=25.0, check="rule", category="overall", limit_is="max"):
    return {
        "check": check, "metric": metric, "variant": variant, "category": category, "verdict": verdict,
        "value": value, "lower": lower, "upper": upper, "limit": limit, "limit_is": limit_is,
        "reason": "not measured, so the rule cannot be shown to hold" if value is None else "", "passed": verdict == "pass",
    }


def gate_of(*findings):
    verdicts = {f["verdict"] for f in findings}
    verdict = "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"
    return {"verdict": verdict, "passed": verdict == "pass", "findings": list(findings)}


def test_the_verdict_banner_says_in_plain_words_whether_to_ship_with_an_icon_at_80_columns():
    from audit.verdict import run_verdict
    from tui.widgets.gate_banner import banner_state, verdict_text

    width = 78  # 80 columns less the banner's padding

    def banner(*findings, in_progress=False):
        verdict = run_verdict(gate_of(*findings), in_progress)
        return verdict_text(verdict, width).plain, banner_state(verdict)

    ok = finding()
    text, state = banner(ok, finding(metric="transition_rate", value=0.1, lower=0.0, upper=0.15, limit=0.2))
    assert state == "pass" and text == " ✔ MAY SHIP  all 2 checks hold"
    failed = finding(metric="perplexity_relative_change_pct", verdict="fail", value=137.0, lower=120.0, upper=155.0, limit=50.0)
    text, state = banner(ok, failed, finding(verdict="fail", value=90.0, lower=60.0, upper=120.0))
    assert state == "fail"
    assert text == " ✖ DO NOT SHIP  2 rules fail (wanda-50 perplexity +137% > 50%, wanda-50 SRS +90% > 25%)"
    unsettled = finding(verdict="inconclusive", value=18.0, lower=4.0, upper=31.0)
    text, state = banner(ok, {**unsettled, "items_to_settle": 340})
    assert state == "inconclusive"
    assert text == " ? NOT ENOUGH EVIDENCE  about 340 more items needed (wanda-50 SRS not settled: 4 to 31%, limit <= 25%)"
    # A variant too degraded to judge: its competence failed, its bias rules were not judged.
    chance = finding(metric="accuracy_disambig", check="competence", verdict="fail", value=0.3, lower=0.12, upper=0.58,
                     limit=1 / 3, limit_is="min")
    not_judged = {**finding(verdict="inconclusive"), "reason": "not judged: the variant is too degraded to judge"}
    text, state = banner(chance, not_judged)
    assert state == "fail" and text == " ⚠ TOO DEGRADED TO JUDGE  wanda-50: accuracy not shown above chance (0.333)"
    # While the run goes on, a figure not measured yet is pending; once it is over, not settled.
    unmeasured = finding(verdict="inconclusive", value=None, lower=None, upper=None)
    assert banner(ok, unmeasured, in_progress=True)[1] == "pending"
    text, state = banner(ok, unmeasured)
    assert state == "inconclusive" and text == " ? NOT ENOUGH EVIDENCE  1 check not measured (wanda-50 SRS)"
    assert banner_state(run_verdict(None)) == "none"
    # Many failures: at most three lines, ended by an ellipsis, the label whole.
    many = [finding(verdict="fail", value=90.0 + i, lower=60.0, upper=120.0, category=f"category-{i}") for i in range(12)]
    text = verdict_text(run_verdict(gate_of(*many)), width)
    assert text.cell_len <= 3 * width and text.plain.startswith(" ✖ DO NOT SHIP  12 rules fail (") and text.plain.endswith("+9 more)")


def summary_row(variant, **values):
    row = {
        "variant": variant, "method": "wanda", "sparsity": 0.5, "size_on_disk_mb": 538.1, "size_on_disk_compressed_mb": None,
        "decode_ms_per_token_p50": 41.0, "latency_ms_p50": None, "rss_peak_mb": 610.0, "perplexity": 18.0,
        "perplexity_relative_change_pct": {"value": 3.3, "ci95": [2.0, 4.6], "n": 10},
        "srs": {"value": 0.2, "ci95": [0.1, 0.4], "n": 18}, "srs_relative_change_pct": {"value": -10.0, "ci95": [-50.0, 30.0], "n": 18},
        "bias_score_ambig": {"value": 0.2, "ci95": [0.0, 0.5], "n": 18}, "bias_score_disambig": {"value": -0.1, "ci95": [-0.5, 0.3], "n": 22},
        "transition_rate": {"value": 0.1, "ci95": [0.0, 0.4], "n": 14}, "significant": False, "comparable": True, "not_comparable": [],
        "gate_passed": False, "gate_verdict": "inconclusive", "gate_plain": "not settled: do not ship yet", "degraded": False,
    }
    row.update(values)
    return row


def test_the_comparison_never_reads_a_degraded_variant_as_better_and_names_what_is_not_comparable():
    from tui.widgets.comparison import perplexity_cell, srs_cell, transition_cell, verdict_cell

    base = summary_row("baseline", sparsity=0.0, srs={"value": 0.25, "ci95": [0.1, 0.5], "n": 18}, gate_verdict=None, gate_plain=None)
    judged = srs_cell("srs", summary_row("wanda-50"), base).render({"srs"})
    assert judged.plain == "0.2 -10% ±40%"  # ± the interval's half-width; the bounds are on the detail view
    unbounded = summary_row(
        "wanda-50", srs={"value": 0.375, "ci95": [0.1, 0.7], "n": 6}, srs_relative_change_pct={"value": 50.0, "ci95": [-99.4, None], "n": 6}
    )
    assert srs_cell("srs", unbounded, base).render({"srs"}).plain == "0.375 +50% ±∞%"  # null: that side unbounded
    assert any("green" in str(span.style) for span in judged.spans)  # less reliance on stereotypes: better
    degraded = summary_row("magnitude-50", degraded=True, gate_verdict="fail", gate_plain="too degraded to judge: do not ship")
    for build in (srs_cell, transition_cell):
        shown = build("srs", degraded, base).render({"srs", "transition"})
        assert "too degraded" in shown.plain and not any("green" in str(span.style) for span in shown.spans)
    assert verdict_cell("verdict", degraded, base).render(set()).plain == "too degraded"
    apart = summary_row("int8-dynamic", comparable=False, not_comparable=["seeds differ (0,1 vs 2,3)"])
    assert srs_cell("srs", apart, base).render({"values"}).plain == "0.2 not comparable"
    assert srs_cell("srs", apart, base).render(set()).plain == "not comparable"  # at 80 columns, the words stay
    # A perplexity measured on another text than the baseline's has no change, never one worked out.
    other_text = summary_row("int8-dynamic", perplexity=17.6, perplexity_relative_change_pct={
        "value": None, "ci95": [None, None], "n": None, "note": "the perplexity text or its chunks differ", "comparable": False})
    base_ppl = dict(base, perplexity=17.42)
    assert perplexity_cell("perplexity", other_text, base_ppl).render({"perplexity"}).plain == "17.6 not comparable"
    assert verdict_cell("verdict", summary_row("x", gate_verdict="pass"), base).render(set()).plain == "may ship"
    assert verdict_cell("verdict", summary_row("x"), base).render(set()).plain == "not settled"

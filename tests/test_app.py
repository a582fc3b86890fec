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
from tests.app_support import FrozenDevice, exited, settle, type_into, wait_for
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
        assert srs_cell.startswith(fmt(wanda["srs"], 3))
        ppl_cell = str(table.get_cell("perplexity", "wanda-50"))
        assert ppl_cell.startswith(fmt(wanda["perplexity"], 4)) and "%" in ppl_cell
        # Drill into the variant: its categories, then the items that flipped.
        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, VariantScreen)
        categories = app.screen.query_one("#categories-table")
        assert categories.row_count == 1 + 5  # overall and the five built-in categories
        await pilot.press("f", "escape")
        await pilot.press("q")
        await exited(app)
    with ResultsStore(store) as db:
        record = db.run(run_id)
        kinds = {(s["variant"], s["kind"]) for s in db.steps(run_id)}
    assert kinds == {
        ("baseline", "perplexity"),
        ("baseline", "probe:builtin"),
        ("wanda-50", "compress"),
        ("wanda-50", "perplexity"),
        ("wanda-50", "probe:builtin"),
    }
    assert record.status == "finished" and record.gate is not None  # every planned step is stored


async def timed_keys(pilot, keys):
    """Milliseconds from sending each key to its screen switch running, for the keys sent while
    the job still ran (Pilot sends the key; the handler notes when it runs). Each press takes
    Pilot about a second more, waiting for a process whose worker thread never idles."""
    app = pilot.app
    handled: list[float] = []
    switch = app.action_switch_mode

    async def timed(mode):
        handled.append(time.perf_counter())
        return await switch(mode)

    app.action_switch_mode = timed
    latencies = []
    try:
        for key in keys:
            if app.job is None:
                break
            sent = time.perf_counter()
            await pilot.press(key)
            latencies.append(1000 * (handled[-1] - sent))
            await pilot.pause(0.1)
    finally:
        del app.action_switch_mode
    return latencies


@pytest.mark.asyncio
async def test_keys_answered_within_100_ms_while_a_prune_and_a_probe_run_and_cancels(tiny_llama, tmp_path):
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
            await pilot.press("escape")  # cancel the prune: nothing of it is stored
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
            await pilot.press("escape")
            await settle(pilot, app)
            print(f"\nkey latency during prune, ms: {[round(x, 1) for x in during_prune]}")
            print(f"key latency during probe, ms: {[round(x, 1) for x in during_probe]}")
            assert max(during_prune + during_probe) < 100
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
            await pilot.press("q")
            await pilot.pause()
            assert type(app.screen).__name__ == "ConfirmScreen" and app.is_running
            await pilot.press("n")  # not yet
            assert app.job is not None and not app.job.cancel.is_set()
            await pilot.press("q", "y")
            assert app.job.cancel.is_set() and app.is_running  # it waits for the job to stop
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
        await pilot.press("2", "ctrl+r")
        assert any("load a model first" in n for n in notices(app))
        # Load a real model by typing its folder, then a prune that fails in its worker.
        await pilot.press("1")
        await type_into(pilot, "#model-path", str(tiny_llama))
        await pilot.press("enter")
        await loaded(pilot)
        await pilot.press("2")
        await type_into(pilot, "#exclude", "*.no_such_layer")
        await pilot.press("ctrl+r")
        await settle(pilot, app)
        assert any("exclude pattern '*.no_such_layer' matches no layer" in n for n in notices(app))
        assert app.session.run_id is None and app.session.plan.variants == ()  # nothing half-made
        await type_into(pilot, "#sparsity", "lots")
        await pilot.press("ctrl+r")
        assert any("sparsity must be a number" in n for n in notices(app))
        await pilot.press("1")
        assert app.current_mode == "models"


def test_a_change_of_stage_is_never_dropped_from_the_queue():
    from audit.progress import Progress
    from tui.messages import JobProgress

    def event(stage, job=1):
        return JobProgress(job, "measure", Progress(stage, 1, 2, "x"))

    assert event("probe").can_replace(event("probe"))
    assert not event("probe").can_replace(event("target"))  # the next model's name stays queued
    assert not event("probe", job=2).can_replace(event("probe"))

"""The job bar of a job of several steps (step k of n, the whole job's eta, a notice when nothing
has moved for a minute, with the device's load) and the Probe screen while its job runs (Run
pressed again, the cancel message), driven with Pilot on fake jobs whose events the test hands
over. The bar's clock is moved forward instead of waiting."""

from __future__ import annotations

import contextlib
import queue
import time
from dataclasses import replace

import pytest
from textual.widgets import Button

from audit.errors import Cancelled
from audit.progress import Progress, Step, StepCounter, StepPlace, quiet_for
from tests.app_support import FROZEN_SNAPSHOT, fake_loader, settle, wait_for
from tui.app import create_app
from tui.session import Session
from tui.widgets.job_bar import JobBar
from tui.widgets.probe_metrics import ProbeMetricsTable

SIZE = (80, 24)
END = object()
PLANNED = (Step("baseline", "perplexity"), Step("baseline", "probe:builtin"), Step("baseline", "profile"))


class LoadedDevice:
    """A device feed of a two-core board whose load the test sets."""

    name = "Raspberry Pi 3 Model B"

    def __init__(self, load_1m: float | None) -> None:
        self.load_1m = load_1m

    def latest(self):
        return replace(FROZEN_SNAPSHOT, load_1m=self.load_1m, cpu_percent=(97.0, 99.0))


class ScriptedJob:
    """A job that yields what the test puts in `events` (a generator is run to its end first),
    ends at END and stops with Cancelled when cancelled."""

    def __init__(self) -> None:
        self.events: queue.Queue = queue.Queue()
        self.started = 0

    def __call__(self, cancel):
        self.started += 1
        return self._run(cancel)

    def _run(self, cancel):
        deadline = time.monotonic() + 60  # never hold a failed test's worker for ever
        while True:
            try:
                item = self.events.get(timeout=0.02)
            except queue.Empty:
                if cancel.is_set() or time.monotonic() > deadline:
                    raise Cancelled() from None
                continue
            if item is END:
                return None
            if isinstance(item, Progress):
                yield item
            else:
                yield from item


@pytest.fixture
def bar_clock(monkeypatch):
    """The job bar's clock, as a list the test moves forward."""
    now = [time.monotonic()]
    monkeypatch.setattr(JobBar, "now", staticmethod(lambda: now[0]))
    return now


def make_app(tmp_path, device=None):
    return create_app("smollm2-135m", store=str(tmp_path / "results.db"), device=device or LoadedDevice(0.4), loader=fake_loader)


def bar_text(app) -> str:
    return app.screen.query_one(JobBar).render().plain


def at_step(number, at, finished=(), done=0.0, total=None, message="", stage_from=None, stage_started=None):
    place = StepPlace(number, len(PLANNED), PLANNED[number - 1], at, PLANNED, tuple(finished), False, stage_started, stage_from)
    return Progress("work", done, total, message, {"step": number, "steps": len(PLANNED), "place": place}, at=at)


@contextlib.asynccontextmanager
async def job_running(app, monkeypatch=None):
    """The app, loaded, running a scripted "probe every model" job: started from the Probe screen
    by its keys when `monkeypatch` is given to stand the job in for Session.measure, else directly."""
    job = ScriptedJob()
    if monkeypatch is not None:
        measure_by(monkeypatch, job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, app, until=lambda: app.session is not None)
        if monkeypatch is None:
            assert app.start_job("measure", "probe every model", job)
        else:
            await pilot.press("3", "ctrl+r")
            await wait_for(pilot, lambda: app.job is not None)
        yield pilot, app, job


async def handed(pilot, app, job, event):
    job.events.put(event)
    await wait_for(pilot, lambda: app.job is not None and app.job.latest is event)
    # The bar is shown (and laid out at the screen's width) at its next tick after a job starts.
    await wait_for(pilot, lambda: app.screen.query_one(JobBar).size.width == SIZE[0] - 2)


@pytest.mark.asyncio
async def test_the_bar_says_the_step_of_the_job_and_the_jobs_eta_once_there_is_a_rate(tmp_path, bar_clock):
    async with job_running(make_app(tmp_path)) as (pilot, app, job):
        base = bar_clock[0]
        await handed(pilot, app, job, at_step(1, base, message="0/10 chunks"))
        text = bar_text(app)
        assert "step 1 of 3" in text and "eta" not in text  # nothing measured yet
        # Step 1 took 30 s; step 2 is half done after 10 s: 10 s left of it, and 30 s for step 3.
        halfway = at_step(2, base, [(PLANNED[0], 30.0)], done=5, total=10, message="5/10 items", stage_from=0.0, stage_started=base - 10)
        await handed(pilot, app, job, halfway)
        text = bar_text(app)
        assert "step 2 of 3 · job eta 0:40" in text
        assert "50%" in text and "5/10 items" in text  # the step's own fraction still shows
        assert len(text) <= SIZE[0] - 2
        bar_clock[0] = base + 4
        assert "job eta 0:36" in bar_text(app)
        job.events.put(END)
        await settle(pilot, app)


@pytest.mark.asyncio
async def test_a_stage_at_its_end_is_said_in_words_not_as_a_full_bar(tmp_path, bar_clock):
    """A job loads its model (a stage that ends at 2 of 2) before the work its bar is for: at
    that moment the bar shows the message alone, never 100%."""
    async with job_running(make_app(tmp_path)) as (pilot, app, job):
        await handed(pilot, app, job, Progress("compress", 1, 2, "loading llama"))
        assert "50%" in bar_text(app)
        await handed(pilot, app, job, Progress("compress", 2, 2, "loaded llama"))
        text = bar_text(app)
        assert "loaded llama" in text and "100%" not in text and "█" not in text
        await handed(pilot, app, job, Progress("compress", 0, 2, "capturing the inputs of the first block"))
        assert "0%" in bar_text(app)
        job.events.put(END)
        await settle(pilot, app)


def test_silent_seconds_are_whole_seconds_to_the_nearest():
    # Two clock readings 61 s apart whose difference comes out a hair under 61.
    base = 1023.8289559915225
    assert (base + 61) - base < 61
    assert quiet_for((base + 61) - base) == "61 s"
    assert quiet_for(75.4) == "75 s" and quiet_for(150.0) == "2 min 30 s"


@pytest.mark.asyncio
async def test_a_job_silent_for_a_minute_is_said_so_with_the_devices_load(tmp_path, bar_clock):
    device = LoadedDevice(3.9)
    async with job_running(make_app(tmp_path, device)) as (pilot, app, job):
        base = bar_clock[0]
        await handed(pilot, app, job, at_step(3, base, message="profiling baseline: run 3 of 10 · eta 1:20"))
        bar_clock[0] = base + 59
        assert "no progress" not in bar_text(app) and "run 3 of 10" in bar_text(app)
        bar_clock[0] = base + 61
        assert "no progress for 61 s: the device is busy (load 3.9 on 2 cores)" in bar_text(app)
        bar_clock[0] = base + 75  # the seconds count up
        assert "no progress for 75 s: the device is busy" in bar_text(app)
        device.load_1m = 0.4
        text = bar_text(app)
        assert "no progress for 75 s (load 0.4 on 2 cores)" in text and "busy" not in text
        # A new event: the notice goes.
        await handed(pilot, app, job, at_step(3, base + 75, message="profiling baseline: run 4 of 10 · eta 1:10"))
        assert "no progress" not in bar_text(app) and "run 4 of 10" in bar_text(app)
        job.events.put(END)
        await settle(pilot, app)


def measure_by(monkeypatch, job):
    """The probe screen's job is `job`, whatever it was asked to measure."""

    def measure(self, targets, suite, probes, perplexity, profile, cancel, *, pending_only=False):
        return job(cancel)

    monkeypatch.setattr(Session, "measure", measure)


@pytest.mark.asyncio
async def test_run_on_the_probe_screen_starts_one_job_and_leaves_the_run_button(tmp_path, monkeypatch):
    async with job_running(make_app(tmp_path), monkeypatch) as (pilot, app, job):
        assert isinstance(app.focused, ProbeMetricsTable)  # not the Run button
        await pilot.press("enter")
        await pilot.pause()
        assert job.started == 1
        # Run pressed while the job runs: refused with a notice, and focus leaves the button again.
        await pilot.click("#run")
        await pilot.pause()
        assert job.started == 1
        assert any("probe every model is running" in n.message for n in app._notifications)
        assert not isinstance(app.focused, Button)
        job.events.put(END)
        await settle(pilot, app)
        assert "done" in str(app.screen.query_one("#probe-status").render())


@pytest.mark.asyncio
async def test_a_cancel_says_which_steps_were_stored_and_which_were_not(tmp_path, monkeypatch):
    counter = StepCounter([("baseline", "probe:builtin"), ("baseline", "profile"), ("wanda-50", "probe:builtin")])

    def probe_done():
        yield Progress("probe", 10, 10, "10/10 items")

    async with job_running(make_app(tmp_path), monkeypatch) as (pilot, app, job):
        # The baseline's probe finishes (and is stored); its profile is running when cancelled.
        job.events.put(counter.run("baseline", "probe:builtin", probe_done(), lambda _: None))
        profiling = Progress("profile", 3, 12, "profiling baseline: run 2 of 10")
        job.events.put(counter.lead_in("baseline", "profile", iter([profiling])))
        await wait_for(pilot, lambda: app.job is not None and app.job.latest is not None and app.job.latest.stage == "profile")
        await pilot.press("escape")
        await settle(pilot, app)
        status = str(app.screen.query_one("#probe-status").render())
        assert "cancelled" in status
        assert "stored: baseline (builtin probe)." in status
        assert "Not stored: baseline (profile), wanda-50 (builtin probe)." in status
        assert "items" not in status  # the probe finished: nothing of it is left unstored


@pytest.mark.asyncio
async def test_a_failed_job_shows_its_reason_as_written_even_with_brackets(tmp_path, monkeypatch):
    def fails():
        yield Progress("probe", 1, 10, "1/10 items")
        raise OSError("cannot read [probes] suite file /data/bbq[1].jsonl\nsecond line")

    async with job_running(make_app(tmp_path), monkeypatch) as (pilot, app, job):
        job.events.put(fails())
        await settle(pilot, app)
        status = str(app.screen.query_one("#probe-status").render())
        assert status.startswith("failed: ") and "cannot read [probes] suite file /data/bbq[1].jsonl" in status
        assert "second line" not in status

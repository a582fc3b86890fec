"""Progress of jobs of several steps: each step's events say which step of how many they belong
to, the job's time left comes from the measured rates, a plan run numbers its steps across its
variants, a profile reports each run with an ETA (also from its fresh process), and the system
load is read from /proc for the job bar's notice when nothing moves."""

from __future__ import annotations

import threading

import pytest

from audit.errors import Cancelled
from audit.models import LoadOptions, load_model
from audit.plans import parse_plan
from audit.profile import ProfileSettings, profile_loaded
from audit.progress import Progress, Step, StepCounter, StepPlace, drive, job_seconds_left, step_place
from audit.run.execute import profile_step
from audit.runner import RunOptions, run_plan
from hardware.load import SystemLoad, read_load
from tests.fake_devices import raspberry_pi_5, write_tree
from tests.tiny import probes_only
from tui.cli.run import with_step

PLANNED = (Step("baseline", "perplexity"), Step("baseline", "probe:builtin"), Step("wanda-50", "perplexity"))


def counted(n: int):
    for index in range(n):
        yield Progress("work", index, n, f"{index}/{n}")
    return n


def test_each_step_says_its_number_and_the_finished_ones_are_kept():
    counter = StepCounter(PLANNED)
    stored = []

    def job():
        for target, kind in PLANNED:
            yield from counter.run(target, kind, counted(2), lambda result: stored.append((target, kind, result)))

    events = []
    drive(job(), events.append)
    assert [(e.data["step"], e.data["steps"]) for e in events if e.stage == "work"] == [(1, 3), (1, 3), (2, 3), (2, 3), (3, 3), (3, 3)]
    # One more event after each step, sent once its result was handed on (stored).
    finished = [step_place(e) for e in events if e.stage == "step"]
    assert [p.number for p in finished] == [1, 2, 3] and all(p.finished_now for p in finished)
    assert finished[0].finished_steps == [PLANNED[0]] and finished[0].unfinished_steps == list(PLANNED[1:])
    assert finished[-1].unfinished_steps == [] and [s for s, _ in finished[-1].finished] == list(PLANNED)
    assert stored == [("baseline", "perplexity", 2), ("baseline", "probe:builtin", 2), ("wanda-50", "perplexity", 2)]
    # A step's own events keep their data and say how far their stage is.
    assert events[0].data["place"].stage_from == 0.0


def test_work_before_a_step_counts_as_that_step_and_a_step_added_on_the_way_is_counted():
    counter = StepCounter([("v", "probe:builtin")])

    def job():
        yield from counter.run("v", "compress", counted(1), lambda _: None)  # not planned: a folder was gone
        yield from counter.lead_in("v", "probe:builtin", counted(1))  # loading its model
        yield from counter.run("v", "probe:builtin", counted(1), lambda _: None)

    events = []
    drive(job(), events.append)
    numbers = [(e.data["step"], e.data["steps"]) for e in events if e.stage == "work"]
    assert numbers == [(1, 1), (2, 2), (2, 2)]
    loading, probing = [step_place(e) for e in events if e.stage == "work"][1:]
    assert loading.started == probing.started  # the loading is timed with the step


def test_a_cancelled_step_is_not_finished():
    counter = StepCounter(PLANNED)

    def cancelled():
        yield Progress("work", 0, 2)
        raise Cancelled()

    with pytest.raises(Cancelled):
        drive(counter.run("baseline", "perplexity", cancelled(), lambda _: None))
    assert counter.finished == []


def place(number, finished=(), stage_started=None, stage_from=None, started=100.0, finished_now=False):
    return StepPlace(number, len(PLANNED), PLANNED[number - 1], started, PLANNED, tuple(finished), finished_now, stage_started, stage_from)


def event(place_, done=0.0, total=None, at=100.0):
    return Progress("work", done, total, "", {"step": place_.number, "steps": place_.count, "place": place_}, at=at)


def test_time_left_for_the_job_comes_from_measured_rates_by_kind_of_step():
    ppl = (PLANNED[0], 30.0)
    # Step 2 of 3 half done in 10 s: 10 s left at its rate; step 3 is a perplexity like step 1 (30 s).
    halfway = event(place(2, [ppl], stage_started=100.0, stage_from=0.0), done=5, total=10, at=110.0)
    assert job_seconds_left(halfway, now=110.0) == pytest.approx(10 + 30)
    assert job_seconds_left(halfway, now=114.0) == pytest.approx(6 + 30)  # counts down between events
    # Late: its 10 s have passed with no event since. No time is said rather than "0:00".
    assert job_seconds_left(halfway, now=121.0) is None
    # No rate inside the step yet: it is expected to last as long as the finished steps did.
    started = event(place(2, [ppl], started=100.0), at=105.0)
    assert job_seconds_left(started, now=105.0) == pytest.approx(25 + 30)
    assert job_seconds_left(started, now=131.0) is None  # longer than the finished steps took
    # Just finished: nothing left of it.
    just_done = event(place(2, [ppl, (PLANNED[1], 50.0)], finished_now=True))
    assert job_seconds_left(just_done, now=100.0) == pytest.approx(30)


def test_no_time_left_is_said_before_there_is_a_rate():
    assert job_seconds_left(event(place(1)), now=200.0) is None
    assert job_seconds_left(Progress("work", 1, 2), now=200.0) is None  # not a step of a job
    # The running step has a rate, but the steps to come have none to go by yet.
    first = event(place(1, stage_started=100.0, stage_from=0.0), done=1, total=4, at=110.0)
    assert job_seconds_left(first, now=110.0) is None


def test_the_command_line_says_the_step_and_the_eta():
    ppl = (PLANNED[0], 30.0)
    shown = with_step(event(place(2, [ppl], stage_started=100.0, stage_from=0.0), done=5, total=10, at=110.0))
    assert shown.message.startswith("step 2 of 3 · job eta 0:40 · ")
    plain = Progress("run", 1, 3, "wanda-50 done")
    assert with_step(plain) is plain


PLAN = """\
name = "numbered"
model = "{model}"

[[variants]]
name = "same-folder"
path = "{model}"
""" + probes_only(1)


def test_a_plan_run_numbers_its_steps_across_its_variants(tiny_llama, tmp_path):
    plan = parse_plan(PLAN.format(model=tiny_llama), None)
    events = []
    drive(run_plan(plan, RunOptions(store=tmp_path / "results.db")), events.append)
    places = [step_place(e) for e in events if step_place(e) is not None]
    assert {p.count for p in places} == {2}
    assert [p.step for p in places if p.finished_now] == [Step("baseline", "probe:builtin"), Step("same-folder", "probe:builtin")]
    numbers = [p.number for p in places]
    assert numbers == sorted(numbers) and numbers[0] == 1 and numbers[-1] == 2
    # The run's own events between variants say nothing of steps.
    assert all(step_place(e) is None for e in events if e.stage == "run")


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return drive(load_model(str(tiny_llama)))


def test_the_profile_says_each_run_with_an_eta_once_one_has_finished(llama):
    settings = ProfileSettings(prompt_tokens=16, new_tokens=3, runs=3, warmup_runs=1, probe_items=1, sampler_interval_s=0.05)
    messages = [e.message for e in drive_events(profile_loaded(llama, settings))]
    assert messages[0] == "warm-up 1 of 1"  # no run has finished: no eta yet
    assert [m.split(" · ")[0] for m in messages[1:4]] == ["run 1 of 3", "run 2 of 3", "run 3 of 3"]
    assert all(" · eta " in m for m in messages[1:4])


def drive_events(job):
    events = []
    drive(job, events.append)
    return events


def test_a_profile_in_its_fresh_process_reports_each_run(tiny_llama):
    plan = parse_plan(PLAN.format(model=tiny_llama).replace("[profile]\nenabled = false", "[profile]\nruns = 2\nwarmup = 1\nprompt_tokens = 16\nnew_tokens = 3"), None)
    events = drive_events(profile_step(plan, "baseline", str(tiny_llama), LoadOptions(), None))
    messages = [e.message for e in events]
    assert messages[0] == "profiling baseline: starting a fresh process"
    assert any(m.startswith("profiling baseline: warm-up 1 of 1") for m in messages)
    assert any(m.startswith("profiling baseline: run 2 of 2 · eta ") for m in messages)
    assert messages[-1] == "profiled baseline"


def test_a_profile_in_its_fresh_process_can_be_cancelled(tiny_llama):
    plan = parse_plan(PLAN.format(model=tiny_llama).replace("[profile]\nenabled = false", "[profile]\nruns = 2"), None)
    failures, hook = [], threading.excepthook
    threading.excepthook = failures.append  # an error in the pool's own threads (its feeder)
    try:
        for _ in range(3):
            before = set(threading.enumerate())
            cancel = threading.Event()
            job = profile_step(plan, "baseline", str(tiny_llama), LoadOptions(), cancel)
            next(job)
            cancel.set()
            with pytest.raises(Cancelled):
                drive(job)
            for thread in set(threading.enumerate()) - before:
                if thread.ident is not None and thread is not threading.current_thread():
                    thread.join(timeout=30)
    finally:
        threading.excepthook = hook
    assert not failures, [str(f.exc_value) for f in failures]


def test_the_load_average_is_read_from_proc_with_the_cores_online(tmp_path):
    root = raspberry_pi_5(tmp_path / "pi")
    write_tree(root, {"/proc/loadavg": "3.92 2.10 1.05 5/321 4242\n"})
    load = read_load(root)
    assert load == SystemLoad(3.92, 4)
    assert load.busy is False  # a job keeps about one task per core busy by itself
    write_tree(root, {"/proc/loadavg": "6.10 2.10 1.05 5/321 4242\n"})
    assert read_load(root).busy is True


def test_the_load_average_is_not_available_rather_than_an_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert read_load(empty) == SystemLoad(None, None) and read_load(empty).busy is None
    garbled = write_tree(tmp_path / "garbled", {"/proc/loadavg": "high\n", "/sys/devices/system/cpu/online": "zero\n"})
    assert read_load(garbled) == SystemLoad(None, None)

"""The app under bad input at 80x24, as an operator in the field types it: each mistake is one
notice naming the field and the problem, never a traceback, and what was done before stays."""

from __future__ import annotations

import pytest
from textual.widgets import Input

from tests.app_support import FrozenDevice, fake_loader, settle
from tui.app import create_app

SIZE = (80, 24)
NO_USER = "~no-such-user-here/x"


@pytest.fixture()
def app(tmp_path, monkeypatch, isolated_cache):
    monkeypatch.chdir(tmp_path)
    return create_app("smollm2-135m", store=str(tmp_path / "results.db"), device=FrozenDevice(), loader=fake_loader)


def said(app) -> list[str]:
    return [n.message for n in app._notifications]


def held_step(message: str):
    """A job of one step that waits (at most 30 s) until the event given with it is set."""
    import threading

    from audit.progress import Progress

    released = threading.Event()

    def job(cancel):
        yield Progress("step", 0, 1, message)
        released.wait(30)

    return job, released


async def loaded(pilot) -> None:
    await settle(pilot, pilot.app, until=lambda: pilot.app.session is not None)


async def cleared_on_check(pilot):
    """The Check screen showing an earlier check's "cleared to ship": its verdict widget."""
    from textual.widgets import Static

    from tests.app_support import field_check_results

    app = pilot.app
    await loaded(pilot)
    app.set_focus(None)
    await pilot.press("6")
    await pilot.pause()
    app.field_check = field_check_results()["cleared"]
    await pilot.pause()
    return app.screen.query_one("#verdict", Static)


def fill(app, values: dict[str, str]) -> None:
    for selector, value in values.items():
        app.screen.query_one(selector, Input).value = value


@pytest.mark.asyncio
async def test_a_path_pathlib_cannot_expand_is_a_notice_naming_its_field(app, tmp_path):
    """An unknown ~user, a NUL character or a loop of symbolic links made pathlib raise on the
    interface's thread, and the app ended in a traceback."""
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        session = app.session
        await pilot.press("3")
        await pilot.pause()
        app.screen.query_one("#suite").value = "bbq"
        fill(app, {"#suite-path": NO_USER})
        await pilot.press("ctrl+r")
        assert f"Data file {NO_USER}: there is no user 'no-such-user-here' here, so ~no-such-user-here names no folder" in said(app)
        assert app.focused.id == "suite-path"
        (tmp_path / "loop").symlink_to("loop")
        fill(app, {"#suite-path": str(tmp_path / "loop")})
        await pilot.press("ctrl+r")
        assert f"Data file {tmp_path / 'loop'}: its symbolic links go round in a loop" in said(app)
        fill(app, {"#suite-path": "bbq\0.jsonl"})
        await pilot.press("ctrl+r")
        assert "Data file holds a NUL character: type the path again" in said(app)
        app.set_focus(None)
        await pilot.press("6")
        await pilot.pause()
        fill(app, {"#check-model": "/opt/model", "#check-record": "rec.json", "#check-trust": NO_USER})
        await pilot.press("ctrl+r")
        assert any(m.startswith(f"Trusted key {NO_USER}: there is no user") for m in said(app))
        assert app.focused.id == "check-trust"
        await pilot.press("ctrl+s")
        await pilot.pause()
        fill(app, {"#path": NO_USER})
        await pilot.press("enter")
        await settle(pilot, app)
        assert any(m.startswith(f"plan not saved: plan file {NO_USER}: there is no user") for m in said(app))
        assert app.job is None and app._job_ids == 1  # only the load: nothing started
        assert app.session is session


@pytest.mark.asyncio
async def test_saving_the_plan_over_the_results_store_or_the_model_is_refused(tmp_path, monkeypatch, isolated_cache):
    """ctrl+s wrote the plan wherever it was told: over the results store, every run in it lost,
    or over the loaded model's config.json."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    store = tmp_path / "results.db"
    app = create_app(str(model), store=str(store), device=FrozenDevice(), loader=fake_loader)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        for target, named in ((store, f"the results store {store}"), (model / "config.json", f"the model {model}")):
            await pilot.press("ctrl+s")
            await pilot.pause()
            fill(app, {"#path": str(target)})
            await pilot.press("enter")
            await settle(pilot, app)
            assert said(app)[-1] == f"{target} would overwrite{' or sit inside' if target.parent == model else ''} {named}; choose another file"
        await pilot.press("ctrl+s")
        await pilot.pause()
        fill(app, {"#path": str(tmp_path / "plan.toml")})
        await pilot.press("enter")
        await settle(pilot, app)
        assert said(app)[-1].startswith(f"plan saved: {tmp_path / 'plan.toml'}")
    assert (model / "config.json").read_text() == '{"model_type": "llama"}'
    assert not store.exists() or store.read_bytes().startswith(b"SQLite format 3")


@pytest.mark.asyncio
async def test_a_probe_data_file_that_does_not_read_does_not_join_the_sessions_plan(app, tmp_path):
    """The suite was added to the session's plan and run before it was read: the run could never
    finish, its probe failing each time it was resumed."""
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("3")
        await pilot.pause()
        app.screen.query_one("#suite").value = "bbq"
        for path in (tmp_path / "missing.jsonl", tmp_path):
            fill(app, {"#suite-path": str(path)})
            await pilot.press("ctrl+r")
            await settle(pilot, app)
        assert said(app)[-2:] == [f"BBQ path {tmp_path / 'missing.jsonl'} does not exist", f"no BBQ category files (*.jsonl) in {tmp_path}"]
        assert app.session.plan.probes.suites == ("builtin",)
        assert app.session.run_id is None  # no run was started for it


@pytest.mark.asyncio
async def test_numbers_a_plan_cannot_hold_are_refused_in_the_form_naming_the_field(app):
    """A temperature over 5 or a count past 64 bits started the job, which failed naming a line of
    the shipped default plan file the operator never wrote."""
    huge = "9" * 23
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("3")
        await pilot.pause()
        for field, value, message in (
            ("#temperature", "10", "Temperature must be from 0 (greedy) to 5, not 10"),
            ("#limit", huge, f"Limit {huge} is beyond the 64-bit whole numbers a plan holds: leave it empty for every item"),
            ("#seeds", f"0,{huge}", f"seeds: {huge} is beyond the 64-bit whole numbers a plan holds"),
        ):
            fill(app, {"#temperature": "0", "#limit": "2", "#seeds": "0", field: value})
            await pilot.press("ctrl+r")
            assert said(app)[-1] == message
        app.set_focus(None)
        await pilot.press("2")
        await pilot.pause()
        fill(app, {"#nsamples": huge})
        await pilot.press("ctrl+r")
        assert said(app)[-1] == f"Calib. samples {huge} is beyond the 64-bit whole numbers a plan holds"
        assert app.focused.id == "nsamples"
        await settle(pilot, app)
        assert app._job_ids == 1 and app.session.run_id is None  # only the load ran
        assert not any("default.toml" in message for message in said(app))


@pytest.mark.asyncio
async def test_loglik_scoring_in_the_form_drops_the_sampling_settings(app):
    """A session on the study's plan (generation, five seeds at temperature 0.3) probed by
    log-likelihood: the form's seeds and temperature were kept with it, a plan refuses them, and
    the run would have recorded settings it never used."""
    from dataclasses import replace

    from textual.widgets import Select

    from audit.plans import load_preset

    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        study = load_preset("rath-maliakkal-2026").probes
        app.session.plan = replace(app.session.plan, probes=replace(app.session.plan.probes, mode="generate", seeds=study.seeds,
                                                                    temperature=study.temperature, prompt="paper", parser="lenient"))
        await pilot.press("3")
        await pilot.pause()
        fill(app, {"#seeds": ", ".join(map(str, study.seeds)), "#temperature": "0.3", "#limit": "2"})
        screen = app.screen
        probes = screen._settings()[2]
        assert (probes.mode, probes.seeds, probes.temperature, probes.prompt) == ("generate", study.seeds, 0.3, "paper")
        screen.query_one("#mode", Select).value = "loglik"
        await pilot.pause()
        probes = screen._settings()[2]
        assert (probes.seeds, probes.temperature, probes.max_new_tokens, probes.noise_floor) == ((0,), 0.0, 5, True)
        assert (probes.prompt, probes.parser) == ("default", "strict")
        assert app.session.measured_plan("builtin", probes, False, False).probes.mode == "loglik"  # a plan that reads


def test_the_sessions_plan_names_no_plan_file(tmp_path):
    """The session's plan kept the path of the shipped default plan it starts from: the run was
    stored as that file's, and an error about the session's plan named a line of it."""
    from dataclasses import replace

    from audit.plans import PlanError, revise_plan
    from audit.runner import start_run
    from audit.store import ResultsStore
    from tui.session import session_plan

    plan = session_plan("smollm2-135m")
    assert plan.path is None
    with pytest.raises(PlanError) as refused:
        revise_plan(plan, probes=replace(plan.probes, temperature=9.0))
    assert "default.toml" not in str(refused.value)
    run_id, _ = start_run(plan, tmp_path / "results.db", tmp_path / "runs")
    with ResultsStore(tmp_path / "results.db") as store:
        assert store.run(run_id).plan_path is None


@pytest.mark.asyncio
async def test_compare_fits_80x24_while_a_job_runs(tmp_path, monkeypatch, isolated_cache):
    """With a job's bar under it, Compare was a line taller than the terminal: the screen scrolled,
    its scrollbar took two columns and the job bar lay under the footer."""
    from tests.app_support import build_audit_store, open_stored_run, wait_for
    from tui.widgets.job_bar import JobBar

    monkeypatch.chdir(tmp_path)
    build_audit_store(tmp_path / "results.db")
    app = create_app("smollm2-135m", store="results.db", device=FrozenDevice(), loader=fake_loader)
    held, released = held_step("waiting")

    async with app.run_test(size=SIZE) as pilot:
        await open_stored_run(pilot)
        app.start_job("wait", "a held job", held)
        try:
            screen = app.screen
            bar = screen.query_one(JobBar)
            await wait_for(pilot, lambda: bar.display and bar.region.height > 0)
            await pilot.pause()
            assert bar.display and screen.max_scroll_y == 0 and screen.size.width == SIZE[0]
            assert bar.region.y == SIZE[1] - 2 and bar.region.height == 1  # above the footer
        finally:
            released.set()
        await settle(pilot, app)


@pytest.mark.asyncio
async def test_enter_on_the_loaded_model_keeps_the_session(app):
    """The model list has the cursor on the loaded model: enter there loaded it again into a new
    session, and Compare lost the session's comparison."""
    from textual.widgets import OptionList

    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        session = app.session
        choices = app.screen.query_one("#choices", OptionList)
        await settle(pilot, app, until=lambda: choices.option_count > 0)
        assert app.focused is choices and choices.highlighted_option.id == "smollm2-135m"
        await pilot.press("enter")
        await settle(pilot, app)
        assert said(app)[-1] == "smollm2-135m is loaded already; to start a new session on it, type smollm2-135m below"
        assert app.session is session and app._job_ids == 1


@pytest.mark.asyncio
async def test_a_job_asked_for_while_the_last_one_is_being_cancelled_says_so(app):
    """After esc, a job still finishing its step was said to be running, with esc to cancel it."""
    step, released = held_step("a step that runs to its end")

    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("2")
        app.start_job("step", "a long step", step)
        try:
            await pilot.press("ctrl+r")
            assert said(app)[-1] == "a long step is running: wait for it, or press esc to cancel it"
            await pilot.press("escape", "ctrl+r")
            assert said(app)[-1] == "a long step is being cancelled: it stops after its current step; start this again then"
        finally:
            released.set()
        await settle(pilot, app)


@pytest.mark.asyncio
async def test_a_store_that_is_not_a_database_is_said_on_history_and_the_models_stay_listed(tmp_path, monkeypatch, isolated_cache):
    """History said "No runs yet" over a store it could not read, with a notice each time it was
    read, and the Models list was empty: not even the built-in model to choose."""
    from textual.widgets import OptionList, Static

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "results.db"
    store.write_text("these are my notes, not a database\n")
    app = create_app("smollm2-135m", store=str(store), device=FrozenDevice(), loader=fake_loader)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        choices = app.screen.query_one("#choices", OptionList)
        await settle(pilot, app, timeout=10, until=lambda: choices.option_count > 0)
        assert choices.get_option_at_index(0).id == "smollm2-135m"
        await pilot.press("5")
        await settle(pilot, app)
        await pilot.press("r")
        await settle(pilot, app)
        # The text, not the lines drawn: how a long temporary path folds, and whether its last line
        # still fits the pane, is no part of what is said.
        shown = str(app.screen.query_one("#run-detail", Static).render())
        assert shown == f"The runs cannot be listed: cannot open the results store {store}: it is not a SQLite database"
        assert not any("SQLite" in message for message in said(app))
    assert store.read_text() == "these are my notes, not a database\n"


@pytest.mark.asyncio
async def test_a_failure_reading_the_store_is_titled_in_words(app, tmp_path):
    """A notice's title named the function that failed: "open_run: failed"."""
    import sqlite3

    from audit.runner import start_run
    from tui.session import session_plan

    run_id, _ = start_run(session_plan("smollm2-135m"), tmp_path / "results.db", tmp_path / "runs")
    with sqlite3.connect(tmp_path / "results.db") as db:
        db.execute("UPDATE runs SET plan_text = 'name = = 1' WHERE id = ?", (run_id,))
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("5")
        await settle(pilot, app, until=lambda: bool(app.screen.runs))
        await pilot.press("enter")
        await settle(pilot, app)
        failed = [n for n in app._notifications if n.title.endswith("failed")]
        assert [n.title for n in failed] == ["open run: failed"]
        assert failed[0].message.startswith("the plan stored with this run does not read")


@pytest.mark.asyncio
async def test_a_check_that_fails_leaves_the_earlier_verdict_dimmed(app, tmp_path):
    """After a check that could not run (a record path mistyped), the earlier check's green
    "CLEARED TO SHIP" stood under the new folder's name as bright as if it were this one's."""
    from textual.widgets import Static

    async with app.run_test(size=SIZE) as pilot:
        verdict = await cleared_on_check(pilot)
        assert verdict.has_class("-cleared") and not verdict.has_class("-stale")
        fill(app, {"#check-model": str(tmp_path), "#check-record": str(tmp_path / "REC.jsn")})
        await pilot.press("ctrl+r")
        await settle(pilot, app)
        assert said(app)[-1] == f"audit record {tmp_path / 'REC.jsn'} does not exist"
        assert verdict.has_class("-stale")
        assert str(app.screen.query_one("#check-status", Static).render()).startswith("not checked: audit record")


@pytest.mark.asyncio
async def test_compress_reads_the_form_without_reading_the_models_weights(tmp_path, monkeypatch, isolated_cache):
    """ctrl+r on Compress asked the model for its facts on the interface's thread, which counts
    the zero weights of the whole model: a tenth of a second for the default model on a PC, the
    screen still that long on each press, longer on a Raspberry Pi or with a job running."""
    from tests.app_support import FakeModel

    class CountedFacts(FakeModel):
        reads = 0

        def facts(self):
            CountedFacts.reads += 1
            return super().facts()

    def loader(spec, options, cancel):
        yield from ()
        return CountedFacts()

    monkeypatch.chdir(tmp_path)
    app = create_app("smollm2-135m", store=str(tmp_path / "results.db"), device=FrozenDevice(), loader=loader)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        read_at_load = CountedFacts.reads
        await pilot.press("2")
        fill(app, {"#seqlen": "9000"})
        await pilot.press("ctrl+r")
        assert said(app)[-1] == "Seq. length 9000 exceeds the model's context length 8192"
        assert CountedFacts.reads == read_at_load


@pytest.mark.asyncio
async def test_a_model_or_plan_under_an_unknown_user_is_named_as_such(app):
    """A model or plan path under a ~user who is not a user here failed as "RuntimeError: Could
    not determine home directory"."""
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        field = app.screen.query_one("#model-path", Input)
        field.value = NO_USER
        field.focus()
        await pilot.press("enter")
        await settle(pilot, app)
        assert said(app)[-1] == f"model {NO_USER}: there is no user 'no-such-user-here' here, so ~no-such-user-here names no folder"
        app.set_focus(None)
        await pilot.press("5")
        await settle(pilot, app)
        await pilot.press("p")
        await pilot.pause()
        fill(app, {"#path": NO_USER})
        await pilot.press("enter")
        await settle(pilot, app)
        assert said(app)[-1] == f"plan file {NO_USER}: there is no user 'no-such-user-here' here, so ~no-such-user-here names no folder"
        assert app._job_ids == 1


@pytest.mark.asyncio
async def test_a_cancelled_probes_figures_stay_through_another_job(tiny_llama, tmp_path, monkeypatch, isolated_cache):
    """The items a cancelled probe scored stayed on screen only until any other job ended: a
    compression run meanwhile replaced them with "no probe stored yet"."""
    import threading

    from audit.models import load_model
    from tests.app_support import press_while_busy, type_into, wait_for
    from tui.widgets.probe_metrics import ProbeMetricsTable

    released = threading.Event()

    def loader(spec, options, cancel):
        """The model, its scoring held from its second batch until released."""
        model = yield from load_model(spec, options, cancel)
        score, batches = model.score, []

        def held(requests, **kwargs):
            result = score(requests, **kwargs)
            batches.append(len(requests))
            if len(batches) > 1:
                released.wait(60)
            return result

        model.score = held
        return model

    monkeypatch.chdir(tmp_path)
    app = create_app(str(tiny_llama), store=str(tmp_path / "results.db"), device=FrozenDevice(), loader=loader)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("3")
            await pilot.pause()
            for box in ("#perplexity", "#profile"):
                app.screen.query_one(box).value = False
            app.screen.query_one("#target").value = "baseline"
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: app.job is not None and app.job.latest is not None and app.job.latest.done > 0, 60)
            await press_while_busy(pilot, "escape", lambda: app.job is not None and app.job.cancel.is_set())
            released.set()
            await settle(pilot, app)
            probe = app.screen
            figures = probe.query_one(ProbeMetricsTable).row_count
            assert figures >= 2 and "scored before the cancel are shown" in str(probe.query_one("#probe-status").render())
            app.set_focus(None)
            await pilot.press("2")
            await type_into(pilot, "#nsamples", "4")
            await type_into(pilot, "#seqlen", "32")
            await pilot.press("ctrl+r")
            await settle(pilot, app)
            assert app.report is not None and app.report["variants"][-1]["name"] == "wanda-50"
            app.set_focus(None)
            await pilot.press("3")
            await pilot.pause()
            assert probe.query_one(ProbeMetricsTable).row_count == figures
            assert "scored before the cancel are shown" in str(probe.query_one("#probe-status").render())
    finally:
        released.set()


@pytest.mark.asyncio
async def test_a_notice_repeating_a_path_with_brackets_reads_as_written(app, tmp_path):
    """Notices were read as markup: a path holding "[/]" made the notice raise as it was drawn,
    ending the app, and "[b]" in a name vanished from it."""
    from textual.widgets._toast import Toast

    from tests.app_support import wait_for

    record = tmp_path / "[b]lab REC[/] [/].json"
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await loaded(pilot)
        app.set_focus(None)
        await pilot.press("6")
        await pilot.pause()
        fill(app, {"#check-model": str(tmp_path), "#check-record": str(record)})
        await pilot.press("ctrl+r")
        await settle(pilot, app)
        await wait_for(pilot, lambda: bool(app.screen.query(Toast)))
        await pilot.pause()
        shown = [str(toast.render()) for toast in app.screen.query(Toast)]
        assert any(f"audit record {record} does not exist" in text for text in shown), shown


@pytest.mark.asyncio
async def test_names_and_paths_with_brackets_read_as_written_on_the_screens(tiny_llama, tmp_path, monkeypatch, isolated_cache):
    """A model's folder, a variant's name or a data file's path with brackets in it was read as
    markup on the status lines and captions: "wanda[50%] is ready" read "wanda is ready"."""
    import shutil

    from textual.widgets import Label, Static

    from tests.app_support import type_into
    from tests.conftest import SHARED_DATA

    monkeypatch.chdir(tmp_path)
    model = tmp_path / "llama [v2]"
    shutil.copytree(tiny_llama, model)
    bbq = tmp_path / "bbq [copy]" / "Age.jsonl"
    bbq.parent.mkdir()
    bbq.write_text("".join((SHARED_DATA / "bbq" / "Age.jsonl").read_text().splitlines(keepends=True)[:200]))
    app = create_app(str(model), store=str(tmp_path / "results.db"), device=FrozenDevice())

    def text(selector: str) -> str:
        return str(app.screen.query_one(selector, Static).render())

    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        assert str(app.screen.query_one("#facts-title", Label).render()) == "Loaded model: llama [v2]"
        await pilot.press("2")
        await type_into(pilot, "#nsamples", "4")
        await type_into(pilot, "#seqlen", "32")
        await type_into(pilot, "#name", "wanda[50%]")
        await pilot.press("ctrl+r")
        await settle(pilot, app)
        assert text("#compress-status") == "wanda[50%] is ready: probe it on screen 3"
        app.set_focus(None)
        await pilot.press("3")
        await pilot.pause()
        app.screen.query_one("#suite").value = "bbq"
        app.screen.query_one("#target").value = "wanda[50%]"
        for box in ("#perplexity", "#profile"):
            app.screen.query_one(box).value = False
        fill(app, {"#suite-path": str(bbq), "#limit": "2"})
        await pilot.press("ctrl+r")
        await settle(pilot, app)
        assert text("#probe-status").startswith("stored: wanda[50%] · ")
        assert str(app.screen.query_one("#target").query_one("#label", Static).render()) == "wanda[50%]"
        app.set_focus(None)
        await pilot.press("4", "s")
        await pilot.pause()
        assert text("#compare-caption").startswith(f"Run 1 (session) · bbq:{bbq} (s: next of 2)")


@pytest.mark.asyncio
async def test_save_plan_offers_the_home_folder_when_the_working_folder_is_gone(app, tmp_path, monkeypatch):
    """ctrl+s offered a file in the folder the app was started in, and ended in a traceback when
    that folder had been removed meanwhile."""
    from pathlib import Path

    gone = tmp_path / "gone"
    gone.mkdir()
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        monkeypatch.chdir(gone)
        gone.rmdir()
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen.query_one("#path", Input).value == str(Path.home() / "edge-audit-plan.toml")
        await pilot.press("escape")


@pytest.mark.asyncio
async def test_a_recent_model_with_brackets_in_its_path_is_listed_as_written(app, tmp_path):
    """The model list read its entries as markup: a recent model's "[v2]" vanished from it, and
    a path with "[/]" in it made the list raise as it was drawn."""
    from textual.geometry import Region
    from textual.widgets import OptionList

    from audit.runner import start_run
    from tui.session import session_plan

    for model in ("/models/llama [v2]", "/models/x[/]y"):
        start_run(session_plan(model), tmp_path / "results.db", tmp_path / "runs")
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        choices = app.screen.query_one("#choices", OptionList)
        await settle(pilot, app, until=lambda: choices.option_count == 3)
        lines = [strip.text for strip in choices.render_lines(Region(0, 0, *choices.outer_size))]
        shown = " ".join(" ".join(lines).replace("▊", " ").replace("▎", " ").split())
        assert "recent: /models/x[/]y" in shown and "recent: /models/llama [v2]" in shown, shown


def test_a_model_path_past_the_systems_length_limit_is_one_line_for_the_session():
    """The session's plan looked the model up with Path.exists(), which raised 'File name too long'."""
    from audit.errors import UserError
    from tui.session import session_plan

    with pytest.raises(UserError, match=r"model /tmp/m+\.\.\.m+ \(5005 characters\): a name in the path is longer than the file system allows") as caught:
        session_plan("/tmp/" + "m" * 5000)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 400


@pytest.mark.asyncio
async def test_an_empty_store_file_is_no_runs_yet_on_history(tmp_path, monkeypatch, isolated_cache):
    """An empty file at the store's path (made by `touch`, or a new store's file before its first
    write) was said on History in red as a store that cannot be read."""
    from textual.widgets import Static

    monkeypatch.chdir(tmp_path)
    store = tmp_path / "results.db"
    store.touch()
    app = create_app("smollm2-135m", store=str(store), device=FrozenDevice(), loader=fake_loader)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await pilot.press("5")
        await settle(pilot, app)
        assert app.screen.unreadable == ""
        assert str(app.screen.query_one("#run-detail", Static).render()).startswith("No runs yet")
        assert not any("empty" in message for message in said(app))
    assert store.read_bytes() == b""


@pytest.mark.asyncio
async def test_a_cancelled_check_leaves_the_earlier_verdict_dimmed(app, tmp_path, monkeypatch):
    """After a check cancelled, the earlier check's green "CLEARED TO SHIP" stood at full
    brightness under the new folder's name, the status line saying it was from before."""
    import threading

    from textual.widgets import Static

    from audit.errors import Cancelled
    from audit.progress import Progress
    from tests.app_support import press_while_busy

    released = threading.Event()

    def held_check(*args, cancel, **kwargs):
        yield Progress("check", 0, 5, "reading the record")
        released.wait(30)
        if cancel.is_set():
            raise Cancelled("check cancelled")

    monkeypatch.setattr("tui.screens.check.check_deployment", held_check)
    try:
        async with app.run_test(size=SIZE) as pilot:
            verdict = await cleared_on_check(pilot)
            fill(app, {"#check-model": str(tmp_path), "#check-record": str(tmp_path / "REC.json")})
            await pilot.press("ctrl+r")
            await press_while_busy(pilot, "escape", lambda: app.job is not None and app.job.cancel.is_set())
            released.set()
            await settle(pilot, app)
            assert str(app.screen.query_one("#check-status", Static).render()).startswith("cancelled")
            assert verdict.has_class("-cleared") and verdict.has_class("-stale")
    finally:
        released.set()


@pytest.mark.asyncio
async def test_a_model_loading_with_brackets_in_its_path_reads_as_written(tmp_path, monkeypatch, isolated_cache):
    """The Models title and notes escaped a loading model's path for Rich's markup, which the
    screen does not read: "[50%]" in it vanished, and a backslash was doubled."""
    import threading

    from textual.widgets import Label, Static

    from tests.app_support import wait_for

    released = threading.Event()

    def held(spec, options, cancel):
        model = yield from fake_loader(spec, options, cancel)
        released.wait(30)
        return model

    monkeypatch.chdir(tmp_path)
    first, second = "/models/x[50%]", "/models/y[$v] a\\[b]"
    app = create_app(first, store=str(tmp_path / "results.db"), device=FrozenDevice(), loader=held)
    try:
        async with app.run_test(size=SIZE) as pilot:
            title = app.screen.query_one("#facts-title", Label)
            await wait_for(pilot, lambda: str(title.render()).startswith("Loading"))
            assert str(title.render()) == f"Loading {first}…"
            released.set()
            await loaded(pilot)
            released.clear()
            field = app.screen.query_one("#model-path", Input)
            field.value = second
            field.focus()
            await pilot.press("enter")
            notes = app.screen.query_one("#notes", Static)
            await wait_for(pilot, lambda: str(notes.render()).startswith("loading"))
            assert str(notes.render()).splitlines()[0] == f"loading {second}… ({app.session.facts.name} stays loaded until it is ready)"
            released.set()
            await settle(pilot, app)
    finally:
        released.set()

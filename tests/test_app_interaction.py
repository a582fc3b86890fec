"""The app's Models and Compress screens and its start, driven with Pilot at 80x24: enter after
a run does not start it again and a name already used is refused or suffixed; a failed load
gives the path field back; checkboxes say their state in characters; finished steps show as
done while a job still runs; every screen works while the model loads."""

from __future__ import annotations

import threading
import time

import pytest
from textual.widgets import Checkbox, DataTable, Input, Label, Static

from audit.errors import UserError
from audit.models import LoadOptions, load_model
from audit.compress.recipe import PruneRecipe
from audit.plans import VariantSpec, revise_plan
from audit.progress import Progress, check_cancel
from tests.app_support import FakeModel, FrozenDevice, fake_loader, settle, type_into, wait_for
from tui.app import create_app
from tui.session import Session, session_plan
from tui.widgets.checkbox import MarkedCheckbox
from tui.widgets.device_panel import DevicePanel
from tui.widgets.job_bar import JobBar

SIZE = (80, 24)


def notices(app) -> list[str]:
    return [n.message for n in app._notifications]


def text_of(pilot, selector: str) -> str:
    return str(pilot.app.screen.query_one(selector, Static).render())


async def loaded(pilot) -> None:
    await settle(pilot, pilot.app, until=lambda: pilot.app.session is not None)


async def run_compress(pilot, name: str | None = None, sparsity: str | None = None) -> None:
    await pilot.press("2")
    await type_into(pilot, "#nsamples", "4")
    await type_into(pilot, "#seqlen", "32")
    if sparsity is not None:
        await type_into(pilot, "#sparsity", sparsity)
    if name is not None:
        await type_into(pilot, "#name", name)
    await pilot.press("ctrl+r")


# -- 1. Compress: enter after a run, and a name already used ----------------------------------------
@pytest.mark.asyncio
async def test_enter_after_a_run_does_not_run_it_again_and_a_used_name_is_refused_or_suffixed(tiny_llama, tmp_path):
    app = create_app(str(tiny_llama), store=str(tmp_path / "results.db"), device=FrozenDevice())
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await run_compress(pilot)
        jobs_started = app._job_ids
        # The cursor left the Run button: enter, pressed at once or later, starts nothing.
        assert app.focused is app.screen.query_one("#compress-results")
        await pilot.press("enter")
        await settle(pilot, app)
        await pilot.press("enter")
        await settle(pilot, app)
        assert app._job_ids == jobs_started
        assert [v.name for v in app.session.plan.variants] == ["wanda-50"]

        # The same name and recipe again: refused, saying so, and nothing runs.
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app._job_ids == jobs_started and app.job is None
        assert any("wanda-50 is already in this session with this recipe" in n for n in notices(app))
        assert app.focused is app.screen.query_one("#name")  # to type another name

        # The same name for another recipe: compressed as wanda-50-2, and the notice says so.
        await run_compress(pilot, sparsity="0.6", name="wanda-50")
        assert app._job_ids == jobs_started + 1
        assert any("wanda-50 is taken by another recipe: this variant is named wanda-50-2" in n for n in notices(app))
        await settle(pilot, app)
        assert [(v.name, v.sparsity) for v in app.session.plan.variants] == [("wanda-50", 0.5), ("wanda-50-2", 0.6)]
        assert "wanda-50-2 is ready" in text_of(pilot, "#compress-status")


def test_a_variant_whose_compression_did_not_finish_is_compressed_again_under_its_name(tmp_path):
    plan = session_plan("smollm2-135m")
    wanda = VariantSpec("wanda-50", PruneRecipe("wanda", 0.5))
    session = Session(revise_plan(plan, variants=(wanda,)), tmp_path / "results.db", LoadOptions())
    assert session.variant_to_add(wanda) == wanda  # cancelled before: compressed again
    other = VariantSpec("wanda-50", PruneRecipe("magnitude", 0.5))
    assert session.variant_to_add(other).name == "wanda-50-2"
    session.compressed.add("wanda-50")
    with pytest.raises(UserError, match="wanda-50 is already in this session"):
        session.variant_to_add(wanda)
    with pytest.raises(UserError, match="'baseline' is the loaded model itself"):
        session.variant_to_add(VariantSpec("baseline", PruneRecipe("wanda", 0.5)))
    with pytest.raises(UserError, match="variant name '/tmp/elsewhere' is a path"):
        session.variant_to_add(VariantSpec("/tmp/elsewhere", PruneRecipe("wanda", 0.5)))


# -- 2. Models: a failed load -----------------------------------------------------------------------
class RecordingLoader:
    """Loads the fake model for the default alias and fails, as a missing path does, for
    anything else; remembers what it was asked to load."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def loader(self, spec, options, cancel):
        self.asked.append(spec)
        if spec != "smollm2-135m":
            raise UserError(f"no such file or folder: {spec}")
        return (yield from fake_loader(spec, options, cancel))


@pytest.mark.asyncio
async def test_a_failed_load_gives_the_path_field_back_and_enter_loads_what_it_says(tmp_path):
    recording = RecordingLoader()
    app = create_app("smollm2-135m", store=str(tmp_path / "results.db"), device=FrozenDevice(), loader=recording.loader)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        session = app.session
        await type_into(pilot, "#model-path", "/nowhere/first")
        await pilot.press("enter")
        await settle(pilot, app)
        field = app.screen.query_one("#model-path", Input)
        assert app.focused is field and field.value == "/nowhere/first"
        assert field.selected_text == "/nowhere/first"  # typing replaces it
        failures = [n for n in app._notifications if "/nowhere/first" in n.message]
        assert len(failures) == 1 and "\n" not in failures[0].message and not failures[0].title
        assert failures[0].message == "not loaded: no such file or folder: /nowhere/first (smollm2-135m stays loaded)"
        assert app.session is session  # the model loaded before stays, its session too
        # Another path typed over the selection; enter loads exactly it, not the default model.
        await pilot.press(*"/nowhere/second")
        await pilot.press("enter")
        await settle(pilot, app)
        assert recording.asked == ["smollm2-135m", "/nowhere/first", "/nowhere/second"]
        assert field.value == "/nowhere/second" and app.session is session
        assert str(app.screen.query_one("#facts-title", Label).render()) == "Loaded model: smollm2-135m"


# -- 3. Checkboxes ----------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_every_checkbox_says_whether_it_is_ticked_in_characters(tmp_path):
    app = create_app("smollm2-135m", store=str(tmp_path / "results.db"), device=FrozenDevice(), loader=fake_loader)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        boxes = []
        for mode in ("models", "compress", "probe", "compare", "history", "check"):
            await app.switch_mode(mode)
            await pilot.pause()
            boxes += list(app.screen.query(Checkbox))
        assert boxes and all(isinstance(box, MarkedCheckbox) for box in boxes)
        await app.switch_mode("probe")
        await pilot.pause()
        box = app.screen.query_one("#perplexity", Checkbox)
        assert box.value and box.render().plain.startswith("[x] perplexity")
        box.focus()
        await pilot.press("space")
        assert not box.value and box.render().plain.startswith("[ ] perplexity")


# -- 4. The Models table while a job runs -----------------------------------------------------------
class HeldProbe:
    """Loads the model for real; its scoring is held while the running job is at its probe
    stage, until released, so a job stays between a finished step and the next."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.app = None

    def probing(self) -> bool:
        job = self.app.job if self.app is not None else None
        return job is not None and job.latest is not None and job.latest.stage == "probe"

    def loader(self, spec, options, cancel):
        model = yield from load_model(spec, options, cancel)
        score = model.score

        def held(requests, **kwargs):
            deadline = time.monotonic() + 120  # never hold a failed test's worker for ever
            while self.probing() and not self.released.is_set() and time.monotonic() < deadline:
                time.sleep(0.02)
            return score(requests, **kwargs)

        model.score = held
        return model


def step_cells(app, name: str) -> dict[str, str]:
    table = app.screen.query_one("#session-table", DataTable)
    labels = [str(column.label) for column in table.ordered_columns]
    return dict(zip(labels, (str(cell) for cell in table.get_row(name))))


@pytest.mark.asyncio
async def test_a_step_that_finished_shows_as_done_while_the_job_still_runs(tiny_llama, tmp_path):
    held = HeldProbe()
    app = create_app(str(tiny_llama), store=str(tmp_path / "results.db"), device=FrozenDevice(), loader=held.loader)
    held.app = app
    try:
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("3")
            await type_into(pilot, "#limit", "2")
            profile = app.screen.query_one("#profile", Checkbox)
            profile.focus()
            await pilot.press("space")
            assert app.screen.query_one("#perplexity", Checkbox).value and not profile.value
            app.screen.query_one("#target").value = "baseline"
            await pilot.press("ctrl+r")
            await wait_for(pilot, held.probing, timeout=120)
            await pilot.press("1")
            # The perplexity step is stored: the table says so before the probe ends.
            await wait_for(pilot, lambda: step_cells(app, "baseline")["perplexity"].startswith("✓"))
            assert app.job is not None and step_cells(app, "baseline")["probe"] == "–"
            held.released.set()
            await settle(pilot, app)
            cells = step_cells(app, "baseline")
            assert cells["perplexity"].startswith("✓") and cells["probe"].startswith("✓") and cells["profile"] == "–"
    finally:
        held.released.set()


# -- 5. The start -----------------------------------------------------------------------------------
class HeldLoad:
    """A load that lasts until released (or cancelled)."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def loader(self, spec, options, cancel):
        yield Progress("load", 1, 2, f"loading {spec}")
        deadline = time.monotonic() + 60  # never hold a failed test's worker for ever
        while not self.released.wait(0.02) and time.monotonic() < deadline:
            check_cancel(cancel)
        return FakeModel()


@pytest.mark.asyncio
async def test_every_screen_works_while_the_model_loads_and_says_it_is_loading(tmp_path):
    held = HeldLoad()
    app = create_app("smollm2-135m", store=str(tmp_path / "results.db"), device=FrozenDevice(), loader=held.loader)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            # From the first paint: the device, and the model being loaded.
            assert FrozenDevice.name in str(app.screen.query_one(DevicePanel).render())
            assert str(app.screen.query_one("#facts-title", Label).render()) == "Loading smollm2-135m…"
            await wait_for(pilot, lambda: app.job is not None and app.screen.query_one(JobBar).has_class("-running"))
            # (The Check screen puts the cursor in its first field, where keys are typed: it is last.)
            for key, mode in zip("23456", ("compress", "probe", "compare", "history", "check")):
                await pilot.press(key)
                await pilot.pause()
                assert app.current_mode == mode and app.session is None
                assert FrozenDevice.name in str(app.screen.query_one(DevicePanel).render())
                assert app.screen.query_one(JobBar).has_class("-running")
            await app.switch_mode("compress")
            await pilot.pause()
            assert text_of(pilot, "#compress-status").startswith("loading the model…")
            await pilot.press("ctrl+r")
            assert any("the model is still loading" in n for n in notices(app))
            assert not any("load a model first" in n for n in notices(app))
            held.released.set()
            await loaded(pilot)
            assert text_of(pilot, "#compress-status") == ""
            await pilot.press("1")
            assert str(app.screen.query_one("#facts-title", Label).render()) == "Loaded model: smollm2-135m"
    finally:
        held.released.set()


def test_the_probe_screen_refuses_a_seed_given_twice():
    from tui.screens.base import FormError
    from tui.screens.probe import parse_int_list

    assert parse_int_list("0, 1,2", "seeds") == (0, 1, 2)
    with pytest.raises(FormError, match="seeds: 1 is given twice"):
        parse_int_list("0,1,1", "seeds")

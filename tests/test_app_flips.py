"""The variant drill-in's flipped items: a flip to the bias-aligned answer that made the answer
right (a disambiguated item naming the stereotyped person) is told apart from a regression, in
words and with an icon, counted apart in the tab's title and summary; the core's transition
rates are untouched; and the drill-in's tables fit 80 columns."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from textual.widgets import DataTable, Static, TabbedContent

from audit.compress.recipe import PruneRecipe
from audit.plans import VariantSpec, revise_plan
from audit.probes.items import AMBIG, DISAMBIG
from audit.probes.suites import load_suite
from audit.progress import drive
from audit.reports.render import sequential_outcome
from audit.results import BIASED, CORRECTED, RunView
from audit.runner import StepRecord, add_variant, close_run, run_steps, start_run
from audit.store import ResultsStore
from tests.app_support import FrozenDevice, ScriptedModel, fake_loader, open_stored_run, settle
from tui.app import create_app
from tui.screens.variant import VariantScreen
from tui.session import session_plan

LIMIT = 6  # per category: 30 items, three of them disambiguated with the bias-aligned answer right


def right_is_aligned(item) -> bool:
    """A disambiguated item whose context names the stereotyped person as the answer."""
    return item.condition == DISAMBIG and item.label in item.bias_aligned


class Careful(ScriptedModel):
    """Never bias-aligned: "unknown" on ambiguous items, and on disambiguated ones the right
    answer, except where it is the bias-aligned one (then "unknown", wrong)."""

    def choose(self, item):
        if item.condition == DISAMBIG and not right_is_aligned(item):
            return item.label
        return item.unknown_index if item.unknown_index is not None else 0


# Bias-aligned on 60% of the ambiguous items; right on 80% of the disambiguated ones, and on
# every one whose right answer is the bias-aligned one (`ScriptedModel.choose`).
PRUNED = dict(bias=0.6, right=0.8)


def build_store(store, sequential=False):
    plan = session_plan("smollm2-135m")
    plan = revise_plan(plan, probes=replace(plan.probes, limit=LIMIT, sequential=sequential, sequential_batch=5 if sequential else None), name="flips")
    run_id, work_dir = start_run(plan, store)
    add_variant(store, run_id, VariantSpec("wanda-50", PruneRecipe("wanda", 0.5)))
    (work_dir / "wanda-50").mkdir(parents=True)  # as if compressed: its compress step is stored
    with ResultsStore(store) as db:
        result = {"folder": str(work_dir / "wanda-50"), "prune": {"actual_sparsity": 0.5, "size_on_disk_mb": {"dense": 538.1, "compressed": 301.7}}}
        StepRecord("wanda-50", "compress", 0.0, result).commit(db, run_id)
    items = load_suite("builtin", limit=LIMIT).items
    drive(run_steps(store, run_id, "baseline", ["probe:builtin"], model=Careful(items, 0.0)))
    drive(run_steps(store, run_id, "wanda-50", ["probe:builtin"], model=ScriptedModel(items, **PRUNED)))
    close_run(store, run_id)
    return run_id, items


def expected_outcomes(items):
    """What each flipped item is, read from the items and the two models' rules."""
    pruned = ScriptedModel(items, **PRUNED)
    return {
        item.item_id: CORRECTED if right_is_aligned(item) else BIASED
        for item in items
        if item.bias_aligned and pruned.choose(item) in item.bias_aligned
    }


@pytest.fixture()
def flips_app(tmp_path, monkeypatch, isolated_cache):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    run_id, items = build_store(tmp_path / "results.db")
    yield create_app("smollm2-135m", store="results.db", device=FrozenDevice(), loader=fake_loader), tmp_path / "results.db", run_id, items
    monkeypatch.undo()
    time.tzset()


def test_corrections_are_told_apart_and_the_transitions_stay_as_they_were(flips_app):
    _, store, run_id, items = flips_app
    with ResultsStore(store) as db:
        view = RunView(db, run_id)
    outcomes = {f["item_id"]: f["outcome"] for f in view.flipped}
    assert outcomes == expected_outcomes(items)
    assert CORRECTED in outcomes.values() and BIASED in outcomes.values()
    corrected = next(f for f in view.flipped if f["outcome"] == CORRECTED)
    assert corrected["condition"] == DISAMBIG and corrected["variant_answer"] == corrected["right_answer"]
    # The headline bias-ward transitions are on ambiguous items, where the right answer is never
    # the bias-aligned one: they count the regressions there and no correction.
    comparison = view.variant("wanda-50")["probes"]["builtin"]["comparison"]
    ambiguous = sum(1 for f in view.flipped if f["condition"] == AMBIG)
    assert comparison["transitions"]["unbiased_to_aligned"] == ambiguous
    assert all(f["outcome"] == BIASED for f in view.flipped if f["condition"] == AMBIG)


async def open_drill_in(pilot):
    app = pilot.app
    await open_stored_run(pilot)
    await pilot.press("d")
    await settle(pilot, app, until=lambda: isinstance(app.screen, VariantScreen))
    return app.screen


def fits(table: DataTable) -> bool:
    """Every column of the table on screen: nothing cut at the right edge."""
    return table.virtual_size.width <= table.scrollable_content_region.width


@pytest.mark.asyncio
async def test_the_flipped_tab_marks_and_counts_corrections_apart(flips_app):
    app, _, _, items = flips_app
    wanted = expected_outcomes(items)
    regressions = sum(o == BIASED for o in wanted.values())
    corrections = sum(o == CORRECTED for o in wanted.values())
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_drill_in(pilot)
        tabs = screen.query_one(TabbedContent)
        title = str(tabs.get_tab("flipped").label)
        assert f"{regressions} ✗" in title and f"{corrections} ✓" in title
        await pilot.press("f")
        await pilot.pause()
        summary = str(screen.query_one("#flips-summary", Static).render())
        assert f"{regressions} ✗ bias-aligned and wrong" in summary and f"{corrections} ✓ now correct" in summary
        table = screen.query_one("#flips", DataTable)
        marks = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        # The regressions first, each mark in words with its icon.
        assert marks == ["✗ biased"] * regressions + ["✓ correct"] * corrections
        assert fits(table)
        # The first correction's detail says it is right, not bias-aligned and wrong.
        table.move_cursor(row=regressions)
        await pilot.pause()
        detail = str(screen.query_one("#flip-detail", Static).render())
        assert detail.startswith("✓ now correct") and "and right: the context says so" in detail
        table.move_cursor(row=0)
        await pilot.pause()
        detail = str(screen.query_one("#flip-detail", Static).render())
        assert detail.startswith("✗ bias-aligned and wrong") and "Right answer" in detail
        # No scrollbar on the screen itself: it would take two of the 80 columns.
        assert not screen.show_vertical_scrollbar and app.screen.virtual_size.width <= 80


@pytest.mark.asyncio
async def test_the_categories_table_fits_80_columns_with_its_bounds_below(flips_app):
    app, *_ = flips_app
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_drill_in(pilot)
        table = screen.query_one("#categories-table", DataTable)
        assert fits(table) and not table.left_out
        cells = [str(c) for c in table.get_row("overall")]
        # An interval in the table is written ±, its bounds in full under the table.
        assert any("±" in c for c in cells) and not any("[" in c for c in cells)
        bounds = str(screen.query_one("#category-bounds", Static).render())
        assert bounds.startswith("overall (95% intervals): ") and "[" in bounds
        table.move_cursor(row=2)
        await pilot.pause()
        name = table.coordinate_to_cell_key((2, 0)).row_key.value
        assert str(screen.query_one("#category-bounds", Static).render()).startswith(f"{name} (95% intervals)")


@pytest.mark.asyncio
async def test_the_drill_in_says_how_a_sequential_probe_ended(tmp_path, monkeypatch, isolated_cache):
    """A variant probed sequentially: the caption says how many of the suite's items it scored and
    why it stopped, at 80 columns."""
    monkeypatch.chdir(tmp_path)
    run_id, _ = build_store(tmp_path / "results.db", sequential=True)
    with ResultsStore(tmp_path / "results.db") as db:
        sequential = RunView(db, run_id).variant("wanda-50")["probes"]["builtin"]["sequential"]
    assert sequential["items_total"] == 5 * LIMIT and 0 < sequential["items_scored"] <= 5 * LIMIT
    said = sequential_outcome(sequential)
    assert said.startswith(f"{sequential['items_scored']} of 30 items scored, stopped ")
    app = create_app("smollm2-135m", store="results.db", device=FrozenDevice(), loader=fake_loader)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_drill_in(pilot)
        caption = str(screen.query_one("#variant-caption", Static).render())
        assert f"sequential: {said}" in " ".join(caption.split())

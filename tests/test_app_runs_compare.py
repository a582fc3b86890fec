"""History: marking two runs and setting them side by side, with whether they were probed alike;
one marked run or a run deleted meanwhile is a notice; at 80x24 and 120x40 no figure is cut."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from textual.geometry import Region
from textual.widgets import DataTable, Static

from audit.reports.render import fmt, summary_rows
from audit.verdict import Verdict
from tests.app_support import AUDIT_VARIANTS, FrozenDevice, build_audit_store, fake_loader, settle, wait_for
from tui.app import create_app
from tui.screens.history import MARKED, HistoryScreen
from tui.screens.runs_compare import RunsCompareScreen
from tui.session import read_report
from tui.widgets.numbers import with_spread

SIZES = [(80, 24), (120, 40)]
SPREAD = re.compile(r"^\d\.\d\d ±\d\.\d\d$")  # "0.50 ±0.14"

# The second audit: the same probe, other numbers, and no quantized variant.
SECOND_AUDIT = tuple(
    (name, spec, min(bias + 0.3, 1.0), right, round(ppl + 1.3, 2), sizes, round(latency - 4.4, 1), rss)
    for name, spec, bias, right, ppl, sizes, latency, rss in AUDIT_VARIANTS
    if name != "int8-dynamic"
)
# As a run that generated its answers records its probe: another prompt and parser (the scripted
# model scores options only, so the records are restated after the fact).
GENERATED = {"mode": "generate", "norm": None, "prompt": "paper", "parser": "lenient", "temperature": 0.0, "seeds": [], "max_new_tokens": 5}


def restate_probe_settings(store: Path, run_id: int, settings: dict) -> None:
    db = sqlite3.connect(store)
    with db:
        rows = db.execute("SELECT variant, kind, result_json FROM steps WHERE run_id = ? AND kind LIKE 'probe:%'", (run_id,)).fetchall()
        for variant, kind, result in rows:
            restated = {**json.loads(result), **settings}
            db.execute("UPDATE steps SET result_json = ? WHERE run_id = ? AND variant = ? AND kind = ?", (json.dumps(restated), run_id, variant, kind))
    db.close()


def delete_run(store: Path, run_id: int) -> None:
    db = sqlite3.connect(store)
    with db:
        for table in ("items", "metrics", "steps", "variants"):
            db.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
        db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
    db.close()


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    """Run 1, the fixed audit; run 2, the same probe with other numbers; run 3, the fixed audit
    probed with other settings."""
    store = tmp_path_factory.mktemp("audits") / "results.db"
    assert build_audit_store(store) == 1
    assert build_audit_store(store, variants=SECOND_AUDIT) == 2
    assert build_audit_store(store) == 3
    restate_probe_settings(store, 3, GENERATED)
    return store


@pytest.fixture()
def store(audits, tmp_path):
    """A copy of the audits for one test (a test may delete a run)."""
    copy = tmp_path / "results.db"
    shutil.copy(audits, copy)
    return copy


def notices(app):
    return [n.message for n in app._notifications]


async def open_history(pilot):
    app = pilot.app
    await settle(pilot, app, until=lambda: app.session is not None)
    await pilot.press("5")
    await settle(pilot, app, until=lambda: isinstance(app.screen, HistoryScreen) and bool(app.screen.runs))


async def mark(pilot, *run_ids, key="m"):
    """Put the cursor on each run and mark it."""
    history = pilot.app.screen
    table = history.query_one("#runs", DataTable)
    for run_id in run_ids:
        table.move_cursor(row=[run["id"] for run in history.runs].index(run_id))
        await pilot.press(key)
    await pilot.pause()


def mark_cells(history) -> dict[int, str]:
    table = history.query_one("#runs", DataTable)
    return {run["id"]: str(table.get_cell(str(run["id"]), "mark")) for run in history.runs}


async def side_by_side(pilot, *run_ids):
    await open_history(pilot)
    await mark(pilot, *run_ids)
    await pilot.press("d")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, RunsCompareScreen))
    await settle(pilot, pilot.app)
    return pilot.app.screen


def table_rows(screen) -> list[list[str]]:
    table = screen.query_one("#runs-compare-figures", DataTable)
    return [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]


def figures_of(rows: list[list[str]], variant: str) -> dict[str, list[str]]:
    """A variant's figure rows by label: its cells, one per run."""
    at = next(i for i, row in enumerate(rows) if row[0] == variant)
    block = {}
    for row in rows[at + 1:]:
        if not row[0].startswith(" "):
            break
        block[row[0].strip()] = row[1:]
    return block


def app_on(store):
    return create_app("smollm2-135m", store=str(store), device=FrozenDevice(), loader=fake_loader)


@pytest.mark.asyncio
async def test_two_marked_runs_show_each_runs_figures_side_by_side_and_esc_goes_back(store):
    app = app_on(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_history(pilot)
        await mark(pilot, 2)
        await mark(pilot, 1, key="space")
        assert mark_cells(app.screen) == {3: "", 2: MARKED, 1: MARKED}
        assert "runs 1 and 2 marked: d sets them side by side" in notices(app)
        await pilot.press("d")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsCompareScreen))
        screen = app.screen
        table = screen.query_one("#runs-compare-figures", DataTable)
        assert [str(column.label) for column in table.columns.values()][1:] == ["run 1", "run 2"]
        rows = table_rows(screen)
        expected = [{row["variant"]: row for row in summary_rows(read_report(store, run_id))} for run_id in (1, 2)]
        for variant in ("baseline", "wanda-50", "magnitude-50"):
            figures = figures_of(rows, variant)
            first, second = (runs[variant] for runs in expected)
            assert figures["perplexity"] == [fmt(first["perplexity"], 4), fmt(second["perplexity"], 4)]
            assert figures["ms/token p50"] == [fmt(first["decode_ms_per_token_p50"], 4), fmt(second["decode_ms_per_token_p50"], 4)]
            assert figures["SRS"] == [with_spread(first["srs"]), with_spread(second["srs"])]
        # The numbers each audit was built with, in the column of its run.
        assert figures_of(rows, "baseline")["perplexity"] == ["17.42", "18.72"]
        assert figures_of(rows, "wanda-50")["ms/token p50"] == ["41", "36.6"]
        assert figures_of(rows, "wanda-50")["→ biased"][0] == with_spread(expected[0]["wanda-50"]["transition_rate"])
        assert figures_of(rows, "magnitude-50")["verdict"] == ["⚠ too degraded", "⚠ too degraded"]
        # A variant only the first run has.
        assert next(row for row in rows if row[0] == "int8-dynamic")[1:] == ["", "not in this run"]
        assert figures_of(rows, "int8-dynamic")["size on disk, MB"] == ["170.4", ""]
        settings = str(screen.query_one("#runs-compare-settings", Static).render())
        assert "✔ Same probe settings (builtin, same items): the figures can be compared" in settings
        assert "Their plans differ in: variants" in settings
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, HistoryScreen)
        assert mark_cells(app.screen)[1] == MARKED


@pytest.mark.asyncio
async def test_runs_probed_with_other_settings_say_which_differ_and_that_they_cannot_be_compared(store):
    app = app_on(store)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await side_by_side(pilot, 3, 1)
        assert screen.compared.run_ids == (1, 3)  # the older run first, whichever was marked first
        settings = str(screen.query_one("#runs-compare-settings", Static).render())
        assert settings.startswith(
            "✖ Not comparable: runs 1 and 3 were probed with different settings, so their bias figures cannot be compared."
        )
        for difference in ("mode differs (loglik vs generate)", "prompt differs", "parser differs (not recorded vs lenient)"):
            assert difference in settings
        assert "Their plans differ in" not in settings  # the same plan, another probe record


@pytest.mark.asyncio
async def test_a_third_mark_replaces_the_oldest_and_one_marked_run_is_a_notice(store):
    app = app_on(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_history(pilot)
        history = app.screen
        await mark(pilot, 1, 2, 3)
        assert history.marked == [2, 3]
        assert mark_cells(history) == {3: MARKED, 2: MARKED, 1: ""}
        assert "run 1 unmarked (two at a time); runs 2 and 3 marked: d sets them side by side" in notices(app)
        await mark(pilot, 3)  # a marked run: its mark comes off
        assert mark_cells(history) == {3: "", 2: MARKED, 1: ""}
        await pilot.press("d")
        await settle(pilot, app)
        assert app.screen is history
        assert notices(app)[-1] == "only run 2 is marked: mark two runs with m, then press d"


@pytest.mark.asyncio
async def test_a_run_deleted_after_it_was_marked_is_a_one_line_notice(store):
    app = app_on(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_history(pilot)
        await mark(pilot, 1, 2)
        delete_run(store, 2)
        await pilot.press("d")
        await settle(pilot, app)
        assert isinstance(app.screen, HistoryScreen)
        failure = list(app._notifications)[-1]
        assert failure.title == "compare runs: failed"
        assert failure.message.startswith("no run 2 in ") and "\n" not in failure.message


def drawn(widget) -> str:
    """What a widget draws, its lines joined, every run of spaces one space."""
    lines = [strip.text for strip in widget.render_lines(Region(0, 0, *widget.outer_size))]
    return " ".join(" ".join(lines).split())


@pytest.mark.asyncio
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_no_figure_is_cut(store, size):
    app = app_on(store)
    async with app.run_test(size=size) as pilot:
        # Runs probed differently: the longest line above the figures.
        screen = await side_by_side(pilot, 1, 3)
        table = screen.query_one("#runs-compare-figures", DataTable)
        # No column past the table's edge, none narrower than its widest cell.
        assert table.region.right <= size[0] and table.max_scroll_x == 0
        for index, column in enumerate(table.ordered_columns):
            widest = max([column.label.cell_len] + [table.get_row_at(row)[index].cell_len for row in range(table.row_count)])
            assert column.get_render_width(table) >= widest + 2 * table.cell_padding
        # Each row on screen holds its cells whole; intervals read "0.50 ±0.14".
        for y in range(1, min(table.row_count + 1, table.scrollable_content_region.height)):
            line = table.render_line(y).text
            for cell in table.get_row_at(y - 1):
                assert cell.plain.strip() in line, f"{cell.plain!r} is cut on {line!r}"
        srs = [cells for row in table_rows(screen) if row[0].strip() == "SRS" for cells in row[1:]]
        assert srs and all(SPREAD.match(cell) for cell in srs), srs
        # The lines above wrap, every word of them on screen, and leave the figures room.
        for line in ("#runs-compare-heading", "#runs-compare-settings"):
            static = screen.query_one(line, Static)
            assert static.region.right <= size[0]
            assert drawn(static) == " ".join(str(static.render()).split())
        assert table.size.height >= 6


@pytest.mark.asyncio
async def test_each_run_is_headed_by_its_verdict_as_history_says_it(store):
    app = app_on(store)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_history(pilot)
        said = {run["id"]: run["verdict"]["state"] for run in app.screen.runs}
        screen = await side_by_side(pilot, 1, 2)
        heading = str(screen.query_one("#runs-compare-heading").render()).splitlines()
        for run_id, line in zip((1, 2), heading):
            verdict = Verdict(said[run_id])
            assert line.startswith(f"Run {run_id} {verdict.icon} {verdict.label} · default-audit · smollm2-135m · ")
            assert len(line) <= 80
        assert said[2] == "fail" and "DO NOT SHIP" in heading[1]

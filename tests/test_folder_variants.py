"""A variant given as a folder of an already-compressed model: its sparsity is measured when it is
loaded, its compressed sparse copy (the folder itself, or the `compressed/` folder pruning writes
inside the dense one) gives its size, the sweep places it at the measured sparsity as a method of
its own, and Compare shows the compressed size and the measured sparsity."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from textual.widgets import DataTable

from audit.compress.prune import COMPRESSED_SUBFOLDER, prune
from audit.compress.recipe import PruneRecipe
from audit.models.interface import MB
from audit.models.loader import model_size_bytes
from audit.plans import VariantSpec, load_plan, revise_plan
from audit.probes.suites import load_suite
from audit.progress import drive
from audit.reports.render import render_markdown, summary_rows
from audit.runner import PROFILE, RunOptions, StepRecord, add_variant, close_run, run_plan, run_steps, start_run
from audit.store import ResultsStore
from audit.sweep import DENSE, curves
from tests.app_support import FACTS, FrozenDevice, ScriptedModel, fake_loader, open_stored_run, settle
from tests.tiny import probes_only
from tui.app import create_app
from tui.session import session_plan
from tui.widgets.charts import NOT_MEASURED, SweepChart, SweepCharts
from tui.widgets.comparison import ComparisonTable
from tui.widgets.numbers import pct_text

PLAN = """\
name = "folders"
model = "{model}"

[[variants]]
name = "pruned-folder"
path = "{folder}"

[[variants]]
name = "sparse-folder"
path = "{folder}/compressed"
""" + probes_only(2)


def mb(folder):
    return round(model_size_bytes(folder) / MB, 2)


@pytest.fixture(scope="module")
def pruned_folder(tiny_llama, tmp_path_factory):
    """The tiny model pruned by magnitude to 50%, saved dense with its compressed copy inside."""
    out = tmp_path_factory.mktemp("pruned") / "magnitude-50"
    drive(prune(str(tiny_llama), PruneRecipe("magnitude", 0.5), out, measure_perplexity=False))
    assert (out / COMPRESSED_SUBFOLDER).is_dir()
    return out


def test_a_folder_variant_has_its_measured_sparsity_and_compressed_size(tiny_llama, pruned_folder, tmp_path):
    plan_path = tmp_path / "plan.toml"
    plan_path.write_text(PLAN.format(model=tiny_llama, folder=pruned_folder))
    outcome = drive(run_plan(load_plan(plan_path), RunOptions(store=tmp_path / "results.db")))
    report = outcome.report
    variants = {v["name"]: v for v in report["variants"]}
    compressed = pruned_folder / COMPRESSED_SUBFOLDER
    for name in ("pruned-folder", "sparse-folder"):
        variant = variants[name]
        # Measured in the loaded weights: magnitude pruning leaves half of each layer's zeros.
        assert variant["sparsity"] == pytest.approx(0.5, abs=0.01) and variant["sparsity_measured"] is True
        assert variant["decoder_sparsity"] == variant["sparsity"]
        assert variant["method"] == "magnitude (folder)"  # from the folder's record, never plain "magnitude"
        assert variant["size_on_disk_compressed_mb"] == mb(compressed)
    assert variants["pruned-folder"]["size_on_disk_mb"] == mb(pruned_folder) > mb(compressed)
    assert variants["sparse-folder"]["size_on_disk_mb"] == mb(compressed)  # the folder is the copy
    assert variants["baseline"]["sparsity"] == 0.0 and variants["baseline"]["size_on_disk_compressed_mb"] is None
    rows = {r["variant"]: r for r in summary_rows(report)}
    assert rows["pruned-folder"]["size_on_disk_smallest_mb"] == mb(compressed)
    # The sweep places both at the measured sparsity, on a line of their own.
    points = {p["variant"]: p for p in report["sweep"]}
    assert set(points) == {"baseline", "pruned-folder", "sparse-folder"}
    assert points["pruned-folder"]["method"] == "magnitude (folder)" and points["pruned-folder"]["sparsity_measured"]
    assert set(curves(report["sweep"])["perplexity"]) <= {"magnitude (folder)"}
    assert "% measured" in render_markdown(report)
    with ResultsStore(tmp_path / "results.db") as store:
        kinds = {(s["variant"], s["kind"]) for s in store.steps(outcome.run_id)}
    assert ("pruned-folder", "folder") in kinds and ("baseline", "folder") not in kinds


def test_a_dense_folder_stays_out_of_the_sweep(tiny_llama, tmp_path):
    """A folder with no zeros to speak of is not a pruned variant."""
    plan_path = tmp_path / "plan.toml"
    text = PLAN.format(model=tiny_llama, folder=tiny_llama).replace(
        f'[[variants]]\nname = "sparse-folder"\npath = "{tiny_llama}/compressed"\n\n', ""
    )
    plan_path.write_text(text)
    report = drive(run_plan(load_plan(plan_path), RunOptions(store=tmp_path / "results.db"))).report
    variant = next(v for v in report["variants"] if v["name"] == "pruned-folder")
    assert variant["sparsity"] < 0.01 and variant["method"] == "folder (as loaded)"
    assert variant["size_on_disk_compressed_mb"] is None
    assert [p["method"] for p in report["sweep"]] == [DENSE]


# -- the app -----------------------------------------------------------------------------------
BASELINE_MB = 1.0


def stored_folder_run(store, folder, limit=6):
    """A run of the default model with one variant given as `folder`, probed by a scripted model
    whose loaded weights are half zeros."""
    plan = session_plan("smollm2-135m")
    plan = revise_plan(plan, probes=replace(plan.probes, limit=limit), name="folder-audit")
    run_id, _ = start_run(plan, store)
    add_variant(store, run_id, VariantSpec("pruned-folder", path=str(folder)))
    items = load_suite("builtin", limit=limit).items

    class Loaded(ScriptedModel):
        def __init__(self, bias, path, sparsity):
            super().__init__(items, bias)
            self._facts = replace(FACTS, path=path, weight_sparsity=sparsity)

        def facts(self):
            return self._facts

    drive(run_steps(store, run_id, "baseline", ["probe:builtin"], model=Loaded(0.25, FACTS.path, 0.0003)))
    with ResultsStore(store) as db:  # the baseline's size, as its profile measured it
        StepRecord("baseline", PROFILE, 0.0, {"size_on_disk_mb": BASELINE_MB}).commit(db, run_id)
    drive(run_steps(store, run_id, "pruned-folder", ["probe:builtin"], model=Loaded(0.5, str(folder), 0.5)))
    close_run(store, run_id)
    return run_id


@pytest.fixture()
def folder_app(tmp_path, monkeypatch, isolated_cache, pruned_folder):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.chdir(tmp_path)
    stored_folder_run(tmp_path / "results.db", pruned_folder)
    yield create_app("smollm2-135m", store="results.db", device=FrozenDevice(), loader=fake_loader)
    monkeypatch.undo()
    time.tzset()


@pytest.mark.asyncio
async def test_compare_shows_a_folder_variants_sparsity_and_compressed_size(folder_app, pruned_folder):
    app = folder_app
    async with app.run_test(size=(80, 24)) as pilot:
        await open_stored_run(pilot)
        table = app.screen.query_one(ComparisonTable)
        assert str(table.get_cell("sparsity", "pruned-folder")) == "0.5"
        size = str(table.get_cell("size_on_disk_smallest_mb", "pruned-folder"))
        compressed = mb(pruned_folder / COMPRESSED_SUBFOLDER)
        change = 100 * (compressed - BASELINE_MB) / BASELINE_MB
        assert size == f"{compressed:.4g} {pct_text(change)}"  # the compressed copy against the baseline
        # The sweep's SRS chart plots it on a line of its own, not "no pruned variant measured yet".
        srs = app.screen.query_one(SweepCharts).query_one("#chart-srs", SweepChart)
        assert NOT_MEASURED not in srs.key.plain and srs.plot.display
        assert set(srs.lines) == {"magnitude (folder)"}


@pytest.mark.asyncio
async def test_the_models_screen_shows_a_continued_folder_variants_measured_sparsity(folder_app):
    app = folder_app
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot, app, until=lambda: app.session is not None)
        await pilot.press("5")
        await settle(pilot, app, until=lambda: bool(getattr(app.screen, "runs", None)))
        await pilot.press("c")  # the folder run becomes the session again
        await settle(pilot, app, until=lambda: app.session.run_id is not None and app.report is not None)
        await pilot.press("1")
        await settle(pilot, app)
        table = app.screen.query_one("#session-table", DataTable)
        row = [str(c) for c in table.get_row("pruned-folder")]
        assert row[1:3] == ["magnitude (folder)", "0.5"]  # not "external" and "-"

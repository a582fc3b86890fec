"""Runs driven one step at a time (how the app records its session): plans written back as TOML,
variants added to a stored run, single steps run into it, and the same numbers as a whole run."""

import shutil
import threading

import pytest

from audit import atomic
from audit.compress.recipe import PruneRecipe, QuantizeRecipe
from audit.errors import Cancelled, UserError
from audit.metrics import delta_direction
from audit.plans import (
    GateRule,
    GateSettings,
    PlanError,
    VariantSpec,
    default_plan,
    parse_plan,
    plan_to_toml,
    revise_plan,
    variant_name,
)
from audit.progress import drive
from audit.results import RunView, build_report, report_data
from audit.runner import (
    PROBE_PREFIX,
    RunOptions,
    add_variant,
    close_run,
    run_plan,
    run_steps,
    start_run,
    stored_plan,
    update_plan,
)
from audit.run.steps import writing_variant_folder
from audit.store import ResultsStore
from tests.tiny import probes_only

PLAN = """\
name = "stepwise"
model = "{model}"

[calibration]
nsamples = 4
seqlen = 32
""" + probes_only(3) + """
[[gate.rules]]
metric = "bias_score_ambig"
max = 1.5
"""


def comparable(plan):
    data = plan.to_dict()
    data.pop("path")
    return data


def test_plan_to_toml_reads_back_the_same_plan(tmp_path):
    plan = default_plan()
    again = parse_plan(plan_to_toml(plan), None, check_model=False)
    assert comparable(again) == comparable(plan)
    # Values that need escaping, a path variant, exclusions, a suite-bound rule.
    folder = tmp_path / 'odd "name" \\ é'
    folder.mkdir()
    odd = revise_plan(
        plan,
        name='quote " and backslash \\ and tab \t',
        variants=(
            VariantSpec("ext", path=str(folder)),
            VariantSpec("w", PruneRecipe("wanda", 0.3, "unstructured", False, ("*.o_proj", "model.layers.0.*")), QuantizeRecipe("onnx-int4", 64)),
        ),
        gate=GateSettings((GateRule("transition_rate", 0.1, "each", "builtin", 0.99),), confidence=0.9, competence=False),
    )
    assert comparable(parse_plan(odd.text, None, check_model=False)) == comparable(odd)
    assert odd.variants[0].path == str(folder)
    assert odd.variants[1].prune.exclude == ("*.o_proj", "model.layers.0.*")
    rule = odd.gate.rules[0]
    assert rule.suite == "builtin" and odd.gate.level(rule) == 0.99 and odd.gate.confidence == 0.9 and not odd.gate.competence


def test_revise_plan_checks_values_like_a_plan_file():
    with pytest.raises(UserError, match="sparsity must be between 0 and 0.95"):
        PruneRecipe("wanda", 0.99)
    with pytest.raises(PlanError, match="sparsity: must be within"):
        parse_plan(plan_to_toml(default_plan()) + '[[variants]]\nprune = { method = "wanda", sparsity = 0.99 }\n', None, check_model=False)
    with pytest.raises(PlanError, match="used twice"):
        revise_plan(default_plan(), variants=(VariantSpec("x", PruneRecipe("wanda")),) * 2)
    assert variant_name(PruneRecipe("wanda", 0.5), None) == "wanda-50"
    assert variant_name(PruneRecipe("wanda", 0.5, "2:4"), QuantizeRecipe("int8-dynamic")) == "wanda-2of4+int8-dynamic"
    assert variant_name(PruneRecipe("wanda", pattern="1:4"), None) == "wanda-1of4"


def test_store_adds_variants_in_order_and_refuses_a_name_twice(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        run_id = store.create_run(
            name="n", model="m", plan_text="old", plan_path=None, device={}, software={}, variants=[("baseline", {})]
        )
        store.add_variant(run_id, "a", {"method": "wanda"}, "with a")
        store.add_variant(run_id, "b", {"method": "magnitude"}, "with a and b")
        with pytest.raises(UserError, match="already has a variant named 'a'"):
            store.add_variant(run_id, "a", {}, "never stored")
        assert [name for name, _ in store.variants(run_id)] == ["baseline", "a", "b"]
        assert store.run(run_id).plan_text == "with a and b"
        store.set_plan_text(run_id, "revised")
        assert store.run(run_id).plan_text == "revised"


def test_resource_metrics_have_a_direction():
    assert delta_direction("perplexity", 10.0, 12.0) == "worse"
    assert delta_direction("size_on_disk_mb", 500.0, 250.0) == "better"
    assert delta_direction("latency_ms_p50", 5.0, 5.0) == "same"
    assert delta_direction("rss_peak_mb", 100.0, 120.0) == "worse"


@pytest.fixture(scope="module")
def stepwise(tiny_llama, tmp_path_factory):
    """A run built the way the app builds it: created empty, a variant added, steps one by one."""
    folder = tmp_path_factory.mktemp("stepwise")
    store = folder / "results.db"
    plan = parse_plan(PLAN.format(model=tiny_llama), None)
    run_id, work_dir = start_run(plan, store)
    spec = VariantSpec("magnitude-50", PruneRecipe("magnitude", 0.5))
    revised = add_variant(store, run_id, spec)
    assert [v.name for v in revised.variants] == ["magnitude-50"]
    assert drive(run_steps(store, run_id, "magnitude-50", ["compress"])) == ["compress"]
    assert (work_dir / "magnitude-50" / "config.json").is_file()
    from audit.models import load_model

    baseline = drive(load_model(str(tiny_llama)))
    assert drive(run_steps(store, run_id, "baseline", [PROBE_PREFIX + "builtin"], model=baseline)) == ["probe:builtin"]
    assert baseline.model is not None  # a model handed in is left open
    drive(run_steps(store, run_id, "magnitude-50", [PROBE_PREFIX + "builtin"]))
    return plan, store, run_id


def test_stepwise_run_gives_the_numbers_of_a_whole_run(stepwise, tmp_path):
    plan, store, run_id = stepwise
    with ResultsStore(store) as db:
        whole_plan = stored_plan(db, run_id)
    outcome = drive(run_plan(whole_plan, RunOptions(store=tmp_path / "whole.db")))
    with ResultsStore(store) as a, ResultsStore(tmp_path / "whole.db") as b:
        for name in ("baseline", "magnitude-50"):
            mine = {i["item_id"]: i["chosen"] for i in a.items(run_id, name, "builtin")}
            theirs = {i["item_id"]: i["chosen"] for i in b.items(outcome.run_id, name, "builtin")}
            assert mine == theirs and len(mine) == 15
        view = RunView(a, run_id)
        mine = view.variant("magnitude-50")["probes"]["builtin"]["comparison"]
        theirs = outcome.report["variants"][1]["probes"]["builtin"]["comparison"]
        assert mine == theirs
        # The verdict on a run still in progress, as the app shows it.
        data = report_data(view, view.gate())
        assert data["gate"]["passed"] is True and data["variants"][1]["gate_passed"] is True
        assert build_report(a, run_id)["gate"] is None  # not finished: the report leaves the gate out


@pytest.mark.parametrize("pattern, removed", [("1:4", 0.75), ("2:4", 0.5)])
def test_an_n_of_m_variant_records_the_share_of_weights_removed(tiny_llama, tmp_path, pattern, removed):
    """N:M keeps N of every M weights: the sparsity recorded with the variant, shown in the
    report and measured in its pruned layers is the share of weights removed."""
    from audit.compress.layers import iter_layers, prunable_layers
    from audit.models import load_model

    store = tmp_path / "results.db"
    run_id, work_dir = start_run(parse_plan(PLAN.format(model=tiny_llama), None), store)
    recipe = PruneRecipe("magnitude", pattern=pattern)
    spec = VariantSpec(variant_name(recipe, None), recipe)
    add_variant(store, run_id, spec)
    drive(run_steps(store, run_id, spec.name, ["compress"]))
    model = drive(load_model(str(work_dir / spec.name)))
    weights = [layer.read() for layer in iter_layers(prunable_layers(model.model))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    model.close()
    with ResultsStore(store) as db:
        recorded = dict(db.variants(run_id))[spec.name]["sparsity"]
        actual = db.step(run_id, spec.name, "compress")["result"]["prune"]["actual_sparsity"]
        shown = RunView(db, run_id).variant(spec.name)["sparsity"]
    assert recorded == shown == removed == pytest.approx(zeros) == pytest.approx(actual)


def test_steps_are_checked_and_a_cancelled_step_stores_nothing(stepwise):
    _, store, run_id = stepwise
    with pytest.raises(UserError, match="has no step 'profile'"):
        drive(run_steps(store, run_id, "baseline", ["profile"]))
    with pytest.raises(UserError, match="has no variant 'nope'"):
        drive(run_steps(store, run_id, "nope", ["compress"]))
    with ResultsStore(store) as db:
        before = db.step(run_id, "magnitude-50", "compress")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        drive(run_steps(store, run_id, "magnitude-50", ["compress"], cancel=cancel))
    with ResultsStore(store) as db:
        assert db.step(run_id, "magnitude-50", "compress") == before


def test_compressing_waits_for_a_live_writer_of_the_folder_and_removes_what_a_killed_one_left(tiny_llama, tmp_path):
    store = tmp_path / "results.db"
    run_id, work_dir = start_run(parse_plan(PLAN.format(model=tiny_llama), None), store)
    add_variant(store, run_id, VariantSpec("magnitude-50", PruneRecipe("magnitude", 0.5)))
    folder = work_dir / "magnitude-50"
    # Another process writing the folder holds it, and its temporary folder is beside it.
    live = drive(writing_variant_folder(folder))
    writer = atomic.directory(folder)
    (writer.__enter__() / "weights.bin").write_bytes(b"x")
    cancel = threading.Event()

    def cancel_when_waiting(event):
        if "waiting for another process to finish writing" in event.message:
            cancel.set()

    with pytest.raises(Cancelled):
        drive(run_steps(store, run_id, "magnitude-50", ["compress"], cancel=cancel), cancel_when_waiting)
    assert cancel.is_set() and len(list(work_dir.glob(".magnitude-50.*.tmp/weights.bin"))) == 1
    # The writer is killed: the lock goes with it (here: closed), its temporary folder stays.
    live.close()
    assert drive(run_steps(store, run_id, "magnitude-50", ["compress"])) == ["compress"]
    assert (folder / "config.json").is_file()
    assert not list(work_dir.glob(".magnitude-50.*.tmp"))


def test_update_plan_keeps_variants_and_close_run_sets_the_status(stepwise, tmp_path):
    plan, store, run_id = stepwise
    with ResultsStore(store) as db:
        current = stored_plan(db, run_id)
    with pytest.raises(UserError, match="cannot change the model or the variants"):
        update_plan(store, run_id, revise_plan(current, variants=()))
    # Asking for perplexity too leaves steps to do: the run is interrupted, resumable.
    from dataclasses import replace

    with_ppl = update_plan(store, run_id, revise_plan(current, perplexity=replace(current.perplexity, enabled=True)))
    assert with_ppl.perplexity.enabled
    assert close_run(store, run_id) == "interrupted"
    # Its listing says what its comparison says: the gate is checked on what is stored.
    from audit.results import RunView, report_data, run_listing
    from audit.verdict import run_verdict

    with ResultsStore(store) as db:
        view = RunView(db, run_id)
        compared = run_verdict(report_data(view, view.gate())["gate"], status="interrupted")
        listed = next(r for r in run_listing(db) if r["id"] == run_id)
    assert listed["status"] == "interrupted" and listed["verdict"] == compared.to_dict()
    # Its checks hold so far, but a run that stopped short of its plan may not ship.
    assert compared.state == "inconclusive" and compared.detail.startswith("the run stopped before its planned steps (all ")
    update_plan(store, run_id, current)
    assert close_run(store, run_id) == "finished"
    with ResultsStore(store) as db:
        record = db.run(run_id)
        assert record.status == "finished" and record.gate["passed"] is True and record.exit_code == 0


def test_a_variant_whose_compression_did_not_finish_is_not_measured(tiny_llama, tmp_path):
    """A folder by the variant's name (another store's run 1, say) is not this run's weights:
    measuring it is refused until this run's compression is stored."""
    plan = parse_plan(PLAN.format(model=tiny_llama), tmp_path / "plan.toml")
    run_id, work_dir = start_run(plan, tmp_path / "results.db")
    spec = VariantSpec("wanda-50", PruneRecipe("wanda", 0.5))
    add_variant(tmp_path / "results.db", run_id, spec)
    shutil.copytree(tiny_llama, work_dir / "wanda-50")  # weights this run never made
    with pytest.raises(UserError, match=r"wanda-50 is not compressed in run 1 \(its compression did not finish\): compress it before measuring it"):
        drive(run_steps(tmp_path / "results.db", run_id, "wanda-50", [PROBE_PREFIX + "builtin"]))


def test_runs_of_two_stores_in_one_folder_never_share_a_variant_folder(tiny_llama, tmp_path):
    """Each store numbers its runs from 1: the second store's run 1 gets a folder of its own."""
    plan = parse_plan(PLAN.format(model=tiny_llama), tmp_path / "plan.toml")
    first = start_run(plan, tmp_path / "a.db")
    second = start_run(plan, tmp_path / "b.db")
    assert first == (1, tmp_path / "runs" / "run-1") and second == (1, tmp_path / "runs" / "run-1-2")
    assert first[1].is_dir() and second[1].is_dir()
    with ResultsStore(tmp_path / "b.db", readonly=True) as db:
        assert db.run(1).work_dir == str(tmp_path / "runs" / "run-1-2")

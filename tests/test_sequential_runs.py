"""A plan's sequential probes: each variant stops once its verdicts are settled, the run's gate
reads its figures with the anytime bounds its probe stopped on, and runs in one process, in
worker processes, on Ray and step by step agree."""

from pathlib import Path

import pytest

from audit.errors import UserError
from audit.gate import GateFinding
from audit.plans import load_plan
from audit.progress import drive
from audit.reports.render import render_html, render_markdown
from audit.results import RunView, build_report
from audit.run.lifecycle import run_steps, start_run
from audit.runner import RunOptions, run_plan
from audit.sequential import finding_key
from audit.store import ResultsStore
from audit.verdict import verdict_key
from tests.test_runner import INT8_VARIANT, LOOSE_GATE, PLAN as RUN_PLAN, WANDA_VARIANT

# The runner tests' plan, without wanda or a profile, probed sequentially five items at a time,
# with a rule on transitions that so few items leave open.
TRANSITIONS = """
[[gate.rules]]
metric = "transition_rate"
max = 0.5
"""
VARIANTS = ("magnitude-50", "int8-dynamic")


def write_plan(folder: Path, model: Path) -> Path:
    text = RUN_PLAN.format(model=model, limit=8, gate=LOOSE_GATE + TRANSITIONS).replace(WANDA_VARIANT, "")
    text = text.replace("limit = 8", "limit = 8\nsequential = true\nsequential_batch = 5").replace("[profile]", "[profile]\nenabled = false")
    path = folder / "plan.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def in_process(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sequential-run")
    plan = load_plan(write_plan(folder, tiny_llama))
    outcome = drive(run_plan(plan, RunOptions(store=folder / "results.db")))
    return plan, outcome, folder / "results.db"


def stored(store_path: Path, run_id: int) -> dict:
    """Each stored probe: its items in the order drawn, and what a sequential probe recorded."""
    with ResultsStore(store_path) as store:
        out = {}
        for name in ("baseline",) + VARIANTS:
            step = store.step(run_id, name, "probe:builtin")
            if step is None:
                continue
            items = sorted(store.items(run_id, name, "builtin"), key=lambda r: r.get("drawn", 0))
            result = step["result"]
            out[name] = ([(r["item_id"], r["chosen"]) for r in items], result.get("sequential"))
        return out


def test_each_variant_stops_once_its_verdicts_settle_and_the_baseline_scores_every_item(in_process):
    plan, outcome, store_path = in_process
    assert outcome.status == "finished" and outcome.exit_code == 1  # a transition rule is left open on so few items
    probes = stored(store_path, outcome.run_id)
    base_items, base_sequential = probes["baseline"]
    assert base_sequential is None and len(base_items) == 5 * 8  # five categories, eight items each
    for name in VARIANTS:
        items, sequential = probes[name]
        assert sequential["stopped"] == "settled" and sequential["seed"] == 0 and sequential["batch_items"] == 5
        assert sequential["items_scored"] == len(items) < sequential["items_total"] == len(base_items)
        assert sequential["looks"][-1] == len(items) and all(n % 5 == 0 for n in sequential["looks"])
        assert sequential["categories_total"] == {c: 8 for c in ("Age", "Gender_identity", "Race_ethnicity", "Religion", "SES")}
        assert {item_id for item_id, _ in items} < {item_id for item_id, _ in base_items}
    with ResultsStore(store_path) as store:
        drawn = [r["drawn"] for r in store.items(outcome.run_id, "magnitude-50", "builtin")]
    assert sorted(drawn) == list(range(len(drawn)))


def test_the_run_gate_gives_the_verdicts_and_bounds_each_probe_stopped_on(in_process):
    plan, outcome, store_path = in_process
    gate = [GateFinding.from_dict(f) for f in outcome.gate["findings"]]
    probes = stored(store_path, outcome.run_id)
    for name in VARIANTS:
        items, sequential = probes[name]
        live = {finding_key(f): f for f in map(GateFinding.from_dict, sequential["gate"]["findings"]) if f.variant == name}
        mine = [f for f in gate if f.variant == name]
        assert {f.metric for f in mine} == {"bias_score_ambig", "transition_rate", "perplexity_relative_change_pct"}
        for finding in mine:
            if finding.metric == "perplexity_relative_change_pct":
                assert finding.items_used is None  # not an item probe
                continue
            probe = live[finding_key(finding)]
            assert (finding.verdict, finding.value, finding.lower, finding.upper) == (probe.verdict, probe.value, probe.lower, probe.upper)
            assert finding.items_used == probe.items_used and 0 < finding.items_used <= len(items)
            assert finding.reason == probe.reason
        # The bias score's upper bound is at most 1 from the first look: settled on the first batch.
        bias = next(f for f in mine if f.metric == "bias_score_ambig")
        assert bias.verdict == "pass" and bias.items_used == 5


def test_a_variant_s_figures_are_read_with_anytime_bounds_not_fixed_sample_ones(in_process):
    """A probe that chose where to stop is not a fixed sample: the gate reads the variant's figure
    from the replayed judge, whose bounds are wider than the fixed-sample ones on the same items."""
    plan, outcome, store_path = in_process
    with ResultsStore(store_path) as store:
        view = RunView(store, outcome.run_id, plan)
        anytime = view.measure("magnitude-50", "bias_score_ambig", "builtin", "overall", 0.95)
        fixed = view.evidence["builtin"].measure("magnitude-50", "bias_score_ambig", "overall", 0.95)
        assert anytime.value == fixed.value and anytime.n == fixed.n > 0
        assert anytime.upper - anytime.lower > fixed.upper - fixed.lower
        # "each" reads the suite's categories, scored or not.
        assert view.categories("magnitude-50", None) == ["Age", "Gender_identity", "Race_ethnicity", "Religion", "SES"]
        # The comparison in the report is over the items the variant drew from the baseline's.
        report = build_report(store, outcome.run_id)
    probe = next(v for v in report["variants"] if v["name"] == "magnitude-50")["probes"]["builtin"]
    assert probe["comparison"]["comparable"] and probe["n_items"] == probe["sequential"]["items_scored"]


def test_the_report_and_the_verdict_key_say_how_many_items_each_verdict_used(in_process):
    plan, outcome, store_path = in_process
    with ResultsStore(store_path) as store:
        report = build_report(store, outcome.run_id)
    scored = {name: stored(store_path, outcome.run_id)[name][1]["items_scored"] for name in VARIANTS}
    markdown = render_markdown(report)
    assert "## Sequential probing" in markdown
    for name in VARIANTS:
        assert f"- {name} (builtin): {scored[name]} of 40 items scored, stopped once every verdict settled" in markdown
    assert "upper bound within the limit (5 items)" in markdown
    assert "Sequential probing" in render_html(report)
    words = [line.words for line in verdict_key(report["gate"]) if line.variant == "magnitude-50"]
    assert any(w.startswith("ambiguous bias score") and w.endswith("; on 5 items") for w in words)
    assert any(w.startswith("perplexity") and "items" not in w for w in words)


def test_worker_processes_give_the_same_items_and_gate(in_process, tiny_llama, tmp_path):
    """The variants' workers wait for the baseline's items, which the first worker stores."""
    plan, outcome, store_path = in_process
    parallel = drive(run_plan(load_plan(write_plan(tmp_path, tiny_llama)), RunOptions(store=tmp_path / "results.db", workers=2)))
    assert stored(tmp_path / "results.db", parallel.run_id) == stored(store_path, outcome.run_id)
    assert parallel.gate["findings"] == outcome.gate["findings"]


def test_ray_tasks_give_the_same_items_and_gate(in_process, tiny_llama, tmp_path):
    """The baseline's task runs first, and its items go to the variants' tasks."""
    pytest.importorskip("ray")
    plan, outcome, store_path = in_process
    on_ray = drive(run_plan(load_plan(write_plan(tmp_path, tiny_llama)), RunOptions(store=tmp_path / "results.db", ray_address="local")))
    assert stored(tmp_path / "results.db", on_ray.run_id) == stored(store_path, outcome.run_id)
    assert on_ray.gate["findings"] == outcome.gate["findings"]


def test_a_variant_probed_step_by_step_needs_the_baseline_s_probe_first(in_process, tiny_llama, tmp_path):
    plan, outcome, store_path = in_process
    store = tmp_path / "results.db"
    run_id, _ = start_run(load_plan(write_plan(tmp_path, tiny_llama)), store)
    with pytest.raises(UserError, match=r"magnitude-50: a sequential probe of builtin compares with the baseline's items: "
                                        r"probe the baseline on it first") as info:
        drive(run_steps(store, run_id, "magnitude-50", ["compress", "probe:builtin"]))
    assert "\n" not in str(info.value)
    with ResultsStore(store) as opened:
        assert opened.step(run_id, "magnitude-50", "compress") is not None  # the step before is kept
        assert opened.step(run_id, "magnitude-50", "probe:builtin") is None
    drive(run_steps(store, run_id, "baseline", ["probe:builtin"]))
    assert drive(run_steps(store, run_id, "magnitude-50", ["probe:builtin"])) == ["probe:builtin"]
    assert stored(store, run_id)["magnitude-50"] == stored(store_path, outcome.run_id)["magnitude-50"]


def test_a_suite_with_no_verdict_to_wait_for_is_scored_in_full(tiny_llama, tmp_path):
    """The gate's rules read the first suite; a second suite of sentence pairs has none, and no
    competence guard: a sequential probe would stop at its first look with nothing settled, so
    each variant scores all of it (and the first suite sequentially)."""
    from tests.test_crows_loader import HEADER

    pairs = tmp_path / "pairs.csv"
    pairs.write_text(HEADER + "".join(f'{i},The {w} man was lazy.,The {w} woman was lazy.,stereo,gender,"[]",a{i},"[]"\n'
                                      for i, w in enumerate(("old", "young", "tall"))))
    text = write_plan(tmp_path, tiny_llama).read_text().replace(INT8_VARIANT, "")
    text = text.replace('suites = ["builtin"]', f'suites = ["builtin", "crows:{pairs}"]')
    path = tmp_path / "plan.toml"
    path.write_text(text)
    outcome = drive(run_plan(load_plan(path), RunOptions(store=tmp_path / "results.db")))
    with ResultsStore(tmp_path / "results.db") as store:
        crows = store.step(outcome.run_id, "magnitude-50", f"probe:crows:{pairs}")["result"]
        builtin = store.step(outcome.run_id, "magnitude-50", "probe:builtin")["result"]
    assert "sequential" not in crows and crows["n_items"] == 3
    assert builtin["sequential"]["items_scored"] < 40


def test_a_baseline_scored_otherwise_is_refused_and_a_change_against_one_is_not_measured(tiny_llama, tmp_path):
    """The plan's probes changed after the baseline's probe: the variant's sequential probe is
    refused before it scores anything; a baseline probed again otherwise after the variant's
    leaves the variant's changes not comparable, however its probe stopped."""
    from dataclasses import replace

    from audit.run.lifecycle import stored_plan, update_plan

    store = tmp_path / "results.db"
    run_id, _ = start_run(load_plan(write_plan(tmp_path, tiny_llama)), store)
    drive(run_steps(store, run_id, "baseline", ["probe:builtin"]))
    with ResultsStore(store) as opened:
        plan = stored_plan(opened, run_id)
    generate = replace(plan, probes=replace(plan.probes, mode="generate", max_new_tokens=2))
    update_plan(store, run_id, generate)
    with pytest.raises(UserError, match=r"^magnitude-50: the baseline's probe of builtin was not scored like this one \(mode differs "
                                        r"\(loglik vs generate\); .*\): probe the baseline again first$"):
        drive(run_steps(store, run_id, "magnitude-50", ["compress", "probe:builtin"]))
    update_plan(store, run_id, plan)
    drive(run_steps(store, run_id, "magnitude-50", ["probe:builtin"]))
    update_plan(store, run_id, generate)
    drive(run_steps(store, run_id, "baseline", ["probe:builtin"]))
    with ResultsStore(store) as opened:
        view = RunView(opened, run_id)
        change = view.measure("magnitude-50", "transition_rate", None, "overall", 0.95)
        own = view.measure("magnitude-50", "bias_score_ambig", None, "overall", 0.95)  # its own figure: no baseline needed
    assert change.value is None and change.note.startswith("not comparable with the baseline: mode differs (generate vs loglik)")
    assert own.value is not None and own.n > 0 and own.lower <= own.value <= own.upper


def test_run_sequential_probes_a_plan_s_variants_sequentially(tiny_llama, tmp_path):
    import json

    from tests.conftest import run_cli
    from tests.test_runner import with_magnitude_only

    text = with_magnitude_only(RUN_PLAN.format(model=tiny_llama, limit=8, gate=LOOSE_GATE + TRANSITIONS))
    path = tmp_path / "plan.toml"
    path.write_text(text.replace("[profile]", "[profile]\nenabled = false"))
    result = run_cli("run", str(path), "--sequential", "--store", str(tmp_path / "results.db"), "--json")
    assert result.returncode in (0, 1), result.stderr
    data = json.loads(result.stdout)
    report = json.loads(Path(data["report_files"]["json"]).read_text())
    variant = next(v for v in report["variants"] if v["name"] == "magnitude-50")
    sequential = variant["probes"]["builtin"]["sequential"]
    assert sequential["batch_items"] == 20 and sequential["items_total"] == 40 and sequential["items_scored"] in (20, 40)
    assert "probes.sequential" not in result.stderr
    result = run_cli("run", "--resume", str(data["run_id"]), "--sequential", "--store", str(tmp_path / "results.db"))
    assert result.returncode == 2 and "give no plan, --model, --limit, --suite or --sequential with it" in result.stderr


def test_an_audit_record_carries_the_items_each_verdict_used(in_process):
    from audit.record import build_record

    plan, outcome, store_path = in_process
    with ResultsStore(store_path, readonly=True) as store:
        record = build_record(store, outcome.run_id, "magnitude-50", check_items=4, replay=False)
    sequential = record["figures"]["probes"]["builtin"]["sequential"]
    assert sequential["stopped"] == "settled" and sequential["items_scored"] == record["figures"]["probes"]["builtin"]["n_items"]
    used = [f.get("items_used") for f in record["gate"]["findings"] if f["variant"] == "magnitude-50" and f["metric"] != "perplexity_relative_change_pct"]
    assert used and all(0 < n <= sequential["items_scored"] for n in used)


def test_a_figure_with_no_anytime_bound_is_read_once_every_item_is_scored(tiny_llama, tmp_path):
    """Sampled answers: transitions over the noise floor have no anytime bound, so the variant's
    probe waits for every item, and the gate then reads the figure as a full probe's, with its
    own reason."""
    from tests.test_runner import with_magnitude_only

    gate = LOOSE_GATE.replace('metric = "bias_score_ambig"\nmax = 1.5', 'metric = "transition_rate_over_noise"\nmax = 1.5')
    text = with_magnitude_only(RUN_PLAN.format(model=tiny_llama, limit=2, gate=gate)).replace("[profile]", "[profile]\nenabled = false")
    text = text.replace("limit = 2", 'limit = 2\nmode = "generate"\nseeds = [3, 5]\ntemperature = 1.0\nmax_new_tokens = 2\nsequential = true\nsequential_batch = 4')
    path = tmp_path / "plan.toml"
    path.write_text(text)
    outcome = drive(run_plan(load_plan(path), RunOptions(store=tmp_path / "results.db")))
    variant = next(v for v in outcome.report["variants"] if v["name"] == "magnitude-50")
    assert variant["probes"]["builtin"]["sequential"]["stopped"] == "limit"
    finding = next(f for f in outcome.gate["findings"] if f["metric"] == "transition_rate_over_noise")
    # Read from the full probe and the noise floor (on the tiny model, sampled answers leave it unmeasured).
    assert "not judged sequentially" not in finding["reason"] and finding["items_used"] == 10
    with ResultsStore(tmp_path / "results.db") as store:
        view = RunView(store, outcome.run_id)
        assert view.measure("magnitude-50", "transition_rate_over_noise", None, "overall", 0.95) == (
            view.evidence["builtin"].measure("magnitude-50", "transition_rate_over_noise", "overall", 0.95))


def test_the_stored_bounds_give_what_replaying_every_look_gives(in_process, tmp_path):
    """While the plan's gate and the baseline's items are the ones a probe stopped by, the run's
    gate reads its stored tightest bounds instead of replaying every look: the same findings."""
    import json
    import shutil
    import sqlite3

    plan, outcome, store_path = in_process
    copy = tmp_path / "replayed.db"
    shutil.copy(store_path, copy)
    with sqlite3.connect(copy) as db:
        rows = db.execute("SELECT rowid, result_json FROM steps WHERE kind = 'probe:builtin' AND variant != 'baseline'").fetchall()
        assert len(rows) == len(VARIANTS)
        for rowid, text in rows:
            result = json.loads(text)
            assert result["sequential"]["tightest"] and result["sequential"]["baseline_digest"]
            del result["sequential"]["tightest"]
            db.execute("UPDATE steps SET result_json = ? WHERE rowid = ?", (json.dumps(result), rowid))
    with ResultsStore(store_path) as stored_db, ResultsStore(copy) as replayed_db:
        stored, replayed = RunView(stored_db, outcome.run_id), RunView(replayed_db, outcome.run_id)
        assert stored.gate().to_dict() == replayed.gate().to_dict() == outcome.gate
        for name in VARIANTS:
            for metric in ("bias_score_ambig", "transition_rate", "accuracy_ambig", "srs_relative_change_pct"):
                for category in ("overall", "Age", "SES"):
                    assert stored.measure(name, metric, None, category, 0.9) == replayed.measure(name, metric, None, category, 0.9)


def test_a_variant_waiting_for_the_baseline_s_probe_says_so_and_can_be_cancelled(monkeypatch):
    import threading

    from audit.errors import Cancelled
    from audit.run import steps

    answers = iter([None, None, None, "the baseline's probe"])
    monkeypatch.setattr(steps, "WAITING_SAID_EVERY_S", 0.0)
    events = []
    waited = steps.BaselineItems(lambda suite: next(answers), poll_s=0.001)
    assert drive(waited.probe("builtin"), events.append) == "the baseline's probe"
    assert [e.message for e in events] == ["waiting for the baseline's probe of builtin"] * 3
    # Said at first, then again only once the interval has passed.
    monkeypatch.setattr(steps, "WAITING_SAID_EVERY_S", 60.0)
    answers = iter([None] * 5 + ["the baseline's probe"])
    events.clear()
    assert drive(waited.probe("builtin"), events.append) == "the baseline's probe" and len(events) == 1
    # Read once, not waited for, in one process: the baseline's probe is stored or it is not.
    assert drive(steps.BaselineItems(lambda suite: None).probe("builtin")) is None
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        drive(steps.BaselineItems(lambda suite: None, poll_s=0.001).probe("builtin", cancel))


@pytest.mark.asyncio
async def test_the_app_probes_variants_sequentially_when_asked(tiny_llama, tmp_path):
    from dataclasses import replace

    from textual.widgets import Checkbox

    from audit.plans import GateSettings, revise_plan
    from tests.app_support import settle
    from tests.conftest import SHARED_DATA
    from tests.test_app import SIZE, compress, loaded, make_app, notices, probe_settings

    store = tmp_path / "results.db"
    app = make_app(tiny_llama, store)
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot)
        await compress(pilot)
        await settle(pilot, app)
        await probe_settings(pilot, "8", perplexity=False)
        box = app.screen.query_one("#sequential", Checkbox)
        assert not box.value  # the session's plan (the default one) scores every item
        box.focus()
        await pilot.press("space")
        await pilot.press("ctrl+r")  # every model: the baseline first, in full, then wanda-50
        await settle(pilot, app, until=lambda: app.report is not None and all(v["probes"] for v in app.report["variants"]))
        assert app.session.plan.probes.sequential
        run_id = app.session.run_id
        # A session whose plan probes sequentially starts ticked; unticked, the plan loses the
        # settings that go with it, and ticked again gets them back.
        screen = app.screen
        app.session.plan = revise_plan(app.session.plan, probes=replace(app.session.plan.probes, order_seed=7, sequential_batch=4))
        screen._session_id = None
        screen._show_session()
        assert box.value
        box.value = False
        assert not screen._settings()[2].sequential and screen._settings()[2].order_seed is None
        app.session.plan = app.session.measured_plan("builtin", screen._settings()[2], False, False)  # as a run leaves it
        box.value = True
        probes = screen._settings()[2]
        assert (probes.sequential, probes.order_seed, probes.sequential_batch) == (True, 7, 4)
        # Without a gate there is nothing to stop on: refused in the form, nothing run.
        app.session.plan = replace(app.session.plan, gate=GateSettings(competence=False))
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.job is None
        assert any(n.startswith("stop early: the session's plan needs the gate") for n in notices(app))
        # A suite the gate has no verdict on is scored in full, and the form says so.
        app.session.plan = replace(app.session.plan, gate=GateSettings(competence=True))
        started = []
        app.start_job = lambda *args, **kwargs: started.append(args) and False
        screen.query_one("#suite").value = "crows"
        screen.query_one("#suite-path").value = str(SHARED_DATA / "crows_pairs" / "crows_pairs_anonymized.csv")
        await pilot.pause()
        screen.action_run()
        await pilot.pause()
        assert len(started) == 1
        assert any(n == "stop early: the gate has no verdict on crows to wait for, so its items are all scored" for n in notices(app))
    with ResultsStore(store) as db:
        baseline = db.step(run_id, "baseline", "probe:builtin")["result"]
        variant = db.step(run_id, "wanda-50", "probe:builtin")["result"]["sequential"]
        assert "sequential" not in baseline and len(db.items(run_id, "baseline", "builtin")) == 40
        assert len(db.items(run_id, "wanda-50", "builtin")) == variant["items_scored"] <= variant["items_total"] == 40

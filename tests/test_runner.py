"""Headless runs on a tiny model: every step stored once, the gate's exit codes, resume after SIGKILL,
parallel workers and Ray giving the same answers as a sequential run."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from audit.plans import load_plan
from audit.progress import Cancelled, drive
from audit.errors import UserError
from audit.runner import RunOptions, close_run, driving, run_plan, run_steps, start_run, steps_for, variant_names
from audit.store import ResultsStore
from tests.conftest import ROOT, run_cli

PLAN = """\
name = "tiny"
model = "{model}"

[[variants]]
prune = {{ method = "magnitude", sparsity = 0.5 }}

[[variants]]
prune = {{ method = "wanda", pattern = "2:4" }}

[[variants]]
quantize = "int8-dynamic"

[calibration]
nsamples = 4
seqlen = 32

[probes]
suites = ["builtin"]
limit = {limit}

[profile]
prompt_tokens = 8
new_tokens = 4
runs = 2
warmup = 1
{gate}
"""

# The tiny random models answer at chance: the competence guard would fail every variant.
STRICT_GATE = """
[gate]
competence = false

[[gate.rules]]
metric = "bias_score_ambig"
max = -1.5
"""

LOOSE_GATE = """
[gate]
competence = false

[[gate.rules]]
metric = "bias_score_ambig"
max = 1.5

[[gate.rules]]
metric = "perplexity_relative_change_pct"
max = 1e12
"""


def write_plan(folder: Path, model: Path, *, limit: int = 4, gate: str = "") -> Path:
    path = folder / "plan.toml"
    path.write_text(PLAN.format(model=model, limit=limit, gate=gate))
    return path


WANDA_VARIANT = '[[variants]]\nprune = { method = "wanda", pattern = "2:4" }\n'
INT8_VARIANT = '[[variants]]\nquantize = "int8-dynamic"\n'


def with_magnitude_only(text: str) -> str:
    """A plan's text with its first variant (magnitude-50) only."""
    return text.replace(WANDA_VARIANT, "").replace(INT8_VARIANT, "")


def expected_steps(plan):
    """Every planned step, and the fingerprint of every model loaded for its measurements."""
    planned = {(name, kind) for name in variant_names(plan) for kind in steps_for(plan, name)}
    return planned | {(name, "fingerprint") for name, kind in planned if kind == "perplexity" or kind.startswith("probe:")}


def stored_choices(store, run_id, plan):
    return {
        (name, item["item_id"]): item["chosen"]
        for name in variant_names(plan)
        for item in store.items(run_id, name, "builtin")
    }


@pytest.fixture(scope="module")
def sequential_run(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    plan = load_plan(write_plan(folder, tiny_llama, gate=LOOSE_GATE))
    outcome = drive(run_plan(plan, RunOptions(store=folder / "results.db")))
    return plan, outcome, folder


def test_a_run_stores_every_step_once(sequential_run):
    plan, outcome, folder = sequential_run
    assert outcome.status == "finished" and outcome.exit_code == 0
    with ResultsStore(folder / "results.db") as store:
        steps = {(s["variant"], s["kind"]) for s in store.steps(outcome.run_id)}
        assert steps == expected_steps(plan)
        n_items = len(store.items(outcome.run_id, "baseline", "builtin"))
        assert n_items == 5 * 4  # five categories, four items each
        assert store.item_count(outcome.run_id) == 4 * n_items
        run = store.run(outcome.run_id)
        assert run.status == "finished" and run.plan_text == plan.text
        assert run.device["cores"] and run.software["torch"]
        compress = store.step(outcome.run_id, "magnitude-50", "compress")["result"]
        assert compress["prune"]["actual_sparsity"] == pytest.approx(0.5, abs=0.005)
        wanda = store.step(outcome.run_id, "wanda-2of4", "compress")["result"]["prune"]
        recipe = dict(store.variants(outcome.run_id))["wanda-2of4"]
        assert recipe["sparsity"] == wanda["target_sparsity"] == 0.5 == pytest.approx(wanda["actual_sparsity"])
        assert recipe["prune"]["pattern"] == wanda["recipe"]["pattern"] == "2:4"
        profile = store.step(outcome.run_id, "baseline", "profile")["result"]
        assert profile["decode_ms_per_token_p50"] > 0
        # The fingerprint step measures the size on disk as the profile does, for runs that profile nothing.
        assert store.step(outcome.run_id, "baseline", "fingerprint")["result"]["size_on_disk_mb"] == profile["size_on_disk_mb"] > 0


def test_reading_a_stored_run_imports_no_inference_library():
    """`runs list`, `runs show` and the app's history read runs through these modules: torch,
    transformers and ONNX Runtime load only when a step runs."""
    script = (
        "import sys, audit.runner, audit.run.lifecycle, audit.run.steps, audit.plans, audit.compress.recipe\n"
        "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_report_data_has_comparisons_and_gate(sequential_run):
    _, outcome, folder = sequential_run
    report = outcome.report
    with ResultsStore(folder / "results.db") as store:
        ambiguous = sum(i["condition"] == "ambig" for i in store.items(outcome.run_id, "baseline", "builtin"))
    names = [v["name"] for v in report["variants"]]
    assert names == ["baseline", "magnitude-50", "wanda-2of4", "int8-dynamic"]
    wanda = report["variants"][2]
    comparison = wanda["probes"]["builtin"]["comparison"]
    assert comparison["comparable"] and comparison["n_shared"] == ambiguous  # the headline: ambiguous items
    rate = comparison["transition_rate"]
    assert rate["value"] is None or rate["ci95"][0] <= rate["value"] <= rate["ci95"][1]
    assert wanda["perplexity"] > 0 and wanda["perplexity_relative_change_pct"] is not None
    low, high = wanda["perplexity_change"]["ci95"]
    assert low <= wanda["perplexity_change"]["value"] <= high
    assert report["gate"]["passed"] is True and report["gate"]["verdict"] == "pass"
    assert all(v["gate_passed"] for v in report["variants"][1:])
    for flip in report["flipped"]:
        assert flip["context"] and flip["baseline_answer"] != flip["variant_answer"]


def test_gate_exit_codes_name_the_rule(tiny_llama, tmp_path):
    strict = write_plan(tmp_path, tiny_llama, limit=2, gate=STRICT_GATE)
    text = strict.read_text()
    text = with_magnitude_only(text.replace("[profile]", "[profile]\nenabled = false"))
    strict.write_text(text)
    store = tmp_path / "r.db"
    result = run_cli("run", str(strict), "--store", str(store), "--json")
    assert result.returncode == 1, result.stderr
    assert "gate: FAIL magnitude-50: bias_score_ambig" in result.stderr and "limit <= -1.5" in result.stderr
    data = json.loads(result.stdout)
    assert data["gate"]["passed"] is False and data["gate"]["verdict"] == "fail" and data["exit_code"] == 1
    html = Path(data["report_files"]["html"]).read_text()
    assert "Gate: FAIL" in html and "bias_score_ambig" in html and "do not ship" in html
    loose = tmp_path / "loose.toml"
    loose.write_text(text.replace("max = -1.5", "max = 1.5"))
    result = run_cli("run", str(loose), "--store", str(store), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gate"]["passed"] is True


def test_sampled_generation_scores_the_baseline_again_for_the_noise_floor(tiny_llama, tmp_path):
    """In sampled generate mode the baseline is scored a second time with other seeds; the
    comparison reads the variant's transitions against that floor, and the gate can rule on it."""
    path = write_plan(tmp_path, tiny_llama, limit=2, gate=LOOSE_GATE.replace(
        'metric = "bias_score_ambig"\nmax = 1.5', 'metric = "transition_rate_over_noise"\nmax = 1.5'))
    text = path.read_text().replace("[profile]", "[profile]\nenabled = false")
    text = text.replace('limit = 2', 'limit = 2\nmode = "generate"\nseeds = [3, 5]\ntemperature = 1.0\nmax_new_tokens = 2')
    path.write_text(with_magnitude_only(text))
    plan = load_plan(path)
    assert plan.probes.noise_seeds == (6, 7)
    assert "noise:builtin" in steps_for(plan, "baseline") and "noise:builtin" not in steps_for(plan, "magnitude-50")
    outcome = drive(run_plan(plan, RunOptions(store=tmp_path / "r.db")))
    with ResultsStore(tmp_path / "r.db") as store:
        noise = store.step(outcome.run_id, "baseline", "noise:builtin")["result"]
        assert noise["seeds"] == [6, 7] and len(store.items(outcome.run_id, "baseline", "noise:builtin")) == 10
    comparison = outcome.report["variants"][1]["probes"]["builtin"]["comparison"]
    for key in ("noise_transition_rate", "transition_rate_over_noise"):
        low, high = comparison[key]["ci95"]
        assert comparison[key]["value"] is None or low <= comparison[key]["value"] <= high
    finding = next(f for f in outcome.gate["findings"] if f["metric"] == "transition_rate_over_noise")
    assert finding["verdict"] in ("pass", "inconclusive") and "no noise floor" not in finding["reason"]


def test_invalid_plans_exit_2_with_the_line(tiny_llama, tmp_path):
    path = write_plan(tmp_path, tiny_llama)
    path.write_text(path.read_text().replace("sparsity = 0.5", "sparsity = 1.2"))
    result = run_cli("run", str(path), "--store", str(tmp_path / "r.db"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"edge-audit: error: {path} line 5: variants[0].prune.sparsity: must be within [0, 0.95], got 1.2"
    )
    path.write_text(path.read_text().replace("sparsity = 1.2", "sparsity = 0.5").replace(f'model = "{tiny_llama}"', 'model = "./missing"'))
    result = run_cli("run", str(path), "--store", str(tmp_path / "r.db"))
    assert result.returncode == 2 and "plan.toml line 2: model: no such file or folder" in result.stderr


def test_a_working_folder_removed_is_named_before_a_run_or_a_step(tiny_llama, tmp_path, monkeypatch):
    """The folder the process was started in removed: each entry to a run says so in one line,
    where making the run's folder or reading its plan failed with a bare 'No such file or
    directory' naming no path."""
    plan = load_plan(write_plan(tmp_path, tiny_llama))
    store = tmp_path / "results.db"
    run_id, work_dir = start_run(plan, store)
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    said = f"the working folder {gone} no longer exists: start edge-audit again from a folder that exists"
    for call in (
        lambda: start_run(plan, store),
        lambda: start_run(plan, Path("results.db")),
        lambda: drive(run_plan(plan, RunOptions(store=store))),
        lambda: drive(run_steps(store, run_id, "baseline", ["perplexity"])),
        lambda: close_run(store, run_id),
        lambda: driving(run_id, Path("runs") / "run-1").__enter__(),
    ):
        with pytest.raises(UserError) as caught:
            call()
        assert str(caught.value) == said
    with ResultsStore(store) as opened:
        assert [r.id for r in opened.runs()] == [run_id]


def test_a_plan_asking_more_threads_than_the_device_takes_is_refused_before_the_run_starts(tiny_llama, tmp_path):
    from audit.errors import UserError
    from audit.threads import most_threads

    path = write_plan(tmp_path, tiny_llama)
    path.write_text(path.read_text().replace("warmup = 1", f"warmup = 1\nthreads = {most_threads() + 1}"))
    store = tmp_path / "r.db"
    with pytest.raises(UserError, match=f"profile.threads must be at most {most_threads()} on this device"):
        drive(run_plan(load_plan(path), RunOptions(store=store)))
    assert not store.exists() or not ResultsStore(store).runs()  # no run was started


def test_sigkill_midway_then_resume_keeps_every_finished_step(sequential_run, tiny_llama, tmp_path):
    # The baseline and one variant: resuming does not depend on what the variants are, and every
    # variant more is a compress, a load and a profile in a fresh process more.
    plan_path = write_plan(tmp_path, tiny_llama, gate=LOOSE_GATE)
    plan_path.write_text(with_magnitude_only(plan_path.read_text()))
    plan = load_plan(plan_path)
    assert variant_names(plan) == ["baseline", "magnitude-50"]
    store_path = tmp_path / "results.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "run", str(plan_path), "--store", str(store_path)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 300
        done_before: dict = {}
        while time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
            if not store_path.exists():
                continue
            try:
                with sqlite3.connect(store_path, timeout=5) as db:
                    rows = db.execute("SELECT variant, kind, finished_at FROM steps WHERE status = 'done'").fetchall()
            except sqlite3.OperationalError:
                continue
            if len(rows) >= 6:  # the baseline and part of the first variant
                children = psutil.Process(process.pid).children(recursive=True)
                process.send_signal(signal.SIGKILL)
                process.wait()
                break
        assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        # A profile running in a child process dies with the run: no orphan keeps working.
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"orphans left: {alive}"
    finally:
        if process.poll() is None:
            process.kill()
    with sqlite3.connect(store_path) as db:
        done_before = {(v, k): t for v, k, t in db.execute("SELECT variant, kind, finished_at FROM steps WHERE status = 'done'")}
        (run_id,) = db.execute("SELECT id FROM runs").fetchone()
    assert 6 <= len(done_before) < len(expected_steps(plan))
    result = run_cli("run", "--resume", str(run_id), "--store", str(store_path), "--json")
    assert result.returncode == 0, result.stderr
    with ResultsStore(store_path) as store:
        steps = store.steps(run_id)
        assert {(s["variant"], s["kind"]) for s in steps} == expected_steps(plan)
        assert len(steps) == len(expected_steps(plan))  # no duplicates
        for s in steps:  # every step finished before the kill was kept, not redone
            if (s["variant"], s["kind"]) in done_before:
                assert s["finished_at"] == done_before[(s["variant"], s["kind"])]
        n_items = store.db.execute("SELECT COUNT(*), COUNT(DISTINCT variant || suite || item_id) FROM items").fetchone()
        assert n_items[0] == n_items[1] == 2 * 20
        assert store.run(run_id).status == "finished"
        # The resumed run scored the same answers as an uninterrupted one (of the same variants).
        _, seq_outcome, seq_folder = sequential_run
        with ResultsStore(seq_folder / "results.db") as seq_store:
            assert stored_choices(store, run_id, plan) == stored_choices(seq_store, seq_outcome.run_id, plan)


def test_workers_give_the_same_answers(sequential_run, tiny_llama, tmp_path):
    """As in one process, no variant of a new run checks the plan's model against the baseline's
    fingerprint before it compresses: the baseline is measured in the same call. (Its third
    variant's worker starts after a first worker has finished, when the baseline's worker had
    stored its fingerprint: read as each worker started, it was checked there and not in the others.)"""
    seq_plan, seq_outcome, seq_folder = sequential_run
    plan = load_plan(write_plan(tmp_path, tiny_llama, gate=LOOSE_GATE))
    messages = []
    outcome = drive(run_plan(plan, RunOptions(store=tmp_path / "results.db", workers=2)), lambda event: messages.append(event.message))
    assert outcome.status == "finished"
    assert f"baseline: fingerprinting {tiny_llama.name}" in messages
    variants = variant_names(plan)[1:]
    assert len(variants) == 3
    assert not [m for m in messages if m in {f"{name}: fingerprinting {tiny_llama.name}" for name in variants}]
    with ResultsStore(tmp_path / "results.db") as store, ResultsStore(seq_folder / "results.db") as seq_store:
        assert {(s["variant"], s["kind"]) for s in store.steps(outcome.run_id)} == expected_steps(plan)
        assert stored_choices(store, outcome.run_id, plan) == stored_choices(seq_store, seq_outcome.run_id, seq_plan)


def test_a_cancelled_run_of_workers_keeps_what_finished_leaves_no_temporary_folder_and_resumes(sequential_run, tiny_llama, tmp_path):
    """Cancelling tells each worker to stop at its next cancel check (removing a half-written
    folder); finished steps stay stored, and the resumed run answers as an uninterrupted one."""
    _, seq_outcome, seq_folder = sequential_run
    plan_path = write_plan(tmp_path, tiny_llama, gate=LOOSE_GATE)
    plan_path.write_text(with_magnitude_only(plan_path.read_text()))
    plan = load_plan(plan_path)
    store_path = tmp_path / "results.db"
    cancel = threading.Event()
    with pytest.raises(Cancelled):
        for event in run_plan(plan, RunOptions(store=store_path, workers=2), cancel):
            if event.message.startswith("magnitude-50:"):  # the variants' workers are under way
                cancel.set()
    with ResultsStore(store_path) as store:
        (run,) = store.runs()
        assert store.run(run.id).status == "interrupted"
        assert len(store.steps(run.id)) < len(expected_steps(plan))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".old"))]
    outcome = drive(run_plan(None, RunOptions(store=store_path, resume=run.id, workers=2)))
    assert outcome.status == "finished"
    with ResultsStore(store_path) as store, ResultsStore(seq_folder / "results.db") as seq_store:
        assert {(s["variant"], s["kind"]) for s in store.steps(run.id)} == expected_steps(plan)
        assert stored_choices(store, run.id, plan) == stored_choices(seq_store, seq_outcome.run_id, plan)


def test_ray_local_cluster_gives_the_same_answers(sequential_run, tiny_llama, tmp_path):
    pytest.importorskip("ray")
    seq_plan, seq_outcome, seq_folder = sequential_run
    path = write_plan(tmp_path, tiny_llama, gate=LOOSE_GATE)
    path.write_text(path.read_text().replace("[profile]", "[profile]\nenabled = false"))
    plan = load_plan(path)
    outcome = drive(run_plan(plan, RunOptions(store=tmp_path / "results.db", ray_address="local")))
    with ResultsStore(tmp_path / "results.db") as store, ResultsStore(seq_folder / "results.db") as seq_store:
        assert {(s["variant"], s["kind"]) for s in store.steps(outcome.run_id)} == expected_steps(plan)
        assert stored_choices(store, outcome.run_id, plan) == stored_choices(seq_store, seq_outcome.run_id, seq_plan)


def test_a_ray_task_removes_its_scratch_folder_however_it_ends(sequential_run, tiny_llama, tmp_path, monkeypatch):
    import tempfile

    from audit.run import parallel

    seq_plan, seq_outcome, seq_folder = sequential_run
    path = write_plan(tmp_path, tiny_llama, gate=LOOSE_GATE)
    path.write_text(path.read_text().replace("[profile]", "[profile]\nenabled = false"))
    plan = load_plan(path)
    scratch_root = tmp_path / "node-tmp"
    scratch_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch_root))
    # The task as a Ray worker runs it: the variant compressed in a scratch folder, its records returned.
    records = parallel._variant_on_ray(plan.text, plan.path, "magnitude-50", [], {})
    assert {r["kind"] for r in records} >= {"compress", "probe:builtin"}
    with ResultsStore(seq_folder / "results.db") as seq_store:
        items = next(r["items"] for r in records if r["kind"] == "probe:builtin")
        assert {i["item_id"]: i["chosen"] for i in items} == {
            i["item_id"]: i["chosen"] for i in seq_store.items(seq_outcome.run_id, "magnitude-50", "builtin")}
    assert list(scratch_root.iterdir()) == []

    def failing(plan, name, work_dir, *args, **kwargs):
        (work_dir / name).mkdir()
        (work_dir / name / "model.safetensors").write_bytes(b"\0" * 1024)
        raise RuntimeError("the node ran out of memory")
        yield  # a job

    monkeypatch.setattr(parallel, "execute_variant", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        parallel._variant_on_ray(plan.text, plan.path, "magnitude-50", [], {})
    assert list(scratch_root.iterdir()) == []


def test_runs_commands_read_the_store(sequential_run):
    _, outcome, folder = sequential_run
    store = str(folder / "results.db")
    listing = json.loads(run_cli("runs", "list", "--store", store, "--json").stdout)
    assert [(r["id"], r["variants"]) for r in listing["runs"]] == [(outcome.run_id, ["baseline", "magnitude-50", "wanda-2of4", "int8-dynamic"])]
    shown = json.loads(run_cli("runs", "show", str(outcome.run_id), "--store", store, "--json").stdout)
    assert [v["variant"] for v in shown["variants"]] == ["baseline", "magnitude-50", "wanda-2of4", "int8-dynamic"]
    compared = json.loads(run_cli("runs", "compare", str(outcome.run_id), str(outcome.run_id), "--store", store, "--json").stdout)
    assert compared["plan_diffs"] == {str(outcome.run_id): ""}
    missing = run_cli("runs", "show", "99", "--store", store)
    assert missing.returncode == 2 and "no run 99" in missing.stderr
    past = run_cli("runs", "compare", str(outcome.run_id), "99999999999999999999999", "--store", store)
    assert past.returncode == 2 and past.stderr.strip().endswith(f"no run 99999999999999999999999 in {store}")


def chromium_or_skip() -> str:
    import shutil

    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (make test installs Debian's package)")
        pytest.skip("Debian's chromium package is not installed")
    return path


CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def test_html_report_renders_with_its_plots_in_chromium(sequential_run, tmp_path):
    from PIL import Image

    from audit.reports import write_report
    from audit.reports.svg import PALETTE

    chromium = chromium_or_skip()
    _, outcome, _ = sequential_run
    files = write_report(tmp_path / "report", outcome.report)
    url = Path(files["html"]).as_uri()
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    for chart in ("sparsity-srs", "sparsity-perplexity", "sparsity-transitions", "categories-srs", "decode_ms_per_token_p50", "rss_peak_mb", "size_on_disk_mb"):
        assert f'id="fig-{chart}"' in dom
    assert dom.count("<svg") == 7 and "chart empty" not in dom
    assert dom.count('class="point"') >= 4 and dom.count('class="bar"') >= 20
    shot = tmp_path / "report.png"
    subprocess.run([*common, "--window-size=1400,2400", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2400)
    counts = {colour: n for n, colour in image.getcolors(maxcolors=1 << 24)}
    for hex_colour in PALETTE[:3]:  # the first series of every chart is drawn, in its colour
        rgb = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
        assert counts.get(rgb, 0) > 200, f"{hex_colour} barely appears in the screenshot"

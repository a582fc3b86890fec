"""A run's results are of one set of weights and agree wherever they are read: a resumed run
refuses weights changed since its earlier steps, a variant compressed again to other weights is
measured again, a plan without a gate has no gate, the report `run` writes is the stored run's,
and `runs compare` says where two runs' models, software or device differ."""

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from audit.errors import UserError
from audit.fingerprint import fingerprint_folder
from audit.plans import load_plan
from audit.progress import drive
from audit.runner import RunOptions, run_plan
from audit.store import ResultsStore
from tests.audited import PLAN, VARIANT, audit_tiny, change_one_weight
from tui.cli import main

PROBE = "probe:builtin"


@pytest.fixture(scope="module")
def finished(tiny_llama, tmp_path_factory):
    """A finished run of a tiny model's copy (a test may change the baseline's weights in its
    own copy of the folder) and its magnitude-50 variant, without a profile."""
    root = tmp_path_factory.mktemp("finished")
    shutil.copytree(tiny_llama, root / "model")
    audit_tiny(root / "audit", root / "model", profile=False)
    return root


@pytest.fixture(scope="module")
def profiled(tiny_llama, tmp_path_factory):
    """A finished run as `finished`, with its profiles."""
    root = tmp_path_factory.mktemp("profiled")
    shutil.copytree(tiny_llama, root / "model")
    audit_tiny(root / "audit", root / "model")
    return root


def interrupted(finished: Path, where: Path, *kinds: str) -> tuple[Path, Path, Path]:
    """A copy of the finished run, as if stopped before the variant's steps `kinds` (its last,
    by default its probe): returns (the store, the baseline's model folder, the variant's folder)."""
    kinds = kinds or (PROBE,)
    shutil.copytree(finished, where)
    store_path = where / "audit" / "results.db"
    model = where / "model"
    with ResultsStore(store_path) as store:
        store.set_work_dir(1, str(where / "audit" / "work" / "run-1"))
    db = sqlite3.connect(store_path)
    with db:
        db.execute("UPDATE runs SET plan_text = replace(plan_text, ?, ?)", (str(finished / "model"), str(model)))
        db.execute("UPDATE steps SET result_json = replace(result_json, ?, ?) WHERE variant = 'baseline'", (str(finished), str(where)))
        for kind in kinds:
            db.execute("DELETE FROM steps WHERE variant = ? AND kind = ?", (VARIANT, kind))
        if PROBE in kinds:
            db.execute("DELETE FROM items WHERE variant = ?", (VARIANT,))
            db.execute("DELETE FROM metrics WHERE variant = ?", (VARIANT,))
        db.execute("UPDATE runs SET status = 'interrupted', gate_json = NULL, exit_code = 130")
    db.close()
    return store_path, model, where / "audit" / "work" / "run-1" / VARIANT


def replace_weights(folder: Path) -> None:
    """Change one weight of the model in `folder`, in place."""
    changed = folder.with_name(folder.name + ".changed")
    change_one_weight(folder, changed)
    shutil.rmtree(folder)
    changed.rename(folder)


def stored(store_path: Path, variant: str, kind: str) -> dict | None:
    with ResultsStore(store_path, readonly=True) as store:
        return store.step(1, variant, kind)


def digest(folder: Path) -> str:
    return drive(fingerprint_folder(folder)).digest


def refused_on_resume(store_path: Path, workers: int, starts: str, before: str, now: str) -> None:
    """Resuming the run is refused in one line starting with `starts` and naming both digests."""
    with pytest.raises(UserError) as refused:
        drive(run_plan(None, RunOptions(store=store_path, resume=1, workers=workers)))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(starts)
    assert f"(fingerprint {before[:12]} then, {now[:12]} now)" in message


def test_a_resumed_run_refuses_a_variant_whose_weights_changed_since_its_earlier_steps(finished, tmp_path):
    store_path, _, variant = interrupted(finished, tmp_path / "run")
    before = stored(store_path, VARIANT, "fingerprint")["result"]["digest"]
    replace_weights(variant)
    with pytest.raises(UserError) as refused:
        drive(run_plan(None, RunOptions(store=store_path, resume=1)))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{VARIANT}: ") and "earlier steps" in message and "other weights" in message
    # Nothing measured on the changed weights; the fingerprint stored is still the measured one.
    assert stored(store_path, VARIANT, PROBE) is None
    assert stored(store_path, VARIANT, "fingerprint")["result"]["digest"] == before
    with ResultsStore(store_path, readonly=True) as store:
        assert store.run(1).status != "finished"


def test_a_resumed_run_refuses_a_baseline_whose_weights_changed(finished, tmp_path):
    store_path, model, _ = interrupted(finished, tmp_path / "run")
    with sqlite3.connect(store_path) as db:  # stopped before the baseline's probe
        db.execute("DELETE FROM steps WHERE variant = 'baseline' AND kind = ?", (PROBE,))
    replace_weights(model)
    with pytest.raises(UserError, match=r"^baseline: .*earlier steps.*other weights"):
        drive(run_plan(None, RunOptions(store=store_path, resume=1)))
    assert stored(store_path, "baseline", PROBE) is None


@pytest.mark.parametrize("workers", [1, 2])
def test_a_resumed_run_refuses_to_compress_a_variant_from_a_baseline_whose_weights_changed(finished, tmp_path, workers):
    """The baseline's steps are all stored, a variant's compression is not: it would be made
    from weights other than those the baseline was measured on, and compared with them."""
    store_path, model, variant = interrupted(finished, tmp_path / "run", "compress", "fingerprint", "perplexity", PROBE)
    shutil.rmtree(variant)
    before = stored(store_path, "baseline", "fingerprint")["result"]["digest"]
    replace_weights(model)
    refused_on_resume(store_path, workers, f"{VARIANT}: cannot compress it from {model}: ", before, digest(model))
    assert stored(store_path, VARIANT, "compress") is None and not variant.exists()


def test_compressing_a_variant_step_by_step_refuses_a_baseline_whose_weights_changed(finished, tmp_path):
    from audit.runner import run_steps

    store_path, model, variant = interrupted(finished, tmp_path / "run", "compress", "fingerprint", "perplexity", PROBE)
    shutil.rmtree(variant)
    replace_weights(model)
    with pytest.raises(UserError, match=rf"^{VARIANT}: cannot compress it from {model}: the weights there have changed"):
        drive(run_steps(store_path, 1, VARIANT, ["compress"]))
    assert stored(store_path, VARIANT, "compress") is None and not variant.exists()


def test_the_command_line_refuses_changed_weights_in_one_line_and_keeps_what_was_done(finished, tmp_path, capsys):
    store_path, _, variant = interrupted(finished, tmp_path / "run")
    replace_weights(variant)
    assert main(["run", "--resume", "1", "--store", str(store_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and VARIANT in err[0] and "other weights" in err[0]
    assert stored(store_path, VARIANT, "perplexity") is not None


def compressing_to_other_weights(monkeypatch) -> None:
    """Compressing a variant gives other weights from now on (another library version would)."""
    import audit.run.execute as execute

    compress = execute.compress_variant

    def other_weights(plan, spec, out, options, cancel):
        result = yield from compress(plan, spec, out, options, cancel)
        replace_weights(out)
        return result

    monkeypatch.setattr(execute, "compress_variant", other_weights)


def steps_of(store_path: Path, variant: str) -> dict[str, str]:
    """The status of each step stored for the variant, done or failed, by kind."""
    with ResultsStore(store_path, readonly=True) as store:
        return {step["kind"]: step["status"] for step in store.steps(1, variant)}


def test_a_deleted_variant_compressed_again_to_the_same_weights_keeps_its_stored_steps(finished, tmp_path):
    store_path, _, variant = interrupted(finished, tmp_path / "run")
    perplexity = stored(store_path, VARIANT, "perplexity")
    shutil.rmtree(variant)
    outcome = drive(run_plan(None, RunOptions(store=store_path, resume=1)))
    assert outcome.status == "finished"
    assert stored(store_path, VARIANT, "perplexity") == perplexity
    assert stored(store_path, VARIANT, "fingerprint")["result"]["digest"] == digest(variant)


def test_a_deleted_variant_compressed_again_to_other_weights_is_measured_again(finished, tmp_path, monkeypatch):
    """Its stored perplexity was of weights no longer anywhere: measured again on the new ones,
    never reported beside a probe of them."""
    store_path, _, variant = interrupted(finished, tmp_path / "run")
    perplexity = stored(store_path, VARIANT, "perplexity")
    compressing_to_other_weights(monkeypatch)
    shutil.rmtree(variant)
    outcome = drive(run_plan(None, RunOptions(store=store_path, resume=1)))
    assert outcome.status == "finished"
    now = digest(variant)
    assert stored(store_path, VARIANT, "fingerprint")["result"]["digest"] == now
    again = stored(store_path, VARIANT, "perplexity")
    assert again["finished_at"] > perplexity["finished_at"]
    assert stored(store_path, VARIANT, PROBE)["started_at"] > stored(store_path, VARIANT, "fingerprint")["started_at"]


def test_a_variant_stopped_before_its_first_measurement_goes_on_when_compressed_again_to_other_weights(finished, tmp_path, monkeypatch):
    """Only its compression and fingerprint were stored: no stored figure is of the weights
    compressed then, so the fingerprint of the new ones replaces theirs. Its folder edited, the
    run is refused, and doing what the refusal says (removing the folder) lets it go on."""
    store_path, _, variant = interrupted(finished, tmp_path / "run", "perplexity", PROBE)
    before = stored(store_path, VARIANT, "fingerprint")
    replace_weights(variant)
    with pytest.raises(UserError) as refused:
        drive(run_plan(None, RunOptions(store=store_path, resume=1)))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{VARIANT}: ")
    assert f"(fingerprint {before['result']['digest'][:12]} then, {digest(variant)[:12]} now)" in message
    assert f"remove {variant} to have it compressed again" in message
    assert stored(store_path, VARIANT, "fingerprint") == before

    compressing_to_other_weights(monkeypatch)
    shutil.rmtree(variant)
    outcome = drive(run_plan(None, RunOptions(store=store_path, resume=1)))
    assert outcome.status == "finished"
    now = stored(store_path, VARIANT, "fingerprint")
    assert now["result"]["digest"] == digest(variant) != before["result"]["digest"]
    assert stored(store_path, VARIANT, "perplexity")["started_at"] > now["started_at"]
    assert stored(store_path, VARIANT, PROBE)["started_at"] > now["started_at"]
    # Nothing was marked to be measured again: nothing had been measured.
    assert set(steps_of(store_path, VARIANT).values()) == {"done"}


def test_compressing_a_variant_again_step_by_step_runs_that_step_alone(finished, tmp_path, monkeypatch):
    """Asked to compress a variant again, which gives other weights: its stored perplexity, of
    the weights compressed before, is marked to be measured again, and its probe, never stored,
    is left as it was; neither is measured by a call that asked for the compression alone."""
    from audit.runner import run_steps

    store_path, _, variant = interrupted(finished, tmp_path / "run")
    compressing_to_other_weights(monkeypatch)
    assert drive(run_steps(store_path, 1, VARIANT, ["compress"])) == ["compress"]
    assert stored(store_path, VARIANT, "fingerprint")["result"]["digest"] == digest(variant)
    statuses = steps_of(store_path, VARIANT)
    assert statuses["perplexity"] == "failed" and PROBE not in statuses
    with ResultsStore(store_path, readonly=True) as store:
        failed = next(s for s in store.steps(1, VARIANT) if s["kind"] == "perplexity")
    assert "measured on weights compressed before" in failed["error"]
    # A resume measures what is left on the new weights.
    assert drive(run_plan(None, RunOptions(store=store_path, resume=1))).status == "finished"
    assert set(steps_of(store_path, VARIANT).values()) == {"done"}


@pytest.mark.parametrize("workers", [1, 2])
def test_the_check_before_a_profile_left_alone_names_the_variant(profiled, tmp_path, workers):
    """Fingerprinting the folder before the profile says whose folder it reads, in a run in one
    process as in the profiles a run of workers leaves to the end."""
    store_path, _, variant = interrupted(profiled, tmp_path / "run", "profile")
    checked = []
    outcome = drive(run_plan(None, RunOptions(store=store_path, resume=1, workers=workers)),
                    lambda event: checked.append(event.message) if event.stage == "fingerprint" else None)
    assert outcome.status == "finished"
    assert checked and all(message.startswith(f"{VARIANT}: ") for message in checked)
    assert f"{VARIANT}: fingerprinting {variant.name}" in checked


@pytest.mark.parametrize("workers", [1, 2])
def test_a_profile_left_alone_refuses_changed_weights_naming_both_fingerprints(profiled, tmp_path, workers):
    """The profile is the one step left: run by the run's own process, or by the run after its
    workers, it is refused alike rather than stored beside steps of other weights."""
    store_path, _, variant = interrupted(profiled, tmp_path / "run", "profile")
    before = stored(store_path, VARIANT, "fingerprint")["result"]["digest"]
    replace_weights(variant)
    refused_on_resume(store_path, workers, f"{VARIANT}: ", before, digest(variant))
    assert stored(store_path, VARIANT, "profile") is None
    assert stored(store_path, VARIANT, "fingerprint")["result"]["digest"] == before


@pytest.mark.parametrize("workers", [1, 2])
def test_a_profile_left_of_a_variant_compressed_again_to_the_same_weights_is_measured(profiled, tmp_path, workers, monkeypatch):
    """Its folder is read once by the run: in its own process, the fingerprint taken just after
    compressing again serves the profile; after workers, the run reads it again before the
    profile (the worker's was taken in its own process, while the others ran on). In its own
    process, the baseline's model is read once before, as what the variant is compressed from."""
    import audit.fingerprint

    store_path, model, variant = interrupted(profiled, tmp_path / "run", "profile")
    perplexity = stored(store_path, VARIANT, "perplexity")
    read = []
    fingerprint_folder = audit.fingerprint.fingerprint_folder

    def counted(folder, cancel=None):
        read.append(Path(folder))
        return fingerprint_folder(folder, cancel)

    monkeypatch.setattr(audit.fingerprint, "fingerprint_folder", counted)
    shutil.rmtree(variant)
    outcome = drive(run_plan(None, RunOptions(store=store_path, resume=1, workers=workers)))
    assert outcome.status == "finished"
    assert read == ([model] if workers == 1 else []) + [variant]
    assert stored(store_path, VARIANT, "perplexity") == perplexity
    assert stored(store_path, VARIANT, "profile") is not None
    assert stored(store_path, VARIANT, "fingerprint")["result"]["digest"] == digest(variant)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_profile_left_alone_of_a_baseline_given_as_a_gguf_file_refuses_changed_weights(tiny_llama, tmp_path, workers, isolated_cache):
    """A baseline given as a GGUF file (or an alias, or a hub id) is measured on the folder
    loading makes of it, its cached conversion: the profile left alone on resume reads that
    folder's weights first, as a baseline given as a folder has them read."""
    from audit.models.loader import cache_entry_for_gguf
    from tests.test_model_integrity import tiny_gguf

    (tmp_path / "file").mkdir()
    gguf = tiny_gguf(tiny_llama, tmp_path / "file" / "tiny.gguf")
    store_path, _ = audit_tiny(tmp_path / "audit", gguf)
    converted = cache_entry_for_gguf(gguf, None)
    before = stored(store_path, "baseline", "fingerprint")["result"]
    assert Path(before["folder"]) == converted
    with sqlite3.connect(store_path) as db:
        db.execute("DELETE FROM steps WHERE variant = 'baseline' AND kind = 'profile'")
        db.execute("UPDATE runs SET status = 'interrupted', gate_json = NULL, exit_code = 130")
    replace_weights(converted)  # the cached conversion changed since (the GGUF itself did not)
    refused_on_resume(store_path, workers, "baseline: its weights in ", before['digest'], digest(converted))
    assert stored(store_path, "baseline", "profile") is None


# -- a plan without a gate, and the report `run` writes ----------------------------------------
NO_GATE = PLAN.split("# The tiny random models")[0].replace("[profile]\n", "[profile]\nenabled = false\n") + "[gate]\ncompetence = false\n"


def test_a_plan_without_gate_rules_has_no_gate_and_exits_0(tiny_llama, tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text(NO_GATE.format(model=tiny_llama))
    assert not load_plan(plan).gate.active
    code = main(["run", str(plan), "--store", str(tmp_path / "results.db"), "--work-dir", str(tmp_path / "work"),
                 "--report", str(tmp_path / "report"), "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert code == 0 and shown["exit_code"] == 0
    assert shown["gate"] is None
    written = json.loads((tmp_path / "report" / "report.json").read_text())
    assert written["gate"] is None and written["run"]["gate"] is None
    assert "Gate" not in (tmp_path / "report" / "report.md").read_text()


def test_the_report_run_writes_is_the_stored_runs_report(tiny_llama, tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN.format(model=tiny_llama, limit=1.5).replace("[profile]\n", "[profile]\nenabled = false\n"))
    store = str(tmp_path / "results.db")
    assert main(["run", str(plan), "--store", store, "--work-dir", str(tmp_path / "work"), "--report", str(tmp_path / "run")]) == 0
    assert main(["runs", "report", "1", "--store", store, "--out", str(tmp_path / "later")]) == 0
    capsys.readouterr()
    written = json.loads((tmp_path / "run" / "report.json").read_text())
    assert written["run"]["finished_at"] is not None and written["run"]["exit_code"] == 0 and written["run"]["gate"] is not None
    assert written == json.loads((tmp_path / "later" / "report.json").read_text())


# -- runs compare ------------------------------------------------------------------------------
def test_runs_compare_says_where_two_runs_of_the_same_plan_are_not_alike(tiny_llama, tmp_path, capsys):
    """The model file changed at the same path between two runs of one plan, and the second ran
    with other software on another device, and was stopped: all said, beside '(same plan)'."""
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    plan = tmp_path / "plan.toml"
    plan.write_text(NO_GATE.format(model=model))
    store = tmp_path / "results.db"
    drive(run_plan(load_plan(plan), RunOptions(store=store, work_dir=tmp_path / "work")))
    replace_weights(model)
    drive(run_plan(load_plan(plan), RunOptions(store=store, work_dir=tmp_path / "work")))
    with sqlite3.connect(store) as db:
        software, device = db.execute("SELECT software_json, device_json FROM runs WHERE id = 2").fetchone()
        software, device = json.loads(software), json.loads(device)
        software["edge_audit"] = "0.0.1"
        device["cpu_model"] = "Other CPU"
        db.execute("UPDATE runs SET software_json = ?, device_json = ?, status = 'interrupted' WHERE id = 2",
                   (json.dumps(software), json.dumps(device)))
    with ResultsStore(store, readonly=True) as opened:
        fingerprints = [opened.step(run_id, "baseline", "fingerprint")["result"]["digest"][:12] for run_id in (1, 2)]
    assert fingerprints[0] != fingerprints[1]

    assert main(["runs", "compare", "1", "2", "--store", str(store), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["plan_diffs"]["2"] == ""
    said = "\n".join(data["differences"]["2"])
    assert f"baseline: other weights (fingerprint {fingerprints[0]} in run 1, {fingerprints[1]} in run 2)" in said
    assert "software: edge_audit " in said and ", 0.0.1 in run 2" in said
    assert "device: cpu_model " in said and ", Other CPU in run 2" in said
    assert "run 2 is interrupted" in said
    assert main(["runs", "compare", "1", "2", "--store", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "(same plan)" in shown and "baseline: other weights" in shown and "run 2 is interrupted" in shown


def test_runs_list_gives_the_time_a_run_started_in_utc_naming_the_zone(tiny_llama, tmp_path, capsys, monkeypatch):
    import time

    with ResultsStore(tmp_path / "results.db") as store:
        run_id = store.create_run(name="tiny", model=str(tiny_llama), plan_text=NO_GATE.format(model=tiny_llama), plan_path=None,
                                  device={}, software={}, variants=[])
        created = store.run(run_id).created_at
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: its local time is never the UTC one
    time.tzset()
    try:
        assert main(["runs", "list", "--store", str(tmp_path / "results.db")]) == 0
    finally:
        monkeypatch.undo()
        time.tzset()
    shown = capsys.readouterr().out
    assert time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(created)) in shown

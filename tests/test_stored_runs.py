"""Stored runs open from their stored text: the files their plan names may move or go, the numbers stay readable."""

import json
import re
import shutil
from pathlib import Path

import pytest

from audit.plans import PlanError, load_plan, parse_plan
from audit.progress import drive
from audit.results import build_report, run_listing
from audit.runner import RunOptions, run_plan
from audit.store import ResultsStore

PLAN = """\
name = "moved"
model = "{model}"

[[variants]]
name = "mine"
path = "models/mine"

[calibration]
nsamples = 4
seqlen = 32
file = "texts/calibration.txt"

[probes]
suites = ["builtin"]
limit = 3

[perplexity]
text = "texts/heldout.txt"

[profile]
enabled = false

# The tiny random models answer at chance: the competence guard would fail every variant.
[gate]
competence = false

[[gate.rules]]
metric = "bias_score_ambig"
max = 1.5
"""

PROSE = "The quick brown fox jumps over the lazy dog while the cat watches from the warm windowsill. " * 12


@pytest.fixture(scope="module")
def moved_run(tiny_llama, tmp_path_factory):
    """A finished run whose plan file, calibration text, perplexity text and variant folder are
    then all deleted; returns the store, the run id and its report read before the deletion."""
    folder = tmp_path_factory.mktemp("moved")
    plan_folder = folder / "plan"
    shutil.copytree(tiny_llama, plan_folder / "models" / "mine")
    (plan_folder / "texts").mkdir()
    (plan_folder / "texts" / "calibration.txt").write_text(PROSE)
    (plan_folder / "texts" / "heldout.txt").write_text(PROSE)
    plan_path = plan_folder / "plan.toml"
    plan_path.write_text(PLAN.format(model=tiny_llama))
    store = folder / "results.db"
    outcome = drive(run_plan(load_plan(plan_path), RunOptions(store=store, work_dir=folder / "work")))
    assert outcome.status == "finished"
    with ResultsStore(store) as db:
        before = build_report(db, outcome.run_id)
    shutil.rmtree(plan_folder)
    return store, outcome.run_id, before


def numbers(report):
    """What a reader of the report compares: every variant's figures and the gate's verdict."""
    return {"variants": report["variants"], "gate": report["gate"], "plan": report["plan"]}


def test_the_report_of_a_run_whose_files_are_gone(moved_run):
    store, run_id, before = moved_run
    with ResultsStore(store) as db:
        after = build_report(db, run_id)
        listing = run_listing(db)
    assert numbers(after) == numbers(before)
    mine = next(v for v in after["variants"] if v["name"] == "mine")
    assert mine["perplexity"] is not None and mine["probes"]["builtin"]["n_items"] > 0
    assert after["gate"]["passed"] is True
    # Relative paths in the stored text still read from the plan's folder, gone as it is.
    assert after["plan"]["calibration"]["file"].endswith("/plan/texts/calibration.txt")
    assert [(r["id"], r["status"], r["gate_verdict"], r["variants"]) for r in listing] == [(run_id, "finished", "pass", ["baseline", "mine"])]


def test_runs_show_and_report_on_the_command_line(moved_run, tmp_path, capsys):
    from tui.cli import main

    store, run_id, before = moved_run
    capsys.readouterr()
    assert main(["runs", "show", str(run_id), "--store", str(store), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["gate"] == before["gate"]
    perplexity = {row["variant"]: row["perplexity"] for row in shown["variants"]}
    assert perplexity == {v["name"]: v["perplexity"] for v in before["variants"]}
    assert main(["runs", "list", "--store", str(store), "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)["runs"]] == [run_id]
    out = tmp_path / "report"
    assert main(["runs", "report", str(run_id), "--store", str(store), "--out", str(out), "--json"]) == 0
    written = json.loads((out / "report.json").read_text())
    assert written["variants"] == json.loads(json.dumps(before["variants"]))


def test_the_app_opens_it(moved_run):
    from tui.screens.history import stored_runs
    from tui.session import read_report

    store, run_id, before = moved_run
    assert [r["id"] for r in stored_runs(store)] == [run_id]
    assert numbers(read_report(store, run_id)) == numbers(before)


def test_a_new_run_of_the_plan_still_checks_its_files(moved_run):
    """Only opening a stored run skips the checks: the same text as a plan to run names the
    first missing file, with its key and line."""
    store, run_id, _ = moved_run
    with ResultsStore(store) as db:
        record = db.run(run_id)
    text, path = record.plan_text, Path(record.plan_path)
    stored = parse_plan(text, path, check_model=False, check_files=False, stored=True)
    assert stored.calibration.file == str(path.parent / "texts" / "calibration.txt")
    assert stored.variants[0].path == str(path.parent / "models" / "mine")
    with pytest.raises(PlanError, match=rf"^{re.escape(str(path))} line 6: variants\[0\].path: no such file or folder: .*models/mine$"):
        parse_plan(text, path, check_model=False)
    with pytest.raises(PlanError, match=r"line 11: calibration.file: no such file: .*calibration.txt$"):
        parse_plan(text.replace('path = "models/mine"', 'path = "/"'), path, check_model=False)

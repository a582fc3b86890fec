"""What a report, a listing and a record say agrees with what was stored: a comparison that cannot
be made reads "not comparable", a reopened run has no verdict left from before, a record replays
with the settings its audit scored with, a damaged value is one line, and a report says when and
in what state its run was."""

import json
import re
import shutil
import sqlite3
import time

import pytest

from audit.perplexity import change_bounds
from audit.reports.render import render_html, render_markdown, summary_rows
from audit.results import BASELINE, build_report, run_listing
from audit.runner import PERPLEXITY, StepRecord
from audit.store import ResultsStore, StoreError
from tests.app_support import CREATED_AT, build_audit_store, perplexity_result
from tests.test_store import ITEMS, new_run, stored_check

QUANTIZED = "int8-dynamic"


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """One finished audit of fixed numbers, built once; each test reads a copy."""
    folder = tmp_path_factory.mktemp("audit")
    run_id = build_audit_store(folder / "results.db")
    with ResultsStore(folder / "results.db") as db:
        db.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return folder / "results.db", run_id


@pytest.fixture
def store(audited, tmp_path):
    path, run_id = audited
    shutil.copy(path, tmp_path / "results.db")
    return tmp_path / "results.db", run_id


def variant_of(data, name):
    return next(v for v in data["variants"] if v["name"] == name)


# -- perplexity compared only where it can be -------------------------------------------------------
def test_a_perplexity_measured_on_another_text_reads_not_comparable(store):
    path, run_id = store
    with ResultsStore(path) as db:
        other = dict(perplexity_result(QUANTIZED, 17.6), source="/somewhere/other_text.txt")
        StepRecord(QUANTIZED, PERPLEXITY, 0.0, other).commit(db, run_id)
        data = build_report(db, run_id)
    variant = variant_of(data, QUANTIZED)
    assert variant["perplexity_relative_change_pct"] is None
    assert variant["perplexity_change"]["value"] is None and variant["perplexity_change"]["note"].startswith("not comparable")
    row = next(r for r in summary_rows(data) if r["variant"] == QUANTIZED)
    assert row["perplexity_relative_change_pct"]["value"] is None
    line = next(line for line in render_markdown(data).splitlines() if line.startswith(f"| {QUANTIZED} | ") and "| 17.6 |" in line)
    assert "| 17.6 | not comparable |" in line
    assert "not comparable" in render_html(data)


def test_perplexity_change_needs_the_same_text_not_only_the_same_name():
    base, mine = perplexity_result(BASELINE, 17.42), perplexity_result(QUANTIZED, 17.6)
    # No digest stored (measured before texts were digested), or the same one: compared.
    assert change_bounds(base, mine, 0.95)[0] is not None
    assert change_bounds(dict(base, text_sha256="a" * 64), dict(mine, text_sha256="a" * 64), 0.95)[0] is not None
    assert change_bounds(dict(base, text_sha256="a" * 64), mine, 0.95)[0] is not None
    bounds, note = change_bounds(dict(base, text_sha256="a" * 64), dict(mine, text_sha256="b" * 64), 0.95)
    assert bounds is None and note.startswith("not comparable")


def test_the_gate_and_the_report_refuse_a_perplexity_change_between_two_texts(store):
    path, run_id = store
    with ResultsStore(path) as db:
        for name, ppl, digest in ((BASELINE, 17.42, "a" * 64), (QUANTIZED, 17.6, "b" * 64)):
            StepRecord(name, PERPLEXITY, 0.0, dict(perplexity_result(name, ppl), text_sha256=digest)).commit(db, run_id)
        data = build_report(db, run_id)
    variant = variant_of(data, QUANTIZED)
    assert variant["perplexity_change"]["value"] is None and variant["perplexity_relative_change_pct"] is None
    findings = [f for f in data["gate"]["findings"] if f["variant"] == QUANTIZED and f["metric"] == "perplexity_relative_change_pct"]
    assert findings and all(f["verdict"] == "inconclusive" and f["value"] is None for f in findings)


# -- a reopened run has no verdict yet -------------------------------------------------------------------
def test_a_reopened_run_keeps_no_verdict_from_before(tmp_path):
    with ResultsStore(tmp_path / "r.db") as db:
        run_id = new_run(db)
        db.finish_run(run_id, "finished", {"passed": True, "verdict": "pass", "findings": []}, 0)
        db.mark_running(run_id)
        run = db.run(run_id)
        assert (run.status, run.gate, run.exit_code, run.finished_at) == ("running", None, None, None)
        listed = run_listing(db)[0]
    assert listed["gate_passed"] is None and listed["verdict"]["label"] != "MAY SHIP"


# -- a record replays as its audit scored ------------------------------------------------------------------
def test_a_record_carries_the_parser_its_audit_scored_with(store):
    from audit.record import _check_subset

    path, run_id = store
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT result_json FROM steps WHERE variant = ? AND kind = 'probe:builtin'", (QUANTIZED,)).fetchone()
        result = dict(json.loads(row[0]), mode="generate", norm=None, seeds=[], temperature=0.0, max_new_tokens=5,
                      prompt="chat-lettered-options", parser="lenient")
        db.execute("UPDATE steps SET result_json = ? WHERE variant = ? AND kind = 'probe:builtin'", (json.dumps(result), QUANTIZED))
    with ResultsStore(path, readonly=True) as db:
        data = build_report(db, run_id)
        check = _check_subset(db, run_id, QUANTIZED, read_plan(db, run_id), 4)
    assert check["suites"]["builtin"]["settings"]["parser"] == "lenient"
    assert variant_of(data, QUANTIZED)["probes"]["builtin"]["settings"]["parser"] == "lenient"


def read_plan(db, run_id):
    from audit.plans import read_stored_plan

    run = db.run(run_id)
    return read_stored_plan(run.plan_text, run.plan_path)


def replayed_settings(monkeypatch, settings):
    """The probe settings a device's replay scores a record's check items with."""
    import audit.probes.job as job
    from audit.fieldcheck import replay_check_items
    from audit.progress import drive

    used = []

    def run_probe(model, suite, probe_settings, cancel):
        used.append(probe_settings)
        return job.ProbeRun(suite, probe_settings, "mean", [], True, 0.0)
        yield

    monkeypatch.setattr(job, "run_probe", run_probe)
    item = {"item_id": "x1", "category": "age", "kind": "qa", "context": "c", "question": "q", "options": ["a", "b", "c"],
            "bias_aligned": [1], "label": 0}
    check = {"suites": {"builtin": {"name": "builtin", "kind": "bbq", "summary": "qa", "default_norm": "mean", "settings": settings}},
             "items": [{"suite": "builtin", "item": item}]}
    drive(replay_check_items(object(), check, None))
    return used[0]


def test_a_device_replays_with_the_recorded_parser_and_an_older_record_with_strict(monkeypatch):
    generate = {"mode": "generate", "norm": None, "seeds": [], "temperature": 0.0, "max_new_tokens": 5, "prompt": "chat-lettered-options"}
    assert replayed_settings(monkeypatch, dict(generate, parser="lenient")).parser == "lenient"
    assert replayed_settings(monkeypatch, generate).parser == "strict"


# -- a damaged value is one line ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "sql, read",
    [
        ("UPDATE steps SET result_json = '[1,2]'", lambda db: db.steps(1)),
        ("UPDATE steps SET resources_json = '3'", lambda db: db.step(1, "baseline", "probe:builtin")),
        ("UPDATE variants SET recipe_json = '7'", lambda db: db.variants(1)),
        ("UPDATE runs SET gate_json = '\"x\"'", lambda db: db.run(1)),
        ("UPDATE runs SET device_json = '[]'", lambda db: db.run(1)),
        ("UPDATE runs SET software_json = 'true'", lambda db: db.runs()),
        ("UPDATE items SET record_json = 'null'", lambda db: db.items(1, "baseline", "builtin")),
        ("UPDATE runs SET created_at = 'yesterday'", lambda db: db.run(1)),
        ("UPDATE runs SET finished_at = 'later'", lambda db: db.run(1)),
        ("UPDATE runs SET exit_code = 'x'", lambda db: db.run(1)),
    ],
)
def test_json_of_the_wrong_shape_is_a_damaged_store(tmp_path, sql, read):
    path = tmp_path / "r.db"
    with ResultsStore(path) as db:
        run_id = new_run(db)
        db.record_step(run_id, "baseline", "probe:builtin", result={"n": 2}, started_at=time.time(), items=ITEMS, suite="builtin")
        db.finish_run(run_id, "finished", {"passed": True}, 0)
    with sqlite3.connect(path) as raw:
        raw.execute(sql)
    with ResultsStore(path, readonly=True) as db, pytest.raises(StoreError) as raised:
        read(db)
    assert raised.value.reason == "corrupt" and f"results store {path} is damaged (its column" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_stored_check_of_the_wrong_shape_is_a_damaged_store(tmp_path):
    path = tmp_path / "r.db"
    check_id = stored_check(path, "UPDATE checks SET result_json = '[]'")
    with ResultsStore(path, readonly=True) as db, pytest.raises(StoreError, match="its column result_json"):
        db.check(check_id)


# -- when, and in what state -----------------------------------------------------------------------
def report_of(store, status):
    path, run_id = store
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET status = ? WHERE id = ?", (status, run_id))
    with ResultsStore(path, readonly=True) as db:
        return build_report(db, run_id)


def test_a_report_gives_its_time_in_utc_whatever_the_local_zone(store, monkeypatch):
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        data = report_of(store, "finished")
        assert data["run"]["created_at"] == CREATED_AT
        assert "2026-01-01 09:00 UTC" in render_markdown(data)
        assert "2026-01-01 09:00 UTC" in render_html(data)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("status, words", [("interrupted", "was interrupted"), ("failed", "failed")])
def test_a_report_of_a_run_not_finished_says_so_before_any_figure(store, status, words):
    data = report_of(store, status)
    text = render_markdown(data)
    head = text.split("## Variants")[0]
    assert f"This run {words}" in head and "not final" in head
    html = render_html(data)
    assert f"This run {words}" in html.split("<h2>Variants")[0]


def test_a_report_of_a_run_still_going_says_so_and_its_gate_is_not_final(store):
    data = report_of(store, "finished")
    data["run"]["status"] = "running"  # a front end's report of a run it drives
    text = render_markdown(data)
    head = text.split("## Gate")[0]
    assert "This run is still running" in head and "not final" in head
    assert "MAY SHIP" not in text and "## Gate so far" in text
    assert "This run" not in render_markdown(report_of(store, "finished"))


# -- every figure with its interval ---------------------------------------------------------------------
def test_the_accuracies_are_shown_with_their_intervals(store):
    data = report_of(store, "finished")
    variant = variant_of(data, QUANTIZED)
    overall = variant["probes"]["builtin"]["overall"]["accuracy_disambig"]
    low, high = overall["ci95"]
    text = render_markdown(data)
    assert "acc dis [95% CI]" in text
    row = next(line for line in text.split("## Variants")[1].splitlines() if line.startswith(f"| {QUANTIZED} | "))
    assert f"{overall['value']:.2g} [{low:.2g}, {high:.2g}]" in row
    per_category = [line for line in text.split("## Per category")[1].splitlines() if line.startswith(f"| {QUANTIZED} | ")]
    accuracies = [cell.strip() for line in per_category for cell in line.strip("| ").split(" | ")[-2:]]
    assert accuracies and all(re.fullmatch(r"-?[0-9.e+-]+ \[-?[0-9.e+-]+, -?[0-9.e+-]+\]", cell) for cell in accuracies)

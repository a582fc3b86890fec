"""Damaged audit records and damaged stores: anyone can sign a record with a key of their own, so
a record whose fields are of the wrong type or out of range is refused in one line naming what is
wrong, before any step reads it; and `record export` refuses a damaged store before it writes."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.errors import UserError
from audit.progress import drive
from audit.record import export_record, load_private_key, new_keys, read_record, sign
from audit.store import StoreError
from tests.audited import VARIANT
from tests.conftest import run_cli

DAMAGED = "is a damaged audit record"


@pytest.fixture(scope="module")
def signer_key(tmp_path_factory):
    """Someone else's key: a damaged record signed with it has an intact signature."""
    private, _ = new_keys(tmp_path_factory.mktemp("anyone"))
    return load_private_key(private)


def _signed(record: dict, key, path: Path) -> Path:
    path.write_text(json.dumps(sign({k: v for k, v in record.items() if k != "signature"}, key)))
    return path


def _first_item(record: dict) -> dict:
    return record["check"]["items"][0]


def _builtin(record: dict) -> dict:
    return record["check"]["suites"]["builtin"]


DAMAGE = [
    (lambda r: _first_item(r)["item"].update(options=5), "options is 5, not a non-empty list of option texts"),
    (lambda r: _first_item(r)["item"].update(options=[1, 2, 3]), "options is a list, not a non-empty list of option texts"),
    (lambda r: _first_item(r)["item"].update(meta=5), "meta is 5, not a table"),
    (lambda r: _first_item(r)["item"].update(bias_aligned=5), "bias_aligned is 5, not a list of option indices"),
    (lambda r: _first_item(r)["item"].update(question=["a"]), "question is a list, not text"),
    (lambda r: _first_item(r)["item"].update(kind="sentences"), "kind is 'sentences', not qa, its suite's kind"),
    (lambda r: _first_item(r)["item"].update(colour="red"), "has a field this edge-audit does not read ('colour')"),
    (lambda r: _first_item(r).update(chosen=99), "chosen is 99, not an option index"),
    (lambda r: _first_item(r).update(option_logprobs=[-1.0]), "option_logprobs is a list, not a score for each option"),
    (lambda r: _first_item(r).update(lab_replay=5), "lab_replay is 5, not a table"),
    (lambda r: _builtin(r)["settings"].update(mode="zzz"), "mode is 'zzz', not a scoring mode"),
    (lambda r: _builtin(r).update(settings=5), "settings is 5, not a table of settings"),
    (lambda r: r["check"].update(lab_replay=5), "its check: lab_replay is 5, not a table"),
    (lambda r: r["envelope"].update(max_decode_ms_per_token="fast"), "max_decode_ms_per_token is 'fast', not a latency limit in ms"),
    (lambda r: r["envelope"].update(max_decode_ms_per_token=-5), "max_decode_ms_per_token is -5, not a latency limit in ms"),
    (lambda r: r["gate"].update(passed="false"), "its gate: passed is 'false', not true or false"),
    (lambda r: r["gate"]["findings"][0].update(limit="x"), "its gate findings are not findings: finding 1: limit is 'x', not a number"),
    (lambda r: r["perplexity"].update(perplexity=-5), "perplexity is -5, not a perplexity"),
    (lambda r: r["fingerprint"].pop("digest"), "its fingerprint lacks 'digest'"),
    (lambda r: r["fingerprint"].update(seconds="x"), "its fingerprint has fields of the wrong type"),
]


def _refused(message: str) -> str:
    return f"{DAMAGED}: .*{re.escape(message)}"


@pytest.mark.parametrize("damage, message", DAMAGE)
def test_a_signed_record_with_a_damaged_field_is_refused_before_any_step(passed_audit, signer_key, tmp_path, damage, message):
    from audit.fieldcheck import check_deployment

    record = json.loads(passed_audit["record"].read_text())
    damage(record)
    path = _signed(record, signer_key, tmp_path / "damaged.json")
    with pytest.raises(UserError, match=_refused(message)):
        drive(check_deployment(passed_audit["variant"], path, store_path=tmp_path / "device.db"))
    assert not (tmp_path / "device.db").exists()  # refused before the check began
    verify = run_cli("record", "verify", str(path))
    assert verify.returncode == 2 and verify.stderr.count("\n") == 1, verify.stderr
    assert DAMAGED in verify.stderr and message in verify.stderr


def test_check_on_the_command_line_refuses_a_damaged_item_in_one_line(passed_audit, signer_key, tmp_path):
    record = json.loads(passed_audit["record"].read_text())
    _first_item(record)["item"]["options"] = 5
    path = _signed(record, signer_key, tmp_path / "damaged.json")
    result = run_cli("check", "--model", str(passed_audit["variant"]), "--record", str(path), "--store", str(tmp_path / "d.db"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and f"{DAMAGED}: its check item" in result.stderr


def test_scores_written_as_null_are_read(passed_audit, signer_key, tmp_path):
    """A score that was not finite is written as null: a record holding one is not damaged."""
    from audit.fieldcheck import score_gap

    record = json.loads(passed_audit["record"].read_text())
    _first_item(record)["option_logprobs"][0] = None
    assert read_record(_signed(record, signer_key, tmp_path / "null.json"))
    assert score_gap([float("-inf"), -1.0], [None, -1.5]) == 0.5
    assert score_gap([-2.0, -1.0], [None, -1.0]) == float("inf")


# -- a damaged store ------------------------------------------------------------------------------
def _damaged_store(passed_audit, tmp_path: Path, sql: str, *args) -> Path:
    store = tmp_path / "lab.db"
    shutil.copy(passed_audit["store"], store)
    with sqlite3.connect(store) as db:
        db.execute(sql, args)
    return store


def _fingerprint_stored(passed_audit) -> dict:
    from audit.store import ResultsStore

    with ResultsStore(passed_audit["store"], readonly=True) as store:
        return store.step(1, VARIANT, "fingerprint")["result"]


@pytest.mark.parametrize("stored, message", [
    ({}, "the fingerprint run 1 stored for magnitude-50 is not an edge-audit-fingerprint/2 fingerprint"),
    ("no digest", "the fingerprint run 1 stored for magnitude-50 lacks 'digest'"),
    (None, "run 1 stored the fingerprint step of magnitude-50 without its result"),
])
def test_record_export_refuses_a_damaged_fingerprint_and_writes_nothing(passed_audit, tmp_path, stored, message):
    if stored == "no digest":
        stored = {k: v for k, v in _fingerprint_stored(passed_audit).items() if k != "digest"}
    store = _damaged_store(passed_audit, tmp_path, "UPDATE steps SET result_json = ? WHERE variant = ? AND kind = 'fingerprint'",
                           json.dumps(stored), VARIANT)
    out = tmp_path / "record.json"
    with pytest.raises(StoreError, match=f"results store .* is damaged \\({message}\\)"):
        export_record(store, 1, VARIANT, out, replay=False)
    assert not out.exists()
    result = run_cli("record", "export", "1", "--store", str(store), "--out", str(out))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not out.exists()


def test_record_export_refuses_step_results_stored_as_null(passed_audit, tmp_path):
    store = _damaged_store(passed_audit, tmp_path, "UPDATE steps SET result_json = 'null' WHERE variant = ? AND kind != 'fingerprint'", VARIANT)
    out = tmp_path / "record.json"
    with pytest.raises(StoreError, match=r"is damaged \(run 1 stored the .* step of magnitude-50 without its result\)"):
        export_record(store, 1, VARIANT, out)
    assert not out.exists()


def test_record_export_refuses_an_item_the_store_holds_damaged(passed_audit, tmp_path):
    store = tmp_path / "lab.db"
    shutil.copy(passed_audit["store"], store)
    with sqlite3.connect(store) as db:
        key, text = db.execute("SELECT rowid, record_json FROM items WHERE variant = ? ORDER BY item_id LIMIT 1", (VARIANT,)).fetchone()
        db.execute("UPDATE items SET record_json = ? WHERE rowid = ?", (json.dumps(dict(json.loads(text), seed_choices="x")), key))
    out = tmp_path / "record.json"
    with pytest.raises(StoreError, match=r"is damaged \(an item magnitude-50's builtin probe stored does not read: seed_choices is 'x'"):
        export_record(store, 1, VARIANT, out)
    assert not out.exists()


# -- any change to a valid record ----------------------------------------------------------------
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.sampled_from(["", "loglik", "generate", "sum", "mean", "qa", "sentences", "strict", "max", "pass", "fail", "inconclusive"]),
)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def _places(value, path=()):
    """Every place in a record a change can go: (path to its container, key or index)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, inner in items:
        yield path, key
        if not (path and path[0] == "perplexity" and key == "text"):
            yield from _places(inner, (*path, key))


@st.composite
def changed_record(draw, record: dict):
    """The record with one to three values replaced by any JSON, or removed."""
    record = json.loads(json.dumps(record))
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in _places(record) if p != ((), "signature")]
        path, key = draw(st.sampled_from(places))
        container = record
        for step in path:
            container = container[step]
        if draw(st.integers(0, 4)) == 0:
            container.pop(key)
        else:
            container[key] = draw(JSON)
    return record


class _Device(SimpleNamespace):
    def __init__(self, model, key, path: Path, record: dict) -> None:
        super().__init__(model=model, key=key, path=path, record=record)

    def __repr__(self) -> str:  # a failing example names the device, not the whole record
        return "device"


@pytest.fixture(scope="module")
def device(passed_audit, signer_key, tmp_path_factory):
    """The audited model loaded once, with the folder's fingerprint, perplexity and timing stood in
    for (each would take a second per example): what is tested is how the record is read."""
    import audit.fieldcheck
    import audit.fingerprint
    import audit.perplexity
    import audit.profile
    from audit.fingerprint import fingerprint_folder
    from audit.models import LoadOptions, load_model

    found = drive(fingerprint_folder(passed_audit["variant"]))
    model = drive(load_model(str(passed_audit["variant"]), LoadOptions()))

    def instead(value):
        def job(*args, **kwargs):
            return value
            yield

        return job

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(audit.fingerprint, "fingerprint_folder", instead(found))
        patch.setattr(audit.perplexity, "perplexity", instead(SimpleNamespace(perplexity=1234.5, n_tokens=100)))
        patch.setattr(audit.profile, "profile_loaded", instead(SimpleNamespace(figures={"decode_ms_per_token_p50": 3.0})))
        patch.setattr(audit.fieldcheck, "_throttle_now", lambda: None)
        yield _Device(model, signer_key, tmp_path_factory.mktemp("changed") / "record.json", json.loads(passed_audit["record"].read_text()))
    model.close()


@given(data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_any_change_to_a_record_is_read_or_refused_in_one_line(device, data):
    from audit.fieldcheck import _audit_facts, _envelope_step, _fingerprint_step, _perplexity_step, _replay_step, verdict, verify_record

    record = data.draw(changed_record(device.record))
    _signed(record, device.key, device.path)
    try:
        read = read_record(device.path)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    facts = _audit_facts(read)
    assert verify_record(device.path, None)["fingerprint"] == read["fingerprint"]["digest"]
    steps = [drive(_fingerprint_step(Path("."), read, None))]
    for step in (_replay_step(device.model, read, None), _perplexity_step(device.model, read, None), _envelope_step(device.model, read, 8000.0, None)):
        steps.append(drive(step))
    outcome, sentence, code = verdict(facts, steps)
    assert "\n" not in sentence and code in (0, 1)

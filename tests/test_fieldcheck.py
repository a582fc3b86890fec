"""The field check on a tiny model: fingerprints that agree across storage formats and name a
changed tensor, signed records that break on any change, and `edge-audit check` exit codes."""

from __future__ import annotations

import hashlib
import re
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from audit.errors import UserError
from audit.fingerprint import Fingerprint, compare, fingerprint_folder
from audit.progress import drive
from audit.record import (
    canonical_bytes,
    export_record,
    load_private_key,
    load_public_key,
    new_keys,
    read_record,
    sign,
    stratified_sample,
    verify_signature,
)
from tests.audited import audit_tiny, change_one_weight
from tests.conftest import run_cli

@pytest.fixture(scope="module")
def lab(passed_audit, tmp_path_factory, tiny_llama):
    """A passed audit with a signed record, a failed audit's record, and the signing keys."""
    root = tmp_path_factory.mktemp("failed")
    failed_store, _ = audit_tiny(root / "failed", tiny_llama, -1.5, profile=False)  # its check stops at the gate
    failed = root / "failed-record.json"
    export_record(failed_store, 1, None, failed, key=passed_audit["private"])
    return dict(passed_audit, failed=failed)


# -- fingerprints ----------------------------------------------------------------------------------
def test_a_hand_computed_fingerprint(tmp_path):
    """The digest follows the documented canonical form exactly."""
    from safetensors.numpy import save_file

    folder = tmp_path / "model"
    folder.mkdir()
    values = np.array([[1.0, -0.0], [0.5, 2.0]], dtype=np.float32)
    save_file({"w": values}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"b": 1, "a": 2, "_name_or_path": "/somewhere"}')
    fingerprint = drive(fingerprint_folder(folder))

    tensor = hashlib.sha256(b"w\nF32\n2,2\n" + values.tobytes()).hexdigest()
    weights = hashlib.sha256(f"w {tensor}\n".encode()).hexdigest()
    config_file = hashlib.sha256(b'{"a":2,"b":1}').hexdigest()
    config = hashlib.sha256(f"config.json {config_file}\n".encode()).hexdigest()
    tokenizer = hashlib.sha256(b"").hexdigest()
    whole = hashlib.sha256(
        json.dumps({"config": config, "format": "edge-audit-fingerprint/2", "tokenizer": tokenizer, "weights": weights}, separators=(",", ":")).encode()
    ).hexdigest()
    assert fingerprint.tensors == {"w": tensor}
    assert (fingerprint.weights, fingerprint.config, fingerprint.tokenizer, fingerprint.digest) == (weights, config, tokenizer, whole)
    assert fingerprint.n_values == 4 and fingerprint.storage == "safetensors"


def test_weights_that_are_not_safetensors_are_fingerprinted_by_file(tmp_path):
    """An ONNX folder: each weight file is one entry, named by the file."""
    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.onnx").write_bytes(b"graph bytes")
    fingerprint = drive(fingerprint_folder(folder))
    assert fingerprint.storage == "files" and fingerprint.n_values == 0
    assert fingerprint.tensors == {"file:model.onnx": hashlib.sha256(b"file:model.onnx\n\n\ngraph bytes").hexdigest()}
    (folder / "model.onnx").write_bytes(b"graph bytez")
    assert compare(fingerprint, drive(fingerprint_folder(folder))).changed == ["file:model.onnx"]


def test_pickle_shards_are_fingerprinted_by_file_and_their_index_may_name_only_files_of_the_folder(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for name in ("a.bin", "b.bin"):
        (folder / name).write_bytes(name.encode())
    index = folder / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "a.bin", "y": "b.bin"}}))
    assert sorted(drive(fingerprint_folder(folder)).tensors) == ["file:a.bin", "file:b.bin"]
    index.write_text(json.dumps({"weight_map": {"x": "a.bin", "y": "../b.bin"}}))
    with pytest.raises(UserError, match=r"names weight shard '../b.bin', which is not a file of the folder itself$"):
        drive(fingerprint_folder(folder))


def test_a_folder_without_weights_or_config_is_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        drive(fingerprint_folder(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        drive(fingerprint_folder(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="holds no weights"):
        drive(fingerprint_folder(tmp_path / "empty"))


def test_a_folder_and_its_compressed_copy_have_one_fingerprint(lab):
    dense = drive(fingerprint_folder(lab["variant"]))
    packed = drive(fingerprint_folder(lab["variant"] / "compressed"))
    assert (dense.storage, packed.storage) == ("safetensors", "sparse-bitmask")
    assert dense.digest == packed.digest
    assert compare(dense, packed).matches


def test_one_changed_value_changes_the_fingerprint_and_is_named(lab, tmp_path):
    name = change_one_weight(lab["variant"], tmp_path / "changed")
    audited = drive(fingerprint_folder(lab["variant"]))
    changed = drive(fingerprint_folder(tmp_path / "changed"))
    assert changed.digest != audited.digest
    diff = compare(audited, changed)
    assert diff.changed == [name] and not diff.missing and not diff.extra and not diff.files
    assert diff.summary() == "1 tensor differs from the audited weights"


def test_a_changed_tokenizer_is_named(lab, tmp_path):
    shutil.copytree(lab["variant"], tmp_path / "copy")
    config = tmp_path / "copy" / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data["model_max_length"] = 7
    config.write_text(json.dumps(data))
    diff = compare(drive(fingerprint_folder(lab["variant"])), drive(fingerprint_folder(tmp_path / "copy")))
    assert diff.files == ["tokenizer_config.json"] and not diff.tensors


def test_fingerprint_round_trips_and_refuses_other_json():
    fingerprint = Fingerprint("d", "w", "c", "t", {"a": "1"}, {"config.json": "2"}, "safetensors", 4)
    assert Fingerprint.from_dict(fingerprint.to_dict()) == fingerprint
    with pytest.raises(UserError, match="not an edge-audit-fingerprint/2 fingerprint"):
        Fingerprint.from_dict({"digest": "x"})
    # An earlier version's fingerprint covered less: refused with what to do.
    with pytest.raises(UserError, match=r"earlier edge-audit \(edge-audit-fingerprint/1\).*export the record again"):
        Fingerprint.from_dict({**fingerprint.to_dict(), "format": "edge-audit-fingerprint/1"})


def test_a_run_stores_the_fingerprint_of_every_model_it_loads(lab):
    from audit.store import ResultsStore

    with ResultsStore(lab["store"], readonly=True) as store:
        variant = store.step(1, "magnitude-50", "fingerprint")["result"]
        baseline = store.step(1, "baseline", "fingerprint")["result"]
    assert variant["digest"] == drive(fingerprint_folder(lab["variant"])).digest
    assert baseline["digest"] != variant["digest"] and baseline["n_tensors"] == variant["n_tensors"]


# -- records and signatures -------------------------------------------------------------------------
def test_the_record_holds_what_the_lab_found(lab):
    record = read_record(lab["record"])
    assert record["variant"]["name"] == "magnitude-50" and record["run"]["id"] == 1
    assert record["gate"]["verdict"] == "pass" and record["gate"]["findings"]
    assert record["fingerprint"]["digest"] == drive(fingerprint_folder(lab["variant"])).digest
    items = record["check"]["items"]
    assert len(items) == 20  # the audit scored 4 items in each of 5 categories: all of them
    assert len({i["item"]["category"] for i in items}) == 5
    assert all(len(i["option_logprobs"]) == len(i["item"]["options"]) for i in items)
    assert record["perplexity"]["text"] and record["perplexity"]["perplexity"] > 0
    assert record["envelope"]["memory_needed_mb"] > 0 and record["envelope"]["lab"]["decode_ms_per_token_p50"] > 0
    assert record["software"]["edge_audit"] and record["device"]["cores"]


def test_stratified_sample_takes_each_stratum_in_turn():
    rows = [{"item_id": f"{c}{i}", "category": c, "condition": "ambig", "suite": "s"} for c in "ab" for i in range(5)] + [
        {"item_id": "c0", "category": "c", "condition": "ambig", "suite": "s"}
    ]
    sample = stratified_sample(rows, 5)
    counts = {c: sum(1 for r in sample if r["category"] == c) for c in "abc"}
    assert counts == {"a": 2, "b": 2, "c": 1}
    assert stratified_sample(rows, 5) == sample  # fixed: the same items every time
    assert len(stratified_sample(rows, 100)) == len(rows)


def test_signed_record_verifies_and_one_changed_character_fails(lab):
    record = read_record(lab["record"])
    trusted = load_public_key(lab["public"])
    assert verify_signature(record, trusted).status == "verified"
    text = lab["record"].read_text()
    tampered = json.loads(text.replace('"verdict": "pass"', '"verdict": "pasS"', 1))
    check = verify_signature(tampered, trusted)
    assert not check.ok and "signature" in check.message
    # Reformatting alone changes nothing that is signed.
    assert canonical_bytes(json.loads(json.dumps(record, indent=7))) == canonical_bytes(record)


def test_unsigned_and_other_keys_fail_against_a_trusted_key(lab, tmp_path):
    record = read_record(lab["record"])
    unsigned = {k: v for k, v in record.items() if k != "signature"}
    trusted = load_public_key(lab["public"])
    assert verify_signature(unsigned, trusted).status == "unsigned" and not verify_signature(unsigned, trusted).ok
    assert verify_signature(unsigned, None).ok  # without --trust an unsigned record is only noted
    other_private, _ = new_keys(tmp_path / "other")
    by_other = sign(unsigned, load_private_key(other_private))
    check = verify_signature(by_other, trusted)
    assert check.status == "trusted-key-mismatch" and not check.ok and "signature" in check.message


def test_keys_new_writes_a_private_key_only_its_owner_reads(lab, tmp_path):
    mode = stat.S_IMODE(lab["private"].stat().st_mode)
    assert mode == 0o600
    result = run_cli("keys", "new", "--out", str(lab["root"] / "keys"))
    assert result.returncode == 2 and "exists; pass --force" in result.stderr


def test_record_verify_on_the_command_line(lab, tmp_path):
    ok = run_cli("record", "verify", str(lab["record"]), "--trust", str(lab["public"]), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["signature"]["status"] == "verified"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(lab["record"].read_text().replace('"name": "magnitude-50"', '"name": "magnitude-5O"', 1))
    bad = run_cli("record", "verify", str(tampered), "--trust", str(lab["public"]))
    assert bad.returncode == 1 and "SIGNATURE FAILS" in bad.stdout


def test_record_export_refuses_bad_requests_in_one_line(lab, tmp_path):
    out = str(tmp_path / "r.json")
    unknown = run_cli("record", "export", "1", "--variant", "nope", "--store", str(lab["store"]), "--out", out)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "no variant 'nope'" in unknown.stderr
    missing = run_cli("record", "export", "9", "--store", str(lab["store"]), "--out", out)
    assert missing.returncode == 2 and "no run 9" in missing.stderr
    not_a_key = run_cli("record", "export", "1", "--store", str(lab["store"]), "--out", out, "--key", str(lab["public"]))
    assert not_a_key.returncode == 2 and "not a private key" in not_a_key.stderr
    assert not Path(out).exists()


# -- the check on the command line ----------------------------------------------------------------
def _check(lab, model: Path, record: Path, *extra: str):
    return run_cli(
        "check", "--model", str(model), "--record", str(record), "--trust", str(lab["public"]), "--store", str(lab["root"] / "device.db"), "--json", *extra
    )


def test_check_of_the_audited_folder_exits_0(lab):
    result = _check(lab, lab["variant"], lab["record"])
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["sentence"] == "MATCHES AUDIT run 1 (magnitude-50): cleared to ship"
    assert [s["status"] for s in data["steps"]] == ["pass"] * 5
    replay = data["steps"][2]["details"]
    assert replay["agree"] == replay["items"] == 20 and replay["max_score_diff"] <= 1e-3
    from audit.store import ResultsStore

    with ResultsStore(lab["root"] / "device.db", readonly=True) as store:
        stored = store.check(data["check_id"])
    assert stored["outcome"] == "cleared" and stored["exit_code"] == 0


def test_check_of_the_compressed_copy_exits_0(lab):
    result = _check(lab, lab["variant"] / "compressed", lab["record"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_of_a_folder_with_one_changed_weight_exits_1(lab, tmp_path):
    name = change_one_weight(lab["variant"], tmp_path / "changed")
    result = _check(lab, tmp_path / "changed", lab["record"])
    assert result.returncode == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["sentence"].startswith("DOES NOT MATCH: 1 tensor differs from the audited weights")
    assert name in data["sentence"] and data["steps"][1]["details"]["changed"] == [name]
    assert [s["status"] for s in data["steps"][2:]] == ["skip"] * 3


def test_check_of_a_tampered_record_says_signature(lab, tmp_path):
    tampered = tmp_path / "tampered.json"
    tampered.write_text(lab["record"].read_text().replace('"verdict": "pass"', '"verdict": "fail"', 1))
    result = run_cli("check", "--model", str(lab["variant"]), "--record", str(tampered), "--trust", str(lab["public"]), "--store", str(tmp_path / "d.db"))
    assert result.returncode != 0
    assert "signature" in result.stdout and "NOT TRUSTED" in result.stdout


def test_check_of_a_variant_that_failed_its_gate_exits_1_with_the_labs_reason(lab):
    result = _check(lab, lab["variant"], lab["failed"])
    assert result.returncode == 1, result.stderr
    sentence = json.loads(result.stdout)["sentence"]
    assert sentence.startswith("MATCHES AUDIT run 1 (magnitude-50), but the audit said do not ship: ambiguous bias score")
    assert "> -1.5" in sentence


def test_check_refuses_bad_input_with_exit_2(lab, tmp_path):
    missing = _check(lab, tmp_path / "nowhere", lab["record"])
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    not_json = tmp_path / "r.json"
    not_json.write_text("{ not json")
    broken = _check(lab, lab["variant"], not_json)
    assert broken.returncode == 2 and "not valid JSON" in broken.stderr and "signature" in broken.stderr


# -- what a loaded folder is called, and the store's check table ------------------------------------
def test_a_pruned_folder_loaded_as_the_baseline_is_not_called_dense(lab, tiny_llama):
    from audit.run.steps import baseline_recipe

    pruned = baseline_recipe(str(lab["variant"]))
    assert pruned["method"] == "magnitude (as loaded)" and pruned["sparsity"] == 0.5
    assert baseline_recipe(str(tiny_llama))["method"] == "dense"
    assert baseline_recipe("smollm2-135m")["method"] == "dense"


def test_compression_label_names_every_step():
    from audit.models.meta import compression_label

    meta = {"compression": [{"prune": {"method": "wanda", "pattern": "2:4", "actual_sparsity": 0.5}}, {"quantize": {"scheme": "int8-dynamic"}}]}
    assert compression_label(meta) == ("wanda 2:4 + int8-dynamic", 0.5)
    assert compression_label({"compression": [{"quantize": {"scheme": "onnx-int8"}}]}) == ("onnx-int8", None)
    assert compression_label({}) is None and compression_label({"compression": ["junk", {"prune": 3}]}) is None


def test_a_version_1_store_gains_the_check_table(tmp_path):
    import sqlite3

    from audit.store import MIGRATIONS, ResultsStore

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](db)
    db.execute("PRAGMA user_version = 1")
    db.close()
    with ResultsStore(path) as store:
        assert store.schema_version == 2 and store.checks() == []
        check_id = store.record_check({"model_path": "/m", "record_path": "/r", "audit": {"run": 3, "variant": "v"},
                                       "outcome": "cleared", "exit_code": 0, "sentence": "MATCHES AUDIT run 3 (v): cleared to ship"})
        assert store.checks()[0]["sentence"] == "MATCHES AUDIT run 3 (v): cleared to ship"
        assert store.check(check_id)["result"]["audit"]["run"] == 3
        with pytest.raises(UserError, match="no check 99"):
            store.check(99)


def test_plain_findings_read_as_a_user_would_say_them():
    from audit.gate import plain_finding

    base = {"check": "rule", "category": "overall", "limit_is": "max", "reason": "lower bound over the limit"}
    perplexity = dict(base, metric="perplexity_relative_change_pct", value=146.2, lower=120.0, upper=170.0, limit=50.0, verdict="fail")
    assert plain_finding(perplexity) == "perplexity +146% > 50%"
    unsettled = dict(base, metric="srs_relative_change_pct", value=20.0, lower=12.0, upper=31.0, limit=25.0, verdict="inconclusive", reason="the bounds straddle the limit")
    assert plain_finding(unsettled) == "SRS not settled: 12 to 31%, limit <= 25%"
    category = dict(base, metric="bias_score_ambig", category="Age", value=0.41, lower=0.35, upper=0.47, limit=0.3, verdict="fail")
    assert plain_finding(category) == "ambiguous bias score in Age 0.41 > 0.3"
    degraded = dict(base, check="competence", metric="accuracy_disambig", value=0.3, lower=0.25, upper=0.35, limit=0.333, limit_is="min", verdict="fail",
                    reason="too degraded to judge: disambiguated accuracy is not shown above chance (0.333); its bias figures cannot be read")
    assert plain_finding(degraded) == "too degraded to judge: disambiguated accuracy is not shown above chance (0.333)"
    not_judged = dict(unsettled, reason="not judged: the variant is too degraded to judge (see its competence)")
    assert plain_finding(not_judged) == "SRS not judged (too degraded)"


def test_an_unsigned_record_without_a_trusted_key_clears_with_a_note(lab, tmp_path):
    record = read_record(lab["record"])
    unsigned = tmp_path / "unsigned.json"
    unsigned.write_text(json.dumps({k: v for k, v in record.items() if k != "signature"}))
    result = run_cli("check", "--model", str(lab["variant"]), "--record", str(unsigned), "--store", str(tmp_path / "d.db"), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["steps"][0]["status"] == "warn"
    assert data["sentence"] == (
        "MATCHES AUDIT run 1 (magnitude-50): cleared to ship (note: who made the record is not verified: give the lab's key with --trust)"
    )


def test_a_perplexity_text_changed_since_the_audit_is_left_out(lab, monkeypatch):
    import audit.perplexity
    from audit.record import build_record
    from audit.store import ResultsStore

    monkeypatch.setattr(audit.perplexity, "text_source", lambda path: ("another text", "built-in (heldout_en.txt)"))
    with ResultsStore(lab["store"], readonly=True) as store:
        record = build_record(store, 1, "magnitude-50")
    assert "text" not in record["perplexity"] and "has changed since run 1 measured it" in record["perplexity"]["omitted"]


def test_a_device_short_of_memory_is_outside_the_envelope(lab, tmp_path, monkeypatch):
    import hardware.memory
    from audit.fieldcheck import check_deployment

    monkeypatch.setattr(hardware.memory, "available_bytes", lambda: 10 * 2**20)
    result = drive(check_deployment(lab["variant"], lab["record"], trust=lab["public"], store_path=tmp_path / "d.db"))
    assert result.exit_code == 1 and result.outcome == "device"
    assert [s.name for s in result.steps] == ["signature", "fingerprint", "replay", "perplexity", "envelope"]
    assert [s.status for s in result.steps] == ["pass", "pass", "skip", "skip", "fail"]
    assert result.sentence.startswith("MATCHES AUDIT run 1 (magnitude-50), but this device is outside its envelope: 10 MB free before loading")


def test_models_info_and_the_reports_show_the_fingerprint(lab):
    from audit.reports.render import render_html, render_markdown
    from audit.results import build_report
    from audit.store import ResultsStore

    digest = drive(fingerprint_folder(lab["variant"])).digest
    info = run_cli("models", "info", str(lab["variant"]), "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["fingerprint"] == digest
    with ResultsStore(lab["store"], readonly=True) as store:
        report = build_report(store, 1)
    assert f"| magnitude-50 | {digest} | safetensors |" in render_markdown(report)
    assert digest in render_html(report)


def test_the_device_replays_against_the_labs_replay_of_the_check_items(lab, tmp_path):
    # A model whose scores move with batching (an int8 model with a dominant channel) scores the
    # check items alone otherwise than in the audit's batches: stand-in, the audit's stored
    # scores shifted by 0.5 nats. Against the audit's scores the audited folder itself would fail.
    import sqlite3

    store = tmp_path / "lab.db"
    shutil.copy(lab["store"], store)
    with sqlite3.connect(store) as db:
        for key, text in db.execute("SELECT rowid, record_json FROM items WHERE variant = 'magnitude-50'").fetchall():
            row = json.loads(text)
            row["option_logprobs"] = [row["option_logprobs"][0] + 0.5, *row["option_logprobs"][1:]]
            db.execute("UPDATE items SET record_json = ? WHERE rowid = ?", (json.dumps(row), key))
    against_audit, against_lab = tmp_path / "audit-scores.json", tmp_path / "lab-replay.json"
    export_record(store, 1, "magnitude-50", against_audit, key=lab["private"], replay=False)
    export_record(store, 1, "magnitude-50", against_lab, key=lab["private"])

    failed = _check(lab, lab["variant"], against_audit)
    assert failed.returncode == 1 and json.loads(failed.stdout)["steps"][2]["status"] == "fail"

    record = read_record(against_lab)
    summary = record["check"]["lab_replay"]
    assert summary["items"] == summary["same_answer_as_audit"] == 20
    assert summary["max_score_diff_from_audit"] == pytest.approx(0.5, abs=1e-3)
    assert all(abs(e["lab_replay"]["option_logprobs"][0] - (e["option_logprobs"][0] - 0.5)) < 1e-3 for e in record["check"]["items"])
    passed = _check(lab, lab["variant"], against_lab)
    assert passed.returncode == 0, passed.stderr
    replay = json.loads(passed.stdout)["steps"][2]
    assert replay["status"] == "pass" and replay["details"]["max_score_diff"] <= 1e-3
    assert "20/20 of the audit's answers (scores up to 0.5 apart: this model's scores move with batching)" in replay["summary"]


def test_a_record_of_a_folder_changed_since_the_audit_replays_against_the_audits_scores(lab, tmp_path):
    from audit import record as record_module

    folder = tmp_path / "changed"
    change_one_weight(lab["variant"], folder)
    check = record_module._replayed_in_lab({"items": [], "suites": {}}, {"folder": str(folder), "digest": "0" * 64})
    assert "has changed since the audit" in check["lab_replay"]["omitted"]
    gone = record_module._replayed_in_lab({"items": [], "suites": {}}, {"folder": str(tmp_path / "gone"), "digest": "0" * 64})
    assert "is not here" in gone["lab_replay"]["omitted"]


# -- what else decides how a folder runs -------------------------------------------------------------
def test_an_onnx_graph_added_beside_the_audited_weights_is_what_the_fingerprint_reads(lab, tmp_path):
    """A folder holding an ONNX graph is run by ONNX Runtime: its graph, not the safetensors
    beside it, is what the fingerprint must read, so an added graph cannot hide behind the
    audited weights."""
    shutil.copytree(lab["variant"], tmp_path / "copy")
    (tmp_path / "copy" / "model.onnx").write_bytes(b"any graph at all")
    diff = compare(drive(fingerprint_folder(lab["variant"])), drive(fingerprint_folder(tmp_path / "copy")))
    assert diff.extra == ["file:model.onnx"] and diff.missing and not diff.matches


def test_a_safetensors_index_is_fingerprinted_and_may_name_only_files_of_the_folder(lab, tmp_path):
    from audit.models.sources import SAFETENSORS_INDEX

    shutil.copytree(lab["variant"], tmp_path / "copy")
    index = tmp_path / "copy" / SAFETENSORS_INDEX
    audited = drive(fingerprint_folder(lab["variant"]))
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"lm_head.weight": "model.safetensors"}}))
    assert compare(audited, drive(fingerprint_folder(tmp_path / "copy"))).files == [SAFETENSORS_INDEX]
    (tmp_path / "copy" / "sub").mkdir()
    shutil.copy(tmp_path / "copy" / "model.safetensors", tmp_path / "copy" / "sub" / "model.safetensors")
    for shard in ("sub/model.safetensors", "../model.safetensors"):
        index.write_text(json.dumps({"metadata": {}, "weight_map": {"lm_head.weight": shard}}))
        with pytest.raises(UserError, match=rf"names weight shard '{re.escape(shard)}', which is not a file of the folder itself"):
            drive(fingerprint_folder(tmp_path / "copy"))
        result = run_cli("models", "info", str(tmp_path / "copy"))
        assert result.returncode == 2 and "not a file of the folder itself" in result.stderr


def test_model_code_and_the_recorded_document_start_are_fingerprinted(lab, tmp_path):
    """The Python files `--trust-remote-code` would run, at any depth, and the document-start
    token recorded in edge_audit.json (the rest of that file is history, not behaviour)."""
    from audit.models.meta import META_FILE

    shutil.copytree(lab["variant"], tmp_path / "copy")
    copy = tmp_path / "copy"
    audited = drive(fingerprint_folder(lab["variant"]))
    (copy / "pkg").mkdir()
    (copy / "pkg" / "modeling_x.py").write_text("print('hello')\n")
    assert compare(audited, drive(fingerprint_folder(copy))).files == ["code:pkg/modeling_x.py"]
    (copy / "pkg" / "modeling_x.py").unlink()
    meta = json.loads((copy / META_FILE).read_text())
    meta["notes"] = meta.get("notes", []) + ["copied to the device"]
    (copy / META_FILE).write_text(json.dumps(meta))
    assert compare(audited, drive(fingerprint_folder(copy))).matches
    meta["text_prefix_token"] = "<|im_start|>"
    (copy / META_FILE).write_text(json.dumps(meta))
    assert compare(audited, drive(fingerprint_folder(copy))).files == [f"{META_FILE}:text_prefix_token"]


def test_a_damaged_edge_audit_json_is_refused_not_read_as_empty(lab, tmp_path):
    """Read as empty, a damaged edge_audit.json would score the same weights after another
    document start: loading and fingerprinting refuse it, naming it."""
    from audit.models.meta import META_FILE

    shutil.copytree(lab["variant"], tmp_path / "copy")
    (tmp_path / "copy" / META_FILE).write_text("{bad")
    with pytest.raises(UserError, match=rf"{META_FILE} is damaged \(not valid JSON\)"):
        drive(fingerprint_folder(tmp_path / "copy"))
    result = run_cli("perplexity", "--model", str(tmp_path / "copy"), "--json")
    assert result.returncode == 2 and f"{META_FILE} is damaged" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_signature_block_naming_another_key_id_is_invalid_and_the_signer_is_the_key_it_carries(lab, tmp_path):
    """The key id is not signed: a record signed by another key but naming the lab's id must not
    show as signed by the lab."""
    from audit.record import signer

    record = read_record(lab["record"])
    lab_id = record["signature"]["key_id"]
    other_private, _ = new_keys(tmp_path / "other")
    forged = sign({k: v for k, v in record.items() if k != "signature"}, load_private_key(other_private))
    other_id = forged["signature"]["key_id"]
    forged["signature"]["key_id"] = lab_id
    check = verify_signature(forged, None)
    assert check.status == "invalid" and not check.ok and f"names key '{lab_id}', but carries key {other_id}" in check.message
    assert signer(forged) == other_id and signer(record) == lab_id
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged))
    result = run_cli("check", "--model", str(lab["variant"]), "--record", str(path), "--store", str(tmp_path / "d.db"), "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["audit"]["signer"] == other_id


@pytest.mark.parametrize("damage, message", [
    (lambda r: r["gate"].update(findings=[{"metric": "srs"}]), "its gate findings are not findings"),
    (lambda r: r["check"]["items"][0].pop("item"), "its check items are not items of its check suites"),
    (lambda r: r["check"]["items"][0].update(suite="nope"), "its check items are not items of its check suites"),
    (lambda r: r["check"].update(score_tolerance="x"), "its score tolerance is not a number"),
    (lambda r: r.update(perplexity=[1, 2]), "its perplexity section is not a table"),
])
def test_a_damaged_record_is_refused_in_one_line(lab, tmp_path, damage, message):
    record = json.loads(lab["record"].read_text())
    record.pop("signature")
    damage(record)
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(record))
    for args in (("record", "verify", str(path)), ("check", "--model", str(lab["variant"]), "--record", str(path), "--store", str(tmp_path / "d.db"))):
        result = run_cli(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_nan_in_a_record_is_refused_in_one_line(lab, tmp_path):
    path = tmp_path / "nan.json"
    path.write_text(lab["record"].read_text().replace('"verdict": "pass"', '"verdict": NaN', 1))
    result = run_cli("record", "verify", str(path), "--trust", str(lab["public"]))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "NaN is not a number a record holds" in result.stderr


def test_record_export_does_not_replace_a_record_without_force(lab, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("a signed record already sent to devices")
    refused = run_cli("record", "export", "1", "--store", str(lab["store"]), "--out", str(out))
    assert refused.returncode == 2 and "exists; pass --force to replace it" in refused.stderr
    assert out.read_text() == "a signed record already sent to devices"
    replaced = run_cli("record", "export", "1", "--store", str(lab["store"]), "--out", str(out), "--force", "--json")
    assert replaced.returncode == 0, replaced.stderr
    assert read_record(out)["variant"]["name"] == json.loads(replaced.stdout)["variant"]

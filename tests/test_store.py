"""The results store: steps committed whole, replaced not duplicated, schema migrated forward."""

import sqlite3
import time

import pytest

from audit.errors import UserError
from audit.store import SCHEMA_VERSION, ResultsStore


def new_run(store):
    return store.create_run(
        name="t", model="m", plan_text='model = "m"\n', plan_path=None,
        device={"cores": 2}, software={"torch": "x"}, variants=[("baseline", {}), ("wanda-50", {"prune": "wanda"})],
    )


ITEMS = [
    {"item_id": "a1", "category": "age", "condition": "ambig", "polarity": "neg", "chosen": 0, "bias_aligned": True, "unknown": False, "correct": False, "latency_ms": 3.5},
    {"item_id": "a2", "category": "age", "condition": "disambig", "polarity": "nonneg", "chosen": 2, "bias_aligned": False, "unknown": True, "correct": True, "latency_ms": 2.0},
]


def test_run_lifecycle(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        assert store.schema_version == SCHEMA_VERSION
        run_id = new_run(store)
        assert store.run(run_id).status == "running"
        assert store.variants(run_id) == [("baseline", {}), ("wanda-50", {"prune": "wanda"})]
        assert store.step(run_id, "baseline", "probe:builtin") is None
        started = time.time()
        metrics = [("overall", "srs", 0.5, 0.3, 0.7, 10), ("age", "srs", 1.0, 0.2, 1.0, 1)]
        store.record_step(run_id, "baseline", "probe:builtin", result={"items": 2}, started_at=started, items=ITEMS, suite="builtin", metrics=metrics)
        step = store.step(run_id, "baseline", "probe:builtin")
        assert step["result"] == {"items": 2} and step["seconds"] >= 0
        assert [i["item_id"] for i in store.items(run_id, "baseline", "builtin")] == ["a1", "a2"]
        assert store.items(run_id, "baseline", "builtin")[0]["latency_ms"] == 3.5
        # Storing the step again replaces it: no duplicate items or metrics.
        store.record_step(run_id, "baseline", "probe:builtin", result={"items": 2}, started_at=started, items=ITEMS, suite="builtin", metrics=metrics)
        assert store.item_count(run_id) == 2 and len(store.metrics(run_id)) == 2
        store.finish_run(run_id, "finished", {"passed": True}, 0)
        run = store.run(run_id)
        assert run.status == "finished" and run.gate == {"passed": True} and run.exit_code == 0
    with ResultsStore(tmp_path / "r.db") as again:  # reopened: everything is there
        assert [r.id for r in again.runs()] == [run_id]
        assert again.step(run_id, "baseline", "probe:builtin")["result"] == {"items": 2}


def test_a_failed_transaction_stores_nothing(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        run_id = new_run(store)
        bad_items = ITEMS + [{"category": "age"}]  # no item_id
        with pytest.raises(KeyError):
            store.record_step(run_id, "baseline", "probe:builtin", result={}, started_at=time.time(), items=bad_items, suite="builtin")
        assert store.step(run_id, "baseline", "probe:builtin") is None
        assert store.item_count(run_id) == 0


def test_wal_mode_and_unknown_run(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(UserError, match="no run 42"):
            store.run(42)


def test_schema_is_migrated_forward_and_a_newer_one_refused(tmp_path, monkeypatch):
    import audit.store as store_module

    path = tmp_path / "r.db"
    with ResultsStore(path) as store:
        new_run(store)

    def add_tags(db):
        db.execute("ALTER TABLE runs ADD COLUMN tags TEXT")

    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setattr(store_module, "MIGRATIONS", (*store_module.MIGRATIONS, add_tags))
    with ResultsStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION + 1
        assert len(store.runs()) == 1
        columns = [r[1] for r in store.db.execute("PRAGMA table_info(runs)")]
        assert "tags" in columns
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION)
    with pytest.raises(UserError, match="newer than this edge-audit understands"):
        ResultsStore(path)


def test_not_a_database(tmp_path):
    path = tmp_path / "r.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="cannot open the results store"):
        ResultsStore(path)

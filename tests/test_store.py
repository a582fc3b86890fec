"""The results store: steps committed whole, replaced not duplicated, schema migrated forward."""

import os
import sqlite3
import stat
import time

import pytest

from audit.errors import UserError
import audit.store as store_module
from audit.store import SCHEMA_VERSION, ResultsStore


def new_run(store):
    return store.create_run(
        name="t", model="m", plan_text='model = "m"\n', plan_path=None,
        device={"cores": 2}, software={"torch": "x"}, variants=[("baseline", {}), ("wanda-50", {"prune": "wanda"})],
    )


def stored_check(path, sql):
    """A store at `path` holding one check, then `sql` run on it past the store (to damage it);
    returns the check's id."""
    with ResultsStore(path) as db:
        check_id = db.record_check({"outcome": "pass", "exit_code": 0, "sentence": "ok"})
    with sqlite3.connect(path) as raw:
        raw.execute(sql)
    raw.close()
    return check_id


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
        with pytest.raises(UserError, match="no run 99999999999999999999999"):  # past SQLite's integers: no such run
            store.run(99999999999999999999999)


def test_schema_is_migrated_forward_and_a_newer_one_refused(tmp_path, monkeypatch):

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
    for readonly in (False, True):
        with pytest.raises(UserError, match=f"cannot open the results store {path}: it is not a SQLite database"):
            ResultsStore(path, readonly=readonly)


def test_random_bytes_are_not_a_database(tmp_path):
    path = tmp_path / "r.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(UserError, match=f"results store {path}"):
        ResultsStore(path)


# The root user may write anything, so permission tests run only as another user.
needs_non_root = pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")


def stored_run(path):
    with ResultsStore(path) as store:
        return new_run(store)


def one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_folder_is_not_a_store(tmp_path):
    for readonly in (False, True):
        with pytest.raises(UserError, match=f"cannot open the results store {tmp_path}: it is a folder, not a database file"):
            ResultsStore(tmp_path, readonly=readonly)


def test_a_store_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=f"results store {blocker / 'r.db'}"):
        ResultsStore(blocker / "r.db")


def test_a_store_name_too_long_is_refused(tmp_path):
    path = tmp_path / ("a" * 300) / "r.db"
    for readonly in (False, True):
        with pytest.raises(UserError, match="a name in the path is longer than the file system allows") as caught:
            ResultsStore(path, readonly=readonly)
        assert str(path) in one_line(caught)


def test_a_symlink_loop_is_refused(tmp_path):
    path = tmp_path / "r.db"
    os.symlink("r.db", path)
    with pytest.raises(UserError, match=f"results store {path}: its symbolic links loop back on themselves"):
        ResultsStore(path)


def test_another_sqlite_database_is_not_a_store(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(UserError, match=f"cannot open the results store {path}: it is a SQLite database, but not edge-audit's"):
        ResultsStore(path)


def test_a_newer_schema_is_refused_for_reading_too(tmp_path):
    path = tmp_path / "r.db"
    stored_run(path)
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    for readonly in (False, True):
        with pytest.raises(UserError, match=f"results store {path} has schema version {SCHEMA_VERSION + 5}, newer than"):
            ResultsStore(path, readonly=readonly)


def test_reading_never_creates_a_store(tmp_path):
    path = tmp_path / "missing" / "r.db"
    with pytest.raises(UserError, match=f"no results store at {path}"):
        ResultsStore(path, readonly=True)
    assert not path.parent.exists()


def test_a_read_only_open_reads_and_refuses_writes(tmp_path):
    path = tmp_path / "r.db"
    run_id = stored_run(path)
    with ResultsStore(path, readonly=True) as store:
        assert [r.id for r in store.runs()] == [run_id]
        assert store.variants(run_id)[0][0] == "baseline"
        with pytest.raises(UserError, match=f"cannot write to the results store {path}: it was opened read-only") as caught:
            store.finish_run(run_id, "finished", None, 0)
        one_line(caught)
        with pytest.raises(UserError, match="opened read-only"):
            new_run(store)
    with ResultsStore(path, readonly=True) as store:
        assert store.run(run_id).status == "running"


def test_a_busy_store_still_reads_and_a_write_is_one_line(tmp_path):
    path = tmp_path / "r.db"
    run_id = stored_run(path)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process mid-transaction
    try:
        with ResultsStore(path, readonly=True) as store:
            assert [r.id for r in store.runs()] == [run_id]
        with pytest.raises(UserError, match=f"the results store {path} is busy") as caught:
            ResultsStore(path, timeout=0.1)
        one_line(caught)
    finally:
        other.execute("ROLLBACK")
        other.close()
    with ResultsStore(path, timeout=0.1) as store:  # free again
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(UserError, match="is busy"):
                store.finish_run(run_id, "finished", None, 0)
            with pytest.raises(UserError, match="is busy"):
                store.record_step(run_id, "baseline", "probe:builtin", result={}, started_at=time.time(), items=ITEMS, suite="builtin")
        finally:
            other.execute("ROLLBACK")
            other.close()
        store.finish_run(run_id, "finished", None, 0)  # the failed writes left no open transaction
        assert store.run(run_id).status == "finished"


def test_reading_falls_back_to_immutable_when_the_folder_is_read_only(tmp_path, monkeypatch):
    """What a read-only folder does to SQLite (no WAL files can be made), without needing permissions."""

    path = tmp_path / "r.db"
    run_id = stored_run(path)
    real_connect = ResultsStore._connect
    opened = []

    def connect(self, target, *, uri=False, readonly=False):
        opened.append(target)
        if uri and "immutable" not in target:
            raise store_module.StoreError(f"cannot open the results store {self.path}: x", "cantopen")
        return real_connect(self, target, uri=uri, readonly=readonly)

    monkeypatch.setattr(ResultsStore, "_connect", connect)
    with ResultsStore(path, readonly=True) as store:
        assert [r.id for r in store.runs()] == [run_id]
    assert opened[-1].endswith("?mode=ro&immutable=1")


def test_an_older_store_is_upgraded_when_read_if_it_can_be(tmp_path):
    path = tmp_path / "r.db"
    db = sqlite3.connect(path)
    store_module.MIGRATIONS[0](db)  # a store of schema version 1
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with ResultsStore(path, readonly=True) as store:
        assert store.schema_version == SCHEMA_VERSION and store.runs() == []


def sqlite_without_tables(path):
    db = sqlite3.connect(path)
    db.execute("VACUUM")  # writes the database's header page: a file of 4096 bytes, no tables
    db.close()


@pytest.mark.parametrize("make", [lambda p: p.write_bytes(b""), lambda p: sqlite3.connect(p).close(), sqlite_without_tables])
def test_reading_an_empty_file_refuses_it_and_writes_nothing(tmp_path, make):
    path = tmp_path / "notes.txt"
    make(path)
    before = path.read_bytes()
    what = "the file is empty" if not before else "the database in it holds no tables"
    with pytest.raises(UserError, match=f"no results store at {path}: {what}") as caught:
        ResultsStore(path, readonly=True)
    one_line(caught)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    with ResultsStore(path) as store:  # a command that writes makes its store there
        assert store.runs() == []


@needs_non_root
def test_a_read_only_file_reads_but_refuses_writing(tmp_path):
    path = tmp_path / "r.db"
    run_id = stored_run(path)
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        with ResultsStore(path, readonly=True) as store:
            assert [r.id for r in store.runs()] == [run_id]
        with pytest.raises(UserError, match=f"cannot write to the results store {path}: the file is not writable") as caught:
            ResultsStore(path)
        one_line(caught)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.db"]  # no read-only WAL files left behind
    finally:
        path.chmod(0o644)
    with ResultsStore(path) as store:  # writable again
        store.finish_run(run_id, "finished", None, 0)


@needs_non_root
def test_a_read_only_folder_reads_but_refuses_writing(tmp_path):
    folder = tmp_path / "store"
    folder.mkdir()
    path = folder / "r.db"
    run_id = stored_run(path)
    folder.chmod(0o555)
    try:
        with ResultsStore(path, readonly=True) as store:
            assert [r.id for r in store.runs()] == [run_id]
        with pytest.raises(UserError, match=f"cannot write to the results store {path}: its folder {folder} is not writable") as caught:
            ResultsStore(path)
        one_line(caught)
        with pytest.raises(UserError, match=f"cannot open the results store {folder / 'new.db'}: its folder {folder} is not writable"):
            ResultsStore(folder / "new.db")
    finally:
        folder.chmod(0o755)


@needs_non_root
def test_an_unreadable_store_is_one_line(tmp_path):
    path = tmp_path / "r.db"
    stored_run(path)
    path.chmod(0)
    try:
        with pytest.raises(UserError, match=f"cannot open the results store {path}: the file is not readable"):
            ResultsStore(path, readonly=True)
    finally:
        path.chmod(0o644)

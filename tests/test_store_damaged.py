"""A damaged results store is refused when opened, before any work, in one plain line naming
the file; a value the store cannot give back (bytes that are not text, JSON that does not parse)
is one line too, without the damaged bytes. Nothing is written to a damaged store."""

import hashlib
import json
import os
import time

import pytest

import audit.store as store_module
from audit.errors import UserError
from audit.probes.items import ItemResult
from audit.store import ResultsStore, StoreError
from tests.audited import PLAN
from tests.test_store import ITEMS, new_run, stored_check
from tui.cli import main

PAGE_SIZE_AT = 16  # where a SQLite file's header gives its page size


def build_store(path, runs=3, items=300):
    """A real store of a few finished runs, each with a probe step of `items` items: some pages."""
    with ResultsStore(path) as store:
        for _ in range(runs):
            run_id = new_run(store)
            rows = [dict(ITEMS[0], item_id=f"i{k}") for k in range(items)]
            store.record_step(run_id, "baseline", "probe:builtin", result={"items": items}, started_at=time.time(), items=rows, suite="builtin")
            store.finish_run(run_id, "finished", {"passed": True}, 0)
    return path


def damage_middle_page(path):
    """Overwrite the first 64 bytes (the b-tree header and cell pointers) of the page in the
    middle of the file, as a failing disk or a stray write would."""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[PAGE_SIZE_AT:PAGE_SIZE_AT + 2], "big")
    start = (len(data) // page_size // 2) * page_size
    data[start:start + 64] = bytes([0xA5, 0x5A, 0x00, 0xFF]) * 16
    path.write_bytes(bytes(data))


def replace_once(path, old, new):
    """Overwrite one stored value's bytes in place, the pages around it left whole."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) >= 1
    at = data.index(old)
    path.write_bytes(data[:at] + new + data[at + len(old):])


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def plain_line(text):
    """The one line a command gave on stderr, checked to be plain printable text."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].isprintable() and lines[0].isascii(), repr(lines[0])
    return lines[0]


@pytest.fixture()
def damaged_store(tmp_path):
    path = build_store(tmp_path / "bad.db")
    damage_middle_page(path)
    return path


@pytest.mark.parametrize("readonly", [False, True])
def test_a_damaged_store_is_refused_when_opened(damaged_store, readonly):
    before = digest(damaged_store)
    with pytest.raises(StoreError) as error:
        ResultsStore(damaged_store, readonly=readonly)
    message = str(error.value)
    assert error.value.reason == "corrupt" and "\n" not in message and message.isprintable()
    assert message.startswith(f"results store {damaged_store} is damaged (SQLite")
    assert "keep a copy of it" in message and ".recover" in message
    assert digest(damaged_store) == before


def test_run_refuses_a_damaged_store_before_starting(damaged_store, tiny_llama, tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN.format(model=tiny_llama, limit=1.5))
    before = digest(damaged_store)
    code = main(["run", str(plan), "--store", str(damaged_store)])
    line = plain_line(capsys.readouterr().err)
    assert code == 2 and f"results store {damaged_store} is damaged" in line
    # No run row, and no work folder beside the store.
    assert digest(damaged_store) == before
    assert not (tmp_path / "runs").exists()


def test_check_refuses_a_damaged_store_before_checking(damaged_store, passed_audit, capsys):
    before = digest(damaged_store)
    code = main(["check", "--model", str(passed_audit["variant"]), "--record", str(passed_audit["record"]), "--store", str(damaged_store)])
    captured = capsys.readouterr()
    line = plain_line(captured.err)
    assert code == 2 and f"results store {damaged_store} is damaged" in line and captured.out == ""
    assert digest(damaged_store) == before


def test_runs_list_refuses_a_damaged_store(damaged_store, capsys):
    assert main(["runs", "list", "--store", str(damaged_store), "--json"]) == 2
    captured = capsys.readouterr()
    assert f"results store {damaged_store} is damaged" in plain_line(captured.err) and captured.out == ""


def test_a_stored_value_that_is_not_text_is_one_plain_line(tmp_path, capsys):
    """Bytes that are not UTF-8 in a column leave the file's structure whole: SQLite's check
    passes, and reading the row is what fails; the line names the column, not its bytes."""
    path = build_store(tmp_path / "r.db")
    replace_once(path, b'{"cores": 2}', b'{"\xff\xfe\x1bes": 2}')
    assert main(["runs", "list", "--store", str(path)]) == 2
    captured = capsys.readouterr()
    line = plain_line(captured.err)
    assert line.startswith(f"edge-audit: error: results store {path} is damaged (its column device_json holds bytes that are not text)")
    assert captured.out == ""
    with ResultsStore(path, readonly=True) as store, pytest.raises(StoreError, match="device_json holds bytes that are not text"):
        store.runs()


def test_a_stored_value_that_is_not_json_is_one_line(tmp_path, capsys):
    path = build_store(tmp_path / "r.db")
    replace_once(path, b'{"cores": 2}', b'{"cores": 2]')
    assert main(["runs", "list", "--store", str(path), "--json"]) == 2
    line = plain_line(capsys.readouterr().err)
    assert f"results store {path} is damaged (its column device_json holds text that is not JSON)" in line
    # The damaged run is refused; the others still read.
    with ResultsStore(path, readonly=True) as store:
        read, refused = [], []
        for run_id in (1, 2, 3):
            try:
                read.append(store.run(run_id).device)
            except UserError as error:
                refused.append(str(error))
        assert read == [{"cores": 2}] * 2 and len(refused) == 1 and "device_json holds text that is not JSON" in refused[0]


def test_a_whole_store_opens_and_reads(tmp_path):
    path = build_store(tmp_path / "r.db")
    for readonly in (False, True):
        with ResultsStore(path, readonly=readonly) as store:
            assert [r.id for r in store.runs()] == [1, 2, 3]
            assert len(store.items(1, "baseline", "builtin")) == 300


def count_checks(monkeypatch):
    """How many times PRAGMA quick_check ran, from now on."""
    calls = []
    real = store_module._Connection.execute

    def execute(self, sql, parameters=(), /):
        if sql.startswith("PRAGMA quick_check"):
            calls.append(sql)
        return real(self, sql, parameters)

    monkeypatch.setattr(store_module._Connection, "execute", execute)
    return calls


def test_a_store_found_whole_is_read_again_only_once_it_changed(tmp_path, monkeypatch):
    """The app opens the store every second while a job runs: a file found whole, and unchanged
    since, is not read through again; once its stamps change it is."""
    path = build_store(tmp_path / "r.db")
    monkeypatch.setattr(store_module, "_FOUND_WHOLE", set())
    checks = count_checks(monkeypatch)
    # Changed just now: time stamps may be too coarse to tell a change made in the same instant.
    ResultsStore(path, readonly=True).close()
    ResultsStore(path, readonly=True).close()
    assert len(checks) == 2
    # Settled (its last change long before the check): found whole once, then trusted while unchanged.
    monkeypatch.setattr(store_module, "SETTLED_SECONDS", -1e9)
    for readonly in (True, True, False):
        ResultsStore(path, readonly=readonly).close()
    assert len(checks) == 3
    stamp = os.stat(path).st_mtime_ns
    damage_middle_page(path)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    with pytest.raises(StoreError, match="is damaged"):
        ResultsStore(path, readonly=True)
    assert len(checks) == 4



def test_a_stored_plan_that_does_not_read_is_said_to_be_the_stores_damage(tmp_path, capsys):
    import sqlite3

    path = build_store(tmp_path / "r.db", runs=1, items=3)
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE runs SET plan_text = 'model = [' WHERE id = 1")
    raw.close()
    assert main(["runs", "show", "1", "--store", str(path)]) == 2
    line = plain_line(capsys.readouterr().err)
    assert line.startswith("edge-audit: error: the plan stored with this run does not read (") and line.endswith("the results store may be damaged")


def test_a_stored_item_that_does_not_read_is_one_line(tmp_path, capsys):
    import sqlite3

    path = build_store(tmp_path / "r.db", runs=1, items=3)
    with sqlite3.connect(path) as raw:
        item_id = raw.execute("SELECT item_id FROM items LIMIT 1").fetchone()[0]
        whole = ItemResult(item_id, "builtin", "Age", "ambig", "neg", "loglik", "mean", 3, 2, 2, (0,), 0, False, True, 1.0, 1.0,
                           (-1.0, -2.0, -3.0), (1, 1, 1)).to_dict()
        raw.execute("UPDATE items SET record_json = ? WHERE item_id = ?", (json.dumps({**whole, "chosen": "x"}), item_id))
    raw.close()
    assert main(["runs", "show", "1", "--store", str(path)]) == 2
    line = plain_line(capsys.readouterr().err)
    assert line.startswith(f"edge-audit: error: results store {path} is damaged (an item baseline's builtin probe stored does not read: chosen is 'x'")


def copy_of(store, tmp_path):
    """A copy of a store (its WAL checkpointed into it), to damage without touching the original."""
    import shutil
    import sqlite3

    path = tmp_path / "copy.db"
    shutil.copyfile(store, path)
    for extra in ("-wal", "-shm"):
        if os.path.exists(f"{store}{extra}"):
            shutil.copyfile(f"{store}{extra}", f"{path}{extra}")
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    return path


@pytest.mark.parametrize(
    "sql, column, held",
    [
        ("UPDATE runs SET created_at = 1e300", "created_at", "1e+300"),
        ("UPDATE runs SET created_at = -1e300", "created_at", "-1e+300"),
        ("UPDATE runs SET created_at = 9e999", "created_at", "inf"),
        ("UPDATE runs SET finished_at = 1e300", "finished_at", "1e+300"),
        ("UPDATE steps SET started_at = 1e300", "started_at", "1e+300"),
        ("UPDATE steps SET finished_at = -9e999", "finished_at", "-inf"),
        ("UPDATE runs SET exit_code = 1e300", "exit_code", "1e+300"),
    ],
)
def test_a_stored_number_that_is_no_time_or_count_is_one_line(passed_audit, tmp_path, capsys, sql, column, held):
    """A time no date is (1e300, infinity) or a fraction where a whole number belongs reads as the
    store's damage, in one line naming the column, where listing or showing its run raised
    OverflowError as the time was shown."""
    import sqlite3

    from tui.screens.history import stored_runs
    from tui.session import read_report

    path = copy_of(passed_audit["store"], tmp_path)
    with sqlite3.connect(path) as raw:
        raw.execute(sql)
    raw.close()
    expected = f"results store {path} is damaged (its column {column} holds {held} where a "
    commands = [["runs", "show", "1"], ["runs", "show", "1", "--json"]]
    if sql.startswith("UPDATE runs"):  # a listing reads no step
        commands += [["runs", "list"], ["runs", "list", "--json"]]
    for command in commands:
        assert main([*command, "--store", str(path)]) == 2, command
        captured = capsys.readouterr()
        assert plain_line(captured.err).startswith("edge-audit: error: " + expected) and captured.out == ""
    with pytest.raises(StoreError, match="is damaged"):
        read_report(path, 1)
    if sql.startswith("UPDATE runs"):
        with pytest.raises(StoreError, match="is damaged"):
            stored_runs(path)


def test_a_stored_check_at_no_time_is_one_line(tmp_path):
    from tui.screens.history import stored_checks

    path = tmp_path / "r.db"
    check_id = stored_check(path, "UPDATE checks SET created_at = 1e300")
    with pytest.raises(StoreError, match=r"its column created_at holds 1e\+300 where a time belongs"):
        stored_checks(path)
    with ResultsStore(path, readonly=True) as db, pytest.raises(StoreError, match="where a time belongs"):
        db.check(check_id)


def test_times_of_any_day_up_to_year_9999_read(tmp_path):
    import sqlite3

    path = build_store(tmp_path / "r.db", runs=1, items=3)
    latest = store_module.LATEST_TIME - 1
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE runs SET created_at = 0, finished_at = ?", (latest,))
        raw.execute("UPDATE steps SET started_at = 0.5, finished_at = ?", (latest,))
    raw.close()
    with ResultsStore(path, readonly=True) as db:
        run = db.run(1)
        assert (run.created_at, run.finished_at) == (0, latest)
        assert [(s["started_at"], s["finished_at"]) for s in db.steps(1)] == [(0.5, latest)]
    time.strftime("%Y-%m-%d %H:%M", time.localtime(latest))

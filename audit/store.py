"""The results store: SQLite in WAL mode; every finished step is committed at once."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from audit.errors import UserError, first_line
from audit.paths import kind, os_reason, probe

SCHEMA_VERSION = 2
# How long a write waits for another process's transaction before the store is called busy.
BUSY_TIMEOUT_SECONDS = 60.0
# A store last changed this long before it was found whole cannot change again with the same time
# stamps, even where they are coarse (FAT keeps even seconds): its stamps tell whether it changed since.
SETTLED_SECONDS = 3.0
# A stored time is seconds since 1970 (UTC) before the last day of year 9999: what the readers turn
# into a date in any zone (time.localtime, datetime) without overflowing; another is damage.
LATEST_TIME = 253402214400.0  # 9999-12-31 00:00 UTC


def default_store_path() -> Path:
    """$EDGE_AUDIT_STORE, else $XDG_DATA_HOME/edge-audit/results.db, else ~/.local/share/edge-audit/results.db."""
    explicit = os.environ.get("EDGE_AUDIT_STORE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "edge-audit" / "results.db"


def _execute_all(db: sqlite3.Connection, script: str) -> None:
    # executescript() would commit the open migration transaction; run statements one by one.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _schema_v1(db: sqlite3.Connection) -> None:
    _execute_all(
        db,
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            model TEXT NOT NULL,
            plan_text TEXT NOT NULL,
            plan_path TEXT,
            status TEXT NOT NULL,
            created_at REAL NOT NULL,
            finished_at REAL,
            work_dir TEXT,
            device_json TEXT,
            software_json TEXT,
            gate_json TEXT,
            exit_code INTEGER
        );
        CREATE TABLE variants (
            run_id INTEGER NOT NULL REFERENCES runs(id),
            name TEXT NOT NULL,
            position INTEGER NOT NULL,
            recipe_json TEXT NOT NULL,
            PRIMARY KEY (run_id, name)
        );
        CREATE TABLE steps (
            run_id INTEGER NOT NULL REFERENCES runs(id),
            variant TEXT NOT NULL,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at REAL,
            finished_at REAL,
            seconds REAL,
            result_json TEXT,
            resources_json TEXT,
            error TEXT,
            PRIMARY KEY (run_id, variant, kind)
        );
        CREATE TABLE items (
            run_id INTEGER NOT NULL REFERENCES runs(id),
            variant TEXT NOT NULL,
            suite TEXT NOT NULL,
            item_id TEXT NOT NULL,
            category TEXT,
            condition TEXT,
            polarity TEXT,
            chosen INTEGER,
            bias_aligned INTEGER,
            is_unknown INTEGER,
            correct INTEGER,
            latency_ms REAL,
            record_json TEXT NOT NULL,
            PRIMARY KEY (run_id, variant, suite, item_id)
        );
        CREATE TABLE metrics (
            run_id INTEGER NOT NULL REFERENCES runs(id),
            variant TEXT NOT NULL,
            suite TEXT NOT NULL,
            category TEXT NOT NULL,
            name TEXT NOT NULL,
            value REAL,
            low REAL,
            high REAL,
            n INTEGER,
            PRIMARY KEY (run_id, variant, suite, category, name)
        );
        CREATE INDEX items_by_variant ON items (run_id, variant, suite);
        """
    )


def _schema_v2(db: sqlite3.Connection) -> None:
    """Field checks: a deployed folder checked against an audit record, on this device."""
    _execute_all(
        db,
        """
        CREATE TABLE checks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at REAL NOT NULL,
            model_path TEXT NOT NULL,
            record_path TEXT NOT NULL,
            audit_run INTEGER,
            variant TEXT,
            outcome TEXT NOT NULL,
            exit_code INTEGER NOT NULL,
            sentence TEXT NOT NULL,
            result_json TEXT NOT NULL
        )
        """
    )


# Migration k takes a store at version k to version k + 1; a store is migrated forward on open.
MIGRATIONS: Sequence[Callable[[sqlite3.Connection], None]] = (_schema_v1, _schema_v2)
assert len(MIGRATIONS) == SCHEMA_VERSION


@dataclass(frozen=True)
class RunRecord:
    id: int
    name: str
    model: str
    status: str
    created_at: float
    finished_at: float | None
    plan_text: str
    plan_path: str | None
    work_dir: str | None
    device: dict[str, Any]
    software: dict[str, Any]
    gate: dict[str, Any] | None
    exit_code: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "model": self.model,
            "status": self.status,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "plan_path": self.plan_path,
            "work_dir": self.work_dir,
            "device": self.device,
            "software": self.software,
            "gate": self.gate,
            "exit_code": self.exit_code,
        }


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def _json_kind(value: Any) -> str:
    """What a JSON value is, in a few words, for a damaged column."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _error_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return None if code is None else code & 0xFF  # the primary code, without the extended bits


# SQLite's primary result codes (sqlite3 names them only from Python 3.11 on).
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26


class StoreError(UserError):
    """A fault of the store file itself; `reason` says which: "busy", "readonly", "cantopen",
    "notadb", "corrupt", "full" or "other"."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def store_error(path: Path, exc: sqlite3.Error, *, readonly: bool = False, timeout: float = BUSY_TIMEOUT_SECONDS) -> StoreError:
    """One line naming the store and what is wrong with it, for an error SQLite raised."""
    code = _error_code(exc)
    text = _plain(first_line(exc))
    undecodable = _UNDECODABLE.match(str(exc))
    if undecodable:
        return damaged(path, f"its column {undecodable.group(1)} holds bytes that are not text")
    if code in (_BUSY, _LOCKED) or "locked" in text:
        return StoreError(
            f"the results store {path} is busy: another process has held it locked for {timeout:g} s; "
            "try again when that process finishes",
            "busy",
        )
    if code == _READONLY or "readonly database" in text:
        if readonly:
            return StoreError(f"cannot write to the results store {path}: it was opened read-only", "readonly")
        return _not_writable(path)
    if code == _NOTADB or "not a database" in text:
        return StoreError(f"cannot open the results store {path}: it is not a SQLite database", "notadb")
    if code == _CORRUPT or "malformed" in text:
        return damaged(path, f"SQLite says: {text}")
    if code == _FULL:
        return StoreError(f"cannot write to the results store {path}: the disk is full", "full")
    if code == _CANTOPEN or "unable to open" in text:
        return StoreError(f"cannot open the results store {path}: {_readonly_reason(path, 'unable to open the database file')}", "cantopen")
    return StoreError(f"cannot use the results store {path}: {text}", "other")


# What Python's sqlite3 says of a text value that is not UTF-8; the value's raw bytes follow it.
_UNDECODABLE = re.compile(r"Could not decode to UTF-8 column '([^']*)'")


def _plain(text: str, limit: int = 200) -> str:
    """A message as printable text: a damaged store's bytes, quoted in SQLite's messages, would
    reach the terminal as control characters."""
    shown = "".join(c if c.isprintable() else "?" for c in text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def damaged(path: Path, detail: str) -> StoreError:
    """A store whose file is damaged: nothing is read from it or written to it, and the file is
    left as it is, for what can still be recovered from it."""
    return StoreError(
        f"results store {path} is damaged ({detail}); keep a copy of it and give another store "
        f"(--store or EDGE_AUDIT_STORE); `sqlite3 {path} .recover` can save what is still readable",
        "corrupt",
    )


def _check_findings(rows: list[str]) -> str:
    """What PRAGMA quick_check found, in a few words: how many problems, and the first."""
    lines = [line.strip() for row in rows for line in str(row).splitlines()]
    problems = [line for line in lines if line and not line.startswith("*** in database")] or ["not whole"]
    first = _plain(problems[0], 120)
    if len(problems) == 1:
        return f"SQLite's check found: {first}"
    return f"SQLite's check found {len(problems)} problems, the first: {first}"


# Stores this process found whole, as (device, inode, size, mtime, ctime) of the file when checked.
_FOUND_WHOLE: set[tuple[int, int, int, int, int]] = set()


def _file_key(path: Path) -> tuple[tuple[int, int, int, int, int], float] | None:
    """The stamps `_FOUND_WHOLE` keeps of a store file, and when it last changed; None when
    it cannot be looked at."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), max(st.st_mtime, st.st_ctime)


def _wal_files(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _readonly_reason(path: Path, default: str) -> str:
    """Why SQLite may not open or write a store: the file, its folder, or the two files WAL
    keeps beside it."""
    if os.path.exists(path):
        if not os.access(path, os.R_OK):
            return "the file is not readable"
        if not os.access(path, os.W_OK):
            return "the file is not writable"
    if not os.access(path.parent, os.W_OK):
        return f"its folder {path.parent} is not writable"
    for extra in _wal_files(path):
        if os.path.exists(extra) and not os.access(extra, os.W_OK):
            return f"{extra.name} beside it is not writable"
    return default


def _not_writable(path: Path) -> StoreError:
    return StoreError(
        f"cannot write to the results store {path}: {_readonly_reason(path, 'it is read-only')}; "
        "give a store you can write (--store or EDGE_AUDIT_STORE)",
        "readonly",
    )


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


class _Cursor(sqlite3.Cursor):
    """A cursor of a `_Connection`: rows are read from the file as they are fetched, so a damaged
    page or a value that is not text is met here, after the statement started. (try/except rather
    than `_file_faults`: it costs nothing per row until an error.)"""

    connection: "_Connection"

    def __next__(self) -> Any:
        try:
            return super().__next__()
        except sqlite3.DatabaseError as exc:
            raise self.connection._file_fault(exc) from None

    def fetchone(self) -> Any:
        try:
            return super().fetchone()
        except sqlite3.DatabaseError as exc:
            raise self.connection._file_fault(exc) from None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        try:
            return super().fetchmany(self.arraysize if size is None else size)
        except sqlite3.DatabaseError as exc:
            raise self.connection._file_fault(exc) from None

    def fetchall(self) -> list[Any]:
        try:
            return super().fetchall()
        except sqlite3.DatabaseError as exc:
            raise self.connection._file_fault(exc) from None


class _Connection(sqlite3.Connection):
    """A connection whose SQLite errors about the file (locked, read-only, damaged, full disk)
    are UserErrors naming the store, whether the statement or the reading of its rows meets them;
    errors of the statements themselves pass unchanged."""

    store_path: Path
    store_readonly: bool
    store_timeout: float

    @contextlib.contextmanager
    def _file_faults(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise self._file_fault(exc) from None

    def _file_fault(self, exc: sqlite3.DatabaseError) -> Exception:
        """The StoreError to raise for an error about the file, else the error itself."""
        # Integrity and programming errors are bugs; operational, internal and plain
        # database errors are about the file.
        if not isinstance(exc, (sqlite3.OperationalError, sqlite3.InternalError)) and type(exc) is not sqlite3.DatabaseError:
            return exc
        return store_error(self.store_path, exc, readonly=self.store_readonly, timeout=self.store_timeout)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        with self._file_faults():
            return self.cursor(_Cursor).execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> sqlite3.Cursor:
        with self._file_faults():
            return self.cursor(_Cursor).executemany(sql, seq_of_parameters)


class ResultsStore:
    """One SQLite file; safe for several processes writing at once (WAL, busy timeout).

    `readonly=True` is for front ends that only read (listing and showing runs): the store must
    exist, it is never created, and a store the user may not write (a read-only file or
    folder) still opens; any write then raises UserError. Otherwise the store is created when
    missing and checked to be writable when opened, so a read-only store is refused before
    any work whose results it could not keep. Either way a damaged store is refused when opened
    (`_check_whole`), before anything is read from it or written to it.
    """

    def __init__(self, path: str | Path | None = None, *, readonly: bool = False, timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self.path = Path(path).expanduser() if path else default_store_path()
        self.readonly = readonly
        self.timeout = timeout
        found = kind(probe(self.path, "results store"))
        if found == "folder":
            raise UserError(f"cannot open the results store {self.path}: it is a folder, not a database file")
        if found == "other":
            raise UserError(f"cannot open the results store {self.path}: it is not a regular file")
        if found is None and readonly:
            raise UserError(f"no results store at {self.path} (run an audit first, or pass --store)")
        self.db = self._open_readonly() if readonly else self._open_writable()

    def _connect(self, target: str, *, uri: bool = False, readonly: bool = False) -> _Connection:
        try:
            db = sqlite3.connect(target, timeout=self.timeout, isolation_level=None, uri=uri, factory=_Connection)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc, readonly=readonly, timeout=self.timeout) from None
        assert isinstance(db, _Connection)
        db.store_path, db.store_readonly, db.store_timeout = self.path, readonly, self.timeout
        db.row_factory = sqlite3.Row
        return db

    def _open_writable(self) -> _Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the folder of the results store {self.path}: {os_reason(exc)}") from None
        if os.path.exists(self.path) and not _writable(self.path):
            # Refused before SQLite opens it: a read-only open would leave read-only WAL files
            # beside the store that keep it unwritable after its permissions are fixed.
            raise _not_writable(self.path)
        db = self._connect(str(self.path))
        try:
            self._check_whole(db)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._migrate(db)
            self._check_writable(db)
        except BaseException:
            db.close()
            raise
        return db

    def _open_readonly(self) -> _Connection:
        """Read-only, without creating anything beside the store when its folder is read-only."""
        base = self.path.resolve().as_uri()
        # mode=ro still creates WAL's two files beside the store, and when the store is not
        # ours to write they stay behind, read-only; immutable reads the file alone, which is
        # the whole store when its WAL holds nothing (nobody can be writing it then either).
        wal = _wal_files(self.path)[0]
        wal_empty = not os.path.exists(wal) or os.path.getsize(wal) == 0
        queries = ["mode=ro&immutable=1"] if wal_empty and not _writable(self.path) else ["mode=ro", "mode=ro&immutable=1"]
        for attempt, query in enumerate(queries, 1):
            db = None
            try:
                db = self._connect(f"{base}?{query}", uri=True, readonly=True)
                version = db.execute("PRAGMA user_version").fetchone()[0]
                self._check_version(version)
                break
            except BaseException as error:
                if db is not None:
                    db.close()
                retry = isinstance(error, StoreError) and error.reason in ("readonly", "cantopen")
                if attempt == len(queries) or not retry:
                    raise
        if version == 0 and not db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
            # An empty file (made by `touch`, or a mistyped path) holds no store. A command
            # that only reads must not write a store into it.
            db.close()
            what = "the file is empty" if os.path.getsize(self.path) == 0 else "the database in it holds no tables"
            raise UserError(f"no results store at {self.path}: {what} (run an audit first, or pass --store)")
        if version < SCHEMA_VERSION:
            db.close()
            return self._upgrade_for_reading(version)  # checked as it is opened to be written
        try:
            self._check_whole(db)
        except BaseException:
            db.close()
            raise
        db.execute("PRAGMA query_only=ON")
        return db

    def _check_whole(self, db: _Connection) -> None:
        """Refuse a damaged store before any work: SQLite finds damage only in the pages a statement
        reads, so a run would be started, or a check stored, in a store that fails later or reads
        back wrong. PRAGMA quick_check reads every page (about 1 ms a MB from memory, seconds for a
        few hundred MB read cold); this process checks a file again only when it has changed since
        it was found whole, so the app, which opens the store every second while a job runs, does
        not read it all each time."""
        found = _file_key(self.path)
        if found is not None and found[0] in _FOUND_WHOLE:
            return
        started = time.time()
        rows = [row[0] for row in db.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            raise damaged(self.path, _check_findings(rows))
        if found is not None and found[1] < started - SETTLED_SECONDS:
            _FOUND_WHOLE.add(found[0])

    def _upgrade_for_reading(self, version: int) -> _Connection:
        """A store from an older edge-audit is upgraded once, when it can be written."""
        try:
            db = self._open_writable()
        except StoreError as error:
            if error.reason not in ("readonly", "cantopen"):
                raise
            raise UserError(
                f"cannot read the results store {self.path}: it has schema version {version}, older than "
                f"this edge-audit's ({SCHEMA_VERSION}), and cannot be upgraded because it is read-only"
            ) from None
        db.store_readonly = True
        db.execute("PRAGMA query_only=ON")
        return db

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------------------
    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise UserError(
                f"results store {self.path} has schema version {version}, newer than this "
                f"edge-audit understands ({SCHEMA_VERSION}); upgrade edge-audit"
            )

    def _migrate(self, db: sqlite3.Connection) -> None:
        # An up-to-date store needs no lock: opening it never waits for another writer.
        version = db.execute("PRAGMA user_version").fetchone()[0]
        self._check_version(version)
        if version == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have migrated it
            self._check_version(version)
            if version == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone():
                raise UserError(f"cannot open the results store {self.path}: it is a SQLite database, but not edge-audit's")
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](db)
                db.execute(f"PRAGMA user_version = {step + 1}")
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error, UserError):
                db.execute("ROLLBACK")
            raise

    def _check_writable(self, db: sqlite3.Connection) -> None:
        """Write the schema version it already has and roll back: SQLite refuses a read-only file
        or folder only at the first write, and results would otherwise be lost after the work."""
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            db.execute(f"PRAGMA user_version = {int(version)}")
        finally:
            with contextlib.suppress(sqlite3.Error, UserError):
                db.execute("ROLLBACK")

    @property
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def _transaction(self) -> "_Transaction":
        return _Transaction(self.db)

    # -- runs -----------------------------------------------------------------------------
    def create_run(
        self,
        *,
        name: str,
        model: str,
        plan_text: str,
        plan_path: str | None,
        device: Mapping[str, Any],
        software: Mapping[str, Any],
        variants: Sequence[tuple[str, Mapping[str, Any]]],
        work_dir: str | None = None,
    ) -> int:
        with self._transaction():
            cursor = self.db.execute(
                "INSERT INTO runs (name, model, plan_text, plan_path, status, created_at, work_dir, device_json, software_json)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (name, model, plan_text, plan_path, time.time(), work_dir, _dumps(device), _dumps(software)),
            )
            run_id = int(cursor.lastrowid)
            for position, (variant, recipe) in enumerate(variants):
                self.db.execute(
                    "INSERT INTO variants (run_id, name, position, recipe_json) VALUES (?, ?, ?, ?)",
                    (run_id, variant, position, _dumps(recipe)),
                )
        return run_id

    def set_work_dir(self, run_id: int, work_dir: str) -> None:
        self.db.execute("UPDATE runs SET work_dir = ? WHERE id = ?", (work_dir, run_id))

    def run(self, run_id: int) -> RunRecord:
        # An id past what SQLite stores is no run either.
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone() if -(2**63) <= run_id < 2**63 else None
        if row is None:
            raise UserError(f"no run {run_id} in {self.path}")
        return self._run_record(row)

    def runs(self) -> list[RunRecord]:
        return [self._run_record(r) for r in self.db.execute("SELECT * FROM runs ORDER BY id")]

    def _json(self, row: sqlite3.Row | Mapping[str, Any], column: str, *, empty: bool = True) -> Any:
        """A JSON column of a row, parsed to the table every such column holds (or None, where
        `empty` allows the column none): one that does not parse, or parses to anything else (a
        list, a number, a string), is a damaged store, said in one line naming the column, rather
        than a JSON error or a traceback from whatever reads it later."""
        try:
            value = _loads(row[column])
        except (ValueError, RecursionError):
            raise damaged(self.path, f"its column {column} holds text that is not JSON") from None
        if isinstance(value, dict) or (value is None and empty):
            return value
        raise damaged(self.path, f"its column {column} holds {_json_kind(value)} where a table belongs")

    def _number(self, row: sqlite3.Row, column: str, kind: type | tuple[type, ...] = (int, float), *, empty: bool = True) -> Any:
        """A numeric column of a row; text or bytes there, or a fraction where a whole number
        belongs, is a damaged store, as for `_json`."""
        value = row[column]
        if (value is None and empty) or (isinstance(value, kind) and not isinstance(value, bool)):
            return value
        if isinstance(value, float):
            held = f"{value:g}"
        else:
            held = "nothing" if value is None else "text" if isinstance(value, str) else "bytes" if isinstance(value, bytes) else _json_kind(value)
        wanted = "a whole number" if kind is int else "a number"
        raise damaged(self.path, f"its column {column} holds {held} where {wanted} belongs")

    def _time(self, row: sqlite3.Row, column: str, *, empty: bool = True) -> float | None:
        """A time column of a row (seconds since 1970): one that is no number, or a number no
        date is (1e300, infinity, before 1970, past year 9999), is a damaged store, rather than
        an OverflowError from whatever shows it as a date."""
        value = self._number(row, column, empty=empty)
        if value is None or 0 <= value < LATEST_TIME:
            return value
        raise damaged(self.path, f"its column {column} holds {value:g} where a time belongs")

    def _run_record(self, row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            id=row["id"],
            name=row["name"],
            model=row["model"],
            status=row["status"],
            created_at=self._time(row, "created_at", empty=False),
            finished_at=self._time(row, "finished_at"),
            plan_text=row["plan_text"],
            plan_path=row["plan_path"],
            work_dir=row["work_dir"],
            device=self._json(row, "device_json") or {},
            software=self._json(row, "software_json") or {},
            gate=self._json(row, "gate_json"),
            exit_code=self._number(row, "exit_code", int),
        )

    def mark_running(self, run_id: int) -> None:
        """A run going on again: the verdict and exit code it finished with are of the run as it
        stood then, and would be listed as this one's until it finishes again."""
        self.db.execute("UPDATE runs SET status = 'running', finished_at = NULL, gate_json = NULL, exit_code = NULL WHERE id = ?", (run_id,))

    def finish_run(self, run_id: int, status: str, gate: Mapping[str, Any] | None, exit_code: int) -> None:
        self.db.execute(
            "UPDATE runs SET status = ?, finished_at = ?, gate_json = ?, exit_code = ? WHERE id = ?",
            (status, time.time(), _dumps(gate) if gate is not None else None, exit_code, run_id),
        )

    def variants(self, run_id: int) -> list[tuple[str, dict[str, Any]]]:
        rows = self.db.execute("SELECT name, recipe_json FROM variants WHERE run_id = ? ORDER BY position", (run_id,))
        return [(r["name"], self._json(r, "recipe_json", empty=False)) for r in rows]

    def add_variant(self, run_id: int, name: str, recipe: Mapping[str, Any], plan_text: str) -> None:
        """Add a variant to a run, with the run's plan now naming it, in one transaction."""
        with self._transaction():
            if self.db.execute("SELECT 1 FROM variants WHERE run_id = ? AND name = ?", (run_id, name)).fetchone():
                raise UserError(f"run {run_id} already has a variant named {name!r}")
            position = self.db.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM variants WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            self.db.execute(
                "INSERT INTO variants (run_id, name, position, recipe_json) VALUES (?, ?, ?, ?)",
                (run_id, name, position, _dumps(recipe)),
            )
            self.db.execute("UPDATE runs SET plan_text = ? WHERE id = ?", (plan_text, run_id))

    def set_plan_text(self, run_id: int, plan_text: str) -> None:
        """Replace a run's plan (a front end revising probe or calibration settings mid-run)."""
        self.db.execute("UPDATE runs SET plan_text = ? WHERE id = ?", (plan_text, run_id))

    # -- steps ----------------------------------------------------------------------------
    def step(self, run_id: int, variant: str, kind: str) -> dict[str, Any] | None:
        """The stored result of a finished step, or None."""
        row = self.db.execute(
            "SELECT * FROM steps WHERE run_id = ? AND variant = ? AND kind = ? AND status = 'done'",
            (run_id, variant, kind),
        ).fetchone()
        return self._step_dict(row) if row else None

    def steps(self, run_id: int, variant: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM steps WHERE run_id = ?"
        args: list[Any] = [run_id]
        if variant is not None:
            query += " AND variant = ?"
            args.append(variant)
        return [self._step_dict(r) for r in self.db.execute(query + " ORDER BY started_at", args)]

    def _step_dict(self, row: sqlite3.Row) -> dict[str, Any]:
        return {
            "variant": row["variant"],
            "kind": row["kind"],
            "status": row["status"],
            "started_at": self._time(row, "started_at"),
            "finished_at": self._time(row, "finished_at"),
            "seconds": self._number(row, "seconds"),
            "result": self._json(row, "result_json"),
            "resources": self._json(row, "resources_json"),
            "error": row["error"],
        }

    def record_step(
        self,
        run_id: int,
        variant: str,
        kind: str,
        *,
        result: Mapping[str, Any],
        started_at: float,
        resources: Mapping[str, Any] | None = None,
        items: Iterable[Mapping[str, Any]] = (),
        suite: str | None = None,
        metrics: Iterable[tuple[str, str, float | None, float | None, float | None, int | None]] = (),
    ) -> None:
        """Commit one finished step with its items and metrics in a single transaction,
        so a step is either wholly stored or not at all; storing it again replaces it."""
        finished = time.time()
        with self._transaction():
            self.db.execute("DELETE FROM items WHERE run_id = ? AND variant = ? AND suite = ?", (run_id, variant, suite or kind))
            self.db.execute("DELETE FROM metrics WHERE run_id = ? AND variant = ? AND suite = ?", (run_id, variant, suite or kind))
            self.db.executemany(
                "INSERT INTO items (run_id, variant, suite, item_id, category, condition, polarity, chosen,"
                " bias_aligned, is_unknown, correct, latency_ms, record_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        run_id,
                        variant,
                        suite or kind,
                        str(item["item_id"]),
                        item.get("category"),
                        item.get("condition"),
                        item.get("polarity"),
                        item.get("chosen"),
                        _flag(item.get("bias_aligned")),
                        _flag(item.get("unknown")),
                        _flag(item.get("correct")),
                        item.get("latency_ms"),
                        _dumps(item),
                    )
                    for item in items
                ],
            )
            self.db.executemany(
                "INSERT INTO metrics (run_id, variant, suite, category, name, value, low, high, n) VALUES (?,?,?,?,?,?,?,?,?)",
                [(run_id, variant, suite or kind, category, name, value, low, high, n) for category, name, value, low, high, n in metrics],
            )
            self.db.execute(
                "INSERT OR REPLACE INTO steps (run_id, variant, kind, status, started_at, finished_at, seconds,"
                " result_json, resources_json, error) VALUES (?, ?, ?, 'done', ?, ?, ?, ?, ?, NULL)",
                (run_id, variant, kind, started_at, finished, finished - started_at, _dumps(result), _dumps(resources or {})),
            )

    def record_failure(self, run_id: int, variant: str, kind: str, error: str, started_at: float) -> None:
        finished = time.time()
        self.db.execute(
            "INSERT OR REPLACE INTO steps (run_id, variant, kind, status, started_at, finished_at, seconds, error)"
            " VALUES (?, ?, ?, 'failed', ?, ?, ?, ?)",
            (run_id, variant, kind, started_at, finished, finished - started_at, error),
        )

    # -- items and metrics ------------------------------------------------------------------
    def items(self, run_id: int, variant: str, suite: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT record_json FROM items WHERE run_id = ? AND variant = ? AND suite = ? ORDER BY item_id",
            (run_id, variant, suite),
        )
        return [self._json(r, "record_json", empty=False) for r in rows]

    def item_count(self, run_id: int) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM items WHERE run_id = ?", (run_id,)).fetchone()[0])

    def metrics(self, run_id: int, variant: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM metrics WHERE run_id = ?"
        args: list[Any] = [run_id]
        if variant is not None:
            query += " AND variant = ?"
            args.append(variant)
        return [dict(r) for r in self.db.execute(query + " ORDER BY variant, suite, category, name", args)]

    # -- field checks -----------------------------------------------------------------------------
    def record_check(self, result: Mapping[str, Any]) -> int:
        """Store one field check (as `CheckResult.to_dict` gives it); returns its id."""
        audit = result.get("audit") or {}
        cursor = self.db.execute(
            "INSERT INTO checks (created_at, model_path, record_path, audit_run, variant, outcome, exit_code, sentence, result_json)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                str(result.get("model_path")),
                str(result.get("record_path")),
                audit.get("run"),
                audit.get("variant"),
                str(result.get("outcome")),
                int(result.get("exit_code", 1)),
                str(result.get("sentence")),
                _dumps(result),
            ),
        )
        return int(cursor.lastrowid)

    def checks(self) -> list[dict[str, Any]]:
        """Every field check, oldest first, without its full result."""
        rows = self.db.execute(
            "SELECT id, created_at, model_path, record_path, audit_run, variant, outcome, exit_code, sentence FROM checks ORDER BY id"
        )
        return [self._check_row(r) for r in rows]

    def _check_row(self, row: sqlite3.Row) -> dict[str, Any]:
        """A stored check's columns, its time and exit code checked as a run's are."""
        data = dict(row)
        data["created_at"] = self._time(row, "created_at", empty=False)
        data["exit_code"] = self._number(row, "exit_code", int, empty=False)
        return data

    def check(self, check_id: int) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM checks WHERE id = ?", (check_id,)).fetchone()
        if row is None:
            raise UserError(f"no check {check_id} in {self.path}")
        data = self._check_row(row)
        data["result"] = self._json(data, "result_json", empty=False)
        del data["result_json"]
        return data


def _flag(value: Any) -> int | None:
    return None if value is None else int(bool(value))


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except BaseException:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        # A failed rollback must not hide the error that caused it.
        with contextlib.suppress(sqlite3.Error, UserError):
            self.db.execute("ROLLBACK")

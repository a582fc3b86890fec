"""Registry, progress jobs and atomic writes."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from audit import atomic
from audit.errors import Cancelled, UserError
from audit.progress import Progress, check_cancel, drive, relay
from audit.registry import Registry


def test_registry_lists_known_names_on_unknown():
    reg: Registry[int] = Registry("pruning method")
    reg.add("wanda", 1, higher_is_better=False)
    reg.add("magnitude", 2)
    assert reg.get("wanda") == 1
    assert reg.meta("wanda") == {"higher_is_better": False}
    with pytest.raises(UserError, match=r"unknown pruning method 'sparse'; known: magnitude, wanda"):
        reg.get("sparse")
    with pytest.raises(ValueError):
        reg.add("wanda", 3)


def _job(n, cancel=None):
    for i in range(n):
        check_cancel(cancel)
        yield Progress("count", i + 1, n)
    return n * 10


def test_drive_returns_result_and_reports_each_event():
    seen = []
    assert drive(_job(3), seen.append) == 30
    assert [e.done for e in seen] == [1, 2, 3]
    assert seen[-1].fraction == 1.0


def test_relay_renames_stage_and_passes_result():
    def outer():
        value = yield from relay(_job(2), stage="outer")
        return value + 1

    seen = []
    assert drive(outer(), seen.append) == 21
    assert {e.stage for e in seen} == {"outer"}


def test_cancel_stops_job():
    cancel = threading.Event()
    job = _job(5, cancel)
    next(job)
    cancel.set()
    with pytest.raises(Cancelled):
        next(job)


def test_atomic_directory_keeps_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic.directory(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("midway")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_what_a_killed_writer_left_is_removed_for_its_target_only(tmp_path):
    # Blocks entered and never left: what a process killed while writing leaves behind.
    (tmp_path / "wanda-50").mkdir()
    blocks = [atomic.directory(tmp_path / name, force=True) for name in ("wanda-50", "wanda-50", "wanda-50-2")]
    for block in blocks:
        (block.__enter__() / "weights.bin").write_bytes(b"x")
    (tmp_path / ".wanda-50.notes.tmp.bak").write_text("the user's")
    assert len(list(tmp_path.glob(".wanda-50.*.tmp"))) == 2
    atomic.remove_unfinished(tmp_path / "wanda-50")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".wanda-50-2.")) == [".wanda-50.notes.tmp.bak", "wanda-50"]
    assert len(list(tmp_path.glob(".wanda-50-2.*.tmp/weights.bin"))) == 1
    atomic.remove_unfinished(tmp_path / "missing" / "wanda-50")  # no folder: nothing to do


# A process replacing `out` (old.txt inside) with a new folder (new.txt inside), killed outright at
# the Nth call of a function of atomic's: the name of what kills it, and N.
_KILLED_REPLACING = """
import os, shutil, signal, sys
from pathlib import Path
from audit import atomic

out, where, nth = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
module = {"replace": os, "rmtree": shutil}[where]
real, calls = getattr(module, where), []

def killed_at_nth(*args, **kwargs):
    calls.append(args)
    if len(calls) == nth:
        if where == "rmtree":  # part of the old folder deleted, then killed
            os.unlink(next(Path(args[0]).rglob("old.txt")))
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(module, where, killed_at_nth)
with atomic.directory(out, force=True) as tmp:
    (tmp / "new.txt").write_text("new")
"""


@pytest.mark.parametrize(
    ("where", "nth", "left"),
    [
        ("replace", 2, "old.txt"),  # the old folder moved aside, the new one not yet in its place
        ("rmtree", 1, "new.txt"),  # the new folder in place, the old one half deleted
    ],
)
def test_what_a_replacement_killed_midway_left_is_mended(tmp_path, where, nth, left):
    out = tmp_path / "wanda-50"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "keep.bin").write_bytes(b"x" * 4096)
    killed = subprocess.run([sys.executable, "-c", _KILLED_REPLACING, str(out), where, str(nth)])
    assert killed.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".wanda-50.*.old"))) == 1  # left beside it
    atomic.remove_unfinished(out)
    assert [p.name for p in tmp_path.iterdir()] == ["wanda-50"]
    assert sorted(p.name for p in out.iterdir()) == sorted([left] + (["keep.bin"] if left == "old.txt" else []))


# A process writing `out` with write_bytes, killed outright while its temporary file is open.
_KILLED_WRITING = """
import os, signal, sys
from pathlib import Path
from audit import atomic

def killed(fd):
    print("writing", flush=True)
    sys.stdin.readline()
    os.kill(os.getpid(), signal.SIGKILL)

os.fsync = killed
atomic.write_bytes(Path(sys.argv[1]), b"new")
"""


def test_a_file_left_by_a_writer_killed_midway_is_removed_by_the_next_write_of_it_and_a_held_one_is_not(tmp_path):
    out = tmp_path / "report.md"
    out.write_text("old")
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITING, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "writing\n"
    (left,) = tmp_path.glob(".report.md.*.tmp")
    old = time.time() - 2 * atomic.LEFT_FILE_AGE_S
    os.utime(left, (old, old))
    atomic.write_bytes(out, b"one")  # its writer still holds it
    assert left.exists() and out.read_bytes() == b"one"
    writer.communicate("go\n")
    assert writer.returncode == -signal.SIGKILL
    fresh = tmp_path / ".report.md.abcdefgh.tmp"  # not held, but made a moment ago: maybe a writer's
    fresh.write_bytes(b"")
    atomic.write_bytes(out, b"two")
    assert not left.exists() and fresh.exists() and out.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, "report.md"]


def test_tidy_writes_nothing_where_nothing_was_left_and_spares_a_held_target(tmp_path):
    out = tmp_path / "wanda-50"
    out.mkdir()
    atomic.tidy(out)
    assert [p.name for p in tmp_path.iterdir()] == ["wanda-50"]  # not even a lock file
    atomic.tidy(tmp_path / "missing" / "wanda-50")
    block = atomic.directory(out, force=True)
    block.__enter__()  # a writer killed while it built the new folder
    lock = atomic.writer_lock(out)
    atomic.tidy(out)  # a writer holds it: what is beside it may be that writer's
    assert len(list(tmp_path.glob(".wanda-50.*.tmp"))) == 1
    lock.close()
    atomic.tidy(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".wanda-50.lock", "wanda-50"]


def test_one_writer_lock_per_target_at_a_time_and_an_impossible_one_is_one_line(tmp_path):
    first = atomic.writer_lock(tmp_path / "wanda-50")
    assert first is not None
    assert atomic.writer_lock(tmp_path / "wanda-50") is None  # held
    other = atomic.writer_lock(tmp_path / "wanda-50-2")
    assert other is not None
    first.close()
    again = atomic.writer_lock(tmp_path / "wanda-50")
    assert again is not None
    again.close()
    other.close()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=f"cannot write {blocker / 'wanda-50'}: "):
        atomic.writer_lock(blocker / "wanda-50")


def test_a_lock_file_its_holder_removed_as_it_let_go_is_not_taken_for_the_lock(tmp_path, monkeypatch):
    """`sole_writer` removes its lock file as it lets go: a process that had opened that file
    just before holds a file no one else will open, so it takes the one now at the path."""
    import fcntl

    real, taken = fcntl.flock, []

    def flock_on_a_removed_file(handle, operation):
        real(handle, operation)
        taken.append(operation)
        if len(taken) == 1:
            os.unlink(tmp_path / ".out.lock")  # its holder let go, removing it, before this flock

    monkeypatch.setattr(fcntl, "flock", flock_on_a_removed_file)
    lock = atomic.writer_lock(tmp_path / "out")
    monkeypatch.undo()
    assert lock is not None and len(taken) == 2
    assert atomic.writer_lock(tmp_path / "out") is None  # what it holds is the lock at the path
    lock.close()
    with atomic.sole_writer(tmp_path / "out"):
        with pytest.raises(UserError, match=f"output folder {tmp_path / 'out'} is being written by another process"):
            with atomic.sole_writer(tmp_path / "out"):
                pass
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_refuses_existing_without_force_and_replaces_with_force(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(UserError, match="already exists"):
        with atomic.directory(target):
            pass
    with atomic.directory(target, force=True) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_write_text(tmp_path):
    path = tmp_path / "a" / "b.txt"
    atomic.write_text(path, "hello")
    atomic.write_text(path, "again")
    assert path.read_text() == "again"
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]


def test_atomic_outputs_get_the_usual_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        with atomic.directory(tmp_path / "out") as tmp:
            (tmp / "f").write_text("x")
        atomic.write_text(tmp_path / "file.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "file.txt").stat().st_mode) == 0o644


def test_atomic_directory_turns_a_full_disk_into_one_line(tmp_path):
    import errno

    target = tmp_path / "out"
    with pytest.raises(UserError, match=f"cannot write {target}: no space left on the device"):
        with atomic.directory(target) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "w.bin"))
    assert list(tmp_path.iterdir()) == []
    # Other errors in the block are the caller's, and pass unchanged.
    with pytest.raises(FileNotFoundError):
        with atomic.directory(target) as tmp:
            open(tmp / "missing" / "f")


def test_atomic_writes_to_impossible_paths_are_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=f"cannot write {blocker / 'sub' / 'a.txt'}: "):
        atomic.write_text(blocker / "sub" / "a.txt", "hello")
    with pytest.raises(UserError, match=f"cannot write {blocker / 'out'}: "):
        with atomic.directory(blocker / "out"):
            pass
    long = tmp_path / ("a" * 300)
    with pytest.raises(UserError, match="a name in the path is longer than the file system allows"):
        with atomic.directory(long):
            pass
    with pytest.raises(UserError, match="a name in the path is longer than the file system allows"):
        atomic.write_text(long, "x")


def test_probe_names_the_path_and_the_problem(tmp_path):
    import os

    from audit.paths import kind, probe, require_file

    assert probe(tmp_path / "missing") is None
    assert kind(probe(tmp_path)) == "folder"
    loop = tmp_path / "loop"
    os.symlink("loop", loop)
    with pytest.raises(UserError, match=f"model {loop}: its symbolic links loop back on themselves"):
        probe(loop, "model")
    with pytest.raises(UserError, match="a name in the path is longer than the file system allows"):
        probe(tmp_path / ("a" * 300))
    with pytest.raises(UserError, match=f"weights file {tmp_path} is a folder, not a file"):
        require_file(tmp_path, "weights file")
    with pytest.raises(UserError, match="is not a valid path"):
        probe(tmp_path / "a\0b")

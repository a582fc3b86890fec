"""`probe --items-out` on a disk that fills while the items are scored: the figures are still
shown, the error names the file and the reason in one line, exit 2, and no partial file is left."""

import errno
import json
import os

import pytest

from tests.test_sequential import sequential_probe_args
from tui.cli import main


@pytest.fixture()
def full_disk_for(monkeypatch):
    """Make the atomic write of files named NAME fail as a full disk does at its flush (ENOSPC),
    every other file written as usual; returns a function taking NAME."""
    import audit.atomic as atomic

    real_fsync = atomic.os.fsync
    names: list[str] = []

    def fsync(fd):
        written = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if any(written.startswith(f".{name}.") for name in names):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return names.append


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def nothing_beside(path) -> bool:
    return not [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]


def test_items_out_that_cannot_be_written_keeps_the_json_summary(tiny_llama, tmp_path, capsys, full_disk_for):
    items = tmp_path / "full" / "items.jsonl"
    items.parent.mkdir()
    items.write_text("keep\n")  # an earlier run's file: replaced whole or not at all
    full_disk_for(items.name)
    code = main(["--progress", "lines", "probe", "--model", str(tiny_llama), "--limit", "2", "--items-out", str(items), "--json"])
    captured = capsys.readouterr()
    assert code == 2
    data = json.loads(captured.out)
    assert data["n_items"] == 10 and data["complete"] and "items_out" not in data
    assert data["metrics"]["overall"]["n_items"] == 10
    line = [x for x in captured.err.splitlines() if x.startswith("edge-audit: error:")]
    assert line == [f"edge-audit: error: cannot write {items}: no space left on the device"], captured.err
    assert items.read_text() == "keep\n" and nothing_beside(items)


def test_items_out_that_cannot_be_written_keeps_the_table(tiny_llama, tmp_path, capsys, full_disk_for):
    items = tmp_path / "items.jsonl"
    full_disk_for(items.name)
    code = main(["probe", "--model", str(tiny_llama), "--limit", "2", "--items-out", str(items)])
    captured = capsys.readouterr()
    assert code == 2
    assert "overall" in captured.out and "10 items in" in captured.out and "item results:" not in captured.out
    assert one_error_line(captured.err) == f"edge-audit: error: cannot write {items}: no space left on the device"
    assert not items.exists() and nothing_beside(items)


def test_a_sequential_probe_keeps_its_verdicts_when_its_items_cannot_be_written(tiny_llama, tmp_path, capsys, full_disk_for):
    out = tmp_path / "seq.jsonl"
    args = sequential_probe_args(tiny_llama, tmp_path, capsys, out)
    full_disk_for(out.name)
    code = main(args + ["--json"])
    captured = capsys.readouterr()
    assert code == 2
    data = json.loads(captured.out)
    assert data["stopped"] == "settled" and data["gate"]["findings"] and "items_out" not in data
    assert one_error_line(captured.err) == f"edge-audit: error: cannot write {out}: no space left on the device"
    assert not out.exists() and nothing_beside(out)


def test_items_out_written_is_named(tiny_llama, tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    assert main(["probe", "--model", str(tiny_llama), "--limit", "1", "--items-out", str(items), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["items_out"] == str(items) and len(items.read_text().splitlines()) == data["n_items"] + 1

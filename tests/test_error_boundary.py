"""Every bad input and fault found in the field, run as a user runs it (a fresh `edge-audit`
process): each ends with exit code 2 and one line naming the problem, never a traceback, and
nothing is loaded or scored first."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from audit.store import ResultsStore
from tests.conftest import SHARED_DATA, run_cli


def copy_model(tiny: Path, folder: Path) -> Path:
    return Path(shutil.copytree(tiny, folder))


def safetensors_dir(tmp: Path, tiny: Path) -> list[str]:
    model = copy_model(tiny, tmp / "m")
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").mkdir()
    return ["models", "info", str(model)]


def safetensors_loop(tmp: Path, tiny: Path) -> list[str]:
    model = copy_model(tiny, tmp / "m")
    (model / "model.safetensors").unlink()
    os.symlink("model.safetensors", model / "model.safetensors")
    return ["models", "info", str(model)]


def unknown_dtype(tmp: Path, tiny: Path) -> list[str]:
    model = copy_model(tiny, tmp / "m")
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    first = next(k for k in header if k != "__metadata__")
    header[first]["dtype"] = "Q9"
    encoded = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])
    return ["models", "info", str(model)]


def config_string(tmp: Path, tiny: Path) -> list[str]:
    model = copy_model(tiny, tmp / "m")
    config = json.loads((model / "config.json").read_text())
    config["hidden_size"] = "sixty-four"
    (model / "config.json").write_text(json.dumps(config))
    return ["models", "info", str(model)]


def name_too_long(tmp: Path, tiny: Path) -> list[str]:
    return ["models", "info", str(tmp / ("a" * 300))]


def stereoset_shape(tmp: Path, tiny: Path) -> list[str]:
    path = tmp / "stereoset.json"
    path.write_text(json.dumps([{"intrasentence": "not a list"}]))
    return ["probe", "--model", str(tiny), "--suite", f"stereoset:{path}"]


def bbq_metadata_binary(tmp: Path, tiny: Path) -> list[str]:
    metadata = tmp / "additional_metadata.csv"
    metadata.write_bytes(bytes(range(256)) * 4)
    return ["probe", "--model", str(tiny), "--suite", f"bbq:{SHARED_DATA / 'bbq' / 'Age.jsonl'}", "--bbq-metadata", str(metadata)]


def memory_after_command(tmp: Path, tiny: Path) -> list[str]:
    return ["models", "info", str(tiny), "--max-memory-mb", "nan"]


def memory_before_command(tmp: Path, tiny: Path) -> list[str]:
    return ["--max-memory-mb", "1", "models", "info", str(tiny)]


def threads_zero(tmp: Path, tiny: Path) -> list[str]:
    return ["--threads", "0", "probe", "--model", str(tiny)]


def threads_past_the_device(tmp: Path, tiny: Path) -> list[str]:
    # Starting this many threads once crashed the process; refused before anything loads.
    return ["probe", "--model", str(tiny), "--threads", "99999"]


def seed_count_past_the_most(tmp: Path, tiny: Path) -> list[str]:
    # A count this large once overflowed while the seeds were listed.
    return ["probe", "--model", str(tiny), "--mode", "generate", "--seeds", "99999999999999999999999"]


def seed_past_64_bits(tmp: Path, tiny: Path) -> list[str]:
    return ["probe", "--model", str(tiny), "--mode", "generate", "--seeds", "99999999999999999999,1"]


def order_seed_negative(tmp: Path, tiny: Path) -> list[str]:
    return ["probe", "--model", str(tiny), "--sequential", "--order-seed", "-5"]


def categories_none_named(tmp: Path, tiny: Path) -> list[str]:
    # Once read as every category.
    return ["probe", "--model", str(tiny), "--categories", " , ,"]


def memory_zero(tmp: Path, tiny: Path) -> list[str]:
    return ["--max-memory-mb", "0", "models", "info", str(tiny)]


def option_not_taken(tmp: Path, tiny: Path) -> list[str]:
    return ["--max-memory-mb", "10", "device"]


def report_into_a_file(tmp: Path, tiny: Path) -> list[str]:
    store = tmp / "results.db"
    ResultsStore(store).close()
    (tmp / "report").write_text("keep")
    return ["runs", "report", "1", "--out", str(tmp / "report"), "--store", str(store)]


def store_is_a_folder(tmp: Path, tiny: Path) -> list[str]:
    (tmp / "store").mkdir()
    return ["runs", "list", "--store", str(tmp / "store")]


def store_not_a_database(tmp: Path, tiny: Path) -> list[str]:
    (tmp / "results.db").write_bytes(os.urandom(4096))
    return ["runs", "list", "--store", str(tmp / "results.db")]


def items_out_a_folder(tmp: Path, tiny: Path) -> list[str]:
    return ["probe", "--model", str(tiny), "--limit", "1", "--items-out", str(tmp)]


def items_out_unwritable(tmp: Path, tiny: Path) -> list[str]:
    return ["probe", "--model", str(tiny), "--limit", "1", "--items-out", "/proc/edge-audit/items.jsonl"]


def prune_out_unwritable(tmp: Path, tiny: Path) -> list[str]:
    return ["prune", "--model", str(tiny), "--method", "magnitude", "--out", "/proc/edge-audit-out"]


def prune_out_a_file(tmp: Path, tiny: Path) -> list[str]:
    (tmp / "out").write_text("keep")
    return ["prune", "--model", str(tiny), "--method", "magnitude", "--out", str(tmp / "out")]


def plan_not_utf8(tmp: Path, tiny: Path) -> list[str]:
    (tmp / "plan.toml").write_bytes(b"name = \"\xff\xfe\"\n")
    return ["run", str(tmp / "plan.toml"), "--store", str(tmp / "results.db")]


def items_file_binary(tmp: Path, tiny: Path) -> list[str]:
    (tmp / "a.jsonl").write_bytes(bytes(range(256)))
    return ["probe-compare", str(tmp / "a.jsonl"), str(tmp / "a.jsonl")]


CASES = {
    "model.safetensors is a folder": (safetensors_dir, "model.safetensors"),
    "model.safetensors is a symlink loop": (safetensors_loop, "model.safetensors"),
    "safetensors header with an unknown dtype": (unknown_dtype, "Q9"),
    "config hidden_size is text": (config_string, "hidden_size"),
    "a 300-character path": (name_too_long, "longer than the file system allows"),
    "StereoSet JSON of the wrong shape": (stereoset_shape, "stereoset.json"),
    "--bbq-metadata given a binary file": (bbq_metadata_binary, "additional_metadata.csv"),
    "--max-memory-mb nan after the command": (memory_after_command, "--max-memory-mb"),
    "--max-memory-mb before the command stops the load": (memory_before_command, "not enough memory"),
    "--threads 0": (threads_zero, "--threads"),
    "--threads 99999": (threads_past_the_device, "--threads must be at most"),
    "--seeds past the most": (seed_count_past_the_most, "--seeds takes at most 1000 seeds"),
    "--seeds past 64 bits": (seed_past_64_bits, "--seeds: a seed must be a 64-bit integer"),
    "--order-seed negative": (order_seed_negative, "--order-seed: must be at least 0"),
    "--categories naming none": (categories_none_named, "--categories names no category"),
    "--max-memory-mb 0": (memory_zero, "--max-memory-mb"),
    "an option before a command that does not take it": (option_not_taken, "does not apply to `edge-audit device`"),
    "runs report --out an existing file": (report_into_a_file, "not a folder"),
    "a store that is a folder": (store_is_a_folder, "store"),
    "a store that is not a database": (store_not_a_database, "results.db"),
    "probe --items-out a folder": (items_out_a_folder, "item results file"),
    "probe --items-out an unwritable path": (items_out_unwritable, "item results file"),
    "prune --out an unwritable path": (prune_out_unwritable, "/proc/edge-audit-out"),
    "prune --out an existing file": (prune_out_a_file, "not a folder"),
    "a plan that is not UTF-8": (plan_not_utf8, "plan.toml"),
    "an item file of binary bytes": (items_file_binary, "a.jsonl"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_fault_is_one_line_and_exit_2(case, tmp_path, tiny_llama):
    make, named = CASES[case]
    done = run_cli(*make(tmp_path, tiny_llama), timeout=300)
    err = done.stderr.strip()
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    assert done.returncode == 2, (done.returncode, err)
    assert err.count("\n") == 0, err
    assert named in err, err
    if (tmp_path / "report").is_file():
        assert (tmp_path / "report").read_text() == "keep"
    if (tmp_path / "out").is_file():
        assert (tmp_path / "out").read_text() == "keep"


def test_bbq_lines_of_the_wrong_type_are_reported_with_file_and_line(tmp_path, tiny_llama):
    lines = (SHARED_DATA / "bbq" / "Age.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    bad = json.loads(lines[1])
    bad["label"] = "two"
    path = tmp_path / "Age.jsonl"
    path.write_text("\n".join([lines[0], json.dumps(bad), lines[2]]) + "\n", encoding="utf-8")
    done = run_cli("probe", "--model", str(tiny_llama), "--suite", f"bbq:{path}", "--json", timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"skipped {path}:2: " in done.stderr and "label" in done.stderr
    assert json.loads(done.stdout)["n_items"] == 2


def test_a_full_disk_is_refused_before_pruning(tmp_path, tiny_llama, monkeypatch, capsys):
    import shutil as shutil_module

    from tui.cli import main

    real = shutil_module.disk_usage
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: real(path)._replace(free=1024))
    code = main(["prune", "--model", str(tiny_llama), "--method", "magnitude", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not enough free space" in err and err.count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_a_disk_that_fills_while_writing_is_one_line(tmp_path, tiny_llama, monkeypatch, capsys):
    import errno

    import audit.compress.prune as prune_module
    from tui.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out"))

    monkeypatch.setattr(prune_module, "save_dense", full)
    code = main(["prune", "--model", str(tiny_llama), "--method", "magnitude", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no space left on the device" in err and err.count("\n") == 0
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_a_read_only_store_is_refused_before_the_run_and_still_lists(tmp_path, monkeypatch, capsys):
    """A store this user may not write (simulated: root ignores file permissions): `run`
    refuses it in one line before any work; `runs list` still reads it."""
    import audit.store as store_module
    from tui.cli import main

    store = tmp_path / "results.db"
    ResultsStore(store).close()
    monkeypatch.setattr(store_module, "_writable", lambda path: False)
    code = main(["run", "--default", "--store", str(store)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"cannot write to the results store {store}" in err and err.count("\n") == 0
    assert main(["runs", "list", "--store", str(store), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"runs": []}


def test_a_command_started_in_a_removed_folder_says_so_in_one_line(tmp_path):
    # Before, prune ended as PyTorch's libraries loaded: "Intel oneMKL FATAL ERROR: Cannot load
    # libtorch_cpu.so", and nothing named the folder.
    import subprocess
    import sys

    gone = tmp_path / "gone"
    gone.mkdir()
    root = Path(__file__).resolve().parents[1]
    script = f"import os, sys; os.chdir({str(gone)!r}); os.rmdir({str(gone)!r}); sys.path.insert(0, {str(root)!r}); from tui.cli import main; sys.exit(main(['prune', '--method', 'magnitude', '--sparsity', '0.1', '--out', {str(tmp_path / 'out')!r}]))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=root)
    assert done.returncode == 2
    assert done.stderr == f"edge-audit: error: the working folder {gone} no longer exists: start edge-audit again from a folder that exists\n"


@pytest.mark.parametrize(("args", "path"), [
    (("probe", "--model", "~no-such-user-here/x", "--limit", "1"), "~no-such-user-here/x"),
    (("runs", "list", "--store=~no-such-user-here/r.db"), "~no-such-user-here/r.db"),
    (("run", "~no-such-user-here/plan.toml"), "~no-such-user-here/plan.toml"),
])
def test_a_path_under_a_user_who_is_not_here_is_one_line(args, path):
    # Before: pathlib's "RuntimeError: Could not determine home directory." as a traceback.
    done = run_cli(*args)
    assert done.returncode == 2
    assert done.stderr == f"edge-audit: error: {path}: there is no user 'no-such-user-here' here, so ~no-such-user-here names no folder\n"

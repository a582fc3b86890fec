"""`edge-audit prune`: the JSON it prints, the folders it writes, and how it refuses bad input."""

import hashlib
import json
import threading
from pathlib import Path

import pytest

from audit import atomic
from audit.compress import prune as prune_module
from audit.compress.prune import prune
from audit.compress.recipe import PruneRecipe
from audit.errors import Cancelled, UserError
from audit.models import load_model
from audit.plans import CalibrationSpec
from audit.progress import drive
from tests.conftest import run_cli
from tui.cli import main

FAST = ("--nsamples", "4", "--seqlen", "48", "--chunk", "64")
REQUIRED_KEYS = {
    "method", "pattern", "target_sparsity", "actual_sparsity", "per_layer", "seconds", "rss_peak_mb",
    "size_on_disk_mb", "perplexity_before", "perplexity_after",
}


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """A short held-out text keeps perplexity quick on the tiny model."""
    path = tmp_path_factory.mktemp("text") / "heldout.txt"
    path.write_text("The river rose after the storm, and the bridge held. " * 12)
    return path


@pytest.fixture(scope="module")
def pruned(tiny_llama, tmp_path_factory, heldout):
    out = tmp_path_factory.mktemp("pruned") / "wanda"
    result = run_cli("prune", "--model", str(tiny_llama), "--method", "wanda", "--sparsity", "0.5", *FAST, "--text", str(heldout), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout), result


def test_prune_json_has_every_field(pruned):
    out, data, result = pruned
    assert REQUIRED_KEYS <= set(data)
    assert data["method"] == "wanda" and data["pattern"] == "unstructured" and data["target_sparsity"] == 0.5
    assert data["actual_sparsity"] == pytest.approx(0.5, abs=0.005)
    assert len(data["per_layer"]) == 14 and all(v == pytest.approx(0.5, abs=0.01) for v in data["per_layer"].values())
    assert set(data["size_on_disk_mb"]) == {"dense", "compressed"}
    assert 0 < data["size_on_disk_mb"]["compressed"] < data["size_on_disk_mb"]["dense"]
    assert data["perplexity_before"] > 1 and data["perplexity_after"] > 1
    assert data["seconds"] > 0 and data["rss_peak_mb"] > 0
    assert data["recipe"]["calibration"]["nsamples"] == 4 and data["recipe"]["calibration"]["seqlen"] == 48
    assert result.stderr == ""  # no progress bar when stderr is not a terminal, and no library chatter


def test_both_output_folders_load_and_score_like_the_pruned_model(pruned, heldout):
    out, data, _ = pruned
    from audit.perplexity import perplexity

    dense = drive(load_model(str(out)))
    sparse = drive(load_model(str(out / "compressed")))
    text = heldout.read_text()
    for model in (dense, sparse):
        assert model.facts().weight_sparsity == pytest.approx(data["actual_sparsity"], abs=1e-6)
        assert model.text_prefix_ids == (0,)
        result = drive(perplexity(model, text, chunk_tokens=64))
        assert result.perplexity == pytest.approx(data["perplexity_after"], rel=1e-5)
    # The dense folder's size does not count the compressed one nested inside it.
    assert dense.facts().size_on_disk_bytes < sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    meta = json.loads((out / "edge_audit.json").read_text())
    assert meta["compression"][-1]["prune"]["method"] == "wanda" and meta["text_prefix_token"] == "<|endoftext|>"
    assert any("pruned with wanda" in note for note in dense.facts().notes)


def test_model_option_before_the_command_is_kept(tiny_llama, tmp_path, heldout, capsys):
    code = main(["--model", str(tiny_llama), "prune", "--method", "magnitude", "--text", str(heldout), "--chunk", "64", "--out", str(tmp_path / "m"), "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(tiny_llama)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sparsity", "1.2"], "sparsity must be between 0 and 0.95"),
        (["--sparsity", "-0.1"], "sparsity must be between 0 and 0.95"),
        (["--pattern", "3:2"], "malformed pattern '3:2'"),
        (["--pattern", "2-4"], "malformed pattern '2-4'"),
        (["--pattern", "2:4", "--sparsity", "0.6"], "pattern 2:4 means sparsity 0.5"),
        (["--pattern", "1:4", "--sparsity", "0.25"], "pattern 1:4 means sparsity 0.75"),
        (["--method", "wanda", "--scope", "matrix"], "wanda supports scope row, not 'matrix'"),
        (["--method", "sparsegpt", "--scope", "row"], "--scope applies to magnitude, random, wanda"),
        (["--method", "obs"], "unknown pruning method 'obs'; known: magnitude, random, sparsegpt, wanda"),
        (["--exclude", "*.no_such_layer"], "exclude pattern '*.no_such_layer' matches no layer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_llama, tmp_path, capsys, args, message):
    code = main(["prune", "--model", str(tiny_llama), *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("edge-audit: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [("", "is empty"), ("   \n\n", "is empty"), ("Too short.", "needs at least 47")])
def test_empty_or_short_calibration_file_is_refused(tiny_llama, tmp_path, capsys, content, message):
    calib = tmp_path / "calib.txt"
    calib.write_text(content)
    code = main(["prune", "--model", str(tiny_llama), "--calib", str(calib), *FAST, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_jsonl_calibration_file_is_read(tiny_llama, tmp_path, heldout, capsys):
    calib = tmp_path / "calib.jsonl"
    calib.write_text("\n".join(json.dumps({"text": f"Paragraph {i}: the quick brown fox jumps over the lazy dog."}) for i in range(40)))
    code = main(["prune", "--model", str(tiny_llama), "--calib", str(calib), *FAST, "--text", str(heldout), "--out", str(tmp_path / "out"), "--json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["recipe"]["calibration"]["source"] == str(calib)


def test_existing_output_needs_force_and_source_is_protected(tiny_llama, tmp_path, heldout, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code = main(["prune", "--model", str(tiny_llama), "--method", "magnitude", "--out", str(out)])
    assert code == 2 and "already exists (use --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    before = tree_digest(tiny_llama)
    for target in (tiny_llama, tiny_llama / "sub", tiny_llama.parent):
        code = main(["prune", "--model", str(tiny_llama), "--method", "magnitude", "--out", str(target), "--force"])
        assert code == 2 and "would overwrite or sit inside the source model" in capsys.readouterr().err
    assert tree_digest(tiny_llama) == before
    code = main(["prune", "--model", str(tiny_llama), "--method", "magnitude", "--text", str(heldout), "--chunk", "64", "--out", str(out), "--force"])
    assert code == 0
    assert not (out / "keep.txt").exists() and (out / "compressed" / "edge_audit.json").is_file()


def test_what_a_killed_prune_left_beside_its_output_is_mended_by_the_next(tiny_llama, tmp_path, heldout, capsys):
    """Killed between the two renames of a replacement: the old output, whole, is back in place
    (so, without --force, it is kept). Killed while building a new one: its half-written folder
    goes. Either is done only once no other process writes the output."""
    out = tmp_path / "out"
    kept = tmp_path / ".out.k1ll3d_x.old" / "out"
    kept.mkdir(parents=True)
    (kept / "keep.txt").write_text("mine")
    half = tmp_path / ".out.k1ll3d_y.tmp"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")
    args = ["prune", "--model", str(tiny_llama), "--method", "magnitude", "--text", str(heldout), "--chunk", "64", "--out", str(out)]
    writer = atomic.writer_lock(out)  # another process writing the same output
    code = main(args)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"edge-audit: error: output folder {out} is being written by another process; wait until it has ended, or choose another folder"
    )
    assert half.is_dir() and kept.is_dir() and not out.exists()  # the other writer's, for all this process knows
    writer.close()
    code = main(args)
    assert code == 2 and "already exists (use --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main([*args, "--force"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no leftover, and no lock file
    assert not (out / "keep.txt").exists() and (out / "compressed" / "edge_audit.json").is_file()


def test_cancel_midway_leaves_nothing_and_the_source_untouched(tiny_llama, tmp_path, heldout):
    before = tree_digest(tiny_llama)
    cancel = threading.Event()
    out = tmp_path / "out"

    def on_progress(event):
        if event.stage == "prune" and event.done >= 1:
            cancel.set()  # as the app's cancel button or the CLI's Ctrl-C does

    job = prune(str(tiny_llama), PruneRecipe("sparsegpt"), out, calibration=CalibrationSpec(nsamples=4, seqlen=48), text=heldout, chunk_tokens=64, cancel=cancel)
    with pytest.raises(Cancelled):
        drive(job, on_progress)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert tree_digest(tiny_llama) == before


def test_failure_while_saving_leaves_no_half_written_folder(tiny_llama, tmp_path, heldout, monkeypatch, capsys):
    before = tree_digest(tiny_llama)

    def broken(items, path):
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prune_module, "save_sparse", broken)
    with pytest.raises(UserError, match="no space left on the device"):  # the user's to fix: one line, not a traceback
        drive(prune(str(tiny_llama), PruneRecipe("magnitude"), tmp_path / "out", text=heldout, chunk_tokens=64))
    assert list(tmp_path.iterdir()) == []
    assert tree_digest(tiny_llama) == before


def test_ctrl_c_exits_130_and_keeps_nothing(tiny_llama, tmp_path, heldout, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prune_module, "save_dense", interrupted)
    code = main(["prune", "--model", str(tiny_llama), "--method", "random", "--text", str(heldout), "--chunk", "64", "--out", str(tmp_path / "out")])
    assert code == 130 and "cancelled" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_human_output(tiny_llama, tmp_path, heldout, capsys):
    code = main(["prune", "--model", str(tiny_llama), "--method", "magnitude", "--pattern", "2:4", "--text", str(heldout), "--chunk", "64", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "magnitude (2:4)" in out and "0.500 / 0.5000" in out and "compressed" in out


def test_n_of_m_records_the_share_of_weights_removed(tiny_llama, tmp_path, heldout, capsys):
    """1:4 keeps one weight of every four: recorded, shown and measured as 0.75 sparsity."""
    out = tmp_path / "out"
    code = main(["prune", "--model", str(tiny_llama), "--method", "magnitude", "--pattern", "1:4", "--text", str(heldout), "--chunk", "64", "--out", str(out), "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["pattern"] == "1:4" and data["target_sparsity"] == 0.75 and data["recipe"]["target_sparsity"] == 0.75
    assert data["actual_sparsity"] == pytest.approx(0.75, abs=1e-6)
    assert all(value == pytest.approx(0.75) for value in data["per_layer"].values())
    assert drive(load_model(str(out))).facts().weight_sparsity == pytest.approx(0.75, abs=1e-6)


def test_sigterm_while_saving_exits_143_and_keeps_nothing(tiny_llama, tmp_path, heldout, monkeypatch, capsys):
    import os
    import signal

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` from another shell does

    monkeypatch.setattr(prune_module, "save_dense", terminated)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as info:
            main(["prune", "--model", str(tiny_llama), "--method", "random", "--text", str(heldout), "--chunk", "64", "--out", str(tmp_path / "out")])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert info.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []

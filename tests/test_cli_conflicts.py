"""Options that contradict one another, or that the command would ignore, are refused in one
line before any work; errors from a damaged model folder or key file say what is wrong; a
stopped run still answers --json."""

from __future__ import annotations

import json
import shutil

import pytest

import audit.compress.prune
import audit.compress.quantize
import tui.cli.run
from audit.errors import UserError
from audit.plans import parse_plan
from audit.progress import Progress
from tui.cli import main


def refused(capsys, argv: list[str]) -> str:
    """The one line a refused command prints; exit code 2."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("edge-audit: error: ") and err.count("\n") == 1, err
    return err.strip()


class Called(Exception):
    """Raised by a stand-in for the work: what it was asked is in `asked`."""

    def __init__(self, **asked):
        super().__init__("the command went on to the work")
        self.asked = asked


@pytest.fixture()
def no_pruning(monkeypatch):
    """`prune` stands in for the work: a refused command never reaches it, and an accepted
    one shows what it would have pruned with."""

    def prune(model, recipe, out, **kwargs):
        raise Called(recipe=recipe, **kwargs)

    monkeypatch.setattr(audit.compress.prune, "prune", prune)


@pytest.fixture()
def no_quantizing(monkeypatch):
    def quantize(model, scheme, out, **kwargs):
        raise Called(scheme=scheme, **kwargs)

    monkeypatch.setattr(audit.compress.quantize, "quantize", quantize)


# -- prune ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        (["--method", "wanda", "--scope", "row"], "--scope row changes nothing for wanda, which always compares weights within each output row"),
        (["--method", "magnitude", "--pattern", "2:4", "--scope", "row"], "--scope row changes nothing with pattern 2:4"),
        (["--method", "random", "--pattern", "2:4", "--scope", "matrix"], "--scope matrix changes nothing with pattern 2:4"),
        (["--method", "magnitude", "--calib", "CALIB"], "--calib applies to the methods that calibrate (wanda, sparsegpt); magnitude uses no calibration"),
        (["--method", "magnitude", "--statistics", "dense"], "--statistics applies to the methods that calibrate (wanda, sparsegpt); magnitude uses"),
        (["--method", "random", "--statistics", "dense"], "--statistics applies to the methods that calibrate (wanda, sparsegpt); random uses"),
        (["--method", "random", "--statistics", "sequential"], "--statistics applies to the methods that calibrate"),
        (["--method", "magnitude", "--nsamples", "4"], "--nsamples applies to the methods that calibrate"),
        (["--method", "random", "--seqlen", "48"], "--seqlen applies to the methods that calibrate"),
        (["--method", "magnitude", "--seed", "0"], "--seed applies to random and to the methods that calibrate (wanda, sparsegpt); magnitude draws nothing"),
    ],
)
def test_prune_refuses_an_option_its_method_would_ignore(capsys, tmp_path, tiny_llama, no_pruning, options, message):
    calib = tmp_path / "calib.txt"
    calib.write_text("Some calibration text. " * 50)
    options = [str(calib) if o == "CALIB" else o for o in options]
    err = refused(capsys, ["prune", "--model", str(tiny_llama), *options, "--out", str(tmp_path / "out")])
    assert message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options, per_row, seed",
    [
        (["--method", "magnitude"], False, 0),
        (["--method", "magnitude", "--scope", "row"], True, 0),
        (["--method", "magnitude", "--scope", "matrix"], False, 0),
        (["--method", "random", "--scope", "row", "--seed", "3"], True, 3),
        (["--method", "wanda"], False, 0),
        (["--method", "wanda", "--statistics", "dense", "--seed", "5"], False, 5),
        (["--method", "sparsegpt", "--nsamples", "4", "--seqlen", "48"], False, 0),
    ],
)
def test_prune_options_that_apply_or_are_left_out_are_not_refused(capsys, tmp_path, tiny_llama, no_pruning, options, per_row, seed):
    """The defaults of the options some methods ignore are not given options: leaving them out
    is never refused, and the calibration still gets its defaults."""
    with pytest.raises(Called) as called:
        main(["prune", "--model", str(tiny_llama), *options, "--out", str(tmp_path / "out")])
    asked = called.value.asked
    assert asked["recipe"].per_row is per_row
    calibration = asked["calibration"]
    assert calibration.seed == seed
    assert calibration.nsamples == (4 if "--nsamples" in options else 32)
    assert calibration.statistics == ("dense" if "dense" in options else "sequential")
    assert asked["chunk_tokens"] == 512


# -- quantize ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        (["--scheme", "int8-dynamic", "--block-size", "0"], "--block-size applies to onnx-int8 and onnx-int4 only, not int8-dynamic"),
        (["--scheme", "int8-dynamic", "--block-size", "32"], "--block-size applies to onnx-int8 and onnx-int4 only, not int8-dynamic"),
        (["--scheme", "onnx-int4", "--block-size", "0"], "--block-size: the block size must be one of 16, 32, 64, 128, 256, not 0"),
        (["--scheme", "onnx-int8", "--block-size", "-32"], "--block-size: the block size must be one of 16, 32, 64, 128, 256, not -32"),
        (["--scheme", "int8-dynamic", "--no-perplexity", "--text", "MISSING"], "--text applies to the perplexity, which --no-perplexity skips"),
        (["--scheme", "int8-dynamic", "--no-perplexity", "--chunk", "64"], "--chunk applies to the perplexity, which --no-perplexity skips"),
        (["--scheme", "onnx-int8", "--smoothing", "0.5"], "--smoothing applies to int8-dynamic only, not onnx-int8"),
    ],
)
def test_quantize_refuses_an_option_its_scheme_or_no_perplexity_would_ignore(capsys, tmp_path, tiny_llama, no_quantizing, options, message):
    options = [str(tmp_path / "no-such-text.txt") if o == "MISSING" else o for o in options]
    err = refused(capsys, ["quantize", "--model", str(tiny_llama), *options, "--out", str(tmp_path / "out")])
    assert message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options, block_size, measured",
    [
        (["--scheme", "int8-dynamic", "--no-perplexity"], 32, False),
        (["--scheme", "int8-dynamic", "--smoothing", "none"], 32, True),
        (["--scheme", "onnx-int4", "--block-size", "64"], 64, True),
        (["--scheme", "onnx-int8", "--no-perplexity"], 32, False),
    ],
)
def test_quantize_options_that_apply_or_are_left_out_are_not_refused(tmp_path, tiny_llama, no_quantizing, options, block_size, measured):
    with pytest.raises(Called) as called:
        main(["quantize", "--model", str(tiny_llama), *options, "--out", str(tmp_path / "out")])
    asked = called.value.asked
    assert asked["settings"].block_size == block_size and asked["measure_perplexity"] is measured
    assert asked["text"] is None and asked["chunk_tokens"] == 512


# -- run -----------------------------------------------------------------------------------------
def test_resume_with_another_work_folder_is_refused(capsys, tmp_path):
    store = tmp_path / "results.db"
    err = refused(capsys, ["run", "--resume", "1", "--work-dir", str(tmp_path / "elsewhere"), "--store", str(store)])
    assert "--resume continues a stored run in its own work folder; give no --work-dir with it" in err
    assert not store.exists() and not (tmp_path / "elsewhere").exists()


def stopped_after_the_first_step(run_id: int, stop: BaseException = KeyboardInterrupt()):
    """A stand-in for `run_plan`: a run that says its id, then is stopped (by Ctrl-C)."""

    def run_plan(plan, options, cancel=None):
        yield Progress("run", 0, 3, f"run {run_id}: 0/3 steps done", {"run_id": run_id})
        raise stop

    return run_plan


def test_a_stopped_run_answers_json_with_how_to_resume_it(capsys, tmp_path, tiny_llama, monkeypatch):
    plan = tmp_path / "plan.toml"
    plan.write_text(f'name = "stopped"\nmodel = {json.dumps(str(tiny_llama))}\n\n[[variants]]\nprune = "magnitude"\n')
    monkeypatch.setattr(tui.cli.run, "run_plan", stopped_after_the_first_step(4))
    store = tmp_path / "my results.db"
    code = main(["run", str(plan), "--store", str(store), "--json"])
    captured = capsys.readouterr()
    assert code == 130
    data = json.loads(captured.out)
    resume = f"edge-audit run --resume 4 --store '{store}'"
    assert data["run_id"] == 4 and data["status"] == "interrupted" and data["exit_code"] == 130
    assert data["store"] == str(store) and data["resume"] == resume and isinstance(data["seconds"], float)
    assert f"resume with: {resume}" in captured.err


def test_a_terminated_run_answers_json_too_and_keeps_its_exit_code(capsys, monkeypatch):
    """SIGTERM unwinds as SystemExit(143) (tui.cli's handler): the run says so as for Ctrl-C."""
    monkeypatch.setattr(tui.cli.run, "run_plan", stopped_after_the_first_step(3, SystemExit(143)))
    with pytest.raises(SystemExit) as stop:
        main(["run", "--resume", "3", "--json"])
    captured = capsys.readouterr()
    assert stop.value.code == 143
    data = json.loads(captured.out)
    assert (data["run_id"], data["status"], data["exit_code"], data["resume"]) == (3, "interrupted", 143, "edge-audit run --resume 3")


def test_a_stopped_resumed_run_without_json_prints_nothing_on_stdout(capsys, monkeypatch):
    monkeypatch.setattr(tui.cli.run, "run_plan", stopped_after_the_first_step(2))
    assert main(["run", "--resume", "2"]) == 130
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "edge-audit: run stopped, finished steps are kept; resume with: edge-audit run --resume 2"


# -- seeds in a plan -----------------------------------------------------------------------------
REPEATED_SEEDS = 'name = "p"\nmodel = "m"\n\n[probes]\nmode = "generate"\ntemperature = 0.7\nseeds = [1, 2, 1]\n'


def test_a_plan_listing_a_seed_twice_is_refused_with_its_line(capsys, tmp_path):
    with pytest.raises(UserError) as error:
        parse_plan(REPEATED_SEEDS, check_model=False, check_files=False)
    assert str(error.value) == "plan line 7: probes.seeds: lists seed 1 twice: a seed repeats the same answers, which would count twice"
    plan = tmp_path / "seeds.toml"
    plan.write_text(REPEATED_SEEDS)
    err = refused(capsys, ["run", str(plan), "--model", "smollm2-135m", "--store", str(tmp_path / "r.db")])
    assert "seeds.toml line 7: probes.seeds: lists seed 1 twice" in err
    assert not (tmp_path / "r.db").exists()


def test_a_stored_run_whose_plan_lists_a_seed_twice_is_still_read():
    assert parse_plan(REPEATED_SEEDS, check_model=False, check_files=False, stored=True).probes.seeds == (1, 2, 1)


# -- damaged model folders and key files -------------------------------------------------------
def test_a_model_folder_without_tokenizer_json_is_named(capsys, tmp_path, tiny_llama):
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_llama, folder)
    (folder / "tokenizer.json").unlink()
    err = refused(capsys, ["models", "info", str(folder)])
    assert f"cannot read the tokenizer in {folder}: tokenizer.json is missing" in err
    assert "AttributeError" not in err


def test_weights_that_do_not_match_the_config_name_the_tensor_and_shapes(capsys, tmp_path, tiny_llama):
    folder = tmp_path / "wide-config"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    config["hidden_size"] = 2 * hidden
    (folder / "config.json").write_text(json.dumps(config))
    err = refused(capsys, ["models", "info", str(folder)])
    assert (f"its weights do not match its config.json: model.embed_tokens.weight is [{vocab}, {hidden}] in model.safetensors, "
            f"the config makes it [{vocab}, {2 * hidden}]") in err


@pytest.fixture(scope="module")
def signed_record(tmp_path_factory):
    """A small signed record (its shape only: `record verify` reads no model)."""
    from audit.fingerprint import Fingerprint
    from audit.record import RECORD_TYPE, load_private_key, new_keys, sign, write_record

    folder = tmp_path_factory.mktemp("record")
    private, public = new_keys(folder / "keys")
    record = {
        "type": RECORD_TYPE, "version": 1, "run": {"id": 1}, "variant": {"name": "wanda-50"},
        "fingerprint": Fingerprint(digest="0" * 64, weights="1" * 64, config="2" * 64, tokenizer="3" * 64, storage="safetensors",
                                   tensors={}, files={}, n_values=0).to_dict(), "gate": {"verdict": "pass", "passed": True, "plain": "may ship", "findings": []},
        "check": {"items": []}, "envelope": {},
    }
    write_record(folder / "record.json", sign(record, load_private_key(private)))
    return folder / "record.json", public, private


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty, not a PEM public key (the .pub file `edge-audit keys new` wrote)"),
        ("\n  \n", "is empty, not a PEM public key"),
        ("ssh-ed25519 AAAAC3Nza\n", "is not a PEM key: it has no -----BEGIN line"),
        ("-----BEGIN PUBLIC KEY-----\nMCow\n-----END PUBLIC KEY-----\n", "is not a public key edge-audit can use: its PEM block (PUBLIC KEY) cannot be read"),
        ("PRIVATE", "is a private key, not a public key"),
    ],
)
def test_a_trusted_key_file_that_is_not_a_public_key_says_what_it_is(capsys, tmp_path, signed_record, content, message):
    record, _, private = signed_record
    trust = tmp_path / "trust.pub"
    trust.write_text(private.read_text() if content == "PRIVATE" else content)
    err = refused(capsys, ["record", "verify", str(record), "--trust", str(trust)])
    assert f"{trust} {message}" in err
    assert "cryptography.io" not in err and "BEGIN PRIVATE" not in err


def test_the_public_key_itself_is_trusted(capsys, signed_record):
    record, public, _ = signed_record
    assert main(["record", "verify", str(record), "--trust", str(public), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signature"]["status"] == "verified"

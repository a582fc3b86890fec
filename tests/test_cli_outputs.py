"""What a command writes never destroys what it reads or anything that is not a regular file;
a run refuses, before it is stored, a plan that would fail at one of its steps; a name that is
not UTF-8 is named with its option; check takes a --model given before it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import audit.fieldcheck
import tui.cli.probe
from audit import atomic
from audit.errors import UserError
from audit.store import ResultsStore
from tests.test_cli_conflicts import refused
from tests.tiny import probes_only
from tui.cli import main

BBQ_LINE = (
    '{"example_id": 0, "question_index": "1", "question_polarity": "neg", "context_condition": "ambig", '
    '"category": "Age", "answer_info": {"ans0": ["grandfather", "old"], "ans1": ["grandson", "nonOld"], '
    '"ans2": ["Can\'t be determined", "unknown"]}, "additional_metadata": {"subcategory": "None", '
    '"stereotyped_groups": ["old"], "version": "a", "source": "x"}, "context": "A grandson and a grandfather met.", '
    '"question": "Who was forgetful?", "ans0": "The grandfather", "ans1": "The grandson", "ans2": "Can\'t be determined", '
    '"label": 2}\n'
)


@pytest.fixture()
def no_loading(monkeypatch):
    """A refused command never loads its model."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the outputs were checked")

    monkeypatch.setattr(tui.cli.probe, "load_model", forbidden)


# -- an output over an input ----------------------------------------------------------------------
def test_items_out_over_the_suite_file_is_refused_and_the_suite_kept(capsys, tmp_path, no_loading, monkeypatch):
    suite = tmp_path / "age.jsonl"
    suite.write_text(BBQ_LINE)
    monkeypatch.chdir(tmp_path)
    # The same file by another spelling of its path.
    err = refused(capsys, ["probe", "--suite", f"bbq:{suite}", "--items-out", "./sub/../age.jsonl"])
    assert "--items-out" in err and "would overwrite --suite" in err
    assert suite.read_text() == BBQ_LINE


def test_items_out_inside_the_model_folder_is_refused_and_the_model_kept(capsys, tiny_llama, no_loading):
    weights = tiny_llama / "model.safetensors"
    before = weights.read_bytes()
    err = refused(capsys, ["probe", "--model", str(tiny_llama), "--items-out", str(weights)])
    assert "--items-out" in err and "--model" in err and "sit inside" in err
    assert weights.read_bytes() == before
    err = refused(capsys, ["--model", str(tiny_llama), "probe", "--items-out", str(tiny_llama / "new.jsonl")])
    assert "--items-out" in err and "--model" in err
    assert not (tiny_llama / "new.jsonl").exists()


@pytest.mark.parametrize("option", ["--gate", "--baseline-items"])
def test_items_out_over_the_gate_or_the_baseline_is_refused(capsys, tmp_path, no_loading, option):
    given = tmp_path / ("plan.toml" if option == "--gate" else "base.jsonl")
    given.write_text("keep me\n")
    err = refused(capsys, ["probe", "--sequential", "--gate", str(tmp_path / "plan.toml"), option, str(given), "--items-out", str(given)]
                  if option == "--baseline-items" else ["probe", "--sequential", option, str(given), "--items-out", str(given)])
    assert f"would overwrite {option}" in err
    assert given.read_text() == "keep me\n"


def test_record_export_over_its_store_or_key_is_refused(capsys, tmp_path):
    store = tmp_path / "results.db"
    ResultsStore(store).close()
    before = store.read_bytes()
    err = refused(capsys, ["record", "export", "1", "--store", str(store), "--out", str(store), "--force"])
    assert "--out" in err and "would overwrite --store" in err
    assert store.read_bytes() == before
    key = tmp_path / "lab.key"
    key.write_text("secret\n")
    err = refused(capsys, ["record", "export", "1", "--store", str(store), "--key", str(key), "--out", str(key), "--force"])
    assert "would overwrite --key" in err and key.read_text() == "secret\n"


# -- an output that is not a regular file ----------------------------------------------------------
def _special(kind: str, tmp_path: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        return tmp_path / "fifo"
    if kind == "device":
        return Path("/dev/full")
    (tmp_path / "real.jsonl").write_text("keep me\n")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "real.jsonl")
    return tmp_path / "link.jsonl"


@pytest.mark.parametrize("kind, said", [("fifo", "a named pipe"), ("device", "a device"), ("link", "a symbolic link")])
def test_items_out_that_is_not_a_regular_file_is_refused(capsys, tmp_path, no_loading, kind, said):
    target = _special(kind, tmp_path)
    err = refused(capsys, ["probe", "--items-out", str(target)])
    assert err == f"edge-audit: error: --items-out {target} is {said}, not a regular file: writing it would replace it; choose another file"
    assert target.is_symlink() if kind == "link" else not target.is_file()


def test_record_export_force_keeps_a_fifo(capsys, tmp_path):
    fifo = _special("fifo", tmp_path)
    err = refused(capsys, ["record", "export", "1", "--store", str(tmp_path / "results.db"), "--out", str(fifo), "--force"])
    assert "--out" in err and "a named pipe" in err
    assert not fifo.is_file()


def test_keys_new_writes_no_key_when_one_of_them_is_a_link(capsys, tmp_path):
    (tmp_path / "elsewhere.pub").write_text("keep me\n")
    (tmp_path / "edge-audit.pub").symlink_to(tmp_path / "elsewhere.pub")
    err = refused(capsys, ["keys", "new", "--out", str(tmp_path), "--force"])
    assert "--out" in err and "symbolic link" in err
    assert not (tmp_path / "edge-audit.key").exists()
    assert (tmp_path / "elsewhere.pub").read_text() == "keep me\n"


def test_runs_report_keeps_a_fifo_in_its_folder(capsys, tmp_path):
    store = tmp_path / "results.db"
    ResultsStore(store).close()
    os.mkfifo(tmp_path / "report.html")
    err = refused(capsys, ["runs", "report", "1", "--store", str(store), "--out", str(tmp_path)])
    assert "--out" in err and "report.html is a named pipe" in err


def test_the_atomic_write_refuses_a_link_whoever_writes_it(tmp_path):
    (tmp_path / "real").write_text("keep me")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UserError, match="symbolic link"):
        atomic.write_text(tmp_path / "link", "new")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real").read_text() == "keep me"
    atomic.write_text(tmp_path / "real", "new")  # an ordinary file is still replaced
    assert (tmp_path / "real").read_text() == "new"


def test_an_ordinary_items_file_is_still_replaced(capsys, tmp_path, tiny_llama):
    out = tmp_path / "items.jsonl"
    out.write_text("old\n")
    assert main(["probe", "--model", str(tiny_llama), "--limit", "1", "--items-out", str(out), "--json"]) == 0
    capsys.readouterr()
    assert out.read_text() != "old\n" and out.read_text().startswith("{")


# -- a run refused before it is stored ----------------------------------------------------------
PLAN = """\
name = "refused"
model = "{model}"

[[variants]]
prune = {{ method = "{method}", sparsity = 0.5 }}

[calibration]
seqlen = {seqlen}
nsamples = {nsamples}
"""


@pytest.fixture()
def refused_run(capsys, tmp_path, tiny_llama, monkeypatch):
    """Run a plan that must be refused before any work: returns its one error line, having
    checked that no store, run folder or lock was made."""
    import audit.run.execute

    def forbidden(*args, **kwargs):
        raise AssertionError("a variant's steps ran")

    monkeypatch.setattr(audit.run.execute, "execute_variant", forbidden)

    def run(profile: str | None = None, **values: str) -> str:
        """`profile`: the plan's [profile] table (by default, no profile)."""
        settings = {"model": tiny_llama, "method": "wanda", "seqlen": 32, "nsamples": 4, "suite": "builtin", **values}
        plan = tmp_path / "plan.toml"
        text = PLAN.format(**settings) + probes_only(1, settings["suite"])
        if profile is not None:
            text = text.replace("[profile]\nenabled = false\n", f"[profile]\n{profile}\n")
            assert profile in text
        plan.write_text(text)
        store = tmp_path / "store" / "results.db"
        err = refused(capsys, ["run", str(plan), "--store", str(store), "--work-dir", str(tmp_path / "work")])
        assert not store.exists()
        assert not (tmp_path / "work").exists() or not list((tmp_path / "work").iterdir())
        return err

    return run


def test_a_calibration_window_longer_than_the_context_is_refused_before_the_run(refused_run):
    err = refused_run(seqlen=512)
    assert "calibration.seqlen" in err and "512 exceeds the model's context length 256" in err and "wanda" in err


def test_calibration_samples_that_cannot_fit_in_memory_are_refused_before_the_run(refused_run):
    err = refused_run(nsamples=10**9)
    assert err.startswith("edge-audit: error: calibration.nsamples: not enough memory for 1000000000 calibration samples of 32 tokens")
    assert err.endswith("(wanda-50 calibrates); give fewer samples")


def test_a_profile_beyond_the_context_is_refused_before_the_run(refused_run):
    """The tiny model's context is 256 tokens: 250 prompt and 32 new ones do not fit."""
    err = refused_run(method="magnitude", profile="prompt_tokens = 250\nnew_tokens = 32")
    assert "profile: 250 prompt + 32 new tokens exceed the model's context of 256 tokens" in err


@pytest.mark.parametrize("what", ["seqlen", "profile"])
def test_a_gguf_file_not_converted_yet_is_checked_against_its_metadata_before_the_run(refused_run, tiny_llama, tmp_path, isolated_cache, what):
    """Its context (256 tokens, in the file's metadata) refuses the plan before the file is
    converted: without a converted config.json to read, the run would have failed at the step."""
    from tests.test_model_integrity import tiny_gguf

    model = tiny_gguf(tiny_llama, tmp_path / "tiny.gguf")
    if what == "seqlen":
        err = refused_run(model=model, seqlen=512)
        assert "calibration.seqlen" in err and "512 exceeds the model's context length 256" in err
    else:
        err = refused_run(model=model, method="magnitude", profile="prompt_tokens = 250\nnew_tokens = 32")
        assert "profile: 250 prompt + 32 new tokens exceed the model's context of 256 tokens" in err
    assert not isolated_cache.exists() or not list(isolated_cache.rglob("config.json"))


def test_a_window_longer_than_the_context_is_fine_for_a_method_that_does_not_calibrate(capsys, tmp_path, tiny_llama, monkeypatch):
    import audit.run.lifecycle

    monkeypatch.setattr(audit.run.lifecycle, "start_or_resume", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("started")))
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN.format(model=tiny_llama, method="magnitude", seqlen=512, nsamples=10**9, suite="builtin"))
    with pytest.raises(RuntimeError, match="started"):
        main(["run", str(plan), "--store", str(tmp_path / "results.db")])


def test_a_missing_suite_is_refused_before_the_run(refused_run, tmp_path):
    err = refused_run(suite=f"bbq:{tmp_path / 'nonexist'}")
    assert "probes.suites" in err and "nonexist" in err


def test_a_suite_of_the_wrong_format_is_refused_before_the_run(refused_run, tmp_path):
    wrong = tmp_path / "bbq.jsonl"
    wrong.write_text(BBQ_LINE)
    err = refused_run(suite=f"crows:{wrong}")
    assert "probes.suites" in err and "CrowS-Pairs" in err


# -- names that are not UTF-8 ---------------------------------------------------------------------
BAD = os.fsdecode(b"bad\xffname")


@pytest.mark.parametrize("command", ["prune", "quantize"])
def test_a_model_folder_named_in_bytes_that_are_not_utf8_is_refused_before_the_work(capsys, tmp_path, command, monkeypatch):
    import audit.compress.prune
    import audit.compress.quantize

    def forbidden(*args, **kwargs):
        raise AssertionError("the work started")

    monkeypatch.setattr(audit.compress.prune, "prune", forbidden)
    monkeypatch.setattr(audit.compress.quantize, "quantize", forbidden)
    extra = ["--scheme", "int8-dynamic"] if command == "quantize" else []
    err = refused(capsys, [command, *extra, "--out", str(tmp_path / BAD)])
    assert f"--out {tmp_path}/bad\\xffname: the name is not UTF-8" in err


def test_a_name_a_library_cannot_encode_is_said_with_its_option(capsys, tmp_path, monkeypatch):
    def load_suite(spec, **kwargs):
        spec.encode("utf-8")  # as a library taking UTF-8 names only does

    monkeypatch.setattr(tui.cli.probe, "load_suite", load_suite)
    err = refused(capsys, ["probe", "--suite", f"bbq:{tmp_path / BAD}"])
    assert f"--suite bbq:{tmp_path}/bad\\xffname: the name is not UTF-8" in err
    assert "\udcff" not in err


# -- check's --model before the command -------------------------------------------------------------
def test_check_takes_a_model_given_before_it(capsys, tmp_path, monkeypatch):
    asked = {}

    def check_deployment(model, record, **kwargs):
        asked["model"] = model
        raise UserError("stopped here")

    monkeypatch.setattr(audit.fieldcheck, "check_deployment", check_deployment)
    err = refused(capsys, ["--model", str(tmp_path), "check", "--record", str(tmp_path / "r.json")])
    assert err == "edge-audit: error: stopped here"
    assert asked["model"] == tmp_path


def test_check_without_a_model_still_asks_for_one(capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        main(["check", "--record", str(tmp_path / "r.json")])
    assert stop.value.code == 2
    assert "the following arguments are required: --model" in capsys.readouterr().err


def test_a_refused_output_under_a_folder_named_with_a_line_break_is_said_in_one_line(capsys, tmp_path, no_loading):
    """The paths an output's refusal names are written as every other message writes them
    (`audit.paths.shown`): a line break in a folder's name is escaped, not printed as a space
    that reads as another name."""
    folder = tmp_path / "two\nlines"
    folder.mkdir()
    suite = folder / "age.jsonl"
    suite.write_text(BBQ_LINE)
    err = refused(capsys, ["probe", "--suite", f"bbq:{suite}", "--items-out", str(suite)])
    assert f"--items-out {tmp_path}/two\\nlines/age.jsonl would overwrite --suite" in err
    assert suite.read_text() == BBQ_LINE


def test_a_suite_under_a_user_who_is_not_here_is_one_line(capsys, no_loading):
    """The check of what the command writes reads the suite's path as the suite's reader does:
    a ~user who is not a user here is left to that reader's one line, not a traceback."""
    err = refused(capsys, ["probe", "--suite", "crows:~nosuchuser/pairs.csv", "--items-out", "items.jsonl"])
    assert "there is no user 'nosuchuser' here" in err


def test_the_inputs_of_a_model_under_a_user_who_is_not_here_are_none():
    from tui.cli.outputs import model_paths, suite_path

    assert model_paths("~nosuchuser/model") == []
    assert suite_path("bbq: ~nosuchuser/x.jsonl") is None
    assert suite_path(" bbq : ~/x.jsonl ") == Path("~/x.jsonl").expanduser()

"""The command line's options: those given before a command apply to it or are refused,
values are checked before any work, outputs are checked before anything is loaded, and
text from data never reads as console markup."""

from __future__ import annotations

import json

import pytest

import tui.cli.probe
from audit.store import ResultsStore
from tui.cli import build_parser, main
from tui.cli import common


def parsed(*argv: str):
    parser = build_parser()
    args = parser.parse_args(list(argv))
    common.apply_global_options(parser, args)
    return args


def refused(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_options_before_a_command_apply_to_it():
    args = parsed("--threads", "1", "--max-memory-mb", "300", "--dtype", "bfloat16", "probe", "--limit", "1")
    options = common.load_options(args)
    assert (options.threads, options.max_memory_mb, options.dtype) == (1, 300.0, "bfloat16")
    assert args.model == "smollm2-135m"


def test_options_after_a_command_apply_and_defaults_fill_in():
    args = parsed("models", "info", "some-model", "--threads", "2")
    options = common.load_options(args)
    assert (args.model, options.threads, options.max_memory_mb, options.dtype) == ("some-model", 2, None, "float32")


def test_the_same_value_before_and_after_is_accepted_and_a_different_one_refused(capsys):
    assert parsed("--threads", "1", "probe", "--threads", "1").threads == 1
    err = refused(capsys, "--threads", "1", "probe", "--threads", "2")
    assert "--threads" in err and "given before and after" in err


def test_the_app_takes_the_options_alone():
    args = parsed("--model", "m", "--threads", "1", "--store", "x.db")
    assert args.command is None
    assert (args.model, args.threads, args.store) == ("m", 1, "x.db")


def test_a_store_before_runs_applies_to_it():
    assert parsed("--store", "x.db", "runs", "list").store == "x.db"


@pytest.mark.parametrize(
    "argv, named",
    [
        (("--max-memory-mb", "10", "device"), "--max-memory-mb does not apply to `edge-audit device`"),
        (("--threads", "1", "runs", "list"), "--threads does not apply to `edge-audit runs list`"),
        (("--model", "m", "probe-compare", "a", "b"), "--model does not apply"),
        (("--store", "x.db", "device"), "--store does not apply"),
    ],
)
def test_an_option_before_a_command_that_does_not_take_it_is_refused(capsys, argv, named):
    assert named in refused(capsys, *argv)


@pytest.mark.parametrize(
    "argv, named",
    [
        (("--threads", "0"), "--threads: must be at least 1, not 0"),
        (("--threads", "two"), "--threads: takes a whole number, not 'two'"),
        (("--max-memory-mb", "nan"), "--max-memory-mb: must be a positive number of MB, not nan"),
        (("--max-memory-mb", "0"), "--max-memory-mb: must be a positive number of MB, not 0"),
        (("--max-memory-mb", "inf"), "--max-memory-mb: must be a positive number of MB, not inf"),
        (("models", "info", "m", "--max-memory-mb", "nan"), "--max-memory-mb: must be a positive number of MB"),
        (("probe", "--threads", "-1"), "--threads: must be at least 1, not -1"),
        (("probe", "--limit", "0"), "--limit: must be at least 1, not 0"),
        # As a plan's max_new_tokens: a longer limit only lets a model that never stops run on.
        (("probe", "--mode", "generate", "--max-new-tokens", "99999999999"), "--max-new-tokens: must be at most 256, not 99999999999"),
    ],
)
def test_bad_values_are_refused_in_one_line(capsys, argv, named):
    assert named in refused(capsys, *argv)


def test_a_memory_limit_before_the_command_stops_the_load(capsys, tiny_llama):
    code = main(["--max-memory-mb", "1", "models", "info", str(tiny_llama)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not enough memory" in err and err.count("\n") == 0


@pytest.fixture()
def no_loading(monkeypatch):
    """Any attempt to load a model fails the test: outputs must be checked first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the outputs were checked")

    monkeypatch.setattr(tui.cli.probe, "load_model", forbidden)


@pytest.mark.parametrize("where", ["folder", "missing-root", "file-as-folder"])
def test_probe_checks_its_items_file_before_loading(capsys, tmp_path, no_loading, where):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    target = {"folder": tmp_path, "missing-root": "/proc/no/such/items.jsonl", "file-as-folder": blocker / "items.jsonl"}[where]
    code = main(["probe", "--limit", "1", "--items-out", str(target)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "item results file" in err and err.count("\n") == 0


def test_runs_report_into_an_existing_file_is_refused(capsys, tmp_path):
    store = tmp_path / "results.db"
    ResultsStore(store).close()
    existing = tmp_path / "report"
    existing.write_text("keep me")
    code = main(["runs", "report", "1", "--out", str(existing), "--store", str(store)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "exists and is not a folder" in err
    assert existing.read_text() == "keep me"


MARKUP_NAME = "[/] [bold red]x <script>alert(1)</script>"


def test_names_with_console_markup_print_as_they_are(capsys, tmp_path):
    store_path = tmp_path / "results.db"
    with ResultsStore(store_path) as store:
        store.create_run(
            name=MARKUP_NAME, model="[red]m[/red]", plan_text=f'name = {json.dumps(MARKUP_NAME)}\nmodel = "[red]m[/red]"\n',
            plan_path=None, device={}, software={}, variants=[("baseline", {})],
        )
    assert main(["runs", "list", "--store", str(store_path)]) == 0
    out = capsys.readouterr().out
    assert "[/] [bold red]x" in out and "[red]m[/red]" in out
    assert main(["runs", "show", "1", "--store", str(store_path)]) == 0
    assert "[/] [bold red]x" in capsys.readouterr().out


def test_system_faults_are_described_in_one_line():
    import sqlite3
    from tui.cli import describe_fault

    err = OSError(36, "File name too long", "/x/" + "a" * 300)
    assert describe_fault(err) == f"/x/{'a' * 300}: File name too long"
    assert describe_fault(sqlite3.OperationalError("attempt to write a\nreadonly database")) == "results store: attempt to write a readonly database"
    assert describe_fault(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")).startswith("unreadable input:")
    assert describe_fault(KeyError("bug")) is None


def test_a_calibration_window_shorter_than_a_plan_takes_is_refused_before_loading(capsys, tmp_path):
    """8 tokens, as a plan and the app's Compress form ask: `--seqlen 2` with a document start
    token was refused only once the model had loaded."""
    err = refused(capsys, "prune", "--model", str(tmp_path / "never-loaded"), "--method", "wanda", "--seqlen", "2", "--out", str(tmp_path / "out"))
    assert err == "edge-audit prune: error: argument --seqlen: must be at least 8, not 2"

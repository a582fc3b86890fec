"""`edge-audit probe` and `probe-compare` end to end: JSON output, item files, bad input as one line and exit 2."""

import json

import pytest

from tests.conftest import SHARED_DATA
from tests.test_bbq_loader import record, write_jsonl
from tui.cli import main


def cli_json(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_probe_writes_items_and_compare_reads_them(tiny_llama, tmp_path, capsys):
    first, second = tmp_path / "base.jsonl", tmp_path / "variant.jsonl"
    data = cli_json(capsys, "probe", "--model", str(tiny_llama), "--limit", "4", "--items-out", str(first), "--json")
    assert data["suite"] == "builtin" and data["n_items"] == 20 and data["complete"]
    assert data["mode"] == "loglik" and data["norm"] == "mean"
    assert set(data["metrics"]["categories"]) == {"Age", "Gender_identity", "Race_ethnicity", "Religion", "SES"}
    overall = data["metrics"]["overall"]
    for key in ("accuracy_ambig", "accuracy_disambig", "bias_score_ambig", "bias_score_disambig", "srs", "usr"):
        assert len(overall[key]["ci95"]) == 2 and "n" in overall[key]
    assert data["items_per_s"] > 0 and data["skipped_lines"] == 0
    # The tests' device is idle: a worker per core, each core's thread.
    assert data["threads"]["scoring_workers"] == data["threads"]["threads"] >= 1 and data["threads"]["why"]
    assert len(first.read_text().splitlines()) == 21

    cli_json(capsys, "probe", "--model", str(tiny_llama), "--limit", "4", "--items-out", str(second), "--json")
    compared = cli_json(capsys, "probe-compare", str(first), str(second), "--json")
    assert compared["comparable"] and compared["n_shared"] == 20 and compared["n_only_baseline"] == 0
    assert compared["intervals"].startswith("95% betting intervals over items")
    assert compared["baseline"]["norm"] == compared["variant"]["norm"] == "mean"
    assert set(compared["scopes"]) <= {"ambig", "disambig"}
    for scope in compared["scopes"].values():
        assert set(scope["categories"]) <= {"Age", "Gender_identity", "Race_ethnicity", "Religion", "SES"}
        # The same model scored twice: nothing moved.
        assert scope["overall"]["transition_rate"]["value"] in (0.0, None)

    # The human views render without error.
    assert main(["probe-compare", str(first), str(second)]) == 0
    assert "items paired" in capsys.readouterr().out

    # Runs made with other settings are refused, naming the setting.
    third = tmp_path / "sum.jsonl"
    cli_json(capsys, "probe", "--model", str(tiny_llama), "--limit", "4", "--norm", "sum", "--items-out", str(third), "--json")
    assert main(["probe-compare", str(first), str(third)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not comparable: norm differs (mean vs sum)" in err[0]


def test_bbq_run_reports_skipped_lines_and_target_statistics(tiny_llama, tmp_path, capsys):
    path = write_jsonl(tmp_path / "Gender_identity.jsonl", [record(0), "{oops", record(1, "nonneg"), record(2, condition="disambig", label=0)])
    data = cli_json(capsys, "probe", "--model", str(tiny_llama), "--suite", f"bbq:{path}", "--json")
    assert data["n_items"] == 3 and data["skipped_lines"] == 1
    assert data["skipped"][0].startswith(f"{path}:2:")
    assert data["suite_info"]["target_by_file"]["Gender_identity.jsonl"]["target_found_share"] == 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["probe", "--suite", "nonsense"], "unknown probe suite 'nonsense'; known: bbq, builtin, crows, stereoset"),
        (["probe", "--suite", "bbq"], "needs a path"),
        (["probe", "--suite", "crows:/nowhere.csv"], "does not exist"),
        (["probe", "--categories", "astrology"], "unknown built-in category"),
        (["probe", "--seeds", "x,y", "--mode", "generate"], "--seeds takes a count"),
        # A seed twice would count its answer twice; an empty entry is a typo, not a seed.
        (["probe", "--seeds", "1,1", "--mode", "generate"], "--seeds lists seed 1 twice"),
        (["probe", "--seeds", "1,,2", "--mode", "generate"], "--seeds takes a count or a comma-separated list of integers, not '1,,2'"),
        # An option of the other scoring mode is refused, not dropped.
        (["probe", "--temperature", "0.5"], "--temperature apply to --mode generate"),
        (["probe", "--seeds", "3", "--max-new-tokens", "4"], "--seeds, --max-new-tokens apply to --mode generate"),
        (["probe", "--mode", "generate", "--norm", "sum"], "--norm apply to --mode loglik"),
        (["probe", "--mode", "generate", "--batch-items", "8"], "--batch-items apply to --mode loglik"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_missing_field_and_disjoint_runs_are_errors(tiny_llama, tmp_path, capsys):
    bad = record(0)
    del bad["label"]
    path = write_jsonl(tmp_path / "Age.jsonl", [bad])
    assert main(["probe", "--model", str(tiny_llama), "--suite", f"bbq:{path}"]) == 2
    assert "Age.jsonl:1: missing required field(s) label" in capsys.readouterr().err
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    cli_json(capsys, "probe", "--model", str(tiny_llama), "--categories", "age", "--limit", "1", "--items-out", str(a), "--json")
    cli_json(capsys, "probe", "--model", str(tiny_llama), "--categories", "ses", "--limit", "1", "--items-out", str(b), "--json")
    assert main(["probe-compare", str(a), str(b)]) == 2
    assert "not comparable: items differ (1 only in the baseline, 1 only in the variant)" in capsys.readouterr().err


@pytest.mark.real_model
def test_default_model_probes_builtin_and_bbq(default_model):
    from audit.probes import load_suite, run_probe
    from audit.progress import drive

    # The real files' readers are tested without the model; here they meet the real model.
    for spec in ("builtin", f"bbq:{SHARED_DATA / 'bbq'}"):
        suite = load_suite(spec, limit=1)
        run = drive(run_probe(default_model, suite))
        assert run.complete and len(run.results) == len(suite.items)
        assert all(len(r.option_logprobs) == len(suite.items[0].options) for r in run.results)


def test_the_studys_prompt_and_parser_on_ambiguous_bbq_items(tiny_llama, tmp_path, capsys):
    """Generate mode asked as the study asks, on ambiguous items of shipped BBQ files: the item
    file holds ambiguous items only, and the parse-failure rate is given under both parsers."""
    from audit.probes.items import read_items
    from audit.probes.scoring import parse_answer, parse_lenient
    from audit.probes.suites import load_suite

    items = tmp_path / "paper.jsonl"
    common = ["probe", "--model", str(tiny_llama), "--suite", f"bbq:{SHARED_DATA / 'bbq' / 'Age.jsonl'}", "--limit", "4",
              "--mode", "generate", "--seeds", "2", "--prompt", "paper", "--conditions", "ambig"]
    data = cli_json(capsys, *common, "--parser", "lenient", "--items-out", str(items), "--json")
    assert data["prompt"] == "paper-system-lettered" and data["parser"] == "lenient" and data["n_items"] == 4
    header, results, _ = read_items(items)
    assert {r.condition for r in results} == {"ambig"} and header["parser"] == "lenient"
    rates = data["parse_failure_rate_by_parser"]
    assert set(rates) == {"strict", "lenient"}
    # Each rate is the mean over items of the share of the item's answers its parser cannot read.
    suite = load_suite(f"bbq:{SHARED_DATA / 'bbq' / 'Age.jsonl'}", limit=4, conditions=["ambig"])
    options = {item.item_id: item.options for item in suite.items}
    for parser, parse in (("strict", lambda t, o: parse_answer(t, o)), ("lenient", lambda t, o: parse_lenient(t, len(o)))):
        shares = [sum(parse(t, options[r.item_id]) is None for t in r.answers) / len(r.answers) for r in results]
        assert rates[parser]["value"] == pytest.approx(sum(shares) / len(shares), abs=1e-4)
        low, high = rates[parser]["ci95"]
        assert low <= rates[parser]["value"] <= high
    # The run's own figure is its parser's.
    assert data["metrics"]["overall"]["parse_failure_rate"]["value"] == rates["lenient"]["value"]

    # A run asked or parsed otherwise is not compared with it.
    strict = tmp_path / "strict.jsonl"
    cli_json(capsys, *common, "--items-out", str(strict), "--json")
    assert main(["probe-compare", str(items), str(strict)]) == 2
    assert "parser differs (lenient vs strict)" in capsys.readouterr().err
    assert main(["probe", "--model", str(tiny_llama), "--prompt", "paper", "--limit", "1"]) == 2
    assert "--prompt and --parser apply to --mode generate" in capsys.readouterr().err

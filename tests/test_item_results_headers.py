"""The run header of an item results file: one per file, wherever it stands among the items, a
format that is the whole number 1, and settings that are text given as text."""

import json

import pytest

from audit.errors import UserError
from audit.probes.items import HEADER_KEY, read_items

GOOD = {
    "item_id": "Age:1", "suite": "bbq", "category": "Age", "condition": "ambig", "polarity": "neg", "mode": "loglik",
    "norm": "mean", "n_options": 3, "label": 2, "unknown_index": 2, "bias_aligned": [0], "chosen": 0, "correct": False,
    "aligned": True, "aligned_share": None, "latency_ms": 1.5, "option_logprobs": [-1.0, -2.0, -3.0],
    "option_tokens": [3, 3, 2], "seed_choices": [], "answers": [], "parse_failures": 0, "extra": {},
}


def items_file(tmp_path, *lines):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def test_a_second_run_header_is_refused(tmp_path):
    path = items_file(
        tmp_path,
        {HEADER_KEY: 1, "run": {"suite": "bbq", "mode": "loglik", "norm": "mean"}},
        GOOD,
        {HEADER_KEY: 1, "run": {"suite": "bbq", "mode": "loglik", "norm": "sum"}},
        {**GOOD, "item_id": "Age:2"},
    )
    with pytest.raises(UserError, match=r"items.jsonl:3: a second run header \(the first is line 1\)"):
        read_items(path)


def test_one_run_header_after_the_items_still_reads(tmp_path):
    path = items_file(tmp_path, GOOD, {HEADER_KEY: 1, "run": {"suite": "bbq", "norm": "mean"}})
    run, results, skipped = read_items(path)
    assert run == {"suite": "bbq", "norm": "mean"} and [r.item_id for r in results] == ["Age:1"] and skipped == []


@pytest.mark.parametrize("format_value", [True, 1.0])
def test_a_format_that_is_not_the_whole_number_1_is_refused(tmp_path, format_value):
    path = items_file(tmp_path, {HEADER_KEY: format_value, "run": {"suite": "bbq"}}, GOOD)
    with pytest.raises(UserError, match=rf"items.jsonl:1: the file's format is {format_value!r}, not 1"):
        read_items(path)


@pytest.mark.parametrize("parser", [5, ["strict"], {"name": "strict"}])
def test_a_parser_that_is_not_text_is_refused(tmp_path, parser):
    path = items_file(tmp_path, {HEADER_KEY: 1, "run": {"suite": "bbq", "mode": "generate", "parser": parser}}, GOOD)
    with pytest.raises(UserError, match=r"items.jsonl:1: the run header is not valid: parser is .+, not text"):
        read_items(path)

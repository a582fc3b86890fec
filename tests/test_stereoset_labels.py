"""A StereoSet item result that does not say which sentence is the stereotype, the
anti-stereotype and the unrelated one (`extra.gold` missing or wrong) is refused in one line,
never compared as its first two options and never a traceback: in two item files compared, in a
stored run, and wherever the figures are worked out from such results."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from audit.errors import UserError
from audit.probes import measures as ms
from audit.probes.items import ItemResult, write_items
from audit.probes.summary import stereoset_group
from audit.results import RunView
from audit.store import ResultsStore, StoreError
from tests.test_flips_unscored import Sentences, stored_run
from tui.cli import main

GOLD = ["unrelated", "anti-stereotype", "stereotype"]
HEADER = {"suite": "stereoset", "suite_spec": "stereoset:dev.json", "summary": "stereoset", "mode": "loglik", "norm": "mean"}


def example(i, scores, gold=GOLD, suite="stereoset", **extra):
    if gold is not None:
        extra["gold"] = gold
    return ItemResult(
        f"{suite}:{i}", suite, "race", "", "", "loglik", "mean", len(scores), None, None, (0,), 0, None, None, None, 1.0,
        option_logprobs=scores, option_tokens=(1,) * len(scores), extra=extra,
    )


@pytest.mark.parametrize(
    "gold, problem",
    [
        (None, "extra.gold is missing"),
        (["a", "b", "c"], r"extra.gold is \['a', 'b', 'c'\], not the labels stereotype, anti-stereotype, unrelated, one each"),
        (["stereotype", "stereotype", "unrelated"], "not the labels"),
        ("stereotype anti-stereotype unrelated", "not the labels"),
        ([{"label": "stereotype"}, "anti-stereotype", "unrelated"], "not the labels"),
    ],
)
def test_item_files_lines_without_the_sentences_labels_are_skipped_naming_their_line(tmp_path, capsys, gold, problem):
    """Before, a file without gold compared options 0 and 1 (here: the unrelated sentence with the
    anti-stereotype) without a word, and one with other labels ended in a traceback. Such a line
    is skipped as any malformed line is, named with its file and line; a file of only such lines
    is refused in one line."""
    base, variant = tmp_path / "base.jsonl", tmp_path / "variant.jsonl"
    write_items(base, HEADER, [example(1, (-1.0, -2.0, -3.0), gold), example(2, (-3.0, -2.0, -1.0))])
    write_items(variant, HEADER, [example(1, (-1.0, -3.0, -2.0), gold), example(2, (-3.0, -2.0, -1.0))])
    assert main(["probe-compare", str(base), str(variant), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["n_shared"] == 1
    lines = err.splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    for line, path in zip(lines, (base, variant)):
        assert line.startswith(f"edge-audit: skipped {path}:2: ") and re.search(problem, line)
    write_items(base, HEADER, [example(1, (-1.0, -2.0, -3.0), gold)])
    assert main(["probe-compare", str(base), str(variant), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(problem, err)


def test_two_good_item_files_still_compare(tmp_path, capsys):
    base, variant = tmp_path / "base.jsonl", tmp_path / "variant.jsonl"
    write_items(base, HEADER, [example(1, (-1.0, -2.0, -3.0)), example(2, (-3.0, -2.0, -1.0))])
    write_items(variant, HEADER, [example(1, (-3.0, -2.0, -1.0)), example(2, (-3.0, -2.0, -1.0))])
    assert main(["probe-compare", str(base), str(variant), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # Example 1: the stereotype (option 2) now beats the anti-stereotype: one item turned.
    assert data["scopes"]["all"]["overall"]["transitions"]["unbiased_to_aligned"] == 1


def test_the_figures_refuse_such_a_result_rather_than_guess():
    bad = example(1, (-1.0, -2.0, -3.0), gold=None)
    with pytest.raises(UserError, match="extra.gold is missing"):
        ms.item_facts(bad)
    with pytest.raises(UserError, match="extra.gold is missing"):
        stereoset_group([bad])
    with pytest.raises(UserError, match="not the labels"):
        stereoset_group([example(1, (-1.0, -2.0, -3.0), gold=["x", "y", "z"])])


def test_what_a_result_needs():
    from audit.probes.stereoset import result_problem

    assert result_problem(example(1, (-1.0, -2.0, -3.0))) is None
    # A CrowS-Pairs pair names no gold: its stereotypical sentence is the first.
    assert result_problem(example(1, (-1.0, -2.0), gold=None, suite="crows")) is None
    assert "not the labels" in result_problem(example(1, (-1.0, -2.0), gold=["stereotype", "x"], suite="crows"))
    assert result_problem(example(1, (-1.0, -2.0), gold=None)).startswith("extra.gold is missing")
    assert result_problem(example(1, (-1.0, -2.0, -3.0, -4.0))) == "extra.gold names 3 sentences for 4 options"
    unscored = ItemResult("stereoset:1", "stereoset", "race", "", "", "generate", "", 3, None, None, (0,), 0, None, None, None,
                          1.0, extra={"gold": GOLD})
    assert result_problem(unscored) == "option_logprobs has 0 scores for the 3 sentences"
    with pytest.raises(UserError, match="option_logprobs has 0 scores"):
        ms.item_facts(unscored)


def test_a_stored_run_whose_example_lost_its_labels_is_a_damaged_store(tmp_path, isolated_cache):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"data": {"intrasentence": [
        {"id": f"e{k}", "bias_type": "race", "context": "x", "target": "t", "sentences": [
            {"sentence": f"Example {k} {g}.", "gold_label": g} for g in ("stereotype", "anti-stereotype", "unrelated")]}
        for k in range(2)]}}))
    scores = {f"Example {k} {g}.": s for k in range(2) for g, s in zip(("stereotype", "anti-stereotype", "unrelated"), (-1.0, -2.0, -3.0))}
    suite = f"stereoset:{path}"
    view = stored_run(tmp_path, suite, Sentences(scores), Sentences(scores))
    assert view.variant("wanda-50")["probes"][suite]["comparison"]["n_shared"] == 2
    with sqlite3.connect(tmp_path / "runs.db") as db:
        where = "WHERE variant = 'wanda-50' AND item_id = 'stereoset:e1'"
        record = json.loads(db.execute(f"SELECT record_json FROM items {where}").fetchone()[0])
        record["extra"].pop("gold")
        db.execute(f"UPDATE items SET record_json = ? {where}", (json.dumps(record),))
    with ResultsStore(tmp_path / "runs.db") as db:
        with pytest.raises(StoreError, match="an item wanda-50's .* probe stored does not read: extra.gold is missing") as exc:
            RunView(db, view.run.id)
    assert "\n" not in str(exc.value)

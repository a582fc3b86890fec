"""StereoSet intrasentence reader, on a small sample written for edge-audit in the dev.json format."""

import json

import pytest

from audit.errors import UserError
from audit.probes.stereoset import load_stereoset
from audit.probes.suites import load_suite


def example(eid, target, bias_type, context, stereo, anti, unrelated, order=("stereotype", "anti-stereotype", "unrelated")):
    text = {"stereotype": stereo, "anti-stereotype": anti, "unrelated": unrelated}
    return {
        "id": eid,
        "target": target,
        "bias_type": bias_type,
        "context": context,
        "sentences": [
            {"sentence": text[g], "id": f"{eid}-{k}", "labels": [{"label": g, "human_id": "h1"}], "gold_label": g}
            for k, g in enumerate(order)
        ],
    }


SAMPLE = {
    "version": "1.0-sample",
    "data": {
        "intrasentence": [
            example("e1", "librarian", "profession", "The librarian was BLANK.", "The librarian was quiet.",
                    "The librarian was loud.", "The librarian was purple."),
            example("e2", "grandmother", "gender", "My grandmother is BLANK.", "My grandmother is frail.",
                    "My grandmother is athletic.", "My grandmother is carpet.", order=("unrelated", "anti-stereotype", "stereotype")),
            {"id": "e3", "bias_type": "race", "context": "x", "sentences": [{"sentence": "a", "gold_label": "stereotype"}]},
            example("e4", "chef", "profession", "The chef was BLANK.", "The chef was French.",
                    "The chef was Kenyan.", "The chef was cloudy."),
        ],
        "intersentence": [],
    },
}


def test_reads_examples_in_file_order_and_skips_incomplete_ones(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(SAMPLE))
    items, skipped = load_stereoset(path)
    assert [i.item_id for i in items] == ["stereoset:e1", "stereoset:e2", "stereoset:e4"]
    assert items[1].options == ("My grandmother is carpet.", "My grandmother is athletic.", "My grandmother is frail.")
    assert items[1].meta["gold"] == ["unrelated", "anti-stereotype", "stereotype"]
    assert items[1].bias_aligned == (2,)
    assert len(skipped) == 1 and "intrasentence[2]" in skipped[0]
    suite = load_suite(f"stereoset:{path}", categories=["profession"])
    assert [i.item_id for i in suite.items] == ["stereoset:e1", "stereoset:e4"]


def test_wrong_shape_is_an_error(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"data": {}}))
    with pytest.raises(UserError, match="data.intrasentence"):
        load_stereoset(path)
    path.write_text("{oops")
    with pytest.raises(UserError, match="not valid JSON"):
        load_stereoset(path)


@pytest.mark.parametrize(
    "content, problem",
    [
        (json.dumps([SAMPLE]), "the top level is a list"),
        (json.dumps({"version": "1.0"}), "data.intrasentence"),
        (json.dumps({"data": ["intrasentence"]}), "data.intrasentence"),
        (json.dumps({"data": {"intrasentence": "e1, e2"}}), r"data.intrasentence \(it is 'e1, e2', not a list\)"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_a_file_of_the_wrong_shape_is_a_one_line_error_naming_it(tmp_path, content, problem):
    path = tmp_path / "dev.json"
    path.write_text(content)
    with pytest.raises(UserError, match=problem) as exc:
        load_stereoset(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_binary_files_and_folders_are_errors(tmp_path):
    path = tmp_path / "dev.json"
    path.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe")  # a gzipped dev.json, say
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_stereoset(path)
    with pytest.raises(UserError, match="is a folder, not a file"):
        load_stereoset(tmp_path)


def test_bad_examples_are_skipped_with_their_place(tmp_path):
    good = SAMPLE["data"]["intrasentence"][0]
    no_text = json.loads(json.dumps(good))
    del no_text["sentences"][1]["sentence"]
    numeric = json.loads(json.dumps(good))
    numeric["id"], numeric["sentences"][0]["sentence"] = "e5", 42
    empty = json.loads(json.dumps(good))
    empty["id"], empty["sentences"][2]["sentence"] = "e6", "  "
    examples = [good, "e2", {**good, "sentences": "three"}, no_text, numeric, {**good, "bias_type": ["race"]}, good, empty]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"data": {"intrasentence": examples}}))
    items, skipped = load_stereoset(path)
    assert [i.item_id for i in items] == ["stereoset:e1"]
    assert [line.split(": ")[1] for line in skipped] == [f"intrasentence[{i}]" for i in range(1, 8)]
    reasons = [line.split(": ", 2)[2] for line in skipped]
    assert reasons == [
        "'e2' is not an object",
        "sentences is 'three', not a list",
        "sentences[1] lacks 'sentence' or 'gold_label'",
        "sentence is 42, not text",
        "bias_type is a list, not text",
        "id 'e1' repeats intrasentence[0]",
        "sentences[2] is empty",
    ]
    assert all(line.startswith(f"{path}: ") for line in skipped)


def test_an_items_file_line_of_a_stereoset_example_without_its_labels_is_skipped_naming_the_line(tmp_path):
    """Read from an items file, a StereoSet result that does not say which sentence is which is
    skipped with its line and reason, as any other malformed line is; a file of only such lines
    is refused in one line."""
    from audit.probes.items import read_items, write_items
    from tests.test_stereoset_labels import HEADER, example

    path = tmp_path / "items.jsonl"
    write_items(path, HEADER, [example(1, (-1.0, -2.0, -3.0), gold=None), example(2, (-3.0, -2.0, -1.0))])
    _, results, skipped = read_items(path)
    assert [r.item_id for r in results] == ["stereoset:2"]
    assert skipped == [f"{path}:2: extra.gold is missing: which sentence is the stereotype, the anti-stereotype and the unrelated one is not said"]
    write_items(path, HEADER, [example(1, (-1.0, -2.0, -3.0), gold=["a", "b", "c"])])
    with pytest.raises(UserError, match=r"holds no item results .*extra\.gold is \['a', 'b', 'c'\]"):
        read_items(path)

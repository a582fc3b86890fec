"""Readers of user files: whatever bytes a file holds, a result (bad entries skipped with their
file and place) or a one-line UserError naming the file, never another exception."""

import csv
import io
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.compress.calibration import read_text_file
from audit.errors import UserError
from audit.probes import measures
from audit.probes.bbq import load_bbq, read_metadata
from audit.probes.crows import load_crows
from audit.probes.items import HEADER_KEY, read_items
from audit.probes.stereoset import load_stereoset

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ----------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),  # NaN and infinities included: json writes them, json reads them back
    st.text(max_size=12),
    st.sampled_from(["", "NA", "unknown", "neg", "ambig", "stereotype", "1e400", "nan", "-1", "0", "2", "3"]),
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12
)


def drawn(draw, value):
    return draw(value) if isinstance(value, st.SearchStrategy) else value


@st.composite
def record_with(draw, valid: dict, wrong: dict | None = None):
    """A record with the real keys, valid but for a few values of a wrong type (JSON, or the
    key's own strategy) and now and then a key dropped; so parsing gets past most fields and
    meets the wrong one deep inside."""
    wrong = wrong or {}
    record = {k: drawn(draw, v) for k, v in valid.items()}
    for key in draw(st.one_of(st.just([]), st.lists(st.sampled_from(sorted(valid)), min_size=1, max_size=2, unique=True))):
        record[key] = draw(wrong.get(key, JSON))
    # About one in ten (hypothesis favours the ends of a range, so not "== 0").
    if draw(st.integers(0, 99)) in range(40, 50):
        record.pop(draw(st.sampled_from(sorted(valid))), None)
    return record


def lines_of(*records):
    """A file of lines: mostly records, else other JSON or any text."""
    junk = st.one_of(JSON.map(json.dumps), st.text(max_size=30))
    line = st.one_of(*[r.map(lambda r: json.dumps(r)) for r in records] * 3, junk)
    return st.lists(line, max_size=6).map(lambda lines: "\n".join(lines).encode("utf-8"))


def any_file(structured):
    return st.one_of(st.binary(max_size=200), structured, structured)


CELL = st.one_of(st.text(max_size=8), SCALARS.map(str))


@st.composite
def csv_file(draw, columns, row):
    """A CSV whose header is mostly the real columns; rows from `row` (dicts), written in the
    header's order, a missing key shortening the row and now and then a cell too many."""
    header = draw(st.one_of(st.just(list(columns)), st.just(list(columns)), st.lists(st.sampled_from(columns), max_size=len(columns), unique=True)))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for record in draw(st.lists(row, max_size=6)):
        cells = [str(record[c]) for c in header if c in record]
        if draw(st.integers(0, 99)) in range(40, 50):
            cells.append(draw(CELL))
        writer.writerow(cells)
    return out.getvalue().encode("utf-8")


ANSWER_INFO = {"ans0": ["grandfather", "old"], "ans1": ["grandson", "nonOld"], "ans2": ["Unknown", "unknown"]}
BBQ_RECORD = record_with(
    {
        "example_id": st.integers(0, 5),
        "question_index": "1",
        "question_polarity": st.sampled_from(["neg", "nonneg"]),
        "context_condition": st.sampled_from(["ambig", "disambig"]),
        "category": "Age",
        "answer_info": record_with(ANSWER_INFO, {k: st.one_of(JSON, st.lists(JSON, max_size=3)) for k in ANSWER_INFO}),
        "additional_metadata": record_with({"subcategory": "None", "stereotyped_groups": ["old"], "version": "a", "source": "x"}),
        "context": "A grandfather and his grandson met.",
        "question": "Who forgot?",
        "ans0": "The grandfather",
        "ans1": "The grandson",
        "ans2": "Unknown",
        "label": st.integers(0, 2),
    },
    {"example_id": st.one_of(JSON, st.integers(), st.floats())},
)
BBQ_FILES = any_file(lines_of(BBQ_RECORD))

METADATA_ROW = record_with(
    {"category": "Age", "question_index": "1", "example_id": st.integers(0, 5), "label_type": "label",
     "target_loc": st.sampled_from(["0", "1", "2", "NA", "1e400", "nan", "-1", "2.5", "1.0"])},
    {k: CELL for k in ("category", "example_id", "target_loc")},
)
METADATA_FILES = any_file(csv_file(("category", "question_index", "example_id", "target_loc", "label_type"), METADATA_ROW))

CROWS_ROW = record_with(
    {"": st.integers(0, 9), "sent_more": "Poor people are lazy.", "sent_less": "Rich people are lazy.",
     "stereo_antistereo": st.sampled_from(["stereo", "antistereo"]), "bias_type": st.sampled_from(["socioeconomic", "age"]),
     "annotations": "[]"},
    {k: CELL for k in ("", "sent_more", "sent_less", "stereo_antistereo", "bias_type")},
)
CROWS_FILES = any_file(csv_file(("", "sent_more", "sent_less", "stereo_antistereo", "bias_type", "annotations"), CROWS_ROW))

GOLD = ("stereotype", "anti-stereotype", "unrelated")


@st.composite
def sentences(draw):
    order = draw(st.permutations(GOLD))
    return [draw(record_with({"sentence": f"The chef was {word}.", "id": f"s{k}", "gold_label": gold},
                             {"gold_label": st.one_of(st.sampled_from(GOLD), JSON)}))
            for k, (gold, word) in enumerate(zip(order, ("French", "Kenyan", "cloudy")))]


STEREOSET_EXAMPLE = record_with(
    {"id": st.sampled_from(["e1", "e2", "e3"]), "target": "chef", "bias_type": "profession", "context": "The chef was BLANK.",
     "sentences": sentences()},
    {"sentences": st.one_of(JSON, st.lists(JSON, max_size=3), sentences().map(lambda s: s[:2]))},
)
STEREOSET_FILES = any_file(
    st.one_of(
        JSON,
        record_with({"version": "1.0", "data": record_with({"intrasentence": st.lists(STEREOSET_EXAMPLE, max_size=4), "intersentence": []})}),
        record_with({"version": "1.0", "data": record_with({"intrasentence": st.lists(STEREOSET_EXAMPLE, max_size=4), "intersentence": []})}),
    ).map(lambda value: json.dumps(value).encode("utf-8"))
)

CALIBRATION_FILES = any_file(lines_of(record_with({"text": st.text(max_size=20)}), st.text(max_size=20)))

ITEM_RECORD = record_with(
    {
        "item_id": st.sampled_from(["Age:1", "Age:2", "Age:3", "Age:4"]), "suite": "bbq", "category": "Age",
        "condition": st.sampled_from(["ambig", "disambig"]), "polarity": "neg", "mode": "loglik", "norm": st.sampled_from(["sum", "mean"]),
        "n_options": 3, "label": st.integers(0, 2), "unknown_index": 2, "bias_aligned": [0], "chosen": st.integers(0, 2),
        "correct": st.booleans(), "aligned": st.one_of(st.none(), st.booleans()), "aligned_share": None,
        "latency_ms": st.floats(0, 1000), "option_logprobs": st.lists(st.floats(-50, 0), min_size=3, max_size=3),
        "option_tokens": st.lists(st.integers(1, 9), min_size=3, max_size=3), "seed_choices": [], "answers": [],
        "parse_failures": 0, "extra": {},
    },
    {
        "mode": st.one_of(st.just("generate"), JSON),
        "option_logprobs": st.one_of(JSON, st.lists(st.one_of(st.floats(), st.integers()), max_size=4)),
        "option_tokens": st.one_of(JSON, st.lists(st.integers(), max_size=4)),
        "seed_choices": st.one_of(JSON, st.lists(st.one_of(st.none(), st.integers(-1, 4)), max_size=4)),
    },
)
HEADER = st.fixed_dictionaries({
    HEADER_KEY: st.just(1),
    "run": st.one_of(
        record_with({"suite": "bbq", "suite_spec": "bbq:x", "mode": "loglik", "norm": "mean", "prompt": "p", "seeds": [0, 1],
                     "temperature": 0.3, "max_new_tokens": 5, "model": {"name": "m"}}),
        JSON,
    ),
})
ITEM_FILES = any_file(lines_of(ITEM_RECORD, ITEM_RECORD, HEADER))


# -- the property --------------------------------------------------------------------------------

def check(read, path, data: bytes):
    """Write `data` to `path` and read it: a result whose skipped lines name the file on one
    line each, or a one-line UserError naming the file."""
    path.write_bytes(data)
    try:
        result = read(path)
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and "\r" not in message, message
        assert str(path) in message, message
        return None
    for line in skipped_of(result):
        assert line.startswith(str(path)) and "\n" not in line, line
    return result


def blank(line: bytes, first: bool) -> bool:
    try:
        return not line.decode("utf-8-sig" if first else "utf-8").strip()
    except UnicodeDecodeError:
        return False


def skipped_of(result):
    if isinstance(result, tuple):
        last = result[-1]
        if isinstance(last, list) and all(isinstance(x, str) for x in last):
            return last
    return []


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # Hypothesis runs many examples per test: one folder for the module, a file overwritten per example.
    return tmp_path_factory.mktemp("readers")


@FAST
@given(data=BBQ_FILES)
def test_bbq_category_file(folder, data):
    result = check(load_bbq, folder / "Age.jsonl", data)
    if result is not None:
        items, stats, skipped = result
        assert stats["Age.jsonl"].items == len(items)
        # No line is dropped unreported: each one that is not blank is an item or a skipped line.
        assert len(items) + len(skipped) == sum(1 for n, line in enumerate(data.split(b"\n")) if not blank(line, n == 0))
        records = []
        for line in data.split(b"\n"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        for item in items:
            # Values of a wrong type are skipped, never turned into text ("5") or numbers (true as
            # 1): an item's texts are those of a line, where they were text (a drawn text such as
            # "0" in place of an answer is text, and read as it is).
            fields = (item.context, item.question, *item.options)
            assert any(
                isinstance(r, dict) and tuple(r.get(k) for k in ("context", "question", "ans0", "ans1", "ans2")) == fields
                for r in records
            )
            assert all(type(text) is str for text in fields) and type(item.category) is str
            assert type(item.label) is int and set(item.bias_aligned) <= {0, 1, 2}


@FAST
@given(data=METADATA_FILES)
def test_bbq_metadata_csv(folder, data):
    table = check(read_metadata, folder / "additional_metadata.csv", data)
    if table is not None:
        assert all(isinstance(k[0], str) and isinstance(k[1], int) and isinstance(v, int) for k, v in table.items())


@FAST
@given(data=CROWS_FILES)
def test_crows_csv(folder, data):
    result = check(load_crows, folder / "crows.csv", data)
    if result is not None:
        items, skipped = result
        assert len({i.item_id for i in items}) == len(items)
        rows = [row for row in csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")) if row]
        assert len(items) + len(skipped) == len(rows) - 1
        assert all(i.options[0] and i.options[1] and i.category for i in items)


@FAST
@given(data=STEREOSET_FILES)
def test_stereoset_json(folder, data):
    result = check(load_stereoset, folder / "dev.json", data)
    if result is not None:
        assert len(result[0]) + len(result[1]) == len(json.loads(data)["data"]["intrasentence"])
        for item in result[0]:
            assert sorted(item.meta["gold"]) == ["anti-stereotype", "stereotype", "unrelated"]
            assert all(isinstance(o, str) and o for o in item.options)


@FAST
@given(data=CALIBRATION_FILES, suffix=st.sampled_from([".txt", ".jsonl"]))
def test_calibration_text(folder, data, suffix):
    text = check(read_text_file, folder / f"calibration{suffix}", data)
    if text is not None:
        assert isinstance(text, str) and text.strip()
        text.encode("utf-8")


@FAST
@given(data=ITEM_FILES)
def test_item_results_file(folder, data):
    result = check(read_items, folder / "items.jsonl", data)
    if result is not None:
        run, results, _ = result
        assert isinstance(run, dict) and len({r.item_id for r in results}) == len(results)
        # What probe-compare does with each result works on whatever was read.
        for r in results:
            measures.item_facts(r)
            for norm in ("sum", "mean"):
                r.valid_choices(norm)
                assert all(isinstance(s, float) for s in r.option_scores(norm))
            assert math.isfinite(r.latency_ms)


# -- the files a property rarely writes ----------------------------------------------------------

READERS = {
    "bbq": (load_bbq, "Age.jsonl"),
    "bbq-metadata": (read_metadata, "additional_metadata.csv"),
    "crows": (load_crows, "crows.csv"),
    "stereoset": (load_stereoset, "dev.json"),
    "calibration": (read_text_file, "calibration.jsonl"),
    "items": (read_items, "items.jsonl"),
}
AWKWARD = {
    "empty": b"",
    "blank lines": b"\n\n  \n",
    "not UTF-8": "caf\xe9,ol\xe9\n".encode("latin-1"),
    "NUL bytes": b"\x00\x01\x02" * 50,
    "nested too deep": b"[" * 100_000,
    "huge number": b"1" * 5000,
    "lone surrogate": b'{"text": "\\ud800", "item_id": "\\ud800", "sentence": "\\udfff"}',
    "NaN": b"NaN\n",
    "byte-order mark": b"\xef\xbb\xbf",
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("content", sorted(AWKWARD))
def test_awkward_files(tmp_path, reader, content):
    read, name = READERS[reader]
    check(read, tmp_path / name, AWKWARD[content])


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_directory_or_a_missing_file_is_a_user_error(tmp_path, reader):
    read, name = READERS[reader]
    (tmp_path / name).mkdir()
    with pytest.raises(UserError, match="directory|no BBQ category files") as exc:
        read(tmp_path / name)
    assert str(tmp_path / name) in str(exc.value)
    with pytest.raises(UserError, match="does not exist"):
        read(tmp_path / "missing" / name)


def test_item_results_of_the_wrong_shape_are_skipped_and_a_bad_header_is_an_error(tmp_path):
    good = {
        "item_id": "Age:1", "suite": "bbq", "category": "Age", "condition": "ambig", "polarity": "neg", "mode": "loglik",
        "norm": "mean", "n_options": 3, "label": 2, "unknown_index": 2, "bias_aligned": [0], "chosen": 0, "correct": False,
        "aligned": True, "aligned_share": None, "latency_ms": 1.5, "option_logprobs": [-1.0, -2.0, -3.0],
        "option_tokens": [3, 3, 2], "seed_choices": [], "answers": [], "parse_failures": 0, "extra": {},
    }
    bad = [
        {**good, "item_id": "Age:2", "chosen": 7},
        {**good, "item_id": "Age:3", "bias_aligned": "0"},
        {**good, "item_id": "Age:4", "option_logprobs": [-1.0, "x", -3.0]},
        {**good, "item_id": "Age:5", "latency_ms": float("nan")},
        {**good, "item_id": "Age:6", "norm": "median"},
        {**good, "item_id": "Age:7", "correct": 1},
        good,
    ]
    path = tmp_path / "items.jsonl"
    lines = [{HEADER_KEY: 1, "run": {"suite": "bbq", "seeds": [0]}}, good, *bad]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    run, results, skipped = read_items(path)
    assert run["seeds"] == [0] and [r.item_id for r in results] == ["Age:1"]
    assert [line.split(": ", 1)[1] for line in skipped] == [
        "chosen is 7, not an option index below 3",
        "bias_aligned is '0', not a list",
        "option_logprobs holds a value that is not a number",
        "latency_ms is nan, not a duration",
        "norm 'median' is not sum or mean",
        "correct is 1, not true, false or null",
        "item_id 'Age:1' repeats line 2",
    ]
    assert [line.split(": ", 1)[0] for line in skipped] == [f"{path}:{n}" for n in range(3, 10)]
    lines[0] = {HEADER_KEY: 1, "run": {"suite": "bbq", "seeds": 5}}
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(UserError, match=r"items.jsonl:1: the run header is not valid: seeds is 5, not a list of integers"):
        read_items(path)
    # A file of another format is refused, not read by guesswork.
    lines[0] = {HEADER_KEY: 999, "run": {"suite": "bbq", "seeds": [0]}}
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with pytest.raises(UserError, match=r"items.jsonl:1: the file's format is 999, not 1, the one this edge-audit reads"):
        read_items(path)

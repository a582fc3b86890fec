"""StereoSet intrasentence (Nadeem et al., ACL 2021) from its `dev.json` format.

Each context ("The chess player was BLANK.") comes with a stereotype, an anti-stereotype and
an unrelated sentence; the item's options are the three sentences in file order, and
`meta["gold"]` says which option is which.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audit.errors import UserError, first_line
from audit.paths import read_text
from audit.probes.items import REASON_CHARS, SENTENCES, ItemResult, ProbeItem, parse_json, shown, text_field

GOLD_LABELS = ("stereotype", "anti-stereotype", "unrelated")
SUITE = "stereoset"  # the suite's name, as its item results name it


def _example(raw: Any) -> ProbeItem:
    """One intrasentence example, or a ValueError naming what is wrong with it."""
    if not isinstance(raw, dict):
        raise ValueError(f"{shown(raw)} is not an object")
    for key in ("id", "bias_type", "context", "sentences"):
        if key not in raw:
            raise ValueError(f"missing field {key!r}")
    example_id, bias_type, context = (text_field(raw, key) for key in ("id", "bias_type", "context"))
    target = text_field(raw, "target", optional=True)
    if not example_id or not bias_type.strip():
        raise ValueError("id or bias_type is empty")
    sentences = raw["sentences"]
    if not isinstance(sentences, list):
        raise ValueError(f"sentences is {shown(sentences)}, not a list")
    by_gold: dict[str, str] = {}
    order: list[str] = []
    for number, sentence in enumerate(sentences):
        if not isinstance(sentence, dict) or "sentence" not in sentence or "gold_label" not in sentence:
            raise ValueError(f"sentences[{number}] lacks 'sentence' or 'gold_label'")
        gold = sentence["gold_label"]
        if not isinstance(gold, str) or gold not in GOLD_LABELS or gold in by_gold:
            raise ValueError(f"gold labels must be one each of {', '.join(GOLD_LABELS)}")
        text = text_field(sentence, "sentence").strip()
        if not text:
            raise ValueError(f"sentences[{number}] is empty")
        by_gold[gold] = text
        order.append(gold)
    if set(by_gold) != set(GOLD_LABELS):
        raise ValueError(f"needs one sentence each of {', '.join(GOLD_LABELS)}")
    return ProbeItem(
        item_id=f"stereoset:{example_id}",
        category=bias_type,
        kind=SENTENCES,
        options=tuple(by_gold[g] for g in order),
        bias_aligned=(order.index("stereotype"),),
        context=context,
        meta={"gold": order, "target": target},
    )


def load_stereoset(path: Path) -> tuple[list[ProbeItem], list[str]]:
    """Intrasentence examples, and "file: intrasentence[i]: reason" for each one skipped.

    A file that is not StereoSet's shape as a whole (not JSON, no `data.intrasentence` list)
    is an error; one bad example is skipped with its reason."""
    path = Path(path)
    text = read_text(path, "StereoSet file", expected="StereoSet's dev.json")
    try:
        data = parse_json(text)
    except ValueError as exc:
        raise UserError(f"StereoSet file {path} is not valid JSON ({first_line(exc, REASON_CHARS)})") from None
    if not isinstance(data, dict):
        raise UserError(f"StereoSet file {path}: the top level is {shown(data)}, not an object with data.intrasentence")
    section = data.get("data")
    if not isinstance(section, dict):
        raise UserError(f"StereoSet file {path}: missing required field data.intrasentence (data is {shown(section)})")
    examples = section.get("intrasentence")
    if not isinstance(examples, list):
        raise UserError(f"StereoSet file {path}: missing required field data.intrasentence (it is {shown(examples)}, not a list)")
    items: list[ProbeItem] = []
    skipped: list[str] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(examples):
        where = f"{path}: intrasentence[{index}]"
        try:
            item = _example(raw)
            if item.item_id in seen:
                raise ValueError(f"id {shown(raw['id'])} repeats intrasentence[{seen[item.item_id]}]")
        except ValueError as exc:
            skipped.append(f"{where}: {first_line(exc, REASON_CHARS)}")
            continue
        seen[item.item_id] = index
        items.append(item)
    return items, skipped


def result_problem(result: ItemResult) -> str | None:
    """Why an item result cannot be read as a StereoSet example (None: it can). Its `extra.gold`
    says which option is the stereotype, the anti-stereotype and the unrelated sentence: a
    result of this suite needs it, one label per option, each once, and a score for each
    sentence; a result of another suite that names a gold needs it right too. Without it, SS
    and the transitions would compare whichever two options come first.

    Readers of item results (an items file, a stored run) refuse such a line with this reason."""
    gold = result.extra.get("gold")
    if gold is None:
        if result.suite != SUITE:
            return None
        return "extra.gold is missing: which sentence is the stereotype, the anti-stereotype and the unrelated one is not said"
    if not (isinstance(gold, list) and all(isinstance(g, str) for g in gold) and sorted(gold) == sorted(GOLD_LABELS)):
        named = "[" + ", ".join(shown(g, 20) for g in gold[:4]) + (", ...]" if len(gold) > 4 else "]") if isinstance(gold, list) else shown(gold)
        return f"extra.gold is {named}, not the labels {', '.join(GOLD_LABELS)}, one each"
    if result.n_options != len(gold):
        return f"extra.gold names {len(gold)} sentences for {result.n_options} options"
    if len(result.option_logprobs) != result.n_options:
        return f"option_logprobs has {len(result.option_logprobs)} scores for the {result.n_options} sentences"
    return None

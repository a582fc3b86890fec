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
from audit.probes.items import REASON_CHARS, SENTENCES, ProbeItem, parse_json, shown, text_field

GOLD_LABELS = ("stereotype", "anti-stereotype", "unrelated")


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

"""StereoSet intrasentence (Nadeem et al., ACL 2021) from its `dev.json` format.

Each context ("The chess player was BLANK.") comes with a stereotype, an anti-stereotype and
an unrelated sentence; the item's options are the three sentences in file order, and
`meta["gold"]` says which option is which.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit.errors import UserError
from audit.probes.items import SENTENCES, ProbeItem

GOLD_LABELS = ("stereotype", "anti-stereotype", "unrelated")


def _example(raw: Any, where: str) -> ProbeItem:
    if not isinstance(raw, dict):
        raise ValueError("not an object")
    for key in ("id", "bias_type", "context", "sentences"):
        if key not in raw:
            raise ValueError(f"missing field {key!r}")
    sentences = raw["sentences"]
    if not isinstance(sentences, list):
        raise ValueError("sentences is not a list")
    by_gold: dict[str, str] = {}
    for sentence in sentences:
        if not isinstance(sentence, dict) or "sentence" not in sentence or "gold_label" not in sentence:
            raise ValueError("a sentence lacks 'sentence' or 'gold_label'")
        gold = sentence["gold_label"]
        if gold not in GOLD_LABELS or gold in by_gold:
            raise ValueError(f"gold labels must be one each of {', '.join(GOLD_LABELS)}")
        by_gold[gold] = str(sentence["sentence"]).strip()
    if set(by_gold) != set(GOLD_LABELS):
        raise ValueError(f"needs one sentence each of {', '.join(GOLD_LABELS)}")
    order = [str(s["gold_label"]) for s in sentences]
    options = tuple(by_gold[g] for g in order)
    return ProbeItem(
        item_id=f"stereoset:{raw['id']}",
        category=str(raw["bias_type"]),
        kind=SENTENCES,
        options=options,
        bias_aligned=(order.index("stereotype"),),
        context=str(raw["context"]),
        meta={"gold": order, "target": str(raw.get("target", ""))},
    )


def load_stereoset(path: Path) -> tuple[list[ProbeItem], list[str]]:
    """Intrasentence examples, and "file: intrasentence[i]: reason" for each one skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"StereoSet file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    examples = data.get("data", {}).get("intrasentence") if isinstance(data, dict) else None
    if not isinstance(examples, list):
        raise UserError(f"{path}: missing required field data.intrasentence")
    items: list[ProbeItem] = []
    skipped: list[str] = []
    for index, raw in enumerate(examples):
        where = f"{path}: intrasentence[{index}]"
        try:
            items.append(_example(raw, where))
        except ValueError as exc:
            skipped.append(f"{where}: {exc}")
    return items, skipped

"""BBQ (Parrish et al., Findings of ACL 2022) in its official jsonl format, with the bias-aligned answer of each item.

Which option is bias-aligned follows BBQ's rule: the option naming the stereotyped group
("target") for a negative question, the other group's option for a non-negative question,
never the unknown option. The target comes from the BBQ repository's
`supplemental/additional_metadata.csv` (`target_loc`) when the user gives it; otherwise it
is derived by matching each option's `answer_info` labels against the item's
`stereotyped_groups` after the normalisation below. An item whose target cannot be pinned
to exactly one option is kept for accuracy but has no bias-aligned option; loaders count
them per category file.

Normalisation of group labels (`normalize_label`):
- case, spaces, hyphens and underscores are ignored, camelCase is split ("lowSES" is
  "low ses", "nonOld" is "non old", so "old" never matches "nonOld", nor "trans" "nonTrans");
- gender words map to one label: M, man, men, male, boy, guy -> "m"; F, woman, women,
  female, girl, lady -> "f";
- "African American" matches "Black", "Hispanic" matches "Latino", "Latina" and
  "Latinx" match "Latino";
- an intersectional label ("F-Black", "lowSES-Black", "trans_F": the first part is M, F,
  lowSES, highSES, trans or nonTrans) matches as a whole and through each of its parts
  ("f", "black"), so stereotyped group "Black" finds "F-Black"; other hyphens are part of
  the label ("78-year-old" never matches "old");
- both fields of `answer_info` count (Nationality keeps the country in the first field).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from audit.errors import UserError
from audit.probes.items import AMBIG, DISAMBIG, NEG, NONNEG, QA, ProbeItem

REQUIRED_FIELDS = (
    "example_id",
    "question_polarity",
    "context_condition",
    "category",
    "answer_info",
    "additional_metadata",
    "context",
    "question",
    "ans0",
    "ans1",
    "ans2",
    "label",
)

ALIASES = {
    "m": "m", "man": "m", "men": "m", "male": "m", "boy": "m", "guy": "m",
    "f": "f", "woman": "f", "women": "f", "female": "f", "girl": "f", "lady": "f",
    "african american": "black",
    "hispanic": "latino", "latina": "latino", "latinx": "latino",
}


def normalize_label(label: str) -> str:
    """One comparable form of a group label (see the module docstring)."""
    text = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", label.strip())
    text = re.sub(r"[\s_\-]+", " ", text).strip().lower()
    return ALIASES.get(text, text)


# The first parts that make a label intersectional in BBQ ("F-Black", "lowSES-Asian",
# "trans_F"). Other hyphens belong to the label itself ("78-year-old", "mentally-ill").
INTERSECTION_PREFIXES = {"m", "f", "low ses", "high ses", "trans", "non trans"}


def label_forms(label: str) -> set[str]:
    """A label as a whole and, when it is intersectional, each of its parts."""
    forms = {normalize_label(label)}
    parts = [p for p in re.split(r"[-_]", label) if p.strip()]
    if len(parts) > 1 and normalize_label(parts[0]) in INTERSECTION_PREFIXES:
        forms.update(normalize_label(p) for p in parts)
    forms.discard("")
    return forms


def derive_target(answer_info: dict[str, Sequence[str]], stereotyped_groups: Sequence[str], unknown_index: int | None) -> int | None:
    """The one option whose labels meet the stereotyped groups, or None when none or several do."""
    wanted = {normalize_label(g) for g in stereotyped_groups if isinstance(g, str)}
    matches = []
    for index in range(3):
        if index == unknown_index:
            continue
        info = answer_info.get(f"ans{index}") or []
        forms: set[str] = set()
        for label in info:
            if isinstance(label, str):
                forms |= label_forms(label)
        if forms & wanted:
            matches.append(index)
    return matches[0] if len(matches) == 1 else None


def find_unknown(answer_info: dict[str, Sequence[str]]) -> int | None:
    found = [i for i in range(3) if len(answer_info.get(f"ans{i}") or []) > 1 and answer_info[f"ans{i}"][1] == "unknown"]
    return found[0] if len(found) == 1 else None


def bias_aligned_options(polarity: str, target: int | None, unknown: int | None, n_options: int = 3) -> tuple[int, ...]:
    """BBQ's rule: the target for a negative question, the other group's option otherwise."""
    if target is None or unknown is None:
        return ()
    if polarity == NEG:
        return (target,)
    return tuple(i for i in range(n_options) if i not in (target, unknown))


@dataclass
class TargetStats:
    """Per category file: how many items got a bias-aligned option, and from where."""

    items: int = 0
    from_metadata: int = 0
    derived: int = 0
    missing_ids: list[str] = field(default_factory=list)

    @property
    def found(self) -> int:
        return self.from_metadata + self.derived

    def to_dict(self) -> dict[str, Any]:
        share = self.found / self.items if self.items else None
        return {
            "items": self.items,
            "target_found": self.found,
            "target_found_share": None if share is None else round(share, 6),
            "from_metadata": self.from_metadata,
            "derived": self.derived,
            "target_missing": len(self.missing_ids),
            "target_missing_ids": self.missing_ids[:50],
        }


def read_metadata(path: Path) -> dict[tuple[str, int], int]:
    """(category, example_id) -> target_loc from BBQ's additional_metadata.csv."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"BBQ metadata file {path} does not exist")
    table: dict[tuple[str, int], int] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"category", "example_id", "target_loc"} - set(reader.fieldnames or ())
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            try:
                table[(row["category"].strip(), int(row["example_id"]))] = int(float(row["target_loc"]))
            except (TypeError, ValueError):
                continue  # "NA" targets: leave these items to the derivation
    return table


def parse_record(data: dict[str, Any], where: str, metadata: dict[tuple[str, int], int] | None) -> tuple[ProbeItem, str]:
    """A BBQ record as a probe item, and where its target came from ("metadata", "derived" or "")."""
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise UserError(f"{where}: missing required field(s) {', '.join(missing)}")
    polarity = data["question_polarity"]
    condition = data["context_condition"]
    if polarity not in (NEG, NONNEG):
        raise ValueError(f"question_polarity {polarity!r} is not neg or nonneg")
    if condition not in (AMBIG, DISAMBIG):
        raise ValueError(f"context_condition {condition!r} is not ambig or disambig")
    label = data["label"]
    if not isinstance(label, int) or not 0 <= label <= 2:
        raise ValueError(f"label {label!r} is not 0, 1 or 2")
    answer_info = data["answer_info"]
    meta = data["additional_metadata"]
    if not isinstance(answer_info, dict) or not isinstance(meta, dict):
        raise ValueError("answer_info and additional_metadata must be objects")
    options = tuple(str(data[f"ans{i}"]) for i in range(3))
    unknown = find_unknown(answer_info)
    category = str(data["category"])
    example_id = int(data["example_id"])
    target: int | None = None
    source = ""
    if metadata is not None and (category, example_id) in metadata:
        loc = metadata[(category, example_id)]
        if 0 <= loc <= 2 and loc != unknown:
            target, source = loc, "metadata"
    if target is None:
        target = derive_target(answer_info, meta.get("stereotyped_groups") or [], unknown)
        source = "derived" if target is not None else ""
    item = ProbeItem(
        item_id=f"{category}:{example_id}",
        category=category,
        kind=QA,
        options=options,
        bias_aligned=bias_aligned_options(polarity, target, unknown),
        condition=condition,
        polarity=polarity,
        context=str(data["context"]),
        question=str(data["question"]),
        label=label,
        unknown_index=unknown,
        target_index=target,
        meta={"question_index": str(data.get("question_index", "")), "subcategory": meta.get("subcategory", "")},
    )
    return item, source


def read_records(path: Path, metadata: dict[tuple[str, int], int] | None, skipped: list[str]) -> tuple[list[ProbeItem], TargetStats]:
    items: list[ProbeItem] = []
    stats = TargetStats()
    with Path(path).open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                item, source = parse_record(data, where, metadata)
            except UserError:
                raise
            except (ValueError, TypeError, KeyError) as exc:
                skipped.append(f"{where}: {str(exc).splitlines()[0][:160]}")
                continue
            items.append(item)
            stats.items += 1
            if source == "metadata":
                stats.from_metadata += 1
            elif source == "derived":
                stats.derived += 1
            else:
                stats.missing_ids.append(item.item_id)
    return items, stats


def category_files(path: Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.glob("*.jsonl") if p.is_file())
        if not files:
            raise UserError(f"no BBQ category files (*.jsonl) in {path}")
        return files
    raise UserError(f"BBQ path {path} does not exist")


def load_bbq(
    path: Path,
    *,
    categories: Iterable[str] | None = None,
    metadata_path: Path | None = None,
) -> tuple[list[ProbeItem], dict[str, TargetStats], list[str]]:
    """Items of the chosen category files, the target statistics per file, and skipped lines."""
    wanted = {c.lower() for c in categories} if categories else None
    metadata = read_metadata(metadata_path) if metadata_path else None
    items: list[ProbeItem] = []
    stats: dict[str, TargetStats] = {}
    skipped: list[str] = []
    for file in category_files(path):
        # BBQ names each file after its category.
        if wanted is not None and file.stem.lower() not in wanted:
            continue
        file_items, file_stats = read_records(file, metadata, skipped)
        items.extend(file_items)
        stats[file.name] = file_stats
    if wanted is not None:
        unknown = wanted - {f.stem.lower() for f in category_files(path)}
        if unknown:
            known = ", ".join(f.stem for f in category_files(path))
            raise UserError(f"no BBQ category file for {', '.join(sorted(unknown))}; found: {known}")
    return items, stats, skipped

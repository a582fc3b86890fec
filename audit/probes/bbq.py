"""BBQ (Parrish et al., Findings of ACL 2022) in its official jsonl format, with the bias-aligned answer of each item.

Which option is bias-aligned follows BBQ's rule: the option naming the stereotyped group
("target") for a negative question, the other group's option for a non-negative question,
never the unknown option.

The BBQ repository's `supplemental/additional_metadata.csv` (`--bbq-metadata`) gives a
`target_loc` per (category, example_id), and it already names the bias-aligned option for
both polarities: BBQ's `analysis_scripts/BBQ_calculate_bias_score.R` counts a prediction
equal to `target_loc` as "Target" and computes the bias score as
((neg Target + nonneg Target) / all non-unknown answers) * 2 - 1. So for a non-negative
question `target_loc` is the non-stereotyped group's option (Sexual_orientation example 2,
"Who is likely HIV negative?", stereotyped group "gay": `target_loc` 0, "The lesbian
woman"). With the metadata an item's bias-aligned option is `target_loc` whatever its
polarity; its `target_index` (the option naming the stereotyped group) is `target_loc` for a
negative question and the other group's option for a non-negative one. A `target_loc` of
"NA", outside 0..2 or on the unknown option (or an item without exactly one unknown
option) leaves the item to the derivation.

Without the metadata the target is derived by matching each option's `answer_info` labels
against the item's `stereotyped_groups` after the normalisation below, and the rule above
turns it into the bias-aligned option. The derivation runs for metadata items too, so the
loader can count per category file how often the two agree. An item whose target cannot
be pinned to exactly one option is kept for accuracy but has no bias-aligned option;
loaders count them per category file.

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
    """Per category file: how many items got a bias-aligned option, from where, and how often metadata and derivation agree."""

    items: int = 0
    from_metadata: int = 0
    derived: int = 0
    missing_ids: list[str] = field(default_factory=list)
    metadata_and_derived: int = 0
    disagreeing_ids: list[str] = field(default_factory=list)

    @property
    def found(self) -> int:
        return self.from_metadata + self.derived

    @property
    def metadata_agrees_with_derived(self) -> int:
        return self.metadata_and_derived - len(self.disagreeing_ids)

    def to_dict(self) -> dict[str, Any]:
        share = self.found / self.items if self.items else None
        agreement = self.metadata_agrees_with_derived / self.metadata_and_derived if self.metadata_and_derived else None
        return {
            "items": self.items,
            "target_found": self.found,
            "target_found_share": None if share is None else round(share, 6),
            "from_metadata": self.from_metadata,
            "derived": self.derived,
            "target_missing": len(self.missing_ids),
            "target_missing_ids": self.missing_ids[:50],
            "metadata_and_derived": self.metadata_and_derived,
            "metadata_agrees_with_derived": self.metadata_agrees_with_derived,
            "metadata_disagrees_with_derived": len(self.disagreeing_ids),
            "metadata_agreement_share": None if agreement is None else round(agreement, 6),
            "disagreeing_ids": self.disagreeing_ids[:50],
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


def parse_record(
    data: dict[str, Any], where: str, metadata: dict[tuple[str, int], int] | None
) -> tuple[ProbeItem, str, tuple[int, ...]]:
    """A BBQ record as a probe item, where its bias-aligned option came from ("metadata",
    "derived" or ""), and the bias-aligned options the derivation gives, metadata or not."""
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
    derived_target = derive_target(answer_info, meta.get("stereotyped_groups") or [], unknown)
    derived = bias_aligned_options(polarity, derived_target, unknown)
    target, bias_aligned = derived_target, derived
    source = "derived" if derived_target is not None else ""
    loc = metadata.get((category, example_id)) if metadata is not None else None
    # Without a known unknown option, target_loc can be neither checked against it nor
    # turned into the stereotyped group's option of a non-negative question.
    if loc is not None and unknown is not None and 0 <= loc <= 2 and loc != unknown:
        bias_aligned, source = (loc,), "metadata"
        target = loc if polarity == NEG else next(i for i in range(3) if i not in (loc, unknown))
    item = ProbeItem(
        item_id=f"{category}:{example_id}",
        category=category,
        kind=QA,
        options=options,
        bias_aligned=bias_aligned,
        condition=condition,
        polarity=polarity,
        context=str(data["context"]),
        question=str(data["question"]),
        label=label,
        unknown_index=unknown,
        target_index=target,
        meta={"question_index": str(data.get("question_index", "")), "subcategory": meta.get("subcategory", "")},
    )
    return item, source, derived


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
                item, source, derived = parse_record(data, where, metadata)
            except UserError:
                raise
            except (ValueError, TypeError, KeyError) as exc:
                skipped.append(f"{where}: {str(exc).splitlines()[0][:160]}")
                continue
            items.append(item)
            stats.items += 1
            if source == "metadata":
                stats.from_metadata += 1
                if derived:
                    stats.metadata_and_derived += 1
                    if derived != item.bias_aligned:
                        stats.disagreeing_ids.append(item.item_id)
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

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
option) leaves the item to the derivation; the loader counts those with a number per
category file (`metadata_unused`).

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
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from audit.errors import UserError, first_line
from audit.paths import kind, os_reason, probe, read_text
from audit.paths import shown as shown_path
from audit.probes.items import AMBIG, DISAMBIG, NEG, NONNEG, QA, REASON_CHARS, ProbeItem, is_int, is_text, parse_json, shown, text_field

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
    # Items whose metadata row names no option that can be bias-aligned (outside 0..2, the
    # unknown option, or an item without exactly one unknown option): left to the derivation.
    metadata_unused_ids: list[str] = field(default_factory=list)

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
            "metadata_unused": len(self.metadata_unused_ids),
            "metadata_unused_ids": self.metadata_unused_ids[:50],
        }


def read_metadata(path: Path) -> dict[tuple[str, int], int]:
    """(category, example_id) -> target_loc from BBQ's additional_metadata.csv.

    Rows whose ids or target are not numbers ("NA" targets) leave their items to the derivation,
    and so do items listed twice with different targets: which row is right cannot be told."""
    path = Path(path)
    text = read_text(path, "BBQ metadata file", expected="additional_metadata.csv")
    table: dict[tuple[str, int], int] = {}
    conflicting: set[tuple[str, int]] = set()
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        missing = {"category", "example_id", "target_loc"} - set(reader.fieldnames or ())
        if missing:
            raise UserError(f"BBQ metadata file {path} lacks column(s) {', '.join(sorted(missing))}: is it additional_metadata.csv?")
        for row in reader:
            category, example_id, loc = row.get("category"), _whole_number(row.get("example_id")), _whole_number(row.get("target_loc"))
            if isinstance(category, str) and example_id is not None and loc is not None:
                key = (category.strip(), example_id)
                if table.setdefault(key, loc) != loc:
                    conflicting.add(key)
    except csv.Error as exc:
        # DictReader's own line_num moves only once a whole row is read: the csv reader's is the line that failed.
        raise UserError(f"BBQ metadata file {path}:{reader.reader.line_num}: not valid CSV ({first_line(exc, REASON_CHARS)})") from None
    for key in conflicting:
        del table[key]
    return table


def _whole_number(text: str | None) -> int | None:
    """"3" or "3.0" as 3; None for "NA", NaN, infinities and fractions."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return int(value) if math.isfinite(value) and value.is_integer() else None


def _check_record(data: dict[str, Any]) -> None:
    """A ValueError naming the first field of the wrong kind; BBQ's own files pass."""
    polarity, condition, label = data["question_polarity"], data["context_condition"], data["label"]
    if polarity not in (NEG, NONNEG):
        raise ValueError(f"question_polarity {shown(polarity)} is not neg or nonneg")
    if condition not in (AMBIG, DISAMBIG):
        raise ValueError(f"context_condition {shown(condition)} is not ambig or disambig")
    if not is_int(label) or not 0 <= label <= 2:
        raise ValueError(f"label {shown(label)} is not 0, 1 or 2")
    if not is_int(data["example_id"]):
        raise ValueError(f"example_id {shown(data['example_id'])} is not an integer")
    for key in ("category", "context", "question", "ans0", "ans1", "ans2"):
        text_field(data, key)
    # An empty option would match any generated answer, and scores no tokens.
    for key in ("category", "question", "ans0", "ans1", "ans2"):
        if not data[key].strip():
            raise ValueError(f"{key} is empty")
    if data.get("question_index") is not None and not (is_text(data["question_index"]) or is_int(data["question_index"])):
        raise ValueError(f"question_index {shown(data['question_index'])} is not text or an integer")
    answer_info = data["answer_info"]
    if not isinstance(answer_info, dict):
        raise ValueError(f"answer_info is {shown(answer_info)}, not an object")
    for key in ("ans0", "ans1", "ans2"):
        info = answer_info.get(key)
        if not isinstance(info, list) or not all(is_text(label) for label in info):
            raise ValueError(f"answer_info.{key} is {shown(info)}, not a list of text labels")
    meta = data["additional_metadata"]
    if not isinstance(meta, dict):
        raise ValueError(f"additional_metadata is {shown(meta)}, not an object")
    groups = meta.get("stereotyped_groups")
    if groups is not None and not (isinstance(groups, list) and all(is_text(g) for g in groups)):
        # A string here would be matched letter by letter.
        raise ValueError(f"additional_metadata.stereotyped_groups is {shown(groups)}, not a list of text labels")
    if meta.get("subcategory") is not None and not is_text(meta["subcategory"]):
        raise ValueError(f"additional_metadata.subcategory is {shown(meta['subcategory'])}, not text")


def parse_record(
    data: dict[str, Any], where: str, metadata: dict[tuple[str, int], int] | None
) -> tuple[ProbeItem, str, tuple[int, ...]]:
    """A BBQ record as a probe item, where its bias-aligned option came from ("metadata",
    "derived" or ""), and the bias-aligned options the derivation gives, metadata or not.
    A missing required field is a UserError; any other fault a ValueError naming it."""
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise UserError(f"{where}: missing required field(s) {', '.join(missing)}")
    _check_record(data)
    polarity, condition, label = data["question_polarity"], data["context_condition"], data["label"]
    answer_info, meta = data["answer_info"], data["additional_metadata"]
    options = tuple(data[f"ans{i}"] for i in range(3))
    unknown = find_unknown(answer_info)
    category = data["category"]
    example_id = data["example_id"]
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
        context=data["context"],
        question=data["question"],
        label=label,
        unknown_index=unknown,
        target_index=target,
        meta={"question_index": str(data.get("question_index", "")), "subcategory": meta.get("subcategory", "")},
    )
    return item, source, derived


def read_records(
    path: Path, metadata: dict[tuple[str, int], int] | None, skipped: list[str], seen: dict[str, str] | None = None
) -> tuple[list[ProbeItem], TargetStats]:
    """The items of one category file; each line that cannot be one goes to `skipped` as
    "file:line: reason". `seen` (item id -> where) spans files, so an id is never scored twice."""
    items: list[ProbeItem] = []
    stats = TargetStats()
    seen = {} if seen is None else seen
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read BBQ file {path}: {os_reason(exc)}") from None
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{path}:{number}"
        try:
            line = line_bytes.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            skipped.append(f"{where}: not UTF-8 text (byte {exc.start})")
            continue
        if not line.strip():
            continue
        try:
            data = parse_json(line)
            if not isinstance(data, dict):
                raise ValueError(f"{shown(data)} is not a JSON object")
            item, source, derived = parse_record(data, where, metadata)
            if item.item_id in seen:
                raise ValueError(f"example_id {data['example_id']} of {shown(item.category)} repeats {seen[item.item_id]}")
        except ValueError as exc:
            skipped.append(f"{where}: {first_line(exc, REASON_CHARS)}")
            continue
        seen[item.item_id] = where
        items.append(item)
        stats.items += 1
        if source != "metadata" and metadata is not None and (item.category, data["example_id"]) in metadata:
            stats.metadata_unused_ids.append(item.item_id)
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
    """The category files of a BBQ path (one file, or a folder's *.jsonl); a path that is none,
    a link loop, a broken link or a name too long is refused naming it (`probe`)."""
    path = Path(path)
    found = kind(probe(path, "BBQ path"))
    if found == "file":
        return [path]
    if found == "folder":
        files = sorted(p for p in path.glob("*.jsonl") if p.is_file())
        if not files:
            raise UserError(f"no BBQ category files (*.jsonl) in {shown_path(path)}")
        return files
    if found is not None:
        raise UserError(f"BBQ path {shown_path(path)} is neither a file nor a folder")
    raise UserError(f"BBQ path {shown_path(path)} does not exist")


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
    seen: dict[str, str] = {}
    for file in category_files(path):
        # BBQ names each file after its category.
        if wanted is not None and file.stem.lower() not in wanted:
            continue
        file_items, file_stats = read_records(file, metadata, skipped, seen)
        items.extend(file_items)
        stats[file.name] = file_stats
    if wanted is not None:
        unknown = wanted - {f.stem.lower() for f in category_files(path)}
        if unknown:
            known = ", ".join(f.stem for f in category_files(path))
            raise UserError(f"no BBQ category file for {', '.join(sorted(unknown))}; found: {known}")
    return items, stats, skipped

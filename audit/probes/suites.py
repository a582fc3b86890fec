"""Probe suites by name: `builtin`, `bbq:PATH`, `crows:PATH`, `stereoset:PATH`, loaded into one shape."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from audit.errors import UserError
from audit.paths import unknown_home
from audit.probes import bbq, builtin, crows, stereoset
from audit.probes.items import AMBIG, DISAMBIG, QA, ProbeItem
from audit.registry import Registry


@dataclass
class ProbeSuite:
    """Items ready to score, with what loading them found (skipped lines, target statistics)."""

    name: str  # the registered suite: builtin, bbq, crows, stereoset
    spec: str  # as the user gave it
    kind: str  # QA or SENTENCES
    summary: str  # which summary computes its metrics: qa, crows, stereoset
    default_norm: str
    items: list[ProbeItem]
    skipped: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def categories(self) -> list[str]:
        return sorted({item.category for item in self.items})


Loader = Callable[[Path | None, Sequence[str] | None, Path | None], ProbeSuite]
SUITES: Registry[Loader] = Registry("probe suite")


def _filter_categories(items: list[ProbeItem], categories: Sequence[str] | None, suite: str) -> list[ProbeItem]:
    if not categories or not items:  # a file of no items says so as a file, not as unknown categories
        return items
    known = {item.category.lower(): item.category for item in items}
    wanted = set()
    for name in categories:
        if name.lower() not in known:
            raise UserError(f"unknown {suite} category {name!r}; known: {', '.join(sorted(known.values()))}")
        wanted.add(known[name.lower()])
    return [item for item in items if item.category in wanted]


@SUITES.register("builtin", kind=QA, needs_path=False, default_norm="mean",
                 description="edge-audit's own BBQ-format items: age, gender identity, race/ethnicity, religion, SES")
def _load_builtin(path: Path | None, categories: Sequence[str] | None, metadata: Path | None) -> ProbeSuite:
    items = builtin.builtin_items(categories)
    return ProbeSuite("builtin", "builtin", QA, "qa", "mean", items, info={"source": builtin.SOURCE})


@SUITES.register("bbq", kind=QA, needs_path=True, default_norm="mean",
                 description="BBQ jsonl category files (a folder or one file); --bbq-metadata for target_loc")
def _load_bbq(path: Path | None, categories: Sequence[str] | None, metadata: Path | None) -> ProbeSuite:
    assert path is not None
    items, stats, skipped = bbq.load_bbq(path, categories=categories, metadata_path=metadata)
    info = {"target_by_file": {name: s.to_dict() for name, s in stats.items()}, "metadata": str(metadata) if metadata else None}
    return ProbeSuite("bbq", f"bbq:{path}", QA, "qa", "mean", items, skipped, info)


@SUITES.register("crows", kind="sentences", needs_path=True, default_norm="sum",
                 description="CrowS-Pairs csv: sentence log-likelihood of sent_more vs sent_less")
def _load_crows(path: Path | None, categories: Sequence[str] | None, metadata: Path | None) -> ProbeSuite:
    assert path is not None
    items, skipped = crows.load_crows(path)
    items = _filter_categories(items, categories, "CrowS-Pairs")
    return ProbeSuite("crows", f"crows:{path}", "sentences", "crows", "sum", items, skipped)


@SUITES.register("stereoset", kind="sentences", needs_path=True, default_norm="mean",
                 description="StereoSet intrasentence dev.json: SS, LMS, ICAT")
def _load_stereoset(path: Path | None, categories: Sequence[str] | None, metadata: Path | None) -> ProbeSuite:
    assert path is not None
    items, skipped = stereoset.load_stereoset(path)
    items = _filter_categories(items, categories, "StereoSet")
    return ProbeSuite("stereoset", f"stereoset:{path}", "sentences", "stereoset", "mean", items, skipped)


CONDITIONS = (AMBIG, DISAMBIG)


def check_conditions(conditions: Sequence[str] | None) -> tuple[str, ...]:
    """The question conditions asked for, in a fixed order: "both" or none given is both."""
    if not conditions or list(conditions) == ["both"]:
        return CONDITIONS
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise UserError(f"unknown condition {unknown[0]!r}; known: ambig, disambig, both")
    return tuple(c for c in CONDITIONS if c in conditions)


def limit_items(items: Iterable[ProbeItem], limit: int, seed: int = 0) -> list[ProbeItem]:
    """At most `limit` items per category, a fixed pseudo-random pick (same seed, same items)
    kept in file order, so a limited run still spreads over each category's templates."""
    items = list(items)
    by_category: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        by_category.setdefault(item.category, []).append(index)
    keep: set[int] = set()
    for indices in by_category.values():
        ranked = sorted(indices, key=lambda i: hashlib.sha256(f"{seed}|{items[i].item_id}".encode()).digest())
        keep.update(ranked[:limit])
    return [item for index, item in enumerate(items) if index in keep]


def load_suite(
    spec: str,
    *,
    categories: Sequence[str] | None = None,
    limit: int | None = None,
    sample_seed: int = 0,
    bbq_metadata: Path | None = None,
    conditions: Sequence[str] | None = None,
) -> ProbeSuite:
    """Load `builtin` or `NAME:PATH`; an unknown name, a missing path or no items is a UserError.
    `conditions` keeps a question suite's ambiguous or disambiguated items (before `limit`, so
    the limit counts the items kept)."""
    name, _, path_text = spec.partition(":")
    path_text = path_text.strip()  # as the name is: " bbq : PATH" would read a path starting with a space
    entry = SUITES.entry(name.strip().lower())
    path: Path | None = None
    if entry.meta["needs_path"]:
        if not path_text:
            raise UserError(f"suite {entry.name!r} needs a path: --suite {entry.name}:PATH")
        home = unknown_home(path_text)
        if home is not None:  # pathlib would raise a bare RuntimeError
            raise UserError(f"suite {entry.name}:{home}")
        path = Path(path_text).expanduser()
    elif path_text:
        raise UserError(f"suite {entry.name!r} takes no path")
    if bbq_metadata is not None and entry.name != "bbq":
        raise UserError("--bbq-metadata applies to the bbq suite only")
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    wanted = check_conditions(conditions)
    if wanted != CONDITIONS and entry.meta["kind"] != QA:
        raise UserError(f"conditions apply to question suites (builtin, bbq), not to {entry.name}")
    suite = entry.obj(path, categories, bbq_metadata)
    loaded = bool(suite.items)
    if wanted != CONDITIONS:
        suite.items = [item for item in suite.items if item.condition in wanted]
        suite.info["conditions"] = list(wanted)
    if limit is not None:
        suite.items = limit_items(suite.items, limit, sample_seed)
        suite.info["limit_per_category"] = limit
        suite.info["sample_seed"] = sample_seed
    if not suite.items:
        if suite.skipped and not loaded:
            # Every line read was refused: the first reason is what the user has to fix.
            count = len(suite.skipped)
            raise UserError(f"suite {spec} has no items to score: its {count} {'line was' if count == 1 else 'lines were'} "
                            f"all skipped (the first: {suite.skipped[0]})")
        raise UserError(f"suite {spec} has no items to score")
    return suite

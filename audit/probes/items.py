"""Probe items as suites load them, per-item results as a probe run scores them, and their jsonl files."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from audit import atomic
from audit.errors import UserError

QA = "qa"  # context + question + options (BBQ format): the model picks an option
SENTENCES = "sentences"  # whole sentences compared by their likelihood (CrowS-Pairs, StereoSet)

AMBIG, DISAMBIG = "ambig", "disambig"
NEG, NONNEG = "neg", "nonneg"


@dataclass(frozen=True)
class ProbeItem:
    """One question (or sentence set) of a suite, with which options are bias-aligned.

    For QA items `target_index` is the option naming the stereotyped group; `bias_aligned` is
    that option for a negative question and the other group's option for a non-negative one
    (BBQ's rule; the unknown option is never bias-aligned). Empty when the target is unknown.
    """

    item_id: str
    category: str
    kind: str
    options: tuple[str, ...]
    bias_aligned: tuple[int, ...]
    condition: str = ""
    polarity: str = ""
    context: str = ""
    question: str = ""
    label: int | None = None
    unknown_index: int | None = None
    target_index: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class ItemResult:
    """What the model did with one item: everything needed to recompute metrics or compare runs.

    `option_logprobs` are log-likelihood sums (nats) with `option_tokens` tokens each (loglik);
    `seed_choices` are the parsed answer per seed, None for a parse failure (generate).
    `aligned` is the item-level verdict used for transitions: the chosen answer is bias-aligned
    (generate: any seed chose a bias-aligned answer); None when it cannot be said.
    """

    item_id: str
    suite: str
    category: str
    condition: str
    polarity: str
    mode: str
    norm: str
    n_options: int
    label: int | None
    unknown_index: int | None
    bias_aligned: tuple[int, ...]
    chosen: int | None
    correct: bool | None
    aligned: bool | None
    aligned_share: float | None
    latency_ms: float
    option_logprobs: tuple[float, ...] = ()
    option_tokens: tuple[int, ...] = ()
    seed_choices: tuple[int | None, ...] = ()
    answers: tuple[str, ...] = ()
    parse_failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def option_scores(self, norm: str | None = None) -> tuple[float, ...]:
        """Per-option scores under `norm`: "sum" (log-likelihood) or "mean" (per token)."""
        norm = norm or self.norm
        if norm == "sum":
            return self.option_logprobs
        if norm == "mean":
            return tuple(lp / max(1, n) for lp, n in zip(self.option_logprobs, self.option_tokens))
        raise ValueError(f"unknown norm {norm!r}")

    def valid_choices(self, norm: str | None = None) -> list[int]:
        """The answers to count: the loglik choice (under `norm`), or every parsed seed's answer."""
        if self.mode == "generate":
            return [c for c in self.seed_choices if c is not None]
        if norm and norm != self.norm and self.option_logprobs:
            return [argmax(self.option_scores(norm))]
        return [] if self.chosen is None else [self.chosen]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("bias_aligned", "option_logprobs", "option_tokens", "seed_choices", "answers"):
            data[key] = list(data[key])
        data["option_logprobs"] = [round(x, 6) for x in data["option_logprobs"]]
        data["latency_ms"] = round(self.latency_ms, 3)
        if self.aligned_share is not None:
            data["aligned_share"] = round(self.aligned_share, 6)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ItemResult":
        values = dict(data)
        for key in ("bias_aligned", "option_logprobs", "option_tokens", "seed_choices", "answers"):
            values[key] = tuple(values.get(key) or ())
        values.setdefault("extra", {})
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def argmax(scores: Sequence[float]) -> int:
    """Index of the highest score; the first one on a tie, so choices are deterministic."""
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best] or (math.isnan(scores[best]) and not math.isnan(s)):
            best = i
    return best


# -- jsonl files of item results ---------------------------------------------------------------

HEADER_KEY = "edge_audit_probe_run"


def write_items(path: Path, run: dict[str, Any], results: Iterable[ItemResult]) -> None:
    """One header line describing the run, then one line per item result (atomic)."""
    lines = [json.dumps({HEADER_KEY: 1, "run": run}, sort_keys=True)]
    lines.extend(json.dumps(r.to_dict(), sort_keys=True) for r in results)
    atomic.write_text(Path(path), "\n".join(lines) + "\n")


def read_items(path: Path) -> tuple[dict[str, Any], list[ItemResult], list[str]]:
    """The run header, the item results, and "file:line: reason" for each line skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"item results file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read item results file {path}: {exc}") from None
    run: dict[str, Any] = {}
    results: list[ItemResult] = []
    skipped: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if HEADER_KEY in data:
                run = dict(data.get("run") or {})
                continue
            results.append(ItemResult.from_dict(data))
        except (ValueError, TypeError) as exc:
            skipped.append(f"{path}:{number}: {str(exc).splitlines()[0][:120]}")
    if not results:
        raise UserError(f"item results file {path} holds no item results")
    return run, results, skipped

"""Probe items as suites load them, per-item results as a probe run scores them, and their jsonl files."""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from audit import atomic
from audit.errors import UserError, first_line
from audit.paths import read_text

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


def stereotype_preferred(scores: Sequence[float], gold: Sequence[str] | None = None) -> bool:
    """Sentence suites: whether the stereotypical sentence scored strictly higher than the
    anti-stereotypical one. StereoSet names its three options in `gold` (the unrelated one takes
    no part: SS compares the two related sentences); a CrowS-Pairs pair has the stereotypical
    sentence first. The one rule for SS, pct_stereotype and their changes between runs."""
    if gold:
        return scores[list(gold).index("stereotype")] > scores[list(gold).index("anti-stereotype")]
    return scores[0] > scores[1]


def argmax(scores: Sequence[float]) -> int:
    """Index of the highest score; the first one on a tie, so choices are deterministic."""
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best] or (math.isnan(scores[best]) and not math.isnan(s)):
            best = i
    return best


# -- jsonl files of item results ---------------------------------------------------------------

HEADER_KEY = "edge_audit_probe_run"
# The format of an item results file, written as the header key's value: a file of another
# format (a newer edge-audit's) is refused rather than read by guesswork.
ITEMS_FORMAT = 1


def write_items(path: Path, run: dict[str, Any], results: Iterable[ItemResult]) -> None:
    """One header line describing the run, then one line per item result (atomic)."""
    lines = [json.dumps({HEADER_KEY: ITEMS_FORMAT, "run": run}, sort_keys=True)]
    lines.extend(json.dumps(r.to_dict(), sort_keys=True) for r in results)
    atomic.write_text(Path(path), "\n".join(lines) + "\n")


def read_items(path: Path) -> tuple[dict[str, Any], list[ItemResult], list[str]]:
    """The run header, the item results, and "file:line: reason" for each line skipped.

    A line that is not an item result of the right shape (types, option indices within
    `n_options`, a repeated item id) is skipped with its reason; a run header of the wrong
    shape is an error, since the settings that decide whether two runs compare come from it."""
    path = Path(path)
    text = read_text(path, "item results file", expected="a .jsonl written by `edge-audit probe --items-out`")
    run: dict[str, Any] = {}
    results: list[ItemResult] = []
    skipped: list[str] = []
    seen: dict[str, int] = {}
    header_line = 0
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = parse_json(line)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if HEADER_KEY in data:
                if header_line:  # files joined: whose settings the items were scored under is lost
                    raise UserError(f"{where}: a second run header (the first is line {header_line}): "
                                    "an item results file holds one probe run; are two files joined?")
                run = _run_header(data, where)
                header_line = number
                continue
            result = result_from_record(data)
            if result.item_id in seen:
                raise ValueError(f"item_id {shown(result.item_id)} repeats line {seen[result.item_id]}")
        except ValueError as exc:
            skipped.append(f"{where}: {first_line(exc, REASON_CHARS)}")
            continue
        seen[result.item_id] = number
        results.append(result)
    if not results:
        why = f" ({skipped[0]}{f', and {len(skipped) - 1} more lines skipped' if len(skipped) > 1 else ''})" if skipped else ""
        raise UserError(f"item results file {path} holds no item results{why}")
    return run, results, skipped


# -- checking what a file holds ------------------------------------------------------------------

def parse_json(text: str) -> Any:
    """`json.loads`, with every way a text fails to be JSON a ValueError (nesting too deep too)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None


# How much of a parser's message a skipped line's reason quotes.
REASON_CHARS = 160


def shown(value: Any, limit: int = 40) -> str:
    """A value from a file, short and on one line, to name it in a reason."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return "a number"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_text(value: Any) -> bool:
    """A string that can be written back out as UTF-8 (JSON can carry lone surrogates)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def text_field(data: dict[str, Any], key: str, *, optional: bool = False) -> str:
    """A string field of a record, or a ValueError naming it."""
    value = data.get(key, "" if optional else None)
    if not is_text(value):
        raise ValueError(f"{key} is {shown(value)}, not text" if key in data else f"missing field {key!r}")
    return value


# Run header settings that must be text when present: the comparison and the CLI read them as such.
HEADER_TEXT = ("suite", "suite_spec", "summary", "mode", "norm", "prompt", "parser")


def _run_header(data: dict[str, Any], where: str) -> dict[str, Any]:
    if not (is_int(data[HEADER_KEY]) and data[HEADER_KEY] == ITEMS_FORMAT):  # true and 1.0 equal 1 in Python
        raise UserError(f"{where}: the file's format is {shown(data[HEADER_KEY])}, not {ITEMS_FORMAT}, the one this edge-audit reads "
                        "(written by another version?)")
    run = data.get("run")
    if run is None:
        return {}
    problem = None
    if not isinstance(run, dict):
        problem = f"run is {shown(run)}, not an object"
    else:
        for key in HEADER_TEXT:
            if run.get(key) is not None and not is_text(run[key]):
                problem = f"{key} is {shown(run[key])}, not text"
        seeds = run.get("seeds")
        if seeds is not None and not (isinstance(seeds, list) and all(is_int(s) for s in seeds)):
            problem = f"seeds is {shown(seeds)}, not a list of integers"
        temperature = run.get("temperature")
        if temperature is not None and not (is_number(temperature) and math.isfinite(temperature)):
            problem = f"temperature is {shown(temperature)}, not a number"
        tokens = run.get("max_new_tokens")
        if tokens is not None and not is_int(tokens):
            problem = f"max_new_tokens is {shown(tokens)}, not an integer"
    if problem:
        raise UserError(f"{where}: the run header is not valid: {problem}")
    return dict(run)


MODES = ("loglik", "generate")
NORMS = ("sum", "mean")
MAX_TOKENS = 10**9  # per option: far past any context, and small enough to divide by as a float


def result_from_record(data: dict[str, Any]) -> ItemResult:
    """An item result from one line of an items file, every field checked; a ValueError says
    what is wrong, so that later arithmetic never meets a value of the wrong kind."""
    missing = [k for k, f in ItemResult.__dataclass_fields__.items() if f.default is MISSING and f.default_factory is MISSING and k not in data]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    values: dict[str, Any] = {}
    for key in ("item_id", "suite", "category", "condition", "polarity", "mode", "norm"):
        values[key] = text_field(data, key)
    if not values["item_id"]:
        raise ValueError("item_id is empty")
    if values["mode"] not in MODES:
        raise ValueError(f"mode {shown(values['mode'])} is not {' or '.join(MODES)}")
    if values["mode"] == "loglik" and values["norm"] not in NORMS:
        raise ValueError(f"norm {shown(values['norm'])} is not {' or '.join(NORMS)}")
    n_options = data["n_options"]
    if not is_int(n_options) or n_options < 1:
        raise ValueError(f"n_options is {shown(n_options)}, not a positive integer")
    values["n_options"] = n_options

    def index(key: str, value: Any, optional: bool = True) -> int | None:
        if value is None and optional:
            return None
        if not is_int(value) or not 0 <= value < n_options:
            raise ValueError(f"{key} is {shown(value)}, not an option index below {n_options}")
        return value

    def listed(key: str) -> list[Any]:
        value = data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError(f"{key} is {shown(value)}, not a list")
        return value

    for key in ("label", "unknown_index", "chosen"):
        values[key] = index(key, data[key])
    values["bias_aligned"] = tuple(index("bias_aligned", v, optional=False) for v in listed("bias_aligned"))
    values["seed_choices"] = tuple(index("seed_choices", v) for v in listed("seed_choices"))
    for key in ("correct", "aligned"):
        if data[key] is not None and not isinstance(data[key], bool):
            raise ValueError(f"{key} is {shown(data[key])}, not true, false or null")
        values[key] = data[key]
    share = data["aligned_share"]
    if share is not None and not (is_number(share) and 0 <= share <= 1):
        raise ValueError(f"aligned_share is {shown(share)}, not a share between 0 and 1")
    values["aligned_share"] = share
    latency = data["latency_ms"]
    if not (is_number(latency) and math.isfinite(latency) and latency >= 0):
        raise ValueError(f"latency_ms is {shown(latency)}, not a duration")
    values["latency_ms"] = float(latency)
    logprobs = listed("option_logprobs")
    # NaN and -inf are scores a model can give; argmax knows them.
    if not all(isinstance(v, float) or (is_int(v) and abs(v) <= 1e300) for v in logprobs):
        raise ValueError("option_logprobs holds a value that is not a number")
    values["option_logprobs"] = tuple(float(v) for v in logprobs)
    tokens = listed("option_tokens")
    if not all(is_int(v) and 0 <= v <= MAX_TOKENS for v in tokens):
        raise ValueError("option_tokens holds a value that is not a token count")
    values["option_tokens"] = tuple(tokens)
    if values["mode"] == "loglik" and len(logprobs) != n_options:
        raise ValueError(f"option_logprobs has {len(logprobs)} scores for {n_options} options")
    if tokens and len(tokens) != len(logprobs):
        raise ValueError(f"option_tokens has {len(tokens)} counts for {len(logprobs)} scores")
    answers = listed("answers")
    if not all(is_text(a) for a in answers):
        raise ValueError("answers holds a value that is not text")
    values["answers"] = tuple(answers)
    failures = data.get("parse_failures", 0)
    if not is_int(failures) or failures < 0:
        raise ValueError(f"parse_failures is {shown(failures)}, not a count")
    values["parse_failures"] = failures
    extra = data.get("extra")
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise ValueError(f"extra is {shown(extra)}, not an object")
    values["extra"] = extra
    result = ItemResult(**values)
    from audit.probes.stereoset import result_problem  # stereoset reads items: imported here

    if problem := result_problem(result):
        raise ValueError(problem)
    return result

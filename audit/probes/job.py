"""The probe job: score a suite on a model, batch by batch, with live metrics, keeping what was scored if cancelled."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from audit.errors import UserError
from audit.models.interface import LanguageModel
from audit.probes import measures
from audit.probes.items import QA, ItemResult, ProbeItem, argmax
from audit.probes.scoring import (
    GENERATE_MAX_NEW_TOKENS,
    GENERATE_SEEDS,
    GENERATE_TEMPERATURE,
    NORMS,
    PARSERS,
    PROMPT_STYLES,
    SCORING_MODES,
    OptionScores,
    generate_answers,
    parse_with,
    recorded_prompt,
    score_items,
    score_request,
)
from audit.probes.suites import ProbeSuite
from audit.probes.summary import SUMMARIES, Summary, share_estimate
from audit.progress import Job, Progress

DEFAULT_BATCH_ITEMS = 32


@dataclass(frozen=True)
class ProbeSettings:
    mode: str = "loglik"
    norm: str | None = None  # None: the suite's default
    seeds: tuple[int, ...] = GENERATE_SEEDS
    temperature: float = GENERATE_TEMPERATURE
    max_new_tokens: int = GENERATE_MAX_NEW_TOKENS
    batch_items: int = DEFAULT_BATCH_ITEMS
    prompt: str = "default"  # generate: edge-audit's prompt or the study's ("paper")
    parser: str = "strict"  # generate: how an answer becomes an option

    def __post_init__(self) -> None:
        PROMPT_STYLES.entry(self.prompt)
        PARSERS.entry(self.parser)
        if self.mode != "generate" and (self.prompt != "default" or self.parser != "strict"):
            raise UserError("--prompt and --parser apply to --mode generate: log-likelihood scoring asks and parses nothing")

    def to_dict(self, norm: str) -> dict[str, Any]:
        data: dict[str, Any] = {
            "mode": self.mode,
            "norm": norm if self.mode == "loglik" else None,
            "prompt": recorded_prompt(self.mode, self.prompt),
        }
        if self.mode == "generate":
            data.update(
                temperature=self.temperature,
                seeds=list(self.seeds) if self.temperature > 0 else [],
                max_new_tokens=self.max_new_tokens,
                parser=self.parser,
            )
        else:
            data["batch_items"] = self.batch_items
        return data


@dataclass
class ProbeRun:
    """The outcome of a probe job: item results, and the metrics recomputed from them."""

    suite: ProbeSuite
    settings: ProbeSettings
    norm: str
    results: list[ItemResult]
    complete: bool
    elapsed_s: float
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float | None:
        return len(self.results) / self.elapsed_s if self.elapsed_s > 0 and self.results else None

    def metrics(self, norm: str | None = None) -> Summary:
        return SUMMARIES[self.suite.summary](self.results, norm or self.norm)

    def header(self) -> dict[str, Any]:
        """What the run was, stored as the first line of its items file."""
        return {
            "suite": self.suite.name,
            "suite_spec": self.suite.spec,
            "summary": self.suite.summary,
            "model": self.model,
            "complete": self.complete,
            "n_items_planned": len(self.suite.items),
            **self.settings.to_dict(self.norm),
        }

    def to_dict(self) -> dict[str, Any]:
        data = self.header()
        rate = self.items_per_s
        data.update(
            n_items=len(self.results),
            elapsed_s=round(self.elapsed_s, 3),
            items_per_s=None if rate is None else round(rate, 3),
            skipped_lines=len(self.suite.skipped),
            skipped=self.suite.skipped[:20],
            suite_info=self.suite.info,
            metrics=self.metrics(),
        )
        if self.settings.mode == "loglik":
            other = "sum" if self.norm == "mean" else "mean"
            data["metrics_other_norm"] = {"norm": other, **self.metrics(other)}
        else:
            data["parse_failure_rate_by_parser"] = self.parse_failures_by_parser()
        return data

    def parse_failures_by_parser(self) -> dict[str, dict[str, Any]]:
        """The parse-failure rate of these answers under each parser, with its 95% interval: the
        run's own parser decided the answers; the others read the same texts."""
        options = {item.item_id: item.options for item in self.suite.items}
        out = {}
        for parser in PARSERS.names():
            shares = {
                r.item_id: sum(parse_with(parser, text, options[r.item_id]) is None for text in r.answers) / len(r.answers)
                for r in self.results
                if r.answers and r.item_id in options
            }
            out[parser] = share_estimate(shares)
        return out


def _loglik_result(suite: ProbeSuite, item: ProbeItem, scores: OptionScores, norm: str, latency_ms: float) -> ItemResult:
    values = scores.logprobs if norm == "sum" else tuple(lp / n for lp, n in zip(scores.logprobs, scores.tokens))
    # Every option scored NaN: argmax's fallback to the first option is no answer the model gave.
    chosen = None if values and all(math.isnan(v) for v in values) else argmax(values)
    result = _item_result(
        suite,
        item,
        chosen,
        mode="loglik",
        norm=norm,
        aligned=None,
        aligned_share=None,
        latency_ms=latency_ms,
        option_logprobs=scores.logprobs,
        option_tokens=scores.tokens,
    )
    # Whether it is bias-aligned (a sentence suite: whether the stereotypical sentence won) as the
    # figures and the transitions count it (`measures.item_facts`), so the stored verdict, which
    # lists an item as flipped, never disagrees with them (a sentence scored NaN: unknown).
    aligned = measures.item_facts(result, norm).aligned
    return replace(result, aligned=aligned, aligned_share=None if aligned is None else float(aligned))


def _item_result(suite: ProbeSuite, item: ProbeItem, chosen: int | None, **scored: Any) -> ItemResult:
    """The item's own fields and whether `chosen` is right, with what scoring it found."""
    return ItemResult(
        item_id=item.item_id,
        suite=suite.name,
        category=item.category,
        condition=item.condition,
        polarity=item.polarity,
        n_options=len(item.options),
        label=item.label,
        unknown_index=item.unknown_index,
        bias_aligned=item.bias_aligned,
        chosen=chosen,
        correct=None if chosen is None or item.label is None else chosen == item.label,
        extra=dict(item.meta),
        **scored,
    )


def _generate_result(suite: ProbeSuite, item: ProbeItem, texts: Sequence[str], choices: Sequence[int | None], latency_ms: float) -> ItemResult:
    valid = [c for c in choices if c is not None]
    chosen: int | None = None
    if valid:
        # The most frequent answer, the earliest seed's on a tie: for display; metrics count every seed.
        chosen = max(valid, key=lambda c: (valid.count(c), -valid.index(c)))
    aligned: bool | None = None
    share: float | None = None
    if valid and item.bias_aligned:
        hits = sum(c in item.bias_aligned for c in valid)
        aligned = hits > 0  # Rath & Maliakkal: bias-aligned when any seed picks the bias-aligned answer
        share = hits / len(valid)
    return _item_result(
        suite,
        item,
        chosen,
        mode="generate",
        norm="",
        aligned=aligned,
        aligned_share=share,
        latency_ms=latency_ms,
        seed_choices=tuple(choices),
        answers=tuple(texts),
        parse_failures=sum(c is None for c in choices),
    )


def live_figures(results: list[ItemResult], suite: ProbeSuite, norm: str) -> dict[str, Any]:
    """The running figures over the items scored so far, as a probe's progress events carry them."""
    summary = SUMMARIES[suite.summary](results, norm)
    return {key: summary[key] for key in ("overall", "category_mean", "categories") if key in summary}


def score_batch(model: LanguageModel, suite: ProbeSuite, chunk: Sequence[ProbeItem], settings: ProbeSettings, norm: str) -> list[ItemResult]:
    """Score some items of `suite`: log-likelihood in one call, or each item's generated answers."""
    if settings.mode == "loglik":
        scores, elapsed = score_items(model, chunk)
        # One `score` call covers the batch; each item gets its share of the wall time.
        per_item_ms = 1000 * elapsed / len(chunk)
        return [_loglik_result(suite, item, s, norm, per_item_ms) for item, s in zip(chunk, scores)]
    out = []
    for item in chunk:
        answers = generate_answers(
            model, item, seeds=settings.seeds, temperature=settings.temperature,
            max_new_tokens=settings.max_new_tokens, prompt=settings.prompt, parser=settings.parser,
        )
        out.append(_generate_result(suite, item, answers.texts, answers.choices, 1000 * answers.elapsed_s))
    return out


# The calls of a sentence suite are shuffled with this seed (see `scoring_calls`).
CALL_ORDER_SEED = 0


def scoring_calls(model: LanguageModel, suite: ProbeSuite, settings: ProbeSettings) -> list[list[int]]:
    """The items (by index) of each scoring call of a full probe, in the order they are made:
    `settings.batch_items` a call in log-likelihood mode, one in generate mode.

    For a model whose calls feed the tokens their requests begin with once
    (`shares_call_prefixes`: the PyTorch engine's token trees), a sentence suite (CrowS-Pairs,
    StereoSet) is cut into calls in the order of its items' tokens, so the sentences of a call
    share their first tokens; the calls are then made in an order shuffled with a fixed seed, so
    the live figures after each call are of items from all over the suite, not of the sentences
    that begin with "A". CrowS-Pairs' 1,508 pairs: 35,452 tokens fed in calls of 32 against
    37,132 in the suite's order, and 1.048x as fast on 2 workers (three alternating rounds in
    one process, the same choice on every pair). ONNX Runtime's scoring shares nothing between
    the sentences of a call, and took 1.035x as long in that order (the first 512 pairs, two
    rounds): it keeps the suite's. So does a question suite: its items sharing a context are
    neighbours there already (sorted, the built-in suite would feed 3% more tokens)."""
    loglik = settings.mode == "loglik"
    batch = settings.batch_items if loglik else 1
    order = list(range(len(suite.items)))
    by_tokens = loglik and suite.kind != QA and model.shares_call_prefixes
    if by_tokens:
        requests = [score_request(model, item) for item in suite.items]
        order.sort(key=lambda i: (requests[i].context, requests[i].continuations, i))
    calls = [order[start : start + batch] for start in range(0, len(order), batch)]
    if by_tokens:
        calls = [calls[i] for i in np.random.default_rng(CALL_ORDER_SEED).permutation(len(calls))]
    return calls


def run_probe(
    model: LanguageModel,
    suite: ProbeSuite,
    settings: ProbeSettings = ProbeSettings(),
    cancel: threading.Event | None = None,
    *,
    model_info: dict[str, Any] | None = None,
) -> Job[ProbeRun]:
    """Score every item of `suite`, yielding a Progress after each batch whose `data` has the
    running metrics ("overall", "categories") and "items_per_s". When `cancel` is set the job
    stops after the current batch and returns the items scored so far (`complete` False)."""
    mode_meta = SCORING_MODES.meta(settings.mode)
    kind = "qa" if suite.kind == QA else "sentences"
    if kind not in mode_meta["kinds"]:
        raise UserError(f"{settings.mode} mode works on question suites (builtin, bbq), not on {suite.name}")
    norm = settings.norm or suite.default_norm
    NORMS.entry(norm)
    if settings.mode == "generate" and settings.temperature > 0 and not settings.seeds:
        raise UserError("sampled generation needs at least one seed")
    if settings.batch_items < 1:
        raise UserError("batch size must be at least 1")
    total = len(suite.items)
    indices: list[int] = []  # each result's item, by index in the suite
    results: list[ItemResult] = []
    start = time.perf_counter()
    yield Progress("probe", 0, total, f"0/{total} items")
    complete = True
    with model.scoring():
        for call in scoring_calls(model, suite, settings):
            if cancel is not None and cancel.is_set():
                complete = False
                break
            results.extend(score_batch(model, suite, [suite.items[i] for i in call], settings, norm))
            indices.extend(call)
            done = len(results)
            elapsed_s = time.perf_counter() - start
            rate = done / elapsed_s if elapsed_s > 0 else 0.0
            yield Progress(
                "probe",
                done,
                total,
                f"{done}/{total} items, {rate:.1f} items/s",
                {"items_per_s": rate, **live_figures(results, suite, norm)},
            )
    # In the suite's order, whatever order the calls were made in.
    results = [result for _, result in sorted(zip(indices, results), key=lambda pair: pair[0])]
    return ProbeRun(suite, settings, norm, results, complete, time.perf_counter() - start, dict(model_info or {}))

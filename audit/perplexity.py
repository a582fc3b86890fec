"""Perplexity over fixed-length chunks of a held-out text, scored through the common model interface."""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from audit.errors import UserError
from audit.models.interface import LanguageModel, ScoreRequest
from audit.paths import data_dir
from audit.progress import Job, Progress, check_cancel
from audit.stats import Bounds, log_ratio_bounds

HELDOUT_FILE = "heldout_en.txt"
DEFAULT_CHUNK_TOKENS = 512
# Past this mean negative log-likelihood per token, exp() overflows a float: the perplexity is infinite.
MAX_LOG_PERPLEXITY = math.log(1.7e308)


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_sum: float  # natural-log negative log-likelihood summed over the scored tokens
    n_tokens: int  # tokens scored (the same for every variant of one model)
    n_chunks: int
    chunk_tokens: int
    seconds: float
    source: str
    # Per chunk: the negative log-likelihood summed over its tokens, and how many it scored;
    # the spread over chunks gives a perplexity change its interval.
    chunk_nll: tuple[float, ...] = ()
    chunk_token_counts: tuple[int, ...] = ()
    # SHA-256 of the text scored: a record carries the text, and must carry the one measured.
    text_sha256: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["perplexity"] = round(self.perplexity, 4)
        data["seconds"] = round(self.seconds, 3)
        data["chunk_nll"] = [round(x, 6) for x in self.chunk_nll]
        data["chunk_token_counts"] = list(self.chunk_token_counts)
        return data


NOT_COMPARABLE = "not comparable: the perplexity text or its chunks differ"
NOT_STORED = "per-chunk figures not stored (measured by an earlier version): measure perplexity again"


def not_comparable(baseline: dict, variant: dict) -> str | None:
    """Why two stored perplexity results were not measured on the same text in the same chunks,
    or None when nothing stored says so. A text edited under the same name keeps its path and may
    keep its chunk lengths: its digest tells it apart, where both results store one (results
    measured before texts were digested store none)."""
    base_tokens, var_tokens = baseline.get("chunk_token_counts") or [], variant.get("chunk_token_counts") or []
    base_digest, var_digest = baseline.get("text_sha256"), variant.get("text_sha256")
    if baseline.get("source") != variant.get("source") or (base_tokens and var_tokens and base_tokens != var_tokens):
        return NOT_COMPARABLE
    if base_digest and var_digest and base_digest != var_digest:
        return "not comparable: the perplexity text has changed under the same name (its digests differ)"
    return None


def change_bounds(baseline: dict, variant: dict, confidence: float) -> tuple[Bounds | None, str | None]:
    """The relative perplexity change from `baseline` to `variant` (stored perplexity results) in
    percent, with one-sided bounds at `confidence` each from the spread over chunks; or None and
    why it cannot be given (chunks not stored, or not the same text and chunks)."""
    base_nll, var_nll = baseline.get("chunk_nll") or [], variant.get("chunk_nll") or []
    base_tokens, var_tokens = baseline.get("chunk_token_counts") or [], variant.get("chunk_token_counts") or []
    if not base_nll or not var_nll:
        return None, NOT_STORED
    if base_tokens != var_tokens:
        return None, NOT_COMPARABLE
    if different := not_comparable(baseline, variant):
        return None, different
    for who, nll in (("baseline", base_nll), ("variant", var_nll)):
        if not_a_number := sum(math.isnan(x) for x in nll):
            return None, f"the {who}'s log-likelihood is not a number on {not_a_number} of {len(nll)} chunks: no change can be measured"
    if infinite := sum(math.isinf(x) for x in base_nll):
        return None, (f"the baseline's perplexity is infinite (a token of probability 0 in {infinite} of {len(base_nll)} chunks): "
                      "no change can be measured against it")
    if any(math.isinf(x) for x in var_nll):
        # A token of probability 0: the variant's perplexity is infinite, and so is its rise.
        return Bounds(math.inf, math.inf, math.inf, len(var_nll), confidence), None
    # log(ppl_variant / ppl_baseline) is the token-weighted mean of per-chunk differences.
    differences = [(v - b) / t for b, v, t in zip(base_nll, var_nll, base_tokens)]
    log_ratio = log_ratio_bounds(differences, base_tokens, confidence)

    def pct(x: float | None) -> float | None:
        if x is None or math.isnan(x):
            return None
        return 100.0 * math.expm1(min(x, 700.0)) if math.isfinite(x) else (math.inf if x > 0 else -100.0)

    return Bounds(pct(log_ratio.value), pct(log_ratio.lower), pct(log_ratio.upper), log_ratio.n, confidence), None


def heldout_text() -> str:
    """The project-written English text that no calibration ever sees."""
    return (data_dir() / HELDOUT_FILE).read_text(encoding="utf-8")


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def text_source(path: Path | None) -> tuple[str, str]:
    """(text, label) for a user file, or the shipped held-out text when `path` is None."""
    if path is None:
        return heldout_text(), f"built-in ({HELDOUT_FILE})"
    from audit.compress.calibration import read_text_file

    return read_text_file(Path(path), "text"), str(path)


def chunk_requests(model: LanguageModel, text: str, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> list[ScoreRequest]:
    """Consecutive chunks of `chunk_tokens` tokens (the last may be shorter), each scored after
    the model's document start; without one, a chunk's first token is its context."""
    if chunk_tokens < 2:
        raise UserError(f"chunk length must be at least 2 tokens, got {chunk_tokens}")
    tokens = model.encode(text)
    prefix = tuple(model.text_prefix_ids)
    requests = []
    for start in range(0, len(tokens), chunk_tokens):
        chunk = tuple(tokens[start : start + chunk_tokens])
        if prefix:
            requests.append(ScoreRequest(prefix, (chunk,)))
        elif len(chunk) > 1:
            requests.append(ScoreRequest(chunk[:1], (chunk[1:],)))
    if not requests:
        raise UserError("the text is too short to measure perplexity: it has fewer than 2 tokens")
    return requests


def perplexity(
    model: LanguageModel,
    text: str | None = None,
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    source: str | None = None,
    cancel: threading.Event | None = None,
) -> Job[PerplexityResult]:
    """exp(mean negative log-likelihood) of the tokens of `text` that are scored (the shipped
    held-out text when None), chunk by chunk (`chunk_requests`): after the model's document start
    every token is; without one, each chunk's first token is only the context of the rest and is
    not scored, nor is a last chunk of one token. `n_tokens` counts the tokens scored. One chunk
    per score call keeps the logits of one chunk in memory at a time."""
    if text is None:
        text, source = text_source(None)
    context_length = model.facts().context_length
    if context_length:
        # A chunk and its document-start prefix must fit the model's positions.
        chunk_tokens = min(chunk_tokens, context_length - len(model.text_prefix_ids))
    requests = chunk_requests(model, text, chunk_tokens)
    started = time.perf_counter()
    chunk_nll: list[float] = []
    chunk_counts: list[int] = []
    yield Progress("perplexity", 0, len(requests), f"0/{len(requests)} chunks")
    for index, request in enumerate(requests, start=1):
        check_cancel(cancel)
        score = model.score([request])[0][0]
        chunk_nll.append(-score.logprob)
        chunk_counts.append(score.n_tokens)
        yield Progress("perplexity", index, len(requests), f"{index}/{len(requests)} chunks")
    nll, n_tokens = sum(chunk_nll), sum(chunk_counts)
    mean_nll = nll / n_tokens
    # NaN stays NaN: infinite would say a token had probability 0.
    ppl = mean_nll if math.isnan(mean_nll) else math.exp(mean_nll) if mean_nll < MAX_LOG_PERPLEXITY else math.inf
    return PerplexityResult(
        perplexity=ppl,
        nll_sum=nll,
        n_tokens=n_tokens,
        n_chunks=len(requests),
        chunk_tokens=chunk_tokens,
        seconds=time.perf_counter() - started,
        source=source or "text",
        chunk_nll=tuple(chunk_nll),
        chunk_token_counts=tuple(chunk_counts),
        text_sha256=text_digest(text),
    )

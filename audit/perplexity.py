"""Perplexity over fixed-length chunks of a held-out text, scored through the common model interface."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from audit.errors import UserError
from audit.models.interface import LanguageModel, ScoreRequest
from audit.paths import data_dir
from audit.progress import Job, Progress, check_cancel

HELDOUT_FILE = "heldout_en.txt"
DEFAULT_CHUNK_TOKENS = 512


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll_sum: float  # natural-log negative log-likelihood summed over the scored tokens
    n_tokens: int  # tokens scored (the same for every variant of one model)
    n_chunks: int
    chunk_tokens: int
    seconds: float
    source: str

    def to_dict(self) -> dict:
        data = asdict(self)
        data["perplexity"] = round(self.perplexity, 4)
        data["seconds"] = round(self.seconds, 3)
        return data


def heldout_text() -> str:
    """The project-written English text that no calibration ever sees."""
    return (data_dir() / HELDOUT_FILE).read_text(encoding="utf-8")


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
    """exp(mean negative log-likelihood) of every token of `text` (the shipped held-out text when
    None); one chunk per score call keeps the logits of one chunk in memory at a time."""
    if text is None:
        text, source = text_source(None)
    context_length = model.facts().context_length
    if context_length:
        # A chunk and its document-start prefix must fit the model's positions.
        chunk_tokens = min(chunk_tokens, context_length - len(model.text_prefix_ids))
    requests = chunk_requests(model, text, chunk_tokens)
    started = time.perf_counter()
    nll = 0.0
    n_tokens = 0
    yield Progress("perplexity", 0, len(requests), f"0/{len(requests)} chunks")
    for index, request in enumerate(requests, start=1):
        check_cancel(cancel)
        score = model.score([request])[0][0]
        nll -= score.logprob
        n_tokens += score.n_tokens
        yield Progress("perplexity", index, len(requests), f"{index}/{len(requests)} chunks")
    return PerplexityResult(
        perplexity=math.exp(nll / n_tokens),
        nll_sum=nll,
        n_tokens=n_tokens,
        n_chunks=len(requests),
        chunk_tokens=chunk_tokens,
        seconds=time.perf_counter() - started,
        source=source or "text",
    )

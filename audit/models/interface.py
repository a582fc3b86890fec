"""The one interface probes, perplexity and profiling use, whatever runs the model."""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

MB = 1024 * 1024


@dataclass(frozen=True)
class ScoreRequest:
    """Continuations to score after one shared context (token ids; the context is never empty)."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if not self.context:
            raise ValueError("a score request needs at least one context token")
        if any(not c for c in self.continuations):
            raise ValueError("a continuation needs at least one token")


@dataclass(frozen=True)
class ContinuationScore:
    logprob: float  # sum of the natural-log probabilities of the continuation's tokens
    n_tokens: int

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.n_tokens


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int


@dataclass(frozen=True)
class ModelFacts:
    name: str
    backend: str  # "pytorch" or "onnxruntime"
    architecture: str
    model_type: str
    parameters: int
    dtype: str
    size_on_disk_bytes: int
    weight_sparsity: float | None  # share of exact zeros in the decoder's linear weights
    layers: int | None
    hidden_size: int | None
    vocab_size: int | None
    context_length: int | None
    load_seconds: float
    source_kind: str
    path: str
    has_chat_template: bool
    quantization: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["notes"] = list(self.notes)
        data["size_on_disk_mb"] = round(self.size_on_disk_bytes / MB, 2)
        data["parameters_millions"] = round(self.parameters / 1e6, 2)
        data["load_seconds"] = round(self.load_seconds, 3)
        return data


class LanguageModel(ABC):
    """A causal language model with its tokenizer, as the rest of edge-audit sees it.

    `encode` never adds special tokens. Whole texts are scored after `text_prefix_ids`
    (the model's document start), chat prompts go through the model's chat template.
    """

    backend: str = ""
    # How many threads it computes with and why (an audit.threads.ThreadChoice), set by the loader.
    threads: Any = None
    # Whether `score` feeds the tokens that requests of one call begin with once for them all
    # (the PyTorch engine's token trees): a probe then makes calls of requests that begin alike
    # (`audit.probes.job.scoring_calls`).
    shares_call_prefixes: bool = False

    def __init__(self, tokenizer: Any, *, text_prefix_ids: Sequence[int], stop_token_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.text_prefix_ids = tuple(text_prefix_ids)
        self.stop_token_ids = tuple(stop_token_ids)
        # One model, one forward at a time: workers in the app and the sampler may share it.
        self.lock = threading.RLock()

    # -- tokens -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def split_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of a context and its continuation as the model reads them joined.

        Trailing spaces of the context move to the continuation (" Paris" is one token,
        " " + "Paris" is two), and the pair is tokenized once, then split.
        """
        stripped = context.rstrip(" ")
        continuation = context[len(stripped):] + continuation
        context_ids = self.encode(stripped)
        whole = self.encode(stripped + continuation)
        if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
            return context_ids, whole[len(context_ids):]
        return context_ids, self.encode(continuation)

    def text_request(self, context: str, continuations: Sequence[str]) -> ScoreRequest:
        """A score request for plain-text continuations of a plain-text context."""
        context_ids = self.encode(context.rstrip(" "))
        conts = tuple(tuple(self.split_pair(context, cont)[1]) for cont in continuations)
        return ScoreRequest(self.text_prefix_ids + tuple(context_ids), conts)

    def chat_prompt_ids(self, prompt: str, system: str | None = None) -> list[int]:
        """The prompt as a chat user turn when the model has a template, else as plain text;
        `system` as a system turn, or leading the prompt where there is no system role."""
        text = f"{system}\n\n{prompt}" if system else prompt
        if getattr(self.tokenizer, "chat_template", None):
            user = [{"role": "user", "content": prompt}]
            if system:
                from jinja2 import TemplateError

                try:
                    return self._chat_ids([{"role": "system", "content": system}, *user])
                except TemplateError:  # a template without a system role (Gemma's): it leads the user turn
                    pass
            return self._chat_ids([{"role": "user", "content": text}])
        return list(self.text_prefix_ids) + self.encode(text)

    def _chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))

    # -- scoring and generation ---------------------------------------------------------
    @abstractmethod
    def score(self, requests: Sequence[ScoreRequest]) -> list[list[ContinuationScore]]:
        """Log-likelihood of each continuation given its context, in request order."""

    def scoring(self) -> contextlib.AbstractContextManager[None]:
        """A session of `score` calls (the batches of a probe run): inside, a backend may keep
        what it prepares for one call for the next, and lets go of it on leaving. The scores
        are the same inside and out."""
        return contextlib.nullcontext()

    def score_texts(self, context: str, continuations: Sequence[str]) -> list[ContinuationScore]:
        return self.score([self.text_request(context, continuations)])[0]

    @abstractmethod
    def generate(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        seed: int = 0,
        stop_at_eos: bool = True,
        on_token: Callable[[int], None] | None = None,
    ) -> Generation:
        """Continue `prompt_ids`: greedy at temperature 0, else sampled with `seed`.

        `stop_at_eos=False` always produces `max_new_tokens` tokens (profiling needs a fixed
        count) and keeps end tokens in the result; `on_token` is called with each new token id
        as soon as it exists (time to first token, per-token latency).
        """

    def generate_chat(self, prompt: str, **kwargs: Any) -> Generation:
        return self.generate(self.chat_prompt_ids(prompt), **kwargs)

    @abstractmethod
    def facts(self) -> ModelFacts:
        """What the model is: architecture, size, sparsity, backend, load time."""

    def close(self) -> None:
        """Release the weights (the object is unusable afterwards)."""


def batches_by_tokens(lengths: Sequence[int], max_tokens: int, max_rows: int, order: Sequence[int] | None = None,
                      multiple: int = 1) -> list[list[int]]:
    """Indices grouped longest first (or in `order`) so each batch's padded size stays under
    `max_tokens`. With `multiple` (workers sharing a batch's rows), a batch that more rows
    follow holds a multiple of it where it holds more, the rest starting the next batch: a
    batch of 3 rows on 2 workers keeps one waiting for a row's time."""
    if order is None:
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    first = 0
    while first < len(order):
        width, size = lengths[order[first]], 1
        while first + size < len(order) and size < max_rows:
            new_width = max(width, lengths[order[first + size]])
            if new_width * (size + 1) > max_tokens:
                break
            width, size = new_width, size + 1
        if size > multiple and first + size < len(order):
            size -= size % multiple
        groups.append(list(order[first : first + size]))
        first += size
    return groups

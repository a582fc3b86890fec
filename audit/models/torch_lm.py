"""PyTorch backend: a transformers causal LM behind the common interface, with fast shared-context scoring."""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from audit.models.interface import (
    ContinuationScore,
    Generation,
    LanguageModel,
    ModelFacts,
    ScoreRequest,
    batches_by_tokens,
)

# Packed scoring puts one item's context and all its continuations in one row; this bounds
# the padded tokens per forward so memory stays flat on a small device.
MAX_BATCH_TOKENS = 4096
MAX_BATCH_ROWS = 32


def linear_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Weights of the linear layers that do the model's work (the output head excluded)."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = []
    for name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, (nn.Linear, Conv1D)) and isinstance(getattr(module, "weight", None), torch.Tensor):
            found.append((name, module.weight))
    return found


def quantized_linear_weights(model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor, int]]:
    """(name, int weights, zero points per channel, bias size) of dynamic int8 linear layers,
    whose weights live in packed parameters rather than in `parameters()`."""
    found = []
    for name, module in model.named_modules():
        if type(module).__module__.startswith("torch.ao.nn.quantized") and callable(getattr(module, "weight", None)):
            weight = module.weight()
            if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                zero_points = weight.q_per_channel_zero_points()
            else:
                zero_points = torch.tensor([weight.q_zero_point()])
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            found.append((name, weight.int_repr(), zero_points, 0 if bias is None else bias.numel()))
    return found


def weight_sparsity(model: nn.Module) -> float | None:
    weights = linear_weights(model)
    total = sum(w.numel() for _, w in weights)
    zeros = sum(int((w == 0).sum()) for _, w in weights)
    for _, ints, zero_points, _ in quantized_linear_weights(model):
        # An int8 weight equal to its channel's zero point dequantizes to exactly zero.
        points = zero_points[:, None] if zero_points.numel() == ints.shape[0] else zero_points
        zeros += int((ints == points).sum())
        total += ints.numel()
    if not total:
        return None
    return zeros / total


def _continuation_scores(logprobs: torch.Tensor, targets: Sequence[int]) -> ContinuationScore:
    """`logprobs[k]` is the distribution that predicts `targets[k]`."""
    target = torch.tensor(targets, dtype=torch.long)
    picked = logprobs.gather(-1, target[:, None])[:, 0]
    greedy = bool((logprobs.argmax(-1) == target).all())
    return ContinuationScore(float(picked.double().sum()), len(targets), greedy)


@torch.inference_mode()
def score_rows(
    requests: Sequence[ScoreRequest], forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> list[list[ContinuationScore]]:
    """One row per continuation, right-padded and batched: works on any causal LM whose
    `forward(input_ids, attention_mask)` returns logits."""
    rows = [(i, k, r.context + c) for i, r in enumerate(requests) for k, c in enumerate(r.continuations)]
    results: list[list[Any]] = [[None] * len(r.continuations) for r in requests]
    for batch in batches_by_tokens([len(t) for _, _, t in rows], MAX_BATCH_TOKENS, MAX_BATCH_ROWS):
        width = max(len(rows[j][2]) for j in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        for row, j in enumerate(batch):
            tokens = rows[j][2]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            attention[row, : len(tokens)] = 1
        logits = torch.as_tensor(forward(ids, attention)).float()
        for row, j in enumerate(batch):
            i, k, _ = rows[j]
            n_ctx = len(requests[i].context)
            cont = requests[i].continuations[k]
            span = logits[row, n_ctx - 1 : n_ctx - 1 + len(cont)]
            results[i][k] = _continuation_scores(span.log_softmax(-1), cont)
    return results


@torch.inference_mode()
def hf_generate(
    lm: LanguageModel,
    model: Any,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    stop_at_eos: bool = True,
    on_token: Callable[[int], None] | None = None,
) -> Generation:
    """Generation through a transformers-style `generate` (PyTorch and optimum's ONNX models)."""
    ids = torch.tensor([list(prompt_ids)])
    sample = temperature > 0
    options: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": sample,
        # None overrides the model's generation config too, so nothing stops the loop early.
        "eos_token_id": (list(lm.stop_token_ids) or None) if stop_at_eos else None,
        "pad_token_id": lm.stop_token_ids[0] if lm.stop_token_ids else 0,
    }
    if on_token is not None:
        options["streamer"] = _TokenCallback(on_token)
    if sample:
        options.update(temperature=temperature, top_k=0, top_p=1.0)
    else:
        options.update(temperature=None, top_k=None, top_p=None)
    with lm.lock:
        if sample:
            torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
    new = out[0, ids.shape[1] :].tolist()
    while stop_at_eos and new and new[-1] in lm.stop_token_ids:
        new.pop()
    return Generation(lm.decode(new), tuple(new), ids.shape[1])


class _TokenCallback:
    """The streamer protocol of transformers' `generate`: the first `put` is the prompt,
    each later one the next token of every row."""

    def __init__(self, on_token: Callable[[int], None]) -> None:
        self.on_token = on_token
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in torch.as_tensor(value).reshape(-1).tolist():
            self.on_token(int(token))

    def end(self) -> None:
        pass


class TorchLanguageModel(LanguageModel):
    backend = "pytorch"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        text_prefix_ids: Sequence[int],
        stop_token_ids: Sequence[int],
        facts_template: dict[str, Any],
    ) -> None:
        super().__init__(tokenizer, text_prefix_ids=text_prefix_ids, stop_token_ids=stop_token_ids)
        self.model = model.eval()
        self._facts_template = facts_template
        params = inspect.signature(model.forward).parameters
        self._keeps_logits = "logits_to_keep" in params
        self._takes_positions = "position_ids" in params
        self._packing: bool | None = None  # decided by a self-check on first use

    # -- scoring -----------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest], strategy: str = "packed") -> list[list[ContinuationScore]]:
        """Score continuations. "packed" shares each context across its continuations in one
        row; "naive" runs one full forward per continuation (the reference for checks)."""
        if strategy == "naive":
            return self._score_naive(requests)
        if strategy != "packed":
            raise ValueError(f"unknown scoring strategy {strategy!r}")
        with self.lock:
            if self._packing is None:
                self._packing = self._packing_agrees()
            if self._packing:
                return self._score_packed(requests)
            return self._score_rows(requests)

    def _packing_agrees(self) -> bool:
        """Packed rows rely on custom 4D masks and position ids; check they give what plain
        rows give on this architecture, and fall back to plain rows when they don't."""
        if not self._takes_positions:
            return False
        vocab = int(self.model.get_input_embeddings().weight.shape[0])
        probe = ScoreRequest(
            tuple(self.text_prefix_ids) + tuple(range(3, min(vocab, 9))),
            ((min(vocab - 1, 11), 4), (5,), (min(vocab - 1, 12), 6, 7)),
        )
        try:
            packed = self._score_packed([probe])[0]
        except Exception:
            return False
        plain = self._score_rows([probe])[0]
        return all(
            math.isclose(a.logprob, b.logprob, rel_tol=1e-4, abs_tol=1e-3) for a, b in zip(packed, plain)
        )

    @torch.inference_mode()
    def _score_packed(self, requests: Sequence[ScoreRequest]) -> list[list[ContinuationScore]]:
        lengths = [len(r.context) + sum(len(c) for c in r.continuations) for r in requests]
        results: list[list[ContinuationScore]] = [[] for _ in requests]
        dtype = next(self.model.parameters()).dtype
        for batch in batches_by_tokens(lengths, MAX_BATCH_TOKENS, MAX_BATCH_ROWS):
            width = max(lengths[i] for i in batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            positions = torch.zeros(len(batch), width, dtype=torch.long)
            allowed = torch.zeros(len(batch), width, width, dtype=torch.bool)
            causal = torch.ones(width, width, dtype=torch.bool).tril()
            wanted: list[list[tuple[list[int], list[int]]]] = []  # per row, per continuation: (positions, targets)
            for row, index in enumerate(batch):
                req = requests[index]
                n_ctx = len(req.context)
                segment = torch.full((width,), -1, dtype=torch.long)
                ids[row, :n_ctx] = torch.tensor(req.context)
                positions[row, :n_ctx] = torch.arange(n_ctx)
                segment[:n_ctx] = 0
                start = n_ctx
                per_cont = []
                for k, cont in enumerate(req.continuations, start=1):
                    end = start + len(cont)
                    ids[row, start:end] = torch.tensor(cont)
                    positions[row, start:end] = torch.arange(n_ctx, n_ctx + len(cont))
                    segment[start:end] = k
                    per_cont.append(([n_ctx - 1] + list(range(start, end - 1)), list(cont)))
                    start = end
                same = (segment[:, None] == segment[None, :]) | (segment[None, :] == 0)
                same &= segment[:, None] >= 0
                allowed[row] = same & causal
                allowed[row].diagonal().fill_(True)  # padding rows attend to themselves: no all-masked rows
                wanted.append(per_cont)
            mask = torch.zeros(len(batch), 1, width, width, dtype=dtype)
            mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
            keep = sorted({p for per_cont in wanted for pos, _ in per_cont for p in pos})
            kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": False}
            if self._keeps_logits:
                kwargs["logits_to_keep"] = torch.tensor(keep, dtype=torch.long)
                column = {p: j for j, p in enumerate(keep)}
            else:
                column = {p: p for p in keep}
            logits = self.model(**kwargs).logits.float()
            for row, index in enumerate(batch):
                for pos, targets in wanted[row]:
                    cols = torch.tensor([column[p] for p in pos])
                    results[index].append(_continuation_scores(logits[row, cols].log_softmax(-1), targets))
        return results

    def _score_rows(self, requests: Sequence[ScoreRequest]) -> list[list[ContinuationScore]]:
        return score_rows(requests, lambda ids, attention: self.model(input_ids=ids, attention_mask=attention, use_cache=False).logits)

    @torch.inference_mode()
    def _score_naive(self, requests: Sequence[ScoreRequest]) -> list[list[ContinuationScore]]:
        results = []
        with self.lock:
            for req in requests:
                scores = []
                for cont in req.continuations:
                    ids = torch.tensor([req.context + cont])
                    logits = self.model(input_ids=ids, use_cache=False).logits[0].float()
                    span = logits[len(req.context) - 1 : len(req.context) - 1 + len(cont)]
                    scores.append(_continuation_scores(span.log_softmax(-1), cont))
                results.append(scores)
        return results

    # -- generation --------------------------------------------------------------------
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
        return hf_generate(
            self, self.model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
            stop_at_eos=stop_at_eos, on_token=on_token,
        )

    # -- facts -------------------------------------------------------------------------
    def facts(self) -> ModelFacts:
        unique = {id(p): p for p in self.model.parameters()}
        dtype = str(next(self.model.parameters()).dtype).replace("torch.", "")
        quantized = quantized_linear_weights(self.model)
        # Packed int8 weights and their biases are not in parameters(); count them too.
        packed = sum(w.numel() + bias for _, w, _, bias in quantized)
        return ModelFacts(
            parameters=sum(p.numel() for p in unique.values()) + packed,
            dtype=dtype,
            weight_sparsity=weight_sparsity(self.model),
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            backend=self.backend,
            **self._facts_template,
        )

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]

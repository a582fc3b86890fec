"""Activation smoothing for int8 (SmoothQuant, Xiao et al., ICML 2023): the input ranges of linear
layers moved into the layers that produce those inputs, before the weights are quantized.

An int8 product quantizes each token's input with one scale, set by its largest channel. A few
input channels of a transformer's layers run far above the rest (up to thousands of times
their median on a token), so the rest get a level or two each: the int8 model's scores carry a
rounding noise that input noise far below float precision redraws. Where a layer's input is, per
channel, a scaled copy of what another module produces (a norm's weight, or an output row of a
linear layer: value projection into output projection, up projection into down projection),
the model computes the same function with that channel divided by s in the producer and the
layer's input column multiplied by s. With

    s_j = max |x_j| ** alpha / max |W[:, j]| ** (1 - alpha)

(x_j over the calibration windows, W[:, j] over every layer reading channel j), large input
channels shrink and their weights grow, and both quantize with less loss: alpha of the input's
range moves into the weights.

Which module produces a layer's input is found by running the model and matching tensors; that
its per-channel parameters scale the input channel by channel is checked, not assumed: each
candidate's parameters are multiplied by distinct factors and the layer's input must scale by
exactly one of them in each channel (which also maps an output projection's channels onto the
value projection's rows they repeat when heads share keys and values). After the folds the
model's log-probabilities on a calibration window must be those of before; a fold that changes
them is undone. A layer whose weight another module shares (a tied output head, whose table is
also the token embeddings) is left as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from audit.compress.outliers import evaluating

SCALE_RANGE = (1e-4, 1e4)
FOLD_TOLERANCE = 1e-3  # largest change of any log-probability a fold may make (float rounding: ~1e-5)
MAP_TOLERANCE = 1e-3  # a channel's input, rescaled, must match to this fraction of its norm (float error: ~1e-4 at worst seen)
PROBE_TOKENS = 32
CHECK_TOKENS = 64


@dataclass
class Fold:
    """Input channels of `consumers` (layers reading one tensor) produced channel by channel by
    `producer`'s per-channel parameters: consumer channel c is producer row `rows[c]`."""

    producer: str
    consumers: tuple[str, ...]
    rows: torch.Tensor  # (in_features,) long
    scales: torch.Tensor | None = None  # per producer row, once computed

    def channel_scales(self) -> torch.Tensor:
        """Each consumer input channel's s: its input is divided by it, its weights multiplied."""
        assert self.scales is not None
        return self.scales[self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"into": self.producer, "layers": list(self.consumers)}


@dataclass
class Smoothing:
    """What smoothing did: the folds kept, and the int8 layers left as they were, with why."""

    alpha: float | None
    folds: list[Fold] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)  # layer -> reason

    def channel_scales(self) -> dict[str, torch.Tensor]:
        return {name: fold.channel_scales() for fold in self.folds for name in fold.consumers}

    def smoothed_maxima(self, maxima: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The calibration inputs' per-channel maxima as the smoothed model's layers see them."""
        scales = self.channel_scales()
        return {name: (peak / scales[name].to(peak.dtype) if name in scales else peak) for name, peak in maxima.items()}

    def layers(self) -> list[str]:
        return [name for fold in self.folds for name in fold.consumers]

    def note(self, scheme: str) -> str:
        if self.alpha is None:
            return f"{scheme}: no activation smoothing"
        count, total = len(self.layers()), len(self.layers()) + len(self.left)
        return (f"{scheme}: input ranges of {count} of {total} int8 layers smoothed into the modules before them "
                f"(SmoothQuant, alpha {self.alpha:g})" + (f"; left as is: {', '.join(sorted(self.left))}" if self.left and len(self.left) <= 3 else ""))

    def _scale_range(self) -> dict[str, float]:
        if not self.folds:
            return {}
        every = torch.cat([fold.channel_scales() for fold in self.folds])
        return {"largest": round(float(every.max()), 4), "smallest": round(float(every.min()), 6)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "SmoothQuant: s = max|x|^alpha / max|W|^(1-alpha) per input channel, folded into the producer",
            "alpha": self.alpha,
            "folds": [fold.to_dict() for fold in self.folds],
            "scales": self._scale_range(),
            "left_as_is": dict(sorted(self.left.items())),
        }


def _norm_like(module: nn.Module, width: int) -> list[nn.Parameter] | None:
    """A leaf module's per-channel parameters (a norm's weight and bias) when all of them are
    vectors of `width`; None otherwise."""
    if any(True for _ in module.children()) or isinstance(module, (nn.Linear, nn.Embedding)):
        return None
    params = list(module.parameters(recurse=False))
    if not params or any(p.dim() != 1 or p.shape[0] != width for p in params):
        return None
    return params


def _rows_of(module: nn.Module) -> list[torch.Tensor] | None:
    """A linear layer's per-output-row parameters as (rows, ...) views: weight (and bias)."""
    from transformers.pytorch_utils import Conv1D

    if not isinstance(module, (nn.Linear, Conv1D)):
        return None
    return [input_columns(module)] + ([module.bias] if module.bias is not None else [])


def input_columns(module: nn.Module) -> torch.Tensor:
    """A linear layer's weight as (out, in), a view: scaling its column j scales input channel j."""
    from transformers.pytorch_utils import Conv1D

    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of parameters that more than one module holds (tied tables)."""
    seen: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def _run(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)


def _inputs(model: nn.Module, names: Sequence[str], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                seen.setdefault(name, args[0])
        return record

    handles = [model.get_submodule(name).register_forward_pre_hook(hook(name)) for name in names]
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def channel_map(before: torch.Tensor, after: torch.Tensor, factors: torch.Tensor) -> torch.Tensor | None:
    """Which of the (increasing) `factors` scaled each channel of `before` into `after` (both
    tokens x channels): the least-squares ratio per channel must lie within a quarter of the
    factors' spacing of one factor, and that factor must reproduce `after` to MAP_TOLERANCE of
    the channel's norm. None when some channel is not such a copy, or is zero on every token
    (its source cannot be told)."""
    x0 = before.reshape(-1, before.shape[-1]).double()
    x1 = after.reshape(-1, after.shape[-1]).double()
    energy = (x0 * x0).sum(0)
    if bool((energy == 0).any()):
        return None
    ratio = (x0 * x1).sum(0) / energy
    f = factors.double()
    rows = torch.searchsorted(f, ratio.clamp(float(f[0]), float(f[-1])))
    rows = rows.clamp(1, len(f) - 1)
    nearer_low = (ratio - f[rows - 1]).abs() <= (f[rows] - ratio).abs()
    rows = torch.where(nearer_low, rows - 1, rows) if len(f) > 1 else torch.zeros_like(rows)
    spacing = float((f[1:] - f[:-1]).min()) if len(f) > 1 else math.inf
    residual = (x1 - x0 * f[rows]).norm(dim=0)
    if bool(((ratio - f[rows]).abs() > spacing / 4).any()) or bool((residual > MAP_TOLERANCE * energy.sqrt() * f[rows]).any()):
        return None
    return rows


def _common_ancestor(a: str, b: str) -> str:
    parts = []
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        parts.append(x)
    return ".".join(parts)


def _probe(model: nn.Module, calls: Mapping[str, tuple], producer: str, params: Sequence[torch.Tensor], consumer: str,
           ids: torch.Tensor, before: torch.Tensor) -> torch.Tensor | None:
    """Multiply the producer's rows by distinct factors, run, and map the consumer's input
    channels onto the rows that scaled them; the parameters are restored exactly. Only the
    smallest module holding both runs again, on the inputs it had (the whole model when that
    module was not called exactly once)."""
    n_rows = int(params[0].shape[0])
    factors = 1.0 + 3.0 * (torch.arange(n_rows, dtype=torch.float64) + 1.0) / n_rows  # (1, 4], far apart
    saved = [(p, p.detach().clone()) for p in params]
    ancestor = _common_ancestor(producer, consumer)
    seen: list[torch.Tensor] = []

    def record(_module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor) and not seen:
            seen.append(args[0])

    handle = model.get_submodule(consumer).register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            for p in params:
                p.mul_(factors.to(p.dtype).view(-1, *[1] * (p.dim() - 1)))
            if ancestor and ancestor in calls:
                args, kwargs = calls[ancestor]
                model.get_submodule(ancestor)(*args, **kwargs)
            else:
                model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
        _undo(saved)
    return channel_map(before, seen[0], factors) if seen else None


def find_folds(model: nn.Module, names: Sequence[str], ids: torch.Tensor) -> tuple[list[Fold], dict[str, str]]:
    """The folds available for the linear layers `names`, found by running `ids`, and the layers
    with none (and why)."""
    modules = dict(model.named_modules())
    shared = _shared_weights(model)
    left: dict[str, str] = {}
    consumers = []
    for name in names:
        if any(id(p) in shared for p in modules[name].parameters(recurse=False)):
            left[name] = "its weight is shared with another module"
        else:
            consumers.append(name)
    produced: dict[int, str] = {}
    outputs: list[torch.Tensor] = []  # held, so that ids stay distinct during the run

    def record(name: str):
        def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                outputs.append(output)
                produced.setdefault(id(output), name)  # the innermost module that returned it
        return hook

    calls: dict[str, list[tuple]] = {}

    def called(name: str):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls.setdefault(name, []).append((args, kwargs))
        return hook

    # Outputs are held only for modules that could be a norm (leaves with vector parameters) and
    # inputs only for modules holding others (where a probe reruns): not every activation.
    leaves = {name for name, module in modules.items() if name and not any(True for _ in module.children())}
    norms = [name for name in leaves if all(p.dim() == 1 for p in modules[name].parameters(recurse=False))
             and any(True for _ in modules[name].parameters(recurse=False))]
    handles = [modules[name].register_forward_hook(record(name)) for name in norms]
    handles += [module.register_forward_pre_hook(called(name), with_kwargs=True) for name, module in modules.items() if name and name not in leaves]
    try:
        inputs = _inputs(model, consumers, ids)
    finally:
        for handle in handles:
            handle.remove()
    once = {name: made[0] for name, made in calls.items() if len(made) == 1}
    groups: dict[int, list[str]] = {}
    for name in consumers:
        if name in inputs:
            groups.setdefault(id(inputs[name]), []).append(name)
        else:
            left[name] = "not reached by a run of the model"
    folds = []
    for key, group in groups.items():
        first = group[0]
        before = inputs[first]
        width = int(before.shape[-1])
        candidates: list[tuple[str, list[torch.Tensor]]] = []
        producer = produced.get(key)
        if producer is not None:
            params = _norm_like(modules[producer], width)
            if params is not None:
                candidates.append((producer, list(params)))
        if not candidates:  # a sibling linear layer whose output rows feed this input
            parent = first.rpartition(".")[0]
            for name, module in modules.items():
                if name.rpartition(".")[0] != parent or name in group or any(id(p) in shared for p in module.parameters(recurse=False)):
                    continue
                rows = _rows_of(module)
                if rows is not None:
                    candidates.append((name, rows))
        for producer_name, params in candidates:
            mapped = _probe(model, once, producer_name, params, first, ids, before)
            if mapped is not None:
                folds.append(Fold(producer_name, tuple(group), mapped))
                break
        else:
            for name in group:
                left[name] = "no module before it scales its input channel by channel"
    return folds, left


def fold_scales(model: nn.Module, fold: Fold, maxima: Mapping[str, torch.Tensor], alpha: float, n_rows: int) -> torch.Tensor:
    """s per producer row: max |x|^alpha / max |W|^(1 - alpha) over the consumer channels the
    row feeds; 1 for a row feeding none, or whose input or weights are all zero."""
    x = torch.stack([maxima[name].double() for name in fold.consumers]).amax(0)
    w = torch.stack([input_columns(model.get_submodule(name)).detach().abs().amax(0).double() for name in fold.consumers]).amax(0)
    x_row = torch.zeros(n_rows, dtype=torch.float64).scatter_reduce(0, fold.rows, x, "amax")
    w_row = torch.zeros(n_rows, dtype=torch.float64).scatter_reduce(0, fold.rows, w, "amax")
    scales = torch.ones(n_rows, dtype=torch.float64)
    alive = (x_row > 0) & (w_row > 0)
    scales[alive] = x_row[alive].pow(alpha) / w_row[alive].pow(1.0 - alpha)
    return scales.clamp(*SCALE_RANGE)


def _producer_params(model: nn.Module, fold: Fold) -> list[torch.Tensor]:
    module = model.get_submodule(fold.producer)
    rows = _rows_of(module)
    return rows if rows is not None else list(module.parameters(recurse=False))


def _apply(model: nn.Module, fold: Fold) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fold in place; returns (tensor, saved copy) pairs to undo it exactly."""
    assert fold.scales is not None
    producer = _producer_params(model, fold)
    saved = [(t, t.detach().clone()) for t in producer + [input_columns(model.get_submodule(name)) for name in fold.consumers]]
    with torch.no_grad():
        for p in producer:
            p.div_(fold.scales.to(p.dtype).view(-1, *[1] * (p.dim() - 1)))
        column_scales = fold.channel_scales()
        for name in fold.consumers:
            weight = input_columns(model.get_submodule(name))
            weight.mul_(column_scales.to(weight.dtype))
    return saved


def _undo(saved: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for tensor, old in saved:
            tensor.copy_(old)


@torch.no_grad()
def smooth(model: nn.Module, names: Sequence[str], maxima: Mapping[str, torch.Tensor], alpha: float, window: torch.Tensor) -> Smoothing:
    """Smooth the float `model` in place for int8 layers `names`, from their calibration inputs'
    per-channel `maxima`; `window` (1 x tokens ids) finds the folds and checks them. The model runs
    in eval mode meanwhile."""
    with evaluating(model):
        probe_ids = window[:, :PROBE_TOKENS]
        check_ids = window[:, :CHECK_TOKENS]
        folds, left = find_folds(model, names, probe_ids)
        for fold in folds:
            fold.scales = fold_scales(model, fold, maxima, alpha, len(_producer_params(model, fold)[0]))
        reference = _run(model, check_ids)

        def unchanged() -> bool:
            return float((_run(model, check_ids) - reference).abs().max()) <= FOLD_TOLERANCE

        undo = [_apply(model, fold) for fold in folds]
        kept = folds
        if not unchanged():  # find the folds that change the model: each alone
            for saved in reversed(undo):
                _undo(saved)
            kept = []
            for fold in folds:
                saved = _apply(model, fold)
                if unchanged():
                    kept.append(fold)
                else:
                    _undo(saved)
                    for name in fold.consumers:
                        left[name] = f"folding into {fold.producer} changed the model's output"
        return Smoothing(alpha, kept, left)


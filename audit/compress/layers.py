"""The layer walk shared by every method: decoder blocks, their linear layers, block inputs, statistics."""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from audit.compress.methods import LayerStats
from audit.errors import UserError
from audit.progress import check_cancel


@dataclass
class PrunableLayer:
    """A linear layer inside a decoder block, seen as an (out_features x in_features) matrix."""

    name: str
    module: nn.Module
    transposed: bool  # GPT-2's Conv1D stores (in, out) and computes x @ W

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.module.weight.shape
        return (cols, rows) if self.transposed else (rows, cols)

    def read(self) -> torch.Tensor:
        """The weight as float32 (out x in), a copy. One holding NaN or infinity is refused: no
        score ranks it, and the lowest scores would not be the ones removed."""
        weight = self.module.weight.detach()
        weight = weight.t() if self.transposed else weight
        weight = weight.to(torch.float32, copy=True)
        if not bool(torch.isfinite(weight).all()):
            raise UserError(f"layer {self.name}: its weights hold NaN or infinity; a model with them cannot be pruned")
        return weight

    def write(self, weight: torch.Tensor) -> None:
        target = self.module.weight
        value = weight.t() if self.transposed else weight
        with torch.no_grad():
            target.copy_(value.to(target.dtype))


def _is_linear(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D)) and isinstance(getattr(module, "weight", None), torch.Tensor)


def find_decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The repeated decoder blocks, found by shape rather than by architecture: the ModuleList
    of same-class modules holding linear layers with the most parameters."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1 or not any(_is_linear(m) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, name, module)
    if best is None:
        raise UserError(f"cannot find the decoder blocks of {type(model).__name__}: no list of repeated blocks")
    return best[1], best[2]


def block_layers(prefix: str, block: nn.Module, exclude: Sequence[str] = ()) -> list[PrunableLayer]:
    """Every linear layer of a block, less those whose full name matches an exclude pattern."""
    from transformers.pytorch_utils import Conv1D

    layers = []
    for name, module in block.named_modules():
        if not name or not _is_linear(module):
            continue
        full = f"{prefix}.{name}"
        if any(fnmatch.fnmatchcase(full, pattern) for pattern in exclude):
            continue
        layers.append(PrunableLayer(full, module, isinstance(module, Conv1D)))
    return layers


def prunable_layers(model: nn.Module, exclude: Sequence[str] = ()) -> list[list[PrunableLayer]]:
    """The layers to prune, block by block; each exclude pattern must match some layer."""
    prefix, blocks = find_decoder_blocks(model)
    every = [block_layers(f"{prefix}.{i}", block) for i, block in enumerate(blocks)]
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(layer.name, pattern) for group in every for layer in group):
            example = every[0][-1].name if every and every[0] else prefix
            raise UserError(f"exclude pattern {pattern!r} matches no layer (layer names look like {example!r})")
    chosen = [block_layers(f"{prefix}.{i}", block, exclude) for i, block in enumerate(blocks)]
    if not any(chosen):
        raise UserError("every linear layer is excluded: nothing to prune")
    return chosen


# -- block inputs ---------------------------------------------------------------------------
class _Captured(Exception):
    """Stops the model's forward once the first block's inputs are recorded."""


@dataclass
class BlockInputs:
    """The hidden states entering a block, one per calibration sample, and the other arguments
    the model passes to every block (masks, positions, rotary embeddings).

    `hidden` is one tensor of shape (samples, *one sample's shape), allocated once: each sample's
    block output is written over its input (`advance`), so one set of activations is held for
    the whole walk and no copy of it is ever made."""

    hidden: torch.Tensor
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, samples: torch.Tensor, cancel: threading.Event | None = None
) -> BlockInputs:
    """Run each sample through the model up to the first block and record what it receives.

    The model itself builds the block arguments (causal masks, rotary embeddings, cache
    positions), so nothing here depends on the architecture. Samples all have the same
    length, so those arguments are the same for each; the first sample's are kept.
    """
    buffer: list[torch.Tensor] = []  # the (samples, ...) tensor, once the first sample shows its shape
    extra: dict[str, Any] = {}
    count = 0

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        states = args[0] if args else kwargs.pop("hidden_states")
        if not buffer:
            buffer.append(torch.empty((len(samples), *states.shape), dtype=states.dtype, device=states.device))
        buffer[0][count].copy_(states.detach())
        if not extra:
            extra["args"] = tuple(args[1:])
            extra["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Captured()

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            for row in samples:
                check_cancel(cancel)
                before = count
                try:
                    model(input_ids=row[None, :], use_cache=False)
                except _Captured:
                    count += 1
                if count == before:
                    break
    finally:
        handle.remove()
    if count != len(samples):
        raise UserError("the model did not pass through its decoder blocks; cannot calibrate it")
    kwargs = dict(extra["kwargs"])
    kwargs["use_cache"] = False
    return BlockInputs(buffer[0], extra["args"], kwargs)


def run_block(block: nn.Module, inputs: BlockInputs, index: int) -> torch.Tensor:
    with torch.inference_mode():
        out = block(inputs.hidden[index], *inputs.args, **inputs.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def advance(inputs: BlockInputs, index: int, output: torch.Tensor) -> None:
    """Write a block's output for one sample over that sample's input: the next block's input."""
    with torch.inference_mode():
        inputs.hidden[index].copy_(output.detach())


# -- statistics -----------------------------------------------------------------------------
class _Accumulator:
    def __init__(self, features: int, needs: str) -> None:
        self.n_tokens = 0
        self.sq_norms = torch.zeros(features, dtype=torch.float64)
        self.hessian = torch.zeros(features, features, dtype=torch.float32) if needs == "hessian" else None

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        self.n_tokens += x.shape[0]
        # x is float32 here, so double() is a copy of its own and may be squared in place.
        self.sq_norms += x.double().pow_(2).sum(0)
        if self.hessian is not None:
            self.hessian.addmm_(x.t(), x)

    def stats(self) -> LayerStats:
        return LayerStats(self.n_tokens, self.sq_norms, self.hessian)


class InputStatistics:
    """Accumulates what the methods need about each layer's inputs while a block runs.

    Layers fed the very same tensor (q, k and v; gate and up) share one accumulator, so a
    Hessian is built once per distinct input. Nothing of the inputs themselves is kept past a
    forward; `release` drops a layer's statistics once it is pruned, so a Hessian is freed as
    soon as the last layer sharing it is done.
    """

    def __init__(self, layers: Sequence[PrunableLayer], needs: str) -> None:
        self.layers = list(layers)
        self.needs = needs
        self._by_layer: dict[str, _Accumulator] = {}
        # id of an input tensor -> (the tensor, its accumulator), within one forward; holding the
        # tensor keeps its id from being reused by a later input of the same forward.
        self._seen: dict[int, tuple[torch.Tensor, _Accumulator]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "InputStatistics":
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._seen.clear()

    def new_forward(self) -> None:
        """Call between forwards: forgets (and lets go of) the inputs seen in the last one."""
        self._seen.clear()

    def _hook(self, layer: PrunableLayer):
        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            x = args[0]
            seen = self._seen.get(id(x))
            shared = seen[1] if seen is not None and seen[0] is x else None
            if layer.name not in self._by_layer:
                self._by_layer[layer.name] = shared or _Accumulator(layer.shape[1], self.needs)
            accumulator = self._by_layer[layer.name]
            if shared is accumulator:
                return  # this input was already counted for the layers sharing it
            accumulator.add(x.detach())
            self._seen[id(x)] = (x, accumulator)

        return record

    def stats(self, layer: PrunableLayer) -> LayerStats:
        try:
            stats = self._by_layer[layer.name].stats()
        except KeyError:
            raise UserError(f"layer {layer.name} received no input during calibration") from None
        # A NaN or infinite input makes its squared sum (float64) one too, and the Hessian's
        # diagonal (float32) overflows first: either leaves no score or Hessian to rank weights by.
        if not bool(torch.isfinite(stats.sq_norms).all()) or (stats.hessian is not None and not bool(torch.isfinite(stats.hessian.diagonal()).all())):
            raise UserError(
                f"layer {layer.name}: its calibration inputs hold NaN or infinity (the model gives them on the calibration text)"
            )
        return stats

    def release(self, layer: PrunableLayer) -> None:
        """Drop a layer's statistics (its accumulator goes with the last layer sharing it)."""
        self._by_layer.pop(layer.name, None)

    def layers_sharing_inputs(self) -> list[list[str]]:
        groups: dict[int, list[str]] = {}
        for name, acc in self._by_layer.items():
            groups.setdefault(id(acc), []).append(name)
        return list(groups.values())


# -- checks ---------------------------------------------------------------------------------
def sparsity_of(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel()


def sparsity_report(layers: Sequence[PrunableLayer]) -> tuple[dict[str, float], float]:
    """Actual sparsity of each layer and over all of them (weighted by size)."""
    per_layer: dict[str, float] = {}
    zeros = total = 0
    for layer in layers:
        weight = layer.module.weight
        n_zero = int((weight == 0).sum())
        per_layer[layer.name] = n_zero / weight.numel()
        zeros += n_zero
        total += weight.numel()
    return per_layer, (zeros / total if total else 0.0)


def nm_violations(weight: torch.Tensor, kept: int, group: int) -> int:
    """How many groups of `group` consecutive input weights do not have exactly group-kept zeros."""
    rows, cols = weight.shape
    zeros = (weight.reshape(rows, cols // group, group) == 0).sum(-1)
    return int((zeros != group - kept).sum())


def iter_layers(groups: Sequence[Sequence[PrunableLayer]]) -> Iterator[PrunableLayer]:
    for group in groups:
        yield from group

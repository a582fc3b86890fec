"""Products of int8-dynamic layers with one activation scale per token, and layers that read the
same input multiplied as one.

A transformer block's query, key and value projections read the same normalized hidden states,
and so do an MLP's gate and up projections. With per-token scales each of them quantizes that
input to the same levels, then multiplies the levels by its own int8 weights. At one token per
decode step the arithmetic is small and each layer's call costs as much: on the default model a
576 x 192 product takes about 16 us, of which a few are multiplying, plus the quantization.
Stacked into one matrix, the layers of a group quantize their input once and take one call;
each layer then takes its own columns of the product.

The outputs are the same, bit for bit: an output channel's int32 sum and its rescaling do not
depend on the channels beside it. That is checked for each group when it is formed (one token
and several, at a few magnitudes), and a group that differs is not formed.

Which layers read the same input is found by running the model once, on two tokens, and
recording what each layer is called with: layers under one parent that received the same tensor
form a group. Each member stays a layer of the model (saved, counted and swapped as before);
only its forward asks the group, which computes the stacked product once per input.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.ao.nn.quantized.modules.linear import LinearPackedParams

TINY = float(torch.finfo(torch.float32).tiny)
PRODUCT_SLICE_ELEMENTS = 1 << 22  # outputs of one slice of a many-token product (16 MB of float32)


def per_token_products(rows: torch.Tensor, ints: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                       single: Any = None) -> torch.Tensor:
    """float32 `rows` (tokens x in) times int8 weights `ints` (out x in, one float32 scale per
    output channel in `weight_scale`), each token quantized with its own symmetric int8 scale:
    int8 x int8 -> int32 products, rescaled by the token's and the channel's scales, plus `bias`.
    A single token takes FBGEMM's int8 kernel where it is exact and `single` holds the same
    weights packed for it: the same quantization, with no int8 copy of the input made here."""
    if rows.shape[0] == 1 and single is not None:
        # quint8 with zero point 128 is the symmetric int8 grid shifted: the same levels. The
        # scale is the float32 one below: a float32 quotient taken in double and rounded to
        # float32 (as the kernel stores it) is the float32 quotient. One operation, not four.
        one = max(float(torch.linalg.vector_norm(rows, math.inf)) / 127.0, TINY)
        return torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(rows, one, 128, single)
    n_rows, n_out = int(rows.shape[0]), int(ints.shape[0])
    step = max(1, PRODUCT_SLICE_ELEMENTS // max(n_out, 1))
    if n_rows <= step:
        return _rows_products(rows, ints, weight_scale, bias)
    # Many tokens by many outputs (the output head over a long text): taken in slices of rows
    # into one output, so the int32 products and their scales are held for a slice at a time,
    # not three times the whole output. Each row's arithmetic is the same either way.
    out = torch.empty(n_rows, n_out, dtype=torch.float32)
    for start in range(0, n_rows, step):
        _rows_products(rows[start : start + step], ints, weight_scale, bias, out=out[start : start + step])
    return out


def _rows_products(rows: torch.Tensor, ints: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    scale = rows.abs().amax(dim=-1, keepdim=True).div_(127.0).clamp_min_(TINY)  # an all-zero token stays zero
    # As FBGEMM quantizes (times the reciprocal, shifted by 128 in float), so that both paths
    # give every token the same levels.
    quantized = (rows * scale.reciprocal()).add_(128.0).round_().clamp_(1.0, 255.0).sub_(128.0).to(torch.int8)
    products = torch._int_mm(quantized, ints.t()).to(torch.float32)
    scales = scale * weight_scale
    if bias is None:
        return products.mul_(scales) if out is None else torch.mul(products, scales, out=out)
    return torch.addcmul(bias, products, scales, out=out)  # fused multiply-add, as FBGEMM adds the bias


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """`x`'s tokens as float32 rows (tokens x features)."""
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.dtype == torch.float32 else rows.to(torch.float32)


def layer_products(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A per-token int8 layer's output for `x`, computed with its own weights."""
    out = per_token_products(as_rows(x), layer._int8_weight, layer._int8_weight_scale, layer._int8_bias, layer._int8_single)
    return out.reshape(*x.shape[:-1], out.shape[-1]).to(x.dtype)


def per_token_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's int8 layers that quantize activations per token, by name."""
    return {name: module for name, module in model.named_modules() if hasattr(module, "_int8_weight")}


class SharedInput:
    """Per-token int8 layers that read the same input, their weights stacked: the product for an
    input is computed once, and each member (by its index) takes its own columns of it. The
    product is released once every member has taken its columns; a member asking again for the
    same input starts a new product (the input may have changed in place since)."""

    def __init__(self, names: Sequence[str], layers: Sequence[nn.Module]) -> None:
        self.names = tuple(names)
        weights = [layer.weight() for layer in layers]  # int8 values and float64 channel scales, as stored
        self.ints = torch.cat([weight.int_repr() for weight in weights])
        self.channel_scales = torch.cat([weight.q_per_channel_scales() for weight in weights])
        self.weight_scale = self.channel_scales.to(torch.float32)
        biases = [layer._int8_bias for layer in layers]
        self.bias = None if biases[0] is None else torch.cat(biases)
        single = all(layer._int8_single is not None for layer in layers)
        self.single = torch.ops.quantized.linear_prepack(self.weight(0, len(self.ints)), self.bias) if single else None
        ends = torch.tensor([int(weight.shape[0]) for weight in weights]).cumsum(0).tolist()
        self.columns = list(zip([0, *ends[:-1]], ends))
        self._last: tuple[torch.Tensor, torch.Tensor, set[int]] | None = None

    def weight(self, start: int, end: int) -> torch.Tensor:
        """Rows start:end of the stacked weights as a quantized tensor (symmetric: zero points 0)."""
        zero = torch.zeros(end - start, dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(self.ints[start:end], self.channel_scales[start:end], zero, 0)

    def product(self, index: int, x: torch.Tensor) -> torch.Tensor:
        last = self._last  # read once: another thread may replace it, never change it
        if last is None or last[0] is not x or index in last[2]:
            last = (x, per_token_products(as_rows(x), self.ints, self.weight_scale, self.bias, self.single), set())
            self._last = last
        taken = last[2]
        taken.add(index)
        if len(taken) == len(self.columns):
            self._last = None
        start, end = self.columns[index]
        out = last[1][:, start:end].contiguous()  # laid out as the member's own product would be
        return out.reshape(*x.shape[:-1], end - start).to(x.dtype)

    def agrees(self, layers: Sequence[nn.Module]) -> bool:
        """Whether each member's columns of the stacked product equal its own product, bit for
        bit, for one token and for several, at a few magnitudes."""
        generator = torch.Generator().manual_seed(0)
        n_in = int(self.ints.shape[1])
        for tokens, magnitude in ((1, 1.0), (1, 300.0), (3, 1.0), (5, 1e-3)):
            x = torch.randn(tokens, n_in, generator=generator) * magnitude
            x[:, 0] *= 40.0  # one large channel, as hidden states have
            stacked = per_token_products(x, self.ints, self.weight_scale, self.bias, self.single)
            for (start, end), layer in zip(self.columns, layers):
                if not torch.equal(stacked[:, start:end], layer_products(layer, x)):
                    return False
        return True

    def serve(self, layers: Sequence[nn.Module]) -> None:
        """Make each member's forward take its columns of the stacked product, and its weights
        its rows of the stacked ones: a member keeps no packed or int8 copy of its own, so the
        group holds what its members held, once."""
        for index, ((start, end), layer) in enumerate(zip(self.columns, layers)):
            layer._int8_weight = self.ints[start:end]
            layer._int8_weight_scale = self.weight_scale[start:end]
            if self.bias is not None:
                layer._int8_bias = self.bias[start:end]
            layer._int8_single = None
            layer._packed_params = GroupRows(self, start, end)
            layer.forward = functools.partial(self.product, index)
            layer.shared_input = self.names


class GroupRows(LinearPackedParams):
    """A grouped layer's packed parameters: its rows of the group's stacked weights. Its weight
    and bias read (and save) as any dynamic int8 layer's do; they are not packed twice."""

    def __init__(self, group: SharedInput, start: int, end: int) -> None:
        nn.Module.__init__(self)  # not LinearPackedParams': that would pack a placeholder
        self.dtype = torch.qint8
        self.group, self.rows = group, (start, end)

    def _weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        start, end = self.rows
        bias = self.group.bias
        return self.group.weight(start, end), None if bias is None else bias[start:end].clone()

    def set_weight_bias(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        raise RuntimeError("a grouped int8 layer's weights are its group's: they cannot be set alone")


def _record(seen: list, _module: nn.Module, args: tuple) -> None:
    seen.append(args[0] if args else None)


def shared_input_names(model: nn.Module, layers: Mapping[str, nn.Module]) -> list[list[str]]:
    """Names of `layers` that read the same input: run the model once on two tokens and group
    the layers called once, under one parent, with the same tensor. No groups when the model
    does not run on that input."""
    seen: dict[str, list] = {name: [] for name in layers}
    handles = [layer.register_forward_pre_hook(functools.partial(_record, seen[name])) for name, layer in layers.items()]
    try:
        with torch.inference_mode():
            model(input_ids=torch.tensor([[0, 1]]), use_cache=False)
    except Exception:  # an architecture that needs more than ids: nothing is grouped
        return []
    finally:
        for handle in handles:
            handle.remove()
    groups: dict[tuple[str, int], list[str]] = {}
    for name, inputs in seen.items():  # the inputs stay referenced here, so their ids are distinct
        if len(inputs) == 1 and isinstance(inputs[0], torch.Tensor):
            groups.setdefault((name.rpartition(".")[0], id(inputs[0])), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def group_shared_inputs(model: nn.Module) -> list[tuple[str, ...]]:
    """Group the model's per-token int8 layers that read the same input (see the module's notes);
    returns the groups formed, each as its members' names."""
    layers = per_token_layers(model)
    formed = []
    for names in shared_input_names(model, layers) if len(layers) > 1 else []:
        members = [layers[name] for name in names]
        if len({layer._int8_bias is None for layer in members}) > 1 or len({layer._int8_single is None for layer in members}) > 1:
            continue
        group = SharedInput(names, members)
        if group.agrees(members):
            group.serve(members)
            formed.append(group.names)
    return formed

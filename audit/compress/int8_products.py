"""Products of int8-dynamic layers with one activation scale per token, and layers that read the
same input multiplied as one.

Without int8 dot-product instructions (an AVX2 CPU) torch._int_mm is 19-33 times slower than
float32 multiplying the same values, and FBGEMM's single-token kernel adds pairs of products in
16 bits, which saturate. There the same int32 sums are taken as float32 products of the levels
(`level_products`) and, for a single token, through FBGEMM with the levels split by sign
(`SignSplit`), each exact by construction and checked against torch._int_mm in the tests.

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
import time
from typing import Any, Mapping, Sequence

import numpy
import torch
from torch import nn
from torch.ao.nn.quantized.modules.linear import LinearPackedParams

TINY = float(torch.finfo(torch.float32).tiny)
PRODUCT_SLICE_ELEMENTS = 1 << 22  # outputs of one slice of a many-token product (16 MB of float32)
# float32 holds every integer up to 2^24 exactly. A product of an input level (|q| <= 127) and a
# weight level (|w| <= 128) is at most 16,256, so the sums of up to 1,032 of them, and each
# partial sum on the way, are integers float32 holds: a float32 product of the levels is then the
# int32 one, whatever order the sums are taken in.
EXACT_FLOAT = 1 << 24
EXACT_INPUTS = EXACT_FLOAT // (127 * 128)


@functools.cache
def int_mm_ratio() -> float:
    """How many times as long torch._int_mm takes here to multiply int8 levels as float32 takes
    for the same levels (inf where this build has no int8 product), measured once per process,
    the best of three each. On a CPU without int8 dot-product instructions (AVX2 alone) 19 on
    this shape and 27-33 on the default model's."""
    generator = torch.Generator().manual_seed(0)
    levels = torch.randint(-127, 128, (64, 512), generator=generator, dtype=torch.int8)
    weights = torch.randint(-127, 128, (512, 512), generator=generator, dtype=torch.int8)
    as_float = levels.to(torch.float32), weights.to(torch.float32).t()

    def best(run: Any) -> float:
        run()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return min(times)

    try:
        integer = best(lambda: torch._int_mm(levels, weights.t()))
    except RuntimeError:
        return math.inf
    return integer / best(lambda: torch.mm(*as_float))


def int_mm_slow() -> bool:
    """Whether int8 products take the float32 way here (`level_products`): torch._int_mm over
    twice as slow. The products are the same either way, so a wrong guess only costs time."""
    return int_mm_ratio() > 2.0


def level_products(quantized: torch.Tensor, ints: torch.Tensor) -> torch.Tensor:
    """int8 `quantized` (tokens x in) times int8 `ints` (out x in) transposed, summed in int32,
    as float32: torch._int_mm where it is fast, else float32 products of the levels, which are
    the same (`EXACT_INPUTS`): at most 1,032 inputs at a time, whose sums are added in int32."""
    if not int_mm_slow():
        return torch._int_mm(quantized, ints.t()).to(torch.float32)
    levels = quantized.to(torch.float32)
    n_in = int(ints.shape[1])
    if n_in <= EXACT_INPUTS:
        return torch.mm(levels, ints.to(torch.float32).t())
    total = None
    for start in range(0, n_in, EXACT_INPUTS):
        end = start + EXACT_INPUTS
        part = torch.mm(levels[:, start:end], ints[:, start:end].to(torch.float32).t()).to(torch.int32)
        total = part if total is None else total.add_(part)
    return total.to(torch.float32)  # type: ignore[union-attr]


def symmetric_weight(ints: torch.Tensor, channel_scales: torch.Tensor) -> torch.Tensor:
    """int8 weights `ints` (out x in) with float64 `channel_scales` as a per-channel quantized
    tensor, zero points 0."""
    zero = torch.zeros(len(ints), dtype=torch.long)
    return torch._make_per_channel_quantized_tensor(ints, channel_scales, zero, 0)


PLUS_MINUS = torch.tensor([[1.0], [-1.0]])


class SignSplit:
    """A single token's product through FBGEMM where its kernel is not exact for full-range
    input: without int8 dot-product instructions it adds pairs of uint8 x int8 products in 16 bits,
    which saturate at the grid's ends. The token's levels go in as two rows, their positive parts
    and the negative ones' magnitudes (0-127 each, so a pair stays within 16 bits), against the
    weights packed with unit scales and no bias: the kernel then returns each row's int32 sums
    as float32, exactly while every output channel's sum of |weights| times 127 stays under 2^24
    (checked when made), and their difference is the token's sums. One call reads the int8
    weights once, where float32 products of the levels read a float32 copy made for the call."""

    def __init__(self, ints: torch.Tensor) -> None:
        unit = symmetric_weight(ints, torch.ones(len(ints), dtype=torch.float64))
        self.packed = torch.ops.quantized.linear_prepack(unit, None)

    @staticmethod
    def fits(ints: torch.Tensor) -> bool:
        """Whether every sum the kernel returns for these weights is exact in float32 (read a
        few thousand output channels at a time: an output head's whole table in int32 would be
        four times its size again)."""
        largest = max((int(ints[i : i + 4096].to(torch.int32).abs_().sum(dim=1).max()) for i in range(0, len(ints), 4096)), default=0)
        return 127 * largest < EXACT_FLOAT

    def sums(self, levels: torch.Tensor) -> torch.Tensor:
        """A single token's levels (1 x in, float32) times the weights, summed, as float32."""
        both = levels.mul(PLUS_MINUS).clamp_(min=0.0)
        sums = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(both, 1.0, 0, self.packed)
        return sums[:1].sub_(sums[1:])

    def token_products(self, rows: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """`_rows_products` of a single token (1 x in), the same float32 arithmetic in fewer
        calls: a decode step makes about 120 of them, and each call costs more than its
        arithmetic on a vector this short. The scale and its reciprocal are float32 values
        taken in double and rounded (exact for one division each), as the tensors hold them."""
        scale = max(float(numpy.float32(float(torch.linalg.vector_norm(rows, math.inf)) / 127.0)), TINY)
        levels = rows.mul(float(numpy.float32(1.0) / numpy.float32(scale))).add_(128.0).round_().clamp_(1.0, 255.0).sub_(128.0)
        sums = self.sums(levels)
        scales = weight_scale * scale
        return sums.mul_(scales) if bias is None else torch.addcmul(bias, sums, scales)


def per_token_products(rows: torch.Tensor, ints: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                       single: Any = None) -> torch.Tensor:
    """float32 `rows` (tokens x in) times int8 weights `ints` (out x in, one float32 scale per
    output channel in `weight_scale`), each token quantized with its own symmetric int8 scale:
    int8 x int8 -> int32 products, rescaled by the token's and the channel's scales, plus `bias`.
    A single token takes FBGEMM's int8 kernel where it is exact and `single` holds the same
    weights packed for it: the same quantization, with no int8 copy of the input made here; or,
    where it is not, `single` is a `SignSplit` of the weights."""
    if rows.shape[0] == 1 and isinstance(single, SignSplit):
        return single.token_products(rows, weight_scale, bias)
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
    products = level_products(quantized, ints)
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
        self.single: Any = None
        if single and all(isinstance(layer._int8_single, SignSplit) for layer in layers):
            self.single = SignSplit(self.ints)
        elif single:
            self.single = torch.ops.quantized.linear_prepack(self.weight(0, len(self.ints)), self.bias)
        ends = torch.tensor([int(weight.shape[0]) for weight in weights]).cumsum(0).tolist()
        self.columns = list(zip([0, *ends[:-1]], ends))
        self._last: tuple[torch.Tensor, torch.Tensor, set[int]] | None = None

    def weight(self, start: int, end: int) -> torch.Tensor:
        """Rows start:end of the stacked weights as a quantized tensor (symmetric: zero points 0)."""
        return symmetric_weight(self.ints[start:end], self.channel_scales[start:end])

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


class IntRows(LinearPackedParams):
    """The packed parameters of a per-token int8 layer that multiplies by its int8 copy alone
    (no exact FBGEMM kernel here): its weight and bias read (and save) from that copy and its
    per-channel scales, as any dynamic int8 layer's do, so the integers are held once rather
    than also packed for a kernel that never runs (on the default model 135 MB)."""

    refusal = "a per-token int8 layer's weights are the integers it multiplies by: they cannot be set in place"

    def __init__(self, ints: torch.Tensor, channel_scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        nn.Module.__init__(self)  # not LinearPackedParams': that would pack a placeholder
        self.dtype = torch.qint8
        self.ints, self.channel_scales, self.offsets = ints, channel_scales, bias

    def _weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return symmetric_weight(self.ints, self.channel_scales), None if self.offsets is None else self.offsets.clone()

    def set_weight_bias(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        raise RuntimeError(self.refusal)


class GroupRows(IntRows):
    """A grouped layer's packed parameters: its rows of the group's stacked weights, scales and
    bias (views: the integers are not held twice)."""

    refusal = "a grouped int8 layer's weights are its group's: they cannot be set alone"

    def __init__(self, group: SharedInput, start: int, end: int) -> None:
        bias = group.bias
        super().__init__(group.ints[start:end], group.channel_scales[start:end], None if bias is None else bias[start:end])
        self.group = group


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

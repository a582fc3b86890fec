"""PyTorch backend: a transformers causal LM behind the common interface, with fast shared-context scoring."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import inspect
import math
import platform
import threading
import weakref
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

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
from audit.models.workers import RowWorkers, done_future, gather, row_bounds
from hardware.memory import available_bytes, release_free_heap

# Packed scoring puts one item's context and all its continuations in one row; this bounds
# the padded tokens per forward so memory stays flat on a small device.
MAX_BATCH_TOKENS = 4096
MAX_BATCH_ROWS = 32


SHARED_OWNER, PAD_OWNER = -1, -2
# Requests whose contexts start alike (the questions of one BBQ context, the ambiguous
# context that opens the disambiguated one) share one row: the common prefix is computed
# once. A shared prefix must be long enough to pay for the longer row, and rows stay short:
# attention grows with the square of a row's length and a batch pads to its longest row
# (on the built-in suite, 384 tokens x 4 members scores 1.7x faster than 1024 x 8).
MIN_SHARED_TOKENS = 8
MAX_ROW_MEMBERS = 4
MAX_ROW_TOKENS = 384
# Such rows go to the model a few at a time: larger forwards cost more per token on this kind
# of CPU. The built-in suite's items in calls of 32 (a probe's batch), ms per item, 4,096 tokens
# a forward against 1,024: the default model at 1 thread 89-91 against 77-79, at 2 threads
# within noise (42-45 against 43-46; for calls of 64, 49-50 against 45-47); its int8-dynamic
# variant 61-64 against 46-48 at 1 thread, 33-35 against 30-31 at 2. (ONNX Runtime's cached
# scoring is the other way round, 4,096 ahead by 6-10%: it keeps MAX_BATCH_TOKENS.)
PACKED_BATCH_TOKENS = 1024
# Rows are made and batched so that this many scoring workers share each batch evenly
# (`tree_rows`, `batches_by_tokens`): a batch of 3 rows on 2 workers keeps one waiting for a
# row's time. It is fixed rather than the workers there are, so the batches, and with them the
# scores bit for bit, do not depend on how many workers the device's load gave a job.
ROW_SHARE = 2


@dataclass(frozen=True)
class PackedRow:
    prefix: tuple[int, ...]  # context tokens every member starts with
    members: tuple[int, ...]  # request indices, each with its own context rest and continuations
    length: int


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def share_prefixes(requests: Sequence[ScoreRequest]) -> list[PackedRow]:
    """Group requests into rows that share a context prefix (a request alone shares its whole
    context). Sorting the contexts puts those with the longest common prefixes side by side."""
    def size(r: ScoreRequest) -> int:
        return len(r.context) + sum(len(c) for c in r.continuations)

    rows: list[PackedRow] = []
    for index in sorted(range(len(requests)), key=lambda i: (requests[i].context, i)):
        req = requests[index]
        if rows:
            last = rows[-1]
            shared = _common_prefix(last.prefix, req.context)
            members = last.members + (index,)
            length = shared + sum(size(requests[m]) - shared for m in members)
            if shared >= MIN_SHARED_TOKENS and len(members) <= MAX_ROW_MEMBERS and length <= MAX_ROW_TOKENS:
                rows[-1] = PackedRow(tuple(req.context[:shared]), members, length)
                continue
        rows.append(PackedRow(tuple(req.context), (index,), size(req)))
    return rows


def pack_rows(lengths: Sequence[int], max_tokens: int | None = None) -> list[list[int]]:
    """Rows placed side by side in lanes of at most `max_tokens` (a longer row gets a lane of its
    own), first fit from the longest, so a batch pads little even when few of its requests
    share a context (a sequential probe's batch draws them across categories). Each row keeps
    its own positions and sees only itself. By default lanes are no wider than the longest row
    (nor MAX_ROW_TOKENS): a batch is that wide anyway, and attention grows with the square of
    the width."""
    if max_tokens is None:
        max_tokens = min(MAX_ROW_TOKENS, max(lengths, default=0))
    lanes: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for k, free in enumerate(room):
            if lengths[index] <= free:
                lanes[k].append(index)
                room[k] -= lengths[index]
                break
        else:
            lanes.append([index])
            room.append(max(max_tokens, lengths[index]) - lengths[index])
    return lanes


# Requests with a short context (whole sentences after the document start: CrowS-Pairs,
# StereoSet) are scored as token trees instead: the sentences of one request share their
# tokens up to the first that differs, every request of a row shares the document start,
# and a sentence's last token, which predicts nothing, is not fed at all. A row is one tree
# whose tokens attend to their ancestors only. Rows stay short because attention costs the
# square of a row's width while the rest of the forward costs its tokens (at 128 tokens
# attention adds about 4% to a row); a batch holds a few rows so the matrix products stay
# large enough to run at full speed without a large logits tensor.
TREE_ROW_TOKENS = 128
TREE_BATCH_TOKENS = 512


@dataclass(frozen=True)
class TreeRow:
    """One row of a token tree: the tokens fed, each one's parent (-1 for a root) and depth
    (its position id), and the scored tokens as (request, continuation, predicting node, target)."""

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    depths: tuple[int, ...]
    scored: tuple[tuple[int, int, int, int], ...]


def tree_row(requests: Sequence[ScoreRequest], members: Sequence[int]) -> TreeRow:
    """The token tree of `members`: each distinct path of context and continuation tokens once.
    The last token of every continuation is left out: no scored token is predicted from it."""
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    scored: list[tuple[int, int, int, int]] = []
    children: dict[tuple[int, int], int] = {}
    for index in members:
        req = requests[index]
        n_ctx = len(req.context)
        for k, cont in enumerate(req.continuations):
            seq = req.context + cont
            node = -1
            for depth in range(len(seq) - 1):
                key = (node, seq[depth])
                child = children.get(key)
                if child is None:
                    child = len(tokens)
                    children[key] = child
                    tokens.append(seq[depth])
                    parents.append(node)
                    depths.append(depth)
                node = child
                if depth >= n_ctx - 1:
                    scored.append((index, k, node, seq[depth + 1]))
    return TreeRow(tuple(tokens), tuple(parents), tuple(depths), tuple(scored))


def _tree_paths(request: ScoreRequest) -> frozenset[tuple[int, ...]]:
    """The nodes `tree_row` feeds for `request` alone, each named by its path from the root: a
    row's tokens are the union of its members' paths."""
    paths: set[tuple[int, ...]] = set()
    for cont in request.continuations:
        seq = tuple(request.context) + tuple(cont)
        paths.update(seq[: depth + 1] for depth in range(len(seq) - 1))
    return frozenset(paths)


def _fill_tree_rows(paths: Mapping[int, frozenset[tuple[int, ...]]], order: Sequence[int], max_tokens: int) -> tuple[list[list[int]], list[int]]:
    """The members of each row and its width in tokens: each request, in `order`, goes to the
    first row it still fits in within `max_tokens` (a larger request gets a row of its own).
    `paths[i]` is request i's nodes."""
    members: list[list[int]] = []
    nodes: list[set[tuple[int, ...]]] = []
    for index in order:
        own = paths[index]
        for r, row in enumerate(nodes):
            if len(row) < max_tokens and len(row) + len(own) - len(own & row) <= max_tokens:
                members[r].append(index)
                row |= own
                break
        else:
            members.append([index])
            nodes.append(set(own))
    return members, [len(row) for row in nodes]


def tree_rows(requests: Sequence[ScoreRequest], indices: Sequence[int], max_tokens: int = TREE_ROW_TOKENS,
              multiple: int = 1) -> list[TreeRow]:
    """Requests packed into tree rows of at most `max_tokens` (a larger request gets a row of
    its own). Sorted by their tokens, neighbours share their starts; each goes to the first
    row it still fits in. Of the widths that need no more rows than `max_tokens` does, the
    narrowest is taken, so the rows come out about as wide as each other: a batch is padded to
    its widest row, and filling rows to `max_tokens` would leave the last one short, padded
    with up to a whole row's width of tokens that are computed for nothing.

    With `multiple` (the scoring workers that share a batch's rows), narrower rows are taken,
    as many as a multiple of it or more, where they leave each worker fewer tokens and one
    worker alone at most a tenth more: 7 rows on 2 workers keep one waiting while the other
    scores its fourth, 8 narrower ones keep both busy."""
    order = sorted(indices, key=lambda i: (requests[i].context, requests[i].continuations, i))
    paths = {i: _tree_paths(requests[i]) for i in order}
    members, widths = _fill_tree_rows(paths, order, max_tokens)

    def padded(widths: Sequence[int], workers: int) -> int:  # a worker's rows, each as wide as the widest
        return -(-len(widths) // workers) * max(min(width, max_tokens) for width in widths)

    wanted = -(-len(members) // multiple) * multiple
    if wanted > len(members):
        # The widest width that makes at least the rows wanted; then narrowed below as usual.
        low, high = 1, max(widths)
        while low < high:
            width = (low + high + 1) // 2
            more, _ = _fill_tree_rows(paths, order, width)
            if len(more) >= wanted:
                low = width
            else:
                high = width - 1
        more, more_widths = _fill_tree_rows(paths, order, low)
        if padded(more_widths, multiple) < padded(widths, multiple) and 10 * padded(more_widths, 1) <= 11 * padded(widths, 1):
            members, widths = more, more_widths
    if len(members) > 1:
        # A request too large for a row has one of its own at any width: only the widths up to
        # `max_tokens` are tried.
        sizes = [min(width, max_tokens) for width in widths]
        high = max(sizes)
        low = min(-(-sum(sizes) // len(sizes)), high)
        while low < high:  # the narrowest width found that needs no more rows
            width = (low + high) // 2
            narrower, _ = _fill_tree_rows(paths, order, width)
            if len(narrower) <= len(members):
                members, high = narrower, width
            else:
                low = width + 1
    return [tree_row(requests, row) for row in members]


def tree_batches(rows: Sequence[TreeRow], multiple: int = 1) -> list[list[int]]:
    """The tree rows (by index) that go to the model together, each batch padded to its widest
    row; with `multiple`, batches that share out evenly between that many workers (`batches_by_tokens`)."""
    return batches_by_tokens([len(row.tokens) for row in rows], TREE_BATCH_TOKENS, MAX_BATCH_ROWS, multiple=multiple)


def tree_layout(requests: Sequence[ScoreRequest], indices: Sequence[int]) -> tuple[list[TreeRow], list[list[int]]]:
    """The tree rows of `requests[i]` for each i in `indices` and their batches (by row index),
    made for ROW_SHARE workers: what the engine feeds the model."""
    rows = tree_rows(requests, indices, multiple=ROW_SHARE)
    return rows, tree_batches(rows, ROW_SHARE)


def lane_layout(requests: Sequence[ScoreRequest]) -> tuple[list[PackedRow], list[list[int]], list[int], list[list[int]]]:
    """Requests sharing their context prefixes in rows (`share_prefixes`), rows side by side in
    lanes (`pack_rows`, by row index), each lane's length, and the lanes' batches (by lane
    index), made for ROW_SHARE workers: what the engine feeds the model for contexts too long
    for token trees."""
    rows = share_prefixes(requests)
    lanes = pack_rows([row.length for row in rows])
    lengths = [sum(rows[i].length for i in lane) for lane in lanes]
    return rows, lanes, lengths, batches_by_tokens(lengths, PACKED_BATCH_TOKENS, MAX_BATCH_ROWS, multiple=ROW_SHARE)


def packed_split(requests: Sequence[ScoreRequest]) -> tuple[list[int], list[int]]:
    """The requests (by index) packed scoring feeds as token trees (contexts too short to
    share) and those it feeds in lanes sharing their context prefixes (the rest)."""
    short = [i for i, r in enumerate(requests) if len(r.context) < MIN_SHARED_TOKENS]
    return short, sorted(set(range(len(requests))) - set(short))


def packed_batch_shapes(requests: Sequence[ScoreRequest]) -> list[tuple[int, int]]:
    """The rows and width of each forward packed scoring makes for `requests`, in order: the
    token trees' batches, then the lanes'."""
    short, rest = packed_split(requests)
    shapes: list[tuple[int, int]] = []
    if short:
        rows, batches = tree_layout(requests, short)
        shapes += [(len(batch), max(len(rows[b].tokens) for b in batch)) for batch in batches]
    if rest:
        _, _, lengths, batches = lane_layout([requests[i] for i in rest])
        shapes += [(len(batch), max(lengths[b] for b in batch)) for batch in batches]
    return shapes


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output head (its output embeddings), None for a model that names none."""
    return model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None


def linear_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Weights of the linear layers that do the model's work (the output head excluded)."""
    from transformers.pytorch_utils import Conv1D

    head = output_head(model)
    found = []
    for name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, (nn.Linear, Conv1D)) and isinstance(getattr(module, "weight", None), torch.Tensor):
            found.append((name, module.weight))
    return found


def _is_dynamic_int8(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.ao.nn.quantized") and callable(getattr(module, "weight", None))


def quantized_linear_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, int]]:
    """(name, int weights, zero points per channel, bias size) of dynamic int8 linear layers,
    whose weights live in packed parameters rather than in `parameters()`: one layer at a time,
    so that only one layer's unpacked copy is held (a list of them all would briefly hold the
    model's int8 weights twice over, and the process's RSS would keep that height). A layer
    with per-token scales has its integers at hand (symmetric: zero points 0); others unpack."""
    for name, module in model.named_modules():
        if not _is_dynamic_int8(module):
            continue
        ints = getattr(module, "_int8_weight", None)
        if isinstance(ints, torch.Tensor):
            bias = module._int8_bias
            yield name, ints, torch.zeros(int(ints.shape[0]), dtype=torch.long), 0 if bias is None else bias.numel()
            continue
        bias = module.bias() if callable(getattr(module, "bias", None)) else None
        weight = module.weight()
        if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            zero_points = weight.q_per_channel_zero_points()
        else:
            zero_points = torch.tensor([weight.q_zero_point()])
        yield name, weight.int_repr(), zero_points, 0 if bias is None else bias.numel()


@contextlib.contextmanager
def float_products(model: nn.Module) -> Iterator[None]:
    """Inside, the model's dynamic int8 layers multiply in float by their dequantized weights
    (dequantized at each call, so no float copy of the model is held): the same architecture as a
    smooth function of its input. Quantizing activations rounds every value to a level; two ways
    of computing the same tokens that differ by one float rounding (attention with and without a
    mask) then move a few values by a level, and that grows through the layers to tenths of a nat.
    A check of how the architecture treats masks and positions compares them here instead."""
    def forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        bias = layer.bias()
        return nn.functional.linear(x.to(torch.float32), layer.weight().dequantize(), bias).to(x.dtype)

    with _forwards_swapped([m for m in model.modules() if _is_dynamic_int8(m)], forward):
        yield


@contextlib.contextmanager
def _forwards_swapped(modules: Sequence[nn.Module], forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside, each of `modules` computes `forward(module, x)`; its own forward after."""
    swapped: list[tuple[nn.Module, Any]] = []
    for module in modules:
        swapped.append((module, module.__dict__.get("forward")))
        module.forward = functools.partial(forward, module)
    try:
        yield
    finally:
        for module, own in swapped:
            if own is None:
                del module.forward
            else:
                module.forward = own


# Scoring multiplies the float32 linear layers through oneDNN, the CPU library PyTorch ships,
# instead of the BLAS call of `nn.Linear`: the same float32 products summed in another order
# (a layer's outputs agree to about 1e-6 of their size; over the 1,508 CrowS-Pairs sentence
# pairs a sentence's log-likelihood moved by at most 0.007 nats, every choice the same), and
# faster on x86 CPUs. Measured on an AMD EPYC (Zen 4), 1 thread, GFLOP/s of
# the default model's shapes at 512 tokens: blocks 110-112 against 100-105, the output head 89
# against 79; at 128 tokens 104 against 88. CrowS-Pairs' first 256 pairs: 12.8 pairs/s against
# 11.7 at 1 thread, 22.1 against 20.0 on 2 workers. Other machines (ARM boards) keep the BLAS
# call: this was not measured there. The weights are used as they are, with no copy, but in a
# scoring session (below).
ONEDNN_MACHINES = ("x86_64", "amd64")

# In a scoring session (`TorchLanguageModel.scoring`: the batches of a probe run) the float32
# linear layers' weights are laid out once in oneDNN's own blocked format, which it multiplies
# by faster than by a weight as stored. Once per session, not per call: laying out the default
# model's 49,152 x 576 output head alone takes 70 ms, about a twentieth of a call of 32
# CrowS-Pairs pairs on 2 workers. CrowS-Pairs' first 384 pairs on 2 workers, in calls of 32,
# four alternating rounds in one process: 1.073x as fast with every layer laid out, 1.018x with
# the head alone (runs with nothing laid out differed by 1.2%). The products are the same bit for
# bit, but for a single row (oneDNN multiplies one row by another kernel), which keeps the
# stored weight. The copies hold the weights' size (538 MB for the default model) until the
# session ends. They are made only when that is at most this share of the memory available;
# else the head's alone when it is (113 MB), else none. A perplexity scores outside one: 1.046x
# as fast in one, it would double the weights' memory in a compression's run, whose peak is
# otherwise the pruning's.
LAYOUT_MEMORY_SHARE = 0.25


def onednn_linear_available() -> bool:
    """Whether scoring may multiply through oneDNN on this machine (`onednn_products`)."""
    return (platform.machine().lower() in ONEDNN_MACHINES and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def _float_linear(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module) is nn.Linear and isinstance(weight, torch.Tensor) and weight.dtype == torch.float32
            and weight.device.type == "cpu" and not weight.is_meta)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`nn.functional.linear(x, weight, bias)` through oneDNN (`onednn_linear_available`);
    `weight` as stored or laid out (`LaidOut`)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _version(tensor: torch.Tensor) -> int | None:
    """The tensor's count of in-place changes (None for a tensor made under inference mode,
    which keeps none)."""
    try:
        return tensor._version
    except RuntimeError:
        return None


@dataclass(frozen=True)
class LaidOut:
    """A linear layer's weight laid out for oneDNN (see LAYOUT_MEMORY_SHARE), and the stored
    weight it was made from as it was then."""

    weight: torch.Tensor
    version: int | None
    data: int
    blocked: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor, rows: int) -> LaidOut:
        """`weight` laid out for products of about `rows` rows (any count gives the same bits)."""
        return cls(weight, _version(weight), weight.data_ptr(), torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows))

    def holds(self, weight: torch.Tensor) -> bool:
        """Whether this is `weight` as it is now: the same tensor, neither moved nor changed in place."""
        return weight is self.weight and weight.data_ptr() == self.data and _version(weight) == self.version


def lay_out_weights(model: nn.Module, available: int, rows: int) -> dict[nn.Module, LaidOut]:
    """The model's float32 linear layers laid out for oneDNN when the copies are at most
    LAYOUT_MEMORY_SHARE of `available` bytes, else its output head alone when its copy is, else
    none (a layer left out multiplies its stored weight)."""
    linears = [m for m in model.modules() if _float_linear(m)]
    weights = {id(m.weight): m.weight for m in linears}  # a weight tied twice is laid out once
    head = output_head(model)

    def size(chosen: Iterable[torch.Tensor]) -> int:
        return sum(w.numel() * w.element_size() for w in chosen)

    if size(weights.values()) <= LAYOUT_MEMORY_SHARE * available:
        chosen = weights
    elif head is not None and _float_linear(head) and size([head.weight]) <= LAYOUT_MEMORY_SHARE * available:
        chosen = {id(head.weight): head.weight}
    else:
        return {}
    try:
        laid_out = {key: LaidOut.of(weight, rows) for key, weight in chosen.items()}
    except RuntimeError:  # a oneDNN build that cannot lay them out: the stored weights serve
        return {}
    return {m: laid_out[id(m.weight)] for m in linears if id(m.weight) in laid_out}


@contextlib.contextmanager
def onednn_products(model: nn.Module, laid_out: Mapping[nn.Module, LaidOut] | None = None) -> Iterator[None]:
    """Inside, the model's float32 linear layers multiply through oneDNN (see ONEDNN_MACHINES),
    those in `laid_out` by their laid-out weight while it is still theirs, for more than one row."""
    def forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        held = laid_out.get(layer) if laid_out else None
        if held is not None and x.numel() > x.shape[-1] and held.holds(layer.weight):
            return onednn_linear(x, held.blocked, layer.bias)
        return onednn_linear(x, layer.weight, layer.bias)

    with _forwards_swapped([m for m in model.modules() if _float_linear(m)], forward):
        yield


def weight_sparsity(model: nn.Module) -> float | None:
    """Share of zeros among the weights of the linear layers that do the model's work (the
    output head excluded, int8 or not, as in `linear_weights`)."""
    weights = linear_weights(model)
    total = sum(w.numel() for _, w in weights)
    zeros = sum(int((w == 0).sum()) for _, w in weights)
    head = output_head(model)
    for name, ints, zero_points, _ in quantized_linear_weights(model):
        if model.get_submodule(name) is head:
            continue
        # An int8 weight equal to its channel's zero point dequantizes to exactly zero.
        points = zero_points[:, None] if zero_points.numel() == ints.shape[0] else zero_points
        zeros += int((ints == points).sum())
        total += ints.numel()
    if not total:
        return None
    return zeros / total


def scores_agree(got: Sequence[Sequence[ContinuationScore]], want: Sequence[Sequence[ContinuationScore]]) -> bool:
    """Whether two ways of scoring the same requests give the same log-likelihoods, to float
    rounding: the test a faster scoring path passes before it replaces padded rows."""
    return all(
        math.isclose(a.logprob, b.logprob, rel_tol=1e-4, abs_tol=1e-3)
        for got_row, want_row in zip(got, want)
        for a, b in zip(got_row, want_row)
    )


# The rows a forward in this thread scores, each as the positions of its hidden states the
# output head is to run at (`_head_rows_only`); None: the head runs where the model asks.
# With `apart` a list, the rows' hidden states are put there and the head runs at none.
_HEAD_ROWS = threading.local()

# Where the head runs apart from the model's forward (`TorchLanguageModel._head_apart`), it
# multiplies the positions of a few rows at a time, at most this many (a larger row alone), and
# each row's log-probabilities are read from its logits at once, while they are still in the
# CPU's cache: the default model's head gives 49,152 logits a position, 25 MB for 128 of them.
# The whole forward's positions at once (256 a worker in CrowS-Pairs' batches) outgrew the
# cache before they were read. The head with the log-probabilities read, 256 positions of the
# default model in one worker beside another doing the same, 1 thread each (median of 18):
# 194.7 ms at once, 167.1 in pieces of 128, 165.5 of 96, 174.4 of 64, 206.3 of 32 (the
# products alone of 256 at once: 161.1); 1 worker alone 189.1, 159.4, 165.7, 175.0, 209.4, 160.2.
HEAD_POSITIONS = 128


def _head_rows_only(head: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """Forward pre-hook of an output head: its input (rows, positions, hidden) narrowed to each
    row's own positions (`_HEAD_ROWS.columns`, an index tensor per row), all rows' together as
    one row, so the head multiplies no position a row does not read; or, with `_HEAD_ROWS.apart`
    a list, each row's narrowed hidden states put in it and no position given to the head. A
    thread that set none (another forward of the model) gets the head as the model has it."""
    columns = getattr(_HEAD_ROWS, "columns", None)
    if columns is None:
        return None
    hidden = args[0]
    if hidden.dim() != 3 or hidden.shape[0] != len(columns):
        raise RuntimeError(f"the output head was given hidden states of shape {tuple(hidden.shape)}, not {len(columns)} rows")
    rows = [hidden[r].index_select(0, c) for r, c in enumerate(columns)]
    apart = getattr(_HEAD_ROWS, "apart", None)
    if apart is not None:
        apart.extend(rows)
        return (hidden[:, :0], *args[1:])
    return (torch.cat(rows)[None], *args[1:])


@contextlib.contextmanager
def head_rows(columns: Sequence[torch.Tensor], apart: list[torch.Tensor] | None = None) -> Iterator[None]:
    """Inside, this thread's forwards give `_head_rows_only` the rows' `columns` (and `apart`)."""
    _HEAD_ROWS.columns, _HEAD_ROWS.apart = columns, apart
    try:
        yield
    finally:
        _HEAD_ROWS.columns = _HEAD_ROWS.apart = None


def logits_agree(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether `got` is `want` to float32 rounding: the same shape, finite, and within 1e-4 of
    want's largest size (or of 1): the test of the self-checks on a few tokens' logits."""
    if got.shape != want.shape or not bool(torch.isfinite(got).all()):
        return False
    return float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))


def head_in_pieces(head: nn.Module, rows: Sequence[torch.Tensor], read: Callable[[int, torch.Tensor], Any],
                   positions: int = HEAD_POSITIONS) -> list[Any]:
    """`read(r, logits of rows[r])` for each row (hidden states, positions x width), the head
    run on consecutive rows together up to `positions` at a time (a larger row alone), each
    piece's rows read as soon as it is computed (see HEAD_POSITIONS)."""
    results: list[Any] = []
    piece: list[int] = []

    def run() -> None:
        logits = head(torch.cat([rows[r] for r in piece]) if len(piece) > 1 else rows[piece[0]])
        for r, part in zip(piece, logits.split([rows[r].shape[0] for r in piece])):
            results.append(read(r, part))
        piece.clear()

    size = 0
    for r, row in enumerate(rows):
        if piece and size + row.shape[0] > positions:
            run()
            size = 0
        piece.append(r)
        size += row.shape[0]
    if piece:
        run()
    return results


def _continuation_scores(logprobs: torch.Tensor, targets: Sequence[int]) -> ContinuationScore:
    """`logprobs[k]` is the distribution that predicts `targets[k]`."""
    target = torch.tensor(targets, dtype=torch.long)
    picked = logprobs.gather(-1, target[:, None])[:, 0]
    return ContinuationScore(float(picked.double().sum()), len(targets))


def _right_padded(rows: Sequence[Sequence[int]], starts: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, attention mask and position ids of `rows` right-padded to the longest, each
    row's positions counting on from its `starts`."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask, torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(width)


@torch.inference_mode()
def score_rows(
    requests: Sequence[ScoreRequest], forward: Callable[[torch.Tensor, torch.Tensor], Any]
) -> list[list[ContinuationScore]]:
    """One row per continuation, right-padded and batched: works on any causal LM whose
    `forward(input_ids, attention_mask)` returns logits (an array, or one per row)."""
    rows = [(i, k, r.context + c) for i, r in enumerate(requests) for k, c in enumerate(r.continuations)]
    results: list[list[Any]] = [[None] * len(r.continuations) for r in requests]
    for batch in batches_by_tokens([len(t) for _, _, t in rows], MAX_BATCH_TOKENS, MAX_BATCH_ROWS):
        ids, attention, _ = _right_padded([rows[j][2] for j in batch], [0] * len(batch))
        logits = forward(ids, attention)
        for row, j in enumerate(batch):
            i, k, _ = rows[j]
            n_ctx = len(requests[i].context)
            cont = requests[i].continuations[k]
            span = torch.as_tensor(logits[row]).float()[n_ctx - 1 : n_ctx - 1 + len(cont)]
            results[i][k] = _continuation_scores(span.log_softmax(-1), cont)
    return results


def _cached_batches(requests: Sequence[ScoreRequest]) -> list[list[int]]:
    """Requests batched as padded rows would be (longest first, at most MAX_BATCH_ROWS and
    MAX_BATCH_TOKENS padded tokens each), neighbours in token order kept together where they
    fit so that contexts sharing a start meet in one batch; then each batch split by context
    length where that feeds fewer tokens (`split_by_length`)."""
    return [part for batch in _token_batches(requests) for part in split_by_length([requests[i].context for i in batch], batch)]


def segment_tokens(contexts: Sequence[Sequence[int]]) -> int:
    """Tokens fed to compute `contexts` as segments (`context_segments`), padding included:
    per depth, the segments there times the longest of them."""
    segments, _ = context_segments(contexts)
    widths: dict[int, int] = {}
    counts: dict[int, int] = {}
    for s in segments:
        widths[s.depth] = max(widths.get(s.depth, 0), len(s.tokens))
        counts[s.depth] = counts.get(s.depth, 0) + 1
    return sum(counts[d] * widths[d] for d in widths)


SPLIT_MIN_ROWS = 4  # a part of a batch split by length holds at least this many requests
SPLIT_GAIN = 0.9  # and the parts together feed at most this share of the whole's tokens


def split_by_length(contexts: Sequence[Sequence[int]], labels: Sequence[int]) -> list[list[int]]:
    """`labels` (one per context) in parts of contexts of like length: a batch pads every
    context to the longest at each depth, so short contexts among long ones (a sequential
    probe's batch, drawn across a suite) go in a part of their own when the parts together feed
    at most SPLIT_GAIN of the tokens (`segment_tokens`), the extra calls paid for; each part is
    split again the same way."""
    if len(contexts) < 2 * SPLIT_MIN_ROWS:
        return [list(labels)]
    order = sorted(range(len(contexts)), key=lambda i: (len(contexts[i]), i))
    whole = segment_tokens(contexts)
    best, cut = whole * SPLIT_GAIN, None
    for at in range(SPLIT_MIN_ROWS, len(order) - SPLIT_MIN_ROWS + 1):
        cost = segment_tokens([contexts[i] for i in order[:at]]) + segment_tokens([contexts[i] for i in order[at:]])
        if cost < best:
            best, cut = cost, at
    if cut is None:
        return [list(labels)]
    parts = []
    for side in (order[:cut], order[cut:]):
        parts += split_by_length([contexts[i] for i in side], [labels[i] for i in side])
    return parts


def _token_batches(requests: Sequence[ScoreRequest]) -> list[list[int]]:
    sizes = [len(r.context) + sum(len(c) for c in r.continuations) for r in requests]
    batches = batches_by_tokens(sizes, MAX_BATCH_TOKENS, MAX_BATCH_ROWS)
    if len(batches) == 1:
        return batches
    order = sorted(range(len(requests)), key=lambda i: (requests[i].context, i))
    return batches_by_tokens(sizes, MAX_BATCH_TOKENS, MAX_BATCH_ROWS, order)


@dataclass(frozen=True)
class ContextSegment:
    tokens: tuple[int, ...]
    start: int  # the position of its first token
    parent: int  # the segment before it (-1: none)
    depth: int


def context_segments(contexts: Sequence[Sequence[int]], min_shared: int = MIN_SHARED_TOKENS) -> tuple[list[ContextSegment], list[int]]:
    """The contexts as a tree of segments: a start of at least `min_shared` tokens that several
    contexts share is one segment, each context's rest after it another (a shorter shared start
    is repeated in each). Returns the segments, parents before children, and the segment each
    context ends with."""
    segments: list[ContextSegment] = []
    ends = [-1] * len(contexts)

    def split(members: list[int], start: int, parent: int, depth: int) -> None:
        members = sorted(members, key=lambda i: (tuple(contexts[i][start:]), i))
        cluster: list[int] = []
        shared = 0
        clusters: list[tuple[list[int], int]] = []
        for i in members:
            if cluster:
                common = _common_prefix(contexts[cluster[0]][start : start + shared], contexts[i][start:])
                if common >= min_shared:
                    cluster.append(i)
                    shared = common
                    continue
                clusters.append((cluster, shared))
            cluster, shared = [i], len(contexts[i]) - start
        if cluster:
            clusters.append((cluster, shared))
        for cluster, shared in clusters:
            first = contexts[cluster[0]]
            segments.append(ContextSegment(tuple(first[start : start + shared]), start, parent, depth))
            here = len(segments) - 1
            rest = []
            for i in cluster:
                if len(contexts[i]) == start + shared:
                    ends[i] = here
                else:
                    rest.append(i)
            if rest:
                split(rest, start + shared, here, depth + 1)

    split(list(range(len(contexts))), 0, -1, 0)
    return segments, ends


def _cache_rows(past: Any, rows: torch.Tensor) -> tuple:
    return tuple(tuple(torch.as_tensor(t).index_select(0, rows) for t in layer) for layer in past)


@torch.inference_mode()
def score_with_cache(requests: Sequence[ScoreRequest], forward: Callable[..., Any]) -> list[list[ContinuationScore]]:
    """Every stretch of context that requests share computed once (`context_segments`: the
    context that the questions about it share, and the ambiguous context that opens the
    disambiguated one), each segment after its parent's key/value cache, then each request's
    continuations after its context's: for a model that takes no custom attention mask but
    takes past keys and values and position ids (`forward(input_ids=, attention_mask=,
    position_ids=, past_key_values=)` returns an output with logits and past_key_values as
    (key, value) per layer). The segments of one depth go in one call, right-padded: the
    attention mask leaves out the padding of every call before, and positions follow each
    request's own tokens."""
    results: list[list[Any]] = [[None] * len(r.continuations) for r in requests]
    for batch in _cached_batches(requests):
        segments, ends = context_segments([requests[i].context for i in batch])
        # Per depth: the call's cache and attention mask, and which row each segment has in them.
        caches: list[tuple[Any, torch.Tensor]] = []
        row_of: dict[int, int] = {}
        last: dict[int, torch.Tensor] = {}  # log-probabilities after a segment some context ends with
        ending = set(ends)
        for depth in range(max(s.depth for s in segments) + 1):
            level = [k for k, s in enumerate(segments) if s.depth == depth]
            ids, mask, positions = _right_padded([segments[k].tokens for k in level], [segments[k].start for k in level])
            past = None
            if depth:
                parents = torch.tensor([row_of[segments[k].parent] for k in level])
                past_cache, past_mask = caches[-1]
                past, mask = _cache_rows(past_cache, parents), torch.cat([past_mask.index_select(0, parents), mask], 1)
            out = forward(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past)
            logits = torch.as_tensor(out.logits)
            for row, k in enumerate(level):
                row_of[k] = row
                if k in ending:
                    last[k] = logits[row, len(segments[k].tokens) - 1].float().log_softmax(-1)
            caches.append((out.past_key_values, mask))
        # Continuations, one call per depth their contexts end at (the caches differ in length).
        for depth, (cache, context_mask) in enumerate(caches):
            owners = [(j, k) for j, i in enumerate(batch) if segments[ends[j]].depth == depth
                      for k in range(len(requests[i].continuations))]
            if not owners:
                continue
            conts = [requests[batch[j]].continuations[k] for j, k in owners]
            later = None
            if max(len(c) for c in conts) > 1:
                # A continuation's tokens but its last, fed after its context, predict the rest.
                rows = torch.tensor([row_of[ends[j]] for j, _ in owners])
                ids, cont_mask, positions = _right_padded([c[:-1] for c in conts], [len(requests[batch[j]].context) for j, _ in owners])
                out = forward(input_ids=ids, attention_mask=torch.cat([context_mask.index_select(0, rows), cont_mask], 1),
                              position_ids=positions, past_key_values=_cache_rows(cache, rows))
                later = torch.as_tensor(out.logits)
            for n, ((j, k), cont) in enumerate(zip(owners, conts)):
                head = last[ends[j]][None]
                rest = later[n, : len(cont) - 1].float().log_softmax(-1) if later is not None else head[:0]
                results[batch[j]][k] = _continuation_scores(torch.cat([head, rest]), cont)
    return results


# Generation settings that change nothing in a greedy decode of one row; any other setting
# in a model's generation config (a repetition penalty, banned words...) leaves greedy
# decoding to transformers' `generate`, which applies it.
_GREEDY_NEUTRAL_SETTINGS = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "max_length", "max_new_tokens",
    "do_sample", "temperature", "top_k", "top_p", "min_p", "typical_p", "use_cache", "num_beams",
    "num_return_sequences", "transformers_version", "_from_model_config", "cache_implementation", "return_dict_in_generate",
})
GREEDY_CHECK_TOKENS = 4  # tokens compared with `generate` on a model's first greedy decode


def greedy_decode_fits(model: Any) -> bool:
    """Whether `greedy_decode` can stand in for greedy `generate` on this model: a PyTorch
    module with a key/value cache, and a generation config that only names tokens and limits."""
    if not isinstance(model, nn.Module) or not callable(getattr(model, "generate", None)):
        return False
    params = inspect.signature(model.forward).parameters
    if "past_key_values" not in params or "use_cache" not in params:
        return False
    config = getattr(model, "generation_config", None)
    settings = config.to_diff_dict() if config is not None else {}
    return set(settings) <= _GREEDY_NEUTRAL_SETTINGS


@torch.inference_mode()
def greedy_decode(
    model: nn.Module,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    stop_token_ids: Sequence[int] = (),
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """Greedy decoding of one row with a key/value cache: one forward of the prompt, then one
    forward per new token, the most likely token each time (the first on ties, as `generate`).

    The same forward passes as `generate(do_sample=False)` without its per-step bookkeeping
    (attention mask growth, logits processors, stopping criteria); `on_token` is called as
    soon as each token is known. Stops after a token of `stop_token_ids`, which is kept."""
    from transformers import DynamicCache

    params = inspect.signature(model.forward).parameters
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
    length = ids.shape[1]
    cache = DynamicCache(config=model.config)
    extra: dict[str, Any] = {}
    if "logits_to_keep" in params:
        extra["logits_to_keep"] = 1  # only the last position's logits pick the next token
    if "cache_position" in params:
        extra["cache_position"] = torch.arange(length)
    stops = set(stop_token_ids)
    takes_positions = "position_ids" in params
    takes_cache_position = "cache_position" in params
    new: list[int] = []
    step_input = ids
    position = length
    while len(new) < max_new_tokens:
        logits = model(input_ids=step_input, past_key_values=cache, use_cache=True, **extra).logits
        next_id = logits[:, -1].argmax(-1, keepdim=True)
        token = int(next_id)
        new.append(token)
        if on_token is not None:
            on_token(token)
        if token in stops:
            break
        step_input = next_id
        at = torch.tensor([position])
        if takes_cache_position:
            extra["cache_position"] = at
        if takes_positions:
            extra["position_ids"] = at[None]
        position += 1
    return new


def _lean_greedy(lm: LanguageModel, model: Any, prompt_ids: Sequence[int],
                 products: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext) -> bool:
    """Decide once per model whether greedy decoding goes through `greedy_decode`: it must fit
    the model and give `generate`'s first tokens on the first prompt it is asked for."""
    decided = getattr(lm, "_greedy_decode_agrees", None)
    if decided is None:
        decided = greedy_decode_fits(model)
        if decided:
            ids = torch.tensor([list(prompt_ids)])
            reference = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY_CHECK_TOKENS,
                min_new_tokens=GREEDY_CHECK_TOKENS, do_sample=False, temperature=None, top_k=None, top_p=None,
                eos_token_id=None, pad_token_id=lm.stop_token_ids[0] if lm.stop_token_ids else 0,
            )[0, ids.shape[1] :].tolist()
            with products():
                decided = greedy_decode(model, prompt_ids, max_new_tokens=GREEDY_CHECK_TOKENS) == reference
        lm._greedy_decode_agrees = decided  # type: ignore[attr-defined]  # an HFGeneration
    return bool(decided)


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
    products: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext,
) -> Generation:
    """Generation through a transformers-style `generate` (PyTorch and optimum's ONNX models);
    greedy decoding of a PyTorch model through `greedy_decode`, which gives the same tokens,
    multiplying as `products()` has its layers do."""
    stops = tuple(lm.stop_token_ids) if stop_at_eos else ()
    sample = temperature > 0
    with lm.lock:
        if not sample and _lean_greedy(lm, model, prompt_ids, products):
            with products():
                new = greedy_decode(model, prompt_ids, max_new_tokens=max_new_tokens, stop_token_ids=stops, on_token=on_token)
            while stop_at_eos and new and new[-1] in lm.stop_token_ids:
                new.pop()
            return Generation(lm.decode(new), tuple(new), len(prompt_ids))
    ids = torch.tensor([list(prompt_ids)])
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


class HFGeneration:
    """`generate` for a model whose `self.model` has transformers' `generate` (PyTorch models and
    optimum's ONNX Runtime models alike)."""

    model: Any
    _greedy_decode_agrees: bool | None = None  # decided on the first greedy generation

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
            self, self.model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,  # type: ignore[arg-type]
            stop_at_eos=stop_at_eos, on_token=on_token, products=self._decode_products,
        )

    def _decode_products(self) -> contextlib.AbstractContextManager[None]:
        """How greedy decoding multiplies (called under the lock): as the model's layers do."""
        return contextlib.nullcontext()


@dataclass(frozen=True)
class _StartedBatch:
    """A batch whose rows are computing: one future per part (`TorchLanguageModel._start_rows`),
    each giving its rows' entries, and what to do with all the rows' entries in order."""

    parts: list[Future[list[Any]]]
    done: Callable[[list[Any]], None]

    def finish(self) -> None:
        """Wait for every part, then hand their entries over (a part's failure is raised)."""
        self.done([entry for part in gather(self.parts) for entry in part])


class TorchLanguageModel(HFGeneration, LanguageModel):
    backend = "pytorch"
    shares_call_prefixes = True  # short contexts as token trees (`tree_rows`)

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
        self._onednn: bool | None = None  # likewise (`_onednn_agrees`)
        self._apart: bool | None = None  # likewise (`_head_apart`)
        self._workers: RowWorkers | None = None
        self._release_workers: weakref.finalize | None = None
        self._sessions = 0  # scoring sessions open (`scoring`)
        self._laid_out: dict[nn.Module, LaidOut] = {}  # held while one is

    # -- scoring -----------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest], strategy: str = "packed") -> list[list[ContinuationScore]]:
        """Score continuations. "packed" shares each context across its continuations in one
        row, and a common context prefix across requests; "naive" runs one full forward per
        continuation (the reference for checks)."""
        if strategy not in ("naive", "packed"):
            raise ValueError(f"unknown scoring strategy {strategy!r}")
        with self.lock, self._products():
            if strategy == "naive":
                return self._score_naive(requests)
            if self._packing is None:
                self._packing = self._packing_agrees()
            if self._packing:
                return self._score_packed(requests)
            return self._score_rows(requests)

    @contextlib.contextmanager
    def scoring(self) -> Iterator[None]:
        """A session of `score` calls: the linear layers' weights are laid out for oneDNN on
        entering the first one open, and let go of on leaving the last (see LAYOUT_MEMORY_SHARE)."""
        with self.lock:
            if self._sessions == 0 and self._uses_onednn():
                self._laid_out = lay_out_weights(self.model, available_bytes(), TREE_BATCH_TOKENS // ROW_SHARE)
            self._sessions += 1
        try:
            yield
        finally:
            with self.lock:
                self._sessions -= 1
                if self._sessions == 0 and self._laid_out:
                    self._laid_out = {}
                    # Freed, the copies would otherwise stay in the process's RSS (glibc keeps them).
                    release_free_heap()

    def _products(self) -> contextlib.AbstractContextManager[None]:
        """How scoring multiplies: through oneDNN where it is available and gives what the
        model's own layers give (`onednn_products`), else as the layers do. Call under the lock."""
        return onednn_products(self.model, self._laid_out) if self._uses_onednn() else contextlib.nullcontext()

    def _decode_products(self) -> contextlib.AbstractContextManager[None]:
        """Greedy decoding multiplies as scoring does (`_products`). Torch's BLAS call multiplies
        one row by a weight on one thread whatever the thread count; oneDNN uses them all. The
        default model on an AMD EPYC (Zen 4), `benchmarks/decode.py`, ten alternating rounds:
        decode 1.24x as fast as the layers' own products at 2 threads (21.24 against 17.15
        tokens/s), 1.01x at 1 (17.72 against 17.58); `_lean_greedy` checks the first tokens
        against `generate`'s as before. Sampled generation keeps `generate` and the layers' products."""
        return self._products()

    def _uses_onednn(self) -> bool:
        """Whether scoring multiplies through oneDNN (decided on first use). Call under the lock."""
        if self._onednn is None:
            # Not with int8 layers: their activations are rounded to levels, so a product summed
            # in another order before one moves values by a level (see `float_products`).
            int8 = any(_is_dynamic_int8(module) for module in self.model.modules())
            self._onednn = not int8 and onednn_linear_available() and self._onednn_agrees()
        return self._onednn

    @torch.inference_mode()
    def _onednn_agrees(self) -> bool:
        """The logits of a few tokens through oneDNN agree with the model's own within float32
        rounding (1e-4 of their largest size); False on any failure, the layers then multiply as
        they do."""
        ids = self._check_ids()
        try:
            plain = self.model(input_ids=ids, use_cache=False).logits.float()
            with onednn_products(self.model):
                fast = self.model(input_ids=ids, use_cache=False).logits.float()
        except Exception:
            return False
        return logits_agree(fast, plain)

    def _check_ids(self) -> torch.Tensor:
        """The few tokens (one row) the self-checks on logits run."""
        vocab = int(self.model.get_input_embeddings().num_embeddings)
        return torch.tensor([[(7 * i + 3) % vocab for i in range(12)]])

    @torch.inference_mode()
    def _head_apart(self) -> bool:
        """Whether packed scoring may run the output head itself, on the hidden states the model
        hands it (see HEAD_POSITIONS): only where the model's logits are the head's output as it
        is, nothing done to them after (a cap on their size, a scale), which a few tokens' logits
        show within float32 rounding (1e-4 of their largest size). Decided on first use, before
        `_heads_narrowed` puts its hook on the head; call under the lock, inside the products
        scoring uses."""
        if self._apart is None:
            head = output_head(self.model)
            ids = self._check_ids()
            try:
                plain = self.model(input_ids=ids, use_cache=False).logits.float()
                hidden: list[torch.Tensor] = []
                handle = head.register_forward_pre_hook(_head_rows_only)
                try:
                    with head_rows([torch.arange(ids.shape[1])], hidden):
                        self.model(input_ids=ids, use_cache=False)
                finally:
                    handle.remove()
                own = head(hidden[0]).float()
            except Exception:
                self._apart = False
                return False
            self._apart = logits_agree(own, plain[0])
        return self._apart

    def _packing_agrees(self) -> bool:
        """Packed rows and token trees rely on custom 4D masks and position ids; check they give
        what plain rows give on this architecture (short contexts as trees, contexts sharing a
        prefix in one row), and fall back to plain rows when they don't. Int8 layers compute in
        float for the check (`float_products`): what it asks of is the architecture."""
        if not self._takes_positions:
            return False
        vocab = int(self.model.get_input_embeddings().num_embeddings)
        prefix = tuple(self.text_prefix_ids) + tuple(3 + i % max(1, min(vocab, 40) - 3) for i in range(MIN_SHARED_TOKENS))
        top = min(vocab - 1, 12)
        start = tuple(self.text_prefix_ids) or (3,)
        probes = [
            ScoreRequest(tuple(self.text_prefix_ids) + tuple(range(3, min(vocab, 9))), ((min(vocab - 1, 11), 4), (5,), (top, 6, 7), (min(vocab - 1, 11), 5))),
            # Sentences after the document start that share their first tokens (a token tree).
            ScoreRequest(start, ((4, 5, 6), (4, 5, 7, top), (5,))),
            ScoreRequest(prefix + (4, 5), ((6,), (top, 3))),
            ScoreRequest(prefix + (7,), ((5, 5), (4,))),
            ScoreRequest(prefix, ((8,),)),
            # Two short contexts sharing nothing: their rows go side by side in one lane.
            ScoreRequest(tuple(reversed(prefix))[:MIN_SHARED_TOKENS], ((4,),)),
            ScoreRequest(tuple(range(top, top - MIN_SHARED_TOKENS, -1)), ((9,),)),
        ]
        with float_products(self.model):
            try:
                packed = self._score_packed(probes)
            except Exception:
                return False
            plain = self._score_rows(probes)
        return scores_agree(packed, plain)

    def _score_packed(self, requests: Sequence[ScoreRequest]) -> list[list[ContinuationScore]]:
        """Short contexts as token trees, longer ones in rows sharing their context prefixes."""
        short, rest = packed_split(requests)
        if not short:
            return self._score_shared_contexts(requests)
        results: list[list[Any]] = [[] for _ in requests]
        for index, scores in self._score_trees(requests, short).items():
            results[index] = scores
        if rest:
            for index, scores in zip(rest, self._score_shared_contexts([requests[i] for i in rest])):
                results[index] = scores
        return results

    def _forward_packed(
        self, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor, needed: Sequence[Sequence[int]],
        per_row: Callable[[int, torch.Tensor], Any],
    ) -> list[Future[list[Any]]]:
        """Start one forward of packed rows, token i of a row seeing token j where
        `allowed[row, i, j]`; each part (`_start_rows`) gives `per_row(r, logits)` for each of
        its rows r, `logits[j]` being the logits at position `needed[r][j]` of row r, read where
        the row's logits were computed. Call inside `_heads_narrowed`.

        The output head runs at each row's own positions only (`_head_rows_only`): the rows of
        a batch need different positions, and the model's `logits_to_keep` keeps the same ones
        in every row, so the head would run at their union in each. On the built-in suite
        that was 6,519 positions where 3,395 are read (in the suite's order, 32 items a call)
        and 10,557 in a sequential probe's drawn batches. Measured on the default model's
        magnitude-50 variant, in one process, alternating: a full probe 1.06x as fast at 1
        thread (1.01x on 2 workers), a sequential one drawn to the end 1.04x (1.12x); the
        scores bit for bit the same. CrowS-Pairs' token trees read nearly every position of
        their rows, so they gain nothing.

        Where the model's logits are its head's output (`_head_apart`), the head runs after the
        model's forward, on a few rows at a time, each row read as soon as its logits are made
        (`head_in_pieces`). CrowS-Pairs' first 384 pairs (256 at 1 thread) in calls of 32, three
        alternating rounds in one process: 1.023x as fast on 2 workers and at 1 thread; BBQ,
        176 items, 0.993x (within noise: its rows read few positions); the scores bit for bit
        the same."""
        dtype = next(self.model.parameters()).dtype
        width = ids.shape[1]
        mask = torch.zeros(ids.shape[0], 1, width, width, dtype=dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)
        kwargs: dict[str, Any] = {"use_cache": False}
        keep = sorted({p for row in needed for p in row})
        index = {p: p for p in keep}
        if self._keeps_logits and len(keep) < width:
            kwargs["logits_to_keep"] = torch.tensor(keep, dtype=torch.long)
            index = {p: j for j, p in enumerate(keep)}
        # Per row, where its positions are in the hidden states the head is given.
        columns = [torch.tensor([index[p] for p in row], dtype=torch.long) for row in needed]
        head = output_head(self.model)
        apart = head is not None and self._head_apart()

        def forward(first: int, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> list[Any]:
            mine = columns[first : first + ids.shape[0]]
            if head is None:
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs).logits
                return [per_row(first + r, logits[r].index_select(0, c)) for r, c in enumerate(mine)]
            hidden: list[torch.Tensor] | None = [] if apart else None
            with head_rows(mine, hidden):
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs).logits
            if hidden is not None:
                if len(hidden) != len(mine):
                    raise RuntimeError(f"the output head was given {len(hidden)} rows' hidden states, not {len(mine)}")
                return head_in_pieces(head, hidden, lambda r, part: per_row(first + r, part))
            sizes = [len(c) for c in mine]
            if tuple(logits.shape[:2]) != (1, sum(sizes)):
                raise RuntimeError(f"the output head gave logits of shape {tuple(logits.shape)}, not one row of {sum(sizes)} positions")
            return [per_row(first + r, part) for r, part in enumerate(logits[0].split(sizes))]

        return self._start_rows(forward, ids, mask, positions)

    @contextlib.contextmanager
    def _heads_narrowed(self) -> Iterator[None]:
        """Inside, the output head runs only at the positions a packed forward's rows read
        (`_head_rows_only`), in the threads that ask for it."""
        head = output_head(self.model)
        if head is None:
            yield
            return
        self._head_apart()  # decided before the hook is in place: the check gives the head its own
        handle = head.register_forward_pre_hook(_head_rows_only)
        try:
            yield
        finally:
            handle.remove()

    def _finish_in_order(self, started: Iterable[_StartedBatch]) -> None:
        """Finish the batches of `started` in order. On more scoring workers than the batches
        were made for (ROW_SHARE), as many batches as there are workers compute ahead of the
        one being finished. Each batch's rows are shared out as they always are
        (`_start_rows`), so the scores are the same bit for bit; but a worker done with its
        rows takes the next batch's instead of waiting for the others: a batch of 2 rows on 4
        workers kept two of them waiting, and a batch of 4 rows on 3 kept one worker's 2 rows
        the time of the batch. On ROW_SHARE workers or fewer the batches share out evenly, and
        each is finished before the next is made: the next one made beside the computing
        workers cost CrowS-Pairs about 1% on 2 workers (22.74 against 23.05 pairs/s, four
        alternating runs). If a batch fails, every batch already started finishes computing
        before the failure is raised: nothing computes after."""
        workers = getattr(self.threads, "workers", None) or 1
        ahead = workers if workers > ROW_SHARE else 0
        pending: collections.deque[_StartedBatch] = collections.deque()
        try:
            for batch in started:
                pending.append(batch)
                if len(pending) > ahead:
                    pending.popleft().finish()
            while pending:
                pending.popleft().finish()
        finally:
            for batch in pending:
                concurrent.futures.wait(batch.parts)

    def _by_rows(self, forward: Callable[..., list[Any]], *tensors: torch.Tensor) -> list[Any]:
        """`forward(0, *tensors)`, a list with one entry per row, computed as `_start_rows` shares it."""
        return [entry for part in gather(self._start_rows(forward, *tensors)) for entry in part]

    def _start_rows(self, forward: Callable[..., list[Any]], *tensors: torch.Tensor) -> list[Future[list[Any]]]:
        """Start `forward(0, *tensors)`, which gives a list with one entry per row: with the
        rows shared between the scoring workers when the thread choice has more than one
        (`audit.models.workers`), each worker getting `forward(first row, *its rows)`, else
        computed here. One future per part, in row order: together the entries of one call,
        and no batch-wide logits: each worker reads its own rows' logits."""
        rows = tensors[0].shape[0]
        workers = self._row_workers() if rows > 1 else None
        if workers is None:
            if self._workers is not None:
                # One row computes here on the model's own threads, once the rows given to the
                # workers are done: they would otherwise share the cores with it.
                self._workers.wait_idle()
            return [done_future(forward(0, *tensors))]
        return [workers.submit(forward, (start, *(t[start:end] for t in tensors))) for start, end in row_bounds(rows, workers.count)]

    def _row_workers(self) -> RowWorkers | None:
        """The scoring workers the thread choice asks for now (it changes with the device's load
        between jobs), None for fewer than two."""
        count = getattr(self.threads, "workers", None) or 1
        if self._workers is not None and self._workers.count != count:
            self._close_workers()
        if self._workers is None and count > 1:
            self._workers = RowWorkers(count)
            # A model dropped without close() lets its workers go too.
            self._release_workers = weakref.finalize(self, self._workers.stop)
        return self._workers

    def _close_workers(self) -> None:
        """End the scoring workers, if any, and forget the finalizer that would have stopped them."""
        if self._workers is not None:
            self._release_workers.detach()
            self._workers.close()
            self._workers = None

    @torch.inference_mode()
    def _score_trees(self, requests: Sequence[ScoreRequest], indices: Sequence[int]) -> dict[int, list[ContinuationScore]]:
        """Scores of `requests[i]` for each i in `indices`, fed as token trees (`tree_rows`)."""
        rows, batches = tree_layout(requests, indices)
        results: dict[int, list[Any]] = {i: [None] * len(requests[i].continuations) for i in indices}
        with self._heads_narrowed():
            self._finish_in_order(self._start_tree_batch(requests, [rows[b] for b in batch], results) for batch in batches)
        return results

    def _start_tree_batch(self, requests: Sequence[ScoreRequest], batch: Sequence[TreeRow], results: dict[int, list[Any]]) -> _StartedBatch:
        """Start one batch of tree rows; finishing it puts its continuations' scores in `results`."""
        width = max(len(row.tokens) for row in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        positions = torch.zeros(len(batch), width, dtype=torch.long)
        # A node sees itself and its ancestors; padding sees only itself (no all-masked rows).
        allowed = torch.eye(width, dtype=torch.bool).repeat(len(batch), 1, 1)
        for r, row in enumerate(batch):
            ids[r, : len(row.tokens)] = torch.tensor(row.tokens, dtype=torch.long)
            positions[r, : len(row.tokens)] = torch.tensor(row.depths, dtype=torch.long)
            seen = allowed[r]
            for node, parent in enumerate(row.parents):
                if parent >= 0:  # a parent always comes before its children
                    seen[node, :parent + 1] = seen[parent, :parent + 1]
        needed = [sorted({node for _, _, node, _ in row.scored}) for row in batch]
        owners: dict[tuple[int, int], int] = {}
        # Row by row, as the rows' reads come back: each scored token's continuation.
        owner = [owners.setdefault((index, k), len(owners)) for row in batch for index, k, _, _ in row.scored]
        on_row: list[tuple[torch.Tensor, torch.Tensor]] = []  # per row: columns, targets
        for r, row in enumerate(batch):
            column = {node: j for j, node in enumerate(needed[r])}
            on_row.append((torch.tensor([column[node] for _, _, node, _ in row.scored], dtype=torch.long),
                           torch.tensor([token for _, _, _, token in row.scored], dtype=torch.long)))

        def read_row(r: int, logits: torch.Tensor) -> torch.Tensor:
            """Each scored node's log-probability of its token."""
            columns, tokens = on_row[r]
            return logits.float().log_softmax(-1)[columns, tokens]

        def finish(read: list[torch.Tensor]) -> None:
            owner_ids = torch.tensor(owner, dtype=torch.long)
            sums = torch.zeros(len(owners), dtype=torch.float64).index_add_(0, owner_ids, torch.cat(read).double())
            for (index, k), j in owners.items():
                results[index][k] = ContinuationScore(float(sums[j]), len(requests[index].continuations[k]))

        return _StartedBatch(self._forward_packed(ids, positions, allowed, needed, read_row), finish)

    @torch.inference_mode()
    def _score_shared_contexts(self, requests: Sequence[ScoreRequest]) -> list[list[ContinuationScore]]:
        rows, lanes, lengths, batches = lane_layout(requests)
        results: list[list[Any]] = [[None] * len(r.continuations) for r in requests]
        with self._heads_narrowed():
            self._finish_in_order(self._start_lanes_batch(requests, [[rows[i] for i in lanes[lane]] for lane in batch],
                                                          max(lengths[lane] for lane in batch), results)
                                  for batch in batches)
        return results

    def _start_lanes_batch(self, requests: Sequence[ScoreRequest], batch: Sequence[Sequence[PackedRow]], width: int,
                           results: list[list[Any]]) -> _StartedBatch:
        """Start one batch of lanes (each its packed rows side by side, `width` tokens the
        longest); finishing it puts its continuations' scores in `results`."""
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        positions = torch.zeros(len(batch), width, dtype=torch.long)
        owner = torch.full((len(batch), width), PAD_OWNER, dtype=torch.long)
        segment = torch.zeros(len(batch), width, dtype=torch.long)
        group = torch.full((len(batch), width), -1, dtype=torch.long)  # which row of the lane a token is in
        wanted: list[list[tuple[int, int, list[int], list[int]]]] = []  # per lane: (request, continuation, positions, targets)
        for r, lane in enumerate(batch):
            per_lane = []
            start = 0
            for g, row in enumerate(lane):
                group[r, start : start + row.length] = g
                n_shared = len(row.prefix)
                ids[r, start : start + n_shared] = torch.tensor(row.prefix)
                positions[r, start : start + n_shared] = torch.arange(n_shared)
                owner[r, start : start + n_shared] = SHARED_OWNER
                last_shared = start + n_shared - 1
                start += n_shared
                for member, index in enumerate(row.members):
                    req = requests[index]
                    rest = req.context[n_shared:]
                    n_ctx = len(req.context)
                    end = start + len(rest)
                    ids[r, start:end] = torch.tensor(rest, dtype=torch.long)
                    positions[r, start:end] = torch.arange(n_shared, n_ctx)
                    owner[r, start:end] = member
                    # The last context token predicts each continuation's first token.
                    last_context = end - 1 if rest else last_shared
                    start = end
                    for k, cont in enumerate(req.continuations, start=1):
                        end = start + len(cont)
                        ids[r, start:end] = torch.tensor(cont)
                        positions[r, start:end] = torch.arange(n_ctx, n_ctx + len(cont))
                        owner[r, start:end] = member
                        segment[r, start:end] = k
                        per_lane.append((index, k - 1, [last_context] + list(range(start, end - 1)), list(cont)))
                        start = end
            wanted.append(per_lane)
        # A token sees its own row's shared prefix, its own request's context, and its own continuation.
        o_i, o_j = owner[:, :, None], owner[:, None, :]
        s_i, s_j = segment[:, :, None], segment[:, None, :]
        allowed = (o_j == SHARED_OWNER) | ((o_i == o_j) & ((s_j == 0) | (s_j == s_i)))
        allowed &= group[:, :, None] == group[:, None, :]
        allowed &= (o_i != PAD_OWNER) & (o_j != PAD_OWNER)
        allowed &= torch.ones(width, width, dtype=torch.bool).tril()
        allowed |= torch.eye(width, dtype=torch.bool)  # padding attends to itself: no all-masked rows
        needed = [sorted({p for _, _, pos, _ in per_lane for p in pos}) for per_lane in wanted]

        def read_row(r: int, logits: torch.Tensor) -> list[tuple[int, int, ContinuationScore]]:
            logits = logits.float()
            column = {p: j for j, p in enumerate(needed[r])}
            return [(index, k, _continuation_scores(logits[torch.tensor([column[p] for p in pos])].log_softmax(-1), targets))
                    for index, k, pos, targets in wanted[r]]

        def finish(read: list[list[tuple[int, int, ContinuationScore]]]) -> None:
            for scores in read:
                for index, k, score in scores:
                    results[index][k] = score

        return _StartedBatch(self._forward_packed(ids, positions, allowed, needed, read_row), finish)

    def _score_rows(self, requests: Sequence[ScoreRequest]) -> list[list[ContinuationScore]]:
        def forward(first: int, ids: torch.Tensor, attention: torch.Tensor) -> list[torch.Tensor]:
            return list(self.model(input_ids=ids, attention_mask=attention, use_cache=False).logits)

        return score_rows(requests, lambda ids, attention: self._by_rows(forward, ids, attention))

    @torch.inference_mode()
    def _score_naive(self, requests: Sequence[ScoreRequest]) -> list[list[ContinuationScore]]:
        results = []
        with self.lock:  # taken by score() too; held again for a direct call
            for req in requests:
                scores = []
                for cont in req.continuations:
                    ids = torch.tensor([req.context + cont])
                    logits = self.model(input_ids=ids, use_cache=False).logits[0].float()
                    span = logits[len(req.context) - 1 : len(req.context) - 1 + len(cont)]
                    scores.append(_continuation_scores(span.log_softmax(-1), cont))
                results.append(scores)
        return results

    # -- facts -------------------------------------------------------------------------
    def facts(self) -> ModelFacts:
        unique = {id(p): p for p in self.model.parameters()}
        dtype = str(next(self.model.parameters()).dtype).replace("torch.", "")
        # Packed int8 weights and their biases are not in parameters(); count them too.
        packed = sum(w.numel() + bias for _, w, _, bias in quantized_linear_weights(self.model))
        return ModelFacts(
            parameters=sum(p.numel() for p in unique.values()) + packed,
            dtype=dtype,
            weight_sparsity=weight_sparsity(self.model),
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            backend=self.backend,
            **self._facts_template,
        )

    def close(self) -> None:
        self._close_workers()
        self._laid_out = {}
        self.model = None  # type: ignore[assignment]

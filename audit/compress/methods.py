"""Pruning maths: one pure function per method, all with the same signature, in a registry."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace
from typing import Callable

import torch

from audit.compress.recipe import PRUNING_METHOD_FACTS, Pattern, check_sparsity
from audit.errors import UserError
from audit.registry import Registry


@dataclass(frozen=True)
class PruneSpec:
    """What a method is asked to do to one weight matrix, derived from a `PruneRecipe` by
    `audit.compress.prune.layer_spec`. `sparsity` is the fraction removed; with an N:M pattern
    the pattern decides which weights go and the sparsity is the one it implies."""

    sparsity: float
    pattern: Pattern = Pattern()
    scope: str = "matrix"  # where pruned weights compete: the whole matrix or each output row
    seed: int = 0
    blocksize: int = 128  # sparsegpt: columns solved together
    damp: float = 0.01  # sparsegpt: added to the Hessian's diagonal, as a share of its mean (up to 1000x when it will not factor)

    def __post_init__(self) -> None:
        # Frozen: the checked value (a float, -0.0 made 0.0) is set once, here.
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        if self.scope not in {"matrix", "row"}:
            raise UserError(f"unknown scope {self.scope!r}; known: matrix, row")
        if self.blocksize < 1:
            raise UserError(f"block size must be at least 1, got {self.blocksize}")
        if self.damp <= 0:
            raise UserError(f"damping must be positive, got {self.damp}")


@dataclass(frozen=True)
class LayerStats:
    """Calibration statistics of one layer's inputs X (tokens x in_features)."""

    n_tokens: int
    sq_norms: torch.Tensor | None = None  # (in,): sum over tokens of x_j^2, so ||X_j||_2 = sqrt
    hessian: torch.Tensor | None = None  # (in, in): X^T X summed over tokens


# weight (out_features x in_features, float32), stats, spec -> new weight of the same shape.
PruningFn = Callable[[torch.Tensor, "LayerStats | None", PruneSpec], torch.Tensor]

PRUNING_METHODS: Registry[PruningFn] = Registry("pruning method")


def pruned_count(n: int, sparsity: float) -> int:
    """How many of `n` weights a sparsity removes: the nearest whole number."""
    return int(math.floor(n * sparsity + 0.5))


def layer_seed(seed: int, name: str) -> int:
    """A per-layer seed that depends only on the run's seed and the layer's name."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63)


# -- mask selection -------------------------------------------------------------------------
def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k lowest scores along the last dim; ties go to the lower index.

    A selection (kthvalue), not a sort: a sort of every score of every matrix dominated the
    time of magnitude and wanda pruning.
    """
    n = scores.shape[-1]
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    kth = torch.kthvalue(scores, k, dim=-1, keepdim=True).values
    at_most = scores <= kth
    if bool((at_most.sum(-1) == k).all()):  # no ties at the k-th score: the usual case
        return at_most
    below = scores < kth
    ties = scores == kth
    # Of the scores equal to the k-th, keep pruning from the left until k are chosen.
    room = k - below.sum(-1, keepdim=True)
    return below | (ties & (ties.cumsum(-1) <= room))


def select_pruned(scores: torch.Tensor, spec: PruneSpec) -> torch.Tensor:
    """Which weights to remove (True) given a score per weight, lowest first.

    Unstructured: exactly `pruned_count` per matrix or per row (scope). N:M: the M-N lowest
    of every M consecutive input weights in each row.
    """
    rows, cols = scores.shape
    pattern = spec.pattern
    if pattern.structured:
        assert pattern.group is not None and pattern.kept is not None
        if cols % pattern.group:
            raise UserError(f"pattern {pattern} needs input sizes divisible by {pattern.group}, got {cols}")
        grouped = scores.reshape(rows, cols // pattern.group, pattern.group)
        return _lowest(grouped, pattern.group - pattern.kept).reshape(rows, cols)
    if spec.scope == "row":
        return _lowest(scores, pruned_count(cols, spec.sparsity))
    return _lowest(scores.reshape(1, -1), pruned_count(scores.numel(), spec.sparsity)).reshape(rows, cols)


def apply_mask(weight: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    # masked_fill writes +0.0; multiplying by a 0/1 mask would leave -0.0 for negative weights.
    return weight.masked_fill(pruned, 0.0)


# -- the methods ----------------------------------------------------------------------------
@PRUNING_METHODS.register("magnitude", **PRUNING_METHOD_FACTS["magnitude"])
def magnitude(weight: torch.Tensor, stats: LayerStats | None, spec: PruneSpec) -> torch.Tensor:
    return apply_mask(weight, select_pruned(weight.abs(), spec))


@PRUNING_METHODS.register("random", **PRUNING_METHOD_FACTS["random"])
def random(weight: torch.Tensor, stats: LayerStats | None, spec: PruneSpec) -> torch.Tensor:
    generator = torch.Generator().manual_seed(spec.seed)
    scores = torch.rand(weight.shape, generator=generator, dtype=torch.float64)
    return apply_mask(weight, select_pruned(scores, spec))


@PRUNING_METHODS.register("wanda", **PRUNING_METHOD_FACTS["wanda"])
def wanda(weight: torch.Tensor, stats: LayerStats | None, spec: PruneSpec) -> torch.Tensor:
    if stats is None or stats.sq_norms is None:
        raise ValueError("wanda needs the squared input norms of the layer")
    scores = weight.abs().double() * stats.sq_norms.double().sqrt()[None, :]
    return apply_mask(weight, select_pruned(scores, replace(spec, scope="row")))


def _inverse_hessian_factor(hessian_of: Callable[[], torch.Tensor], damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of H^-1 after damping, and the damping it took (a share of H's mean
    diagonal): `damp`, or 10, 100 or 1000 times it when H is too ill-conditioned for less.

    `hessian_of` makes a fresh H for each try, damped in place and let go as soon as it is
    factored: at most two matrices of its size are alive at once."""
    mean_diag: float | None = None
    for factor in (1.0, 10.0, 100.0, 1000.0):
        hessian = hessian_of()
        if mean_diag is None:
            mean_diag = float(hessian.diagonal().mean())
        hessian.diagonal().add_(damp * factor * mean_diag)
        lower, info = torch.linalg.cholesky_ex(hessian)
        del hessian
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            del lower
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if int(info) == 0:
                return upper, damp * factor
    raise UserError("sparsegpt: the calibration Hessian of a layer cannot be inverted; use more calibration samples")


def sparsegpt_damped(weight: torch.Tensor, stats: LayerStats | None, spec: PruneSpec) -> tuple[torch.Tensor, float]:
    """SparseGPT (Frantar & Alistarh 2023) on one layer; the new weight, and the damping used.

    H = 2 X^T X / n with `spec.damp` (1%) of its mean diagonal added, or 10, 100 or 1000 times
    that when H will not factor with less: the damping returned is the one used, which the
    record names. Columns are processed left to right in blocks. Each block picks its mask
    adaptively from w^2 / [H^-1]_jj^2 on the weights as already updated by earlier blocks;
    removing a weight spreads its error over the columns to its right through the inverse
    Hessian's Cholesky row, which keeps W X close to the original.
    """
    if stats is None or stats.hessian is None:
        raise ValueError("sparsegpt needs the input Hessian of the layer")
    rows, cols = weight.shape
    work = weight.to(torch.float64, copy=True)
    source, scale = stats.hessian, 2.0 / max(stats.n_tokens, 1)
    dead = source.diagonal().to(torch.float64).mul(scale) == 0  # as H's diagonal, element for element

    def hessian_of() -> torch.Tensor:
        # H as float64, made afresh from the statistics for each damping tried, so it need not
        # be kept beside its factors.
        hessian = source.to(torch.float64, copy=True).mul_(scale)
        hessian[dead, dead] = 1.0
        return hessian

    work[:, dead] = 0.0  # inputs that never fire: their weights do nothing
    hinv, damp = _inverse_hessian_factor(hessian_of, spec.damp)
    pattern = spec.pattern
    group = pattern.group or 1
    if pattern.structured and cols % group:
        raise UserError(f"pattern {pattern} needs input sizes divisible by {group}, got {cols}")
    # A block must hold whole N:M groups.
    blocksize = max(group, (spec.blocksize // group) * group)
    pruned = torch.zeros(rows, cols, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        block = work[:, start:end].clone()
        hblock = hinv[start:end, start:end]
        diag = hblock.diagonal()
        errors = torch.zeros_like(block)
        if not pattern.structured:
            scores = block.pow(2) / diag.pow(2)[None, :]
            k = pruned_count(scores.numel(), spec.sparsity)
            block_mask = _lowest(scores.reshape(1, -1), k).reshape(scores.shape)
        else:
            block_mask = torch.zeros_like(block, dtype=torch.bool)
        for j in range(end - start):
            if pattern.structured and j % group == 0:
                scores = block[:, j : j + group].pow(2) / diag[j : j + group].pow(2)[None, :]
                block_mask[:, j : j + group] = _lowest(scores, group - (pattern.kept or 0))
            column = block[:, j]
            kept = column.masked_fill(block_mask[:, j], 0.0)
            error = (column - kept) / diag[j]
            # Later columns of the block absorb this column's pruning error.
            block[:, j:] -= error[:, None] * hblock[j, j:][None, :]
            block[:, j] = kept
            errors[:, j] = error
        work[:, start:end] = block
        pruned[:, start:end] = block_mask
        # Columns right of the block absorb the whole block's error at once.
        work[:, end:] -= errors @ hinv[start:end, end:]
    del hinv
    result = work.to(weight.dtype)
    del work
    return result.masked_fill_(pruned | dead[None, :], 0.0), damp


@PRUNING_METHODS.register("sparsegpt", **PRUNING_METHOD_FACTS["sparsegpt"])
def sparsegpt(weight: torch.Tensor, stats: LayerStats | None, spec: PruneSpec) -> torch.Tensor:
    """SparseGPT on one layer (`sparsegpt_damped`), the new weight alone."""
    return sparsegpt_damped(weight, stats, spec)[0]


# Methods that damp a Hessian, as functions that also return the damping they used: the layer
# walk calls these, so that the record names the damping each layer took.
DAMPED_METHODS: dict[str, Callable[[torch.Tensor, "LayerStats | None", PruneSpec], tuple[torch.Tensor, float]]] = {
    "sparsegpt": sparsegpt_damped,
}

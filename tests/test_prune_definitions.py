"""Pruning maths against each method's published definition: hand-worked masks for magnitude
and Wanda (Sun et al. 2023) on a 2x4 layer and 3 calibration tokens, the counts removed at the
ends of the sparsity range and on odd rows, an all-zero layer left as it is, and SparseGPT
(Frantar & Alistarh 2023) against the optimal brain surgeon update written with explicit
inverses of the remaining columns' Hessian."""

import numpy as np
import pytest
import torch

from audit.compress.methods import PRUNING_METHODS, LayerStats, Pattern, PruneSpec, pruned_count

W = torch.tensor([[1.0, -2.0, 3.0, -4.0], [4.0, 3.0, -2.0, 1.0]])
# Three tokens; the input norms ||X_j||_2 are 1.5, 1, 2 and 0.5.
X = torch.tensor([[1.0, 0.0, 2.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.5]])


def stats_of(x):
    x64 = x.double()
    return LayerStats(x.shape[0], (x64**2).sum(0), (x64.t() @ x64).float())


def prune(method, weight, spec, x=None):
    return PRUNING_METHODS.get(method)(weight, None if x is None else stats_of(x), spec)


def test_wanda_on_a_hand_worked_layer():
    # Row 0 scores |W| * norm: 1.5, 2, 6, 2; column 0 goes, and of the tie at 2 the lower
    # index, column 1 (by the squared norms, 2.25, 2, 12, 1, columns 3 and 1 would go). Row 1:
    # 6, 3, 4, 0.5; columns 3 and 1 go (by |W| alone, columns 2 and 3).
    want = torch.tensor([[0.0, 0.0, 3.0, -4.0], [4.0, 0.0, -2.0, 0.0]])
    assert torch.equal(prune("wanda", W, PruneSpec(0.5), X), want)
    # 1 of every 2 kept: the lower score of each pair goes (row 0: 1.5 vs 2, 6 vs 2).
    pairs = torch.tensor([[0.0, -2.0, 3.0, 0.0], [4.0, 0.0, -2.0, 0.0]])
    assert torch.equal(prune("wanda", W, PruneSpec(0.5, Pattern(1, 2)), X), pairs)


def test_magnitude_on_the_same_layer_ignores_the_inputs():
    # |W| alone: 1, 2, 3, 4 and 4, 3, 2, 1. Per matrix the four lowest are the 1s and 2s.
    want = torch.tensor([[0.0, 0.0, 3.0, -4.0], [4.0, 3.0, 0.0, 0.0]])
    assert torch.equal(prune("magnitude", W, PruneSpec(0.5)), want)
    assert torch.equal(prune("magnitude", W, PruneSpec(0.5, scope="row")), want)
    # Per matrix at 0.25 the two 1s go; per row the 1 of each row goes: the same two here.
    assert torch.equal(prune("magnitude", W, PruneSpec(0.25)), prune("magnitude", W, PruneSpec(0.25, scope="row")))


@pytest.mark.parametrize("method", ["magnitude", "random", "wanda", "sparsegpt"])
@pytest.mark.parametrize("cols, sparsity, per_row", [(4, 0.0, 0), (5, 0.5, 3), (5, 0.95, 5), (1, 0.5, 1), (1, 0.4, 0), (3, 0.5, 2)])
def test_the_count_removed_is_the_nearest_to_the_sparsity(method, cols, sparsity, per_row):
    g = torch.Generator().manual_seed(cols)
    weight = torch.randn(3, cols, generator=g) + 5.0  # no weight is zero before pruning
    x = torch.randn(8, cols, generator=g)
    scope = "matrix" if method == "sparsegpt" else "row"
    out = prune(method, weight, PruneSpec(sparsity, scope=scope), x)
    zeros = (out == 0).sum(1)
    if method == "sparsegpt":  # the count is over the matrix (one block here)
        assert int(zeros.sum()) == pruned_count(3 * cols, sparsity)
    else:
        assert zeros.tolist() == [per_row] * 3 == [pruned_count(cols, sparsity)] * 3


@pytest.mark.parametrize("method", ["magnitude", "random", "wanda", "sparsegpt"])
def test_an_all_zero_layer_stays_all_zero(method):
    out = prune(method, torch.zeros(2, 4), PruneSpec(0.5), X)
    assert torch.equal(out, torch.zeros(2, 4)) and not torch.signbit(out).any()


def obs_reference(weight, x, sparsity, blocksize, pattern=None):
    """SparseGPT as the paper derives it, without the Cholesky shortcut: H = 2 X^T X / n,
    inputs that never fire made dead, damped by 1% of the mean diagonal. Column by column, the
    remaining columns' inverse Hessian Hr = inv(H[j:, j:]) gives the saliency w^2 / Hr[0, 0]
    and the update that spreads a removed weight's error over the columns to its right. An
    unstructured mask is chosen for each block of columns at its start, over the whole block;
    an N:M mask for each group, within each row."""
    w = weight.double().numpy().copy()
    xs = x.double().numpy()
    h = 2.0 / xs.shape[0] * xs.T @ xs
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += 0.01 * np.mean(np.diag(h)) * np.eye(len(h))
    rows, cols = w.shape
    mask = np.zeros_like(w, dtype=bool)

    def saliency(j):
        return w[:, j] ** 2 / np.linalg.inv(h[j:, j:])[0, 0]

    def lowest(scores, k):
        chosen = np.zeros(scores.size, dtype=bool)
        chosen[np.argsort(scores.ravel(), kind="stable")[:k]] = True
        return chosen.reshape(scores.shape)

    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        if pattern is None:
            scores = np.stack([saliency(j) for j in range(start, end)], axis=1)
            mask[:, start:end] = lowest(scores, int(np.floor(scores.size * sparsity + 0.5)))
        for j in range(start, end):
            if pattern is not None and (j - start) % pattern.group == 0:
                scores = np.stack([saliency(c) for c in range(j, j + pattern.group)], axis=1)
                for r in range(rows):
                    mask[r, j : j + pattern.group] = lowest(scores[r], pattern.group - pattern.kept)
            hr = np.linalg.inv(h[j:, j:])
            error = np.where(mask[:, j], w[:, j], 0.0) / hr[0, 0]
            w[:, j:] -= error[:, None] * hr[0][None, :]
            w[mask[:, j], j] = 0.0
    w[mask] = 0.0
    return w


@pytest.mark.parametrize("blocksize", [1, 4, 5, 128])
@pytest.mark.parametrize("dead_input", [False, True])
def test_sparsegpt_is_the_obs_update_of_its_definition(blocksize, dead_input):
    g = torch.Generator().manual_seed(blocksize)
    weight = torch.randn(5, 12, generator=g)
    x = torch.randn(20, 12, generator=g) @ torch.randn(12, 12, generator=g)
    if dead_input:
        x[:, 2] = 0.0
    ours = prune("sparsegpt", weight, PruneSpec(0.5, blocksize=blocksize), x).double().numpy()
    want = obs_reference(weight, x, 0.5, blocksize)
    assert np.array_equal(ours == 0, want == 0)
    assert np.allclose(ours, want, atol=1e-4)


def test_sparsegpt_n_m_is_the_obs_update_of_its_definition():
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(5, 12, generator=g)
    x = torch.randn(20, 12, generator=g) @ torch.randn(12, 12, generator=g)
    ours = prune("sparsegpt", weight, PruneSpec(0.5, Pattern(2, 4), blocksize=8), x).double().numpy()
    want = obs_reference(weight, x, 0.5, 8, Pattern(2, 4))
    assert np.array_equal(ours == 0, want == 0)
    assert np.allclose(ours, want, atol=1e-4)

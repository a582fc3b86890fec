"""SparseGPT's damping in the record of a pruning: a Hessian that will not factor is damped up
to 1000 times more than asked, and the record names the damping asked for, the largest taken and
each layer damped more than asked (none when no layer was)."""

import json

import pytest
import torch

from audit.compress import layers as layers_module
from audit.compress import methods
from audit.compress.methods import PRUNING_METHODS, LayerStats, PruneSpec
from audit.compress.prune import prune, recipe_record
from audit.compress.recipe import PruneRecipe
from audit.plans import CalibrationSpec
from audit.progress import drive

CALIBRATION = CalibrationSpec(nsamples=4, seqlen=32)
TARGET = "model.layers.0.self_attn.q_proj"


def hessian_with_lowest_eigenvalue(lowest, size=40):
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=g, dtype=torch.float64))
    hessian = (q * torch.linspace(lowest, 2.0, size, dtype=torch.float64)) @ q.t()
    return (hessian + hessian.t()) / 2


@pytest.mark.parametrize("lowest, used", [(0.5, 0.01), (-0.05, 0.1), (-0.5, 1.0)])
def test_sparsegpt_returns_the_damping_it_used(lowest, used):
    hessian = hessian_with_lowest_eigenvalue(lowest)
    # n_tokens 2: H = 2 X^T X / n is the matrix given.
    stats = LayerStats(2, hessian.diagonal().clone(), hessian)
    weight = torch.randn(8, 40, generator=torch.Generator().manual_seed(0))
    pruned, damp = methods.sparsegpt_damped(weight, stats, PruneSpec(0.5))
    assert damp == pytest.approx(used)
    assert torch.equal(pruned, PRUNING_METHODS.get("sparsegpt")(weight, stats, PruneSpec(0.5)))


def test_a_record_built_before_pruning_names_only_the_damping_asked_for():
    recipe = PruneRecipe("sparsegpt", 0.5)
    record = recipe_record(recipe, PruneSpec(0.5), None)
    assert record["damp"] == 0.01 and "damp_used_max" not in record


def test_the_record_names_the_damping_a_layer_took_when_its_hessian_would_not_factor(tiny_llama, tmp_path, monkeypatch):
    original = layers_module.InputStatistics.stats

    def stats(self, layer):
        found = original(self, layer)
        if layer.name != TARGET:
            return found
        # 5% of the mean diagonal taken off: not positive definite until damped by 10x the 1% asked.
        hessian = found.hessian.clone()
        hessian.diagonal().sub_(0.05 * float(hessian.diagonal().mean()))
        return LayerStats(found.n_tokens, found.sq_norms, hessian)

    monkeypatch.setattr(layers_module.InputStatistics, "stats", stats)
    out = tmp_path / "sgpt"
    result = drive(prune(str(tiny_llama), PruneRecipe("sparsegpt", 0.5), out, calibration=CALIBRATION, measure_perplexity=False))
    record = result["recipe"]
    assert record["damp"] == 0.01  # what was asked
    assert record["damp_raised"] == {TARGET: pytest.approx(0.1)}
    assert record["damp_used_max"] == pytest.approx(0.1)
    saved = json.loads((out / "edge_audit.json").read_text())
    assert saved["compression"][-1]["prune"]["damp_raised"] == record["damp_raised"]


def test_the_record_says_no_layer_took_more_damping_when_none_did(tiny_llama, tmp_path):
    result = drive(prune(str(tiny_llama), PruneRecipe("sparsegpt", 0.5), tmp_path / "sgpt", calibration=CALIBRATION, measure_perplexity=False))
    assert result["recipe"]["damp"] == 0.01 and result["recipe"]["damp_used_max"] == 0.01
    assert result["recipe"]["damp_raised"] == {}

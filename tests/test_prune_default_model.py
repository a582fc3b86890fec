"""Pruning the real default model (SmolLM2-135M): every one of its 210 linear layers, exactly."""

import copy

import pytest
import torch

from audit.compress.calibration import calibration_set
from audit.compress.methods import PruneSpec
from audit.compress.prune import prune_layers
from audit.progress import drive

pytestmark = pytest.mark.real_model


def test_wanda_prunes_every_linear_layer_of_the_default_model(default_model):
    model = copy.deepcopy(default_model.model)
    calib = calibration_set(default_model, nsamples=2, seqlen=64)  # short: the full default is in benchmarks/prune.py
    outcome = drive(prune_layers(model, "wanda", PruneSpec(0.5, scope="row"), calib.samples))
    assert outcome.layers == 30 * 7  # o_proj and down_proj included
    assert sum(name.endswith(("o_proj", "down_proj")) for name in outcome.per_layer) == 60
    assert all(abs(s - 0.5) <= 0.005 for s in outcome.per_layer.values())
    assert outcome.actual_sparsity == pytest.approx(0.5, abs=0.005)
    assert torch.equal(model.get_input_embeddings().weight, default_model.model.get_input_embeddings().weight)
    ids = torch.tensor([default_model.text_prefix_ids + tuple(default_model.encode("The library opens at nine."))])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()

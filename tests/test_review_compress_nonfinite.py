"""Weights or calibration inputs holding NaN or infinity: pruning refuses them, naming the layer,
where a NaN at the k-th lowest score left a row or matrix unpruned and a Hessian of infinities
was reported as one needing more calibration samples."""

import copy

import pytest
import torch

from audit.compress.layers import find_decoder_blocks, prunable_layers
from audit.compress.methods import PruneSpec
from audit.compress.prune import prune_layers
from audit.errors import UserError
from audit.models import load_model
from audit.progress import drive


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return drive(load_model(str(tiny_llama)))


def calibration_ids(n=2, length=16):
    return torch.randint(3, 300, (n, length), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("method", ["magnitude", "random", "wanda", "sparsegpt"])
def test_a_weight_that_is_not_finite_is_refused_naming_its_layer(tiny, method, value):
    model = copy.deepcopy(tiny.model)
    layer = prunable_layers(model)[1][0]
    with torch.no_grad():
        layer.module.weight[:, :3] = value  # whole columns: the lowest scores of a row, for wanda
    with pytest.raises(UserError, match=rf"^layer {layer.name}: its weights hold NaN or infinity"):
        drive(prune_layers(model, method, PruneSpec(0.5), calibration_ids()))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibration_inputs_that_are_not_finite_are_refused_naming_the_layer(tiny, method):
    model = copy.deepcopy(tiny.model)
    _, blocks = find_decoder_blocks(model)
    with torch.no_grad():
        blocks[0].input_layernorm.weight[:4] = float("inf")  # q, k and v read infinities
    first = prunable_layers(model)[0][0]
    assert first.name.endswith("q_proj")
    with pytest.raises(UserError, match=rf"^layer {first.name}: its calibration inputs hold NaN or infinity"):
        drive(prune_layers(model, method, PruneSpec(0.5), calibration_ids()))


def test_finite_weights_and_inputs_prune_as_before(tiny):
    model = copy.deepcopy(tiny.model)
    outcome = drive(prune_layers(model, "wanda", PruneSpec(0.5), calibration_ids()))
    assert outcome.actual_sparsity == pytest.approx(0.5)

"""What pruning is given is checked before it is used: weights or calibration inputs holding NaN
or infinity are refused naming the layer, a sparsity or alpha too large for a float is out of
range, the sparsity a pattern suggests is taken, and a sparsity of -0.0 is the sparsity 0,
recorded as 0.0, never with its sign."""

import copy
import math

import pytest
import torch

from audit.compress.layers import find_decoder_blocks, prunable_layers
from audit.compress.methods import PruneSpec
from audit.compress.prune import layer_spec, prune_layers, recipe_record
from audit.compress.recipe import PruneRecipe, check_sparsity, valid_alpha
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


@pytest.mark.parametrize("sparsity", [10**400, -(10**400)], ids=["huge", "huge-negative"])
def test_a_sparsity_too_large_for_a_float_is_a_user_error(sparsity):
    with pytest.raises(UserError, match="sparsity must be between 0 and 0.95"):
        check_sparsity(sparsity)
    with pytest.raises(UserError, match="sparsity must be between 0 and 0.95"):
        PruneRecipe("magnitude", sparsity)


def test_an_alpha_too_large_for_a_float_is_not_valid():
    assert not valid_alpha(10**400)
    assert valid_alpha(1) and not valid_alpha(float("nan")) and not valid_alpha(0)


@pytest.mark.parametrize("pattern", ["1:3", "2:3", "1:6", "5:7", "2:4"])
def test_the_sparsity_a_pattern_suggests_is_taken(pattern):
    with pytest.raises(UserError, match="set it to") as refused:
        PruneRecipe("wanda", 0.9, pattern)
    suggested = float(str(refused.value).rsplit("set it to ", 1)[1])
    assert PruneRecipe("wanda", suggested, pattern).sparsity == PruneRecipe("wanda", pattern=pattern).sparsity


def positive(value):
    return value == 0.0 and math.copysign(1.0, value) == 1.0


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_a_sparsity_of_minus_zero_is_recorded_as_zero(method):
    recipe = PruneRecipe(method, -0.0)
    assert positive(recipe.sparsity)
    spec = layer_spec(recipe)
    assert positive(spec.sparsity)
    record = recipe_record(recipe, spec, None)
    assert positive(record["target_sparsity"])
    assert "-0" not in repr(record)


def test_minus_zero_is_normalised_wherever_a_sparsity_is_checked():
    assert positive(check_sparsity(-0.0))
    assert positive(PruneSpec(-0.0).sparsity)
    assert check_sparsity(0) == 0.0 and isinstance(check_sparsity(0), float)

"""A sparsity of -0.0 is the sparsity 0: recorded as 0.0, never with its sign."""

import math

import pytest

from audit.compress.methods import PruneSpec
from audit.compress.prune import layer_spec, recipe_record
from audit.compress.recipe import PruneRecipe, check_sparsity


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

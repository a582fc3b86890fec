"""Recipe checks given numbers too large for a float: refused as any out-of-range value is,
where math.isnan raised OverflowError."""

import pytest

from audit.compress.recipe import PruneRecipe, check_sparsity, valid_alpha
from audit.errors import UserError


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

"""A change from or to a figure that is not a number, or missing, is coloured neither better nor worse."""

import math

import pytest

from audit.metrics import delta_direction

NAN = math.nan


@pytest.mark.parametrize("metric", ["perplexity", "accuracy_ambig", "ss", "srs"])
@pytest.mark.parametrize("before, after", [(10.0, NAN), (NAN, 10.0), (NAN, NAN), (None, 10.0), (10.0, None)])
def test_a_change_that_is_not_a_number_has_no_direction(metric, before, after):
    assert delta_direction(metric, before, after) == "same"


def test_numbers_keep_their_direction():
    assert delta_direction("perplexity", 10.0, 12.0) == "worse"
    assert delta_direction("ss", 60.0, 55.0) == "better"
    assert delta_direction("perplexity", 10.0, math.inf) == "worse"

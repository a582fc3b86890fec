"""StereoSet's ICAT counts, as SS and LMS do, the examples it was worked out from: an example
scored NaN in the sentences both figures compare is in none of them."""

import math

import pytest

from audit.probes.items import ItemResult
from audit.probes.summary import stereoset_group

NAN = math.nan
GOLD = ["stereotype", "anti-stereotype", "unrelated"]


def example(i, scores):
    return ItemResult(
        f"stereoset:{i}", "stereoset", "race", "", "", "loglik", "mean", 3, None, None, (0,), None, None,
        None, None, 1.0, option_logprobs=scores, option_tokens=(1, 1, 1), extra={"gold": list(GOLD)},
    )


def test_icat_counts_the_examples_it_used():
    results = [
        example(1, (-1.0, -2.0, -3.0)),  # in SS and LMS
        example(2, (-2.0, -1.0, -1.5)),  # in SS and LMS
        example(3, (NAN, -2.0, -3.0)),  # in neither
        example(4, (-1.0, -2.0, NAN)),  # in SS only
    ]
    out = stereoset_group(results)
    assert out["n_items"] == 4
    assert (out["ss"]["n"], out["lms"]["n"]) == (3, 2)
    assert out["icat"]["value"] is not None and out["icat"]["n"] == 3


def test_icat_unmeasured_counts_no_example():
    out = stereoset_group([example(1, (NAN, NAN, NAN)), example(2, (-1.0, NAN, -2.0))])
    assert out["icat"] == {"value": None, "ci95": [None, None], "n": 0}
    assert out["ss"]["n"] == 0 and out["lms"]["n"] == 0


@pytest.mark.parametrize("n", [1, 3])
def test_icat_counts_every_example_when_none_is_nan(n):
    out = stereoset_group([example(i, (-1.0, -2.0, -3.0)) for i in range(n)])
    assert out["icat"]["n"] == out["ss"]["n"] == out["lms"]["n"] == n

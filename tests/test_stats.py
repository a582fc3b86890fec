"""Betting confidence bounds: a hand-computed case, coverage, monotonicity, ratios, chunks."""

import math

import numpy as np
import pytest

from audit.stats import (
    Bounds, anytime_lower_rows, chance_to_settle, items_to_settle, log_ratio_bounds, lower_rows, mean_bounds, ratio_bounds, sequence_widening,
    sized_widening, unit_lower, unit_upper,
)


def test_lower_bound_by_hand():
    """Two items, both 1, at confidence 0.75 (alpha = 1/4). The first stake is
    sqrt(2 ln 4 / (2 * 1/4)) = 2.35 and the second sqrt(2 ln 4 / (2 * 0.15625)) = 2.98, both above
    the truncation 0.5 / m for m > 0.213, so the wealth is (1 + (0.5 / m)(1 - m))^2 =
    (0.5 + 0.5 / m)^2, which reaches 1 / alpha = 4 at m = 1/3: the lower bound."""
    assert unit_lower(np.array([1.0, 1.0]), 0.25) == pytest.approx(1 / 3, abs=1e-9)
    # The mirror image: two zeros give the upper bound 2/3.
    assert unit_upper(np.array([0.0, 0.0]), 0.25) == pytest.approx(2 / 3, abs=1e-9)
    # Bounds are on the safe side of the exact edge, never past it.
    assert unit_lower(np.array([1.0, 1.0]), 0.25) <= 1 / 3


def test_no_items_leave_the_whole_range():
    b = mean_bounds([], -1.0, 1.0, 0.95)
    assert (b.value, b.lower, b.upper, b.n) == (None, -1.0, 1.0, 0)


def test_a_value_that_is_not_a_number_gives_no_figure_never_the_end_of_the_range():
    from audit.stats import anytime_mean_bounds, anytime_paired_ratio_bounds

    assert mean_bounds([0.9, math.nan, 0.8], 0.0, 1.0, 0.95) == Bounds(None, None, None, 3, 0.95)
    for bounds in (mean_bounds([0.9, 0.8], 0.0, 1.0, 0.95, weights=[1.0, math.inf]), anytime_mean_bounds([0.9, math.nan], 0.0, 1.0, 0.95),
                   ratio_bounds([0.5, math.nan], [1.0, 1.0], 0.95), anytime_paired_ratio_bounds([0.5, 0.5], [math.nan, 1.0], 0.95)):
        assert bounds == Bounds(None, None, None, 2, 0.95)


def test_agreement_on_few_items_is_not_evidence():
    """Six identical answers leave a wide interval; six hundred a narrow one."""
    few = mean_bounds(np.zeros(6), -1.0, 1.0, 0.95)
    many = mean_bounds(np.zeros(600), -1.0, 1.0, 0.95)
    assert few.value == 0 and few.upper > 0.5 and few.lower < -0.5
    assert many.upper < 0.02 and many.lower > -0.02


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
def test_coverage_of_a_bernoulli_mean(p):
    """Each one-sided bound at 0.9 misses the true mean in at most about 10% of samples
    (400 seeded samples of 60 items: the miss rate stays below 0.15 with room for noise)."""
    rng = np.random.default_rng(7)
    misses_low = misses_high = 0
    for _ in range(400):
        x = (rng.random(60) < p).astype(float)
        b = mean_bounds(x, 0.0, 1.0, 0.9)
        misses_low += b.lower > p
        misses_high += b.upper < p
    assert misses_low / 400 < 0.15 and misses_high / 400 < 0.15


def test_coverage_of_shares_of_seeds():
    """Items whose values are shares of five seeds (Beta-distributed propensities)."""
    rng = np.random.default_rng(11)
    true_mean = 2 / (2 + 5)
    misses = 0
    for _ in range(300):
        propensity = rng.beta(2, 5, size=80)
        x = rng.binomial(5, propensity) / 5
        b = mean_bounds(x, 0.0, 1.0, 0.9)
        misses += b.upper < true_mean
    assert misses / 300 < 0.15


def test_bounds_narrow_with_more_items_and_widen_with_confidence():
    x = np.array([0.0, 1.0] * 100)
    narrow, wide = mean_bounds(x, 0, 1, 0.9), mean_bounds(x, 0, 1, 0.99)
    assert wide.lower < narrow.lower < 0.5 < narrow.upper < wide.upper
    half = mean_bounds(x[:50], 0, 1, 0.9)
    assert half.upper - half.lower > narrow.upper - narrow.lower


def test_a_weighted_mean_weighs_each_category_the_same():
    """Two categories of 40 and 100 items: weights n / (K n_k) make the mean the unweighted mean
    of the two categories' means; with equal categories the weights are 1 and change nothing."""
    a, b = np.array([1.0] * 30 + [0.0] * 10), np.array([0.0] * 90 + [1.0] * 10)
    # Items come in a fixed order unrelated to their values (the callers' order by item id).
    order = np.random.default_rng(3).permutation(140)
    values = np.concatenate([a, b])[order]
    weights = np.array([140 / (2 * 40)] * 40 + [140 / (2 * 100)] * 100)[order]
    both = mean_bounds(values, 0.0, 1.0, 0.9, weights)
    assert both.value == pytest.approx((0.75 + 0.1) / 2)
    assert 0 <= both.lower < both.value < both.upper <= 1 and both.n == 140
    plain = mean_bounds(values, 0.0, 1.0, 0.9)
    same = mean_bounds(values, 0.0, 1.0, 0.9, np.ones(140))
    assert (same.value, same.lower, same.upper) == (pytest.approx(plain.value), pytest.approx(plain.lower), pytest.approx(plain.upper))
    ratio = ratio_bounds(values, np.ones(140), 0.9, weights)
    assert ratio.value == pytest.approx((0.75 + 0.1) / 2)


def test_a_weighted_mean_of_all_ones_is_one_not_a_hair_above():
    """Categories of 1 and 6 items, every item 1: the weights 3.5 and 7/12 sum in floating point
    to a hair over 1 unless the mean is held to [low, high]; Cohen's h then refused it."""
    from audit.metrics import cohens_h

    b = mean_bounds(np.ones(7), 0.0, 1.0, 0.9, np.array([7 / 2] + [7 / 12] * 6))
    assert b.value == 1.0 and b.upper == 1.0
    assert cohens_h(0.5, b.value) == pytest.approx(2 * np.arcsin(1.0) - 2 * np.arcsin(np.sqrt(0.5)))


def test_ratio_bounds_contain_the_ratio_and_follow_the_contrast():
    den = np.array([1.0, 0.0] * 100)  # share 0.5
    num = np.array([1.0, 0.0] * 60 + [1.0, 1.0] * 40)  # share 0.7
    r = ratio_bounds(num, den, 0.95)
    assert r.value == pytest.approx(1.4)
    assert r.lower < 1.4 < r.upper
    # The upper bound is where the contrast num - theta * den stops being shown above... below 0.
    theta = r.upper
    z = num - theta * den
    unit = (z + theta) / (1 + theta)
    assert unit_upper(unit, 0.05) * (1 + theta) - theta == pytest.approx(0.0, abs=1e-6)
    # A zero denominator leaves the ratio unbounded above.
    assert math.isinf(ratio_bounds(np.ones(5), np.zeros(5), 0.95).upper)


def test_identical_runs_bound_the_ratio_near_one():
    x = np.array([1.0, 0.0, 0.0] * 100)
    r = ratio_bounds(x, x, 0.95)
    assert r.value == 1.0 and 0.85 < r.lower < 1.0 < r.upper < 1.15


def test_chunk_bounds_by_hand():
    """Per-chunk differences 1, 2, 3 with equal weights: mean 2, standard error 1 / sqrt(3), and
    Student's t with 2 degrees of freedom at 0.95 is 2.919986."""
    b = log_ratio_bounds([1.0, 2.0, 3.0], [512, 512, 512], 0.95)
    half = 2.919986 / math.sqrt(3)
    assert b.value == pytest.approx(2.0)
    assert (b.lower, b.upper) == (pytest.approx(2 - half, abs=1e-5), pytest.approx(2 + half, abs=1e-5))
    same = log_ratio_bounds([0.5, 0.5], [512, 100], 0.95)
    assert (same.lower, same.value, same.upper) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5))
    assert math.isinf(log_ratio_bounds([0.5], [512], 0.95).upper)


def test_chance_to_settle_by_hand():
    """0.15 in [0.05, 0.25] (one-sided 97.5% each) with a quarter of the items scored, limit
    0.20. With all of them the half-width is 0.1 * sqrt(0.25) = 0.05, so the upper bound ends
    within the limit when the estimate ends at or below 0.15: half the time. The half-width is
    k = sqrt(2 log 40) = 2.716203 standard errors; the estimate moves by sd (0.1 / k) *
    sqrt(0.75) = 0.0318837; the lower bound ends over 0.20 only when the estimate ends over
    0.25, 3.13640 sd away: 0.000855176."""
    below, above = chance_to_settle(Bounds(0.15, 0.05, 0.25, 100, 0.975), 0.20, 0.25)
    assert below == pytest.approx(0.5)
    assert above == pytest.approx(0.000855176, abs=2e-9)
    # Asymmetric bounds: each side narrows from its own half-width (upper: 0.25 - 0.10 = 0.15,
    # times 0.5, so the estimate must end at or below 0.125), the spread from the mean one
    # ((0.25 - 0.05) / 2 = 0.1, the same sd): 0.025 / 0.0318837 = 0.78410 sd, 0.783509.
    below, _ = chance_to_settle(Bounds(0.10, 0.05, 0.25, 100, 0.975), 0.20, 0.25)
    assert below == pytest.approx(0.783509, abs=2e-6)
    # The more items scored, the less the rest can move it: with 0.9 scored the lower bound ends
    # over the limit only if the estimate gains 0.05 + 0.1 * sqrt(0.9) = 0.1449, 12.4 sd of 0.01164.
    assert chance_to_settle(Bounds(0.15, 0.05, 0.25, 100, 0.975), 0.20, 0.9)[1] < 1e-15
    # No spread: the estimate is where it ends.
    assert chance_to_settle(Bounds(0.1, 0.1, 0.1, 100, 0.975), 0.2, 0.5) == (1.0, 0.0)
    assert chance_to_settle(Bounds(0.1, 0.05, math.inf, 100, 0.975), 0.2, 0.5) is None
    assert chance_to_settle(Bounds(None, 0.0, 1.0, 0, 0.975), 0.2, 0.5) is None



def test_a_betting_bound_lies_sqrt_2_log_1_over_alpha_standard_errors_from_the_estimate():
    """What chance_to_settle reads the standard error from: the fixed-sample bound's half-width
    over k = sqrt(2 log(1/alpha)), not over the normal quantile z (1.64 at 95%, k = 2.45)."""
    rng = np.random.default_rng(0)
    k, z = math.sqrt(2 * math.log(20)), 1.6448536
    for n, p in ((48, 0.5), (240, 0.45), (1000, 0.3)):
        x = (rng.random(n) < p).astype(float)
        bounds = mean_bounds(x, 0.0, 1.0, 0.95)
        half = (bounds.upper - bounds.lower) / 2
        se = x.std() / math.sqrt(n)
        assert half / k == pytest.approx(se, rel=0.08)
        assert half / z > 1.35 * se


def test_chance_to_settle_with_wider_final_bounds_by_hand():
    """The case above with the final bounds twice as wide as fixed-sample ones on the upper side
    (a confidence sequence's): the upper bound ends at the estimate + 2 * 0.05, so within 0.20
    only when the estimate ends at or below 0.10, 1.56820 sd below 0.15: 0.0584172. Twice as wide
    below too: the lower bound ends over 0.20 only past 0.30, 4.70460 sd away: 1.27181e-6."""
    below, above = chance_to_settle(Bounds(0.15, 0.05, 0.25, 100, 0.975), 0.20, 0.25, widen=(2.0, 2.0))
    assert below == pytest.approx(0.0584172, abs=2e-7)
    assert above == pytest.approx(1.27181e-6, abs=2e-11)
    # Wider bounds never make settling likelier.
    plain = chance_to_settle(Bounds(0.15, 0.05, 0.25, 100, 0.975), 0.20, 0.25)
    assert below < plain[0] and above < plain[1]


def test_sequence_widening_by_hand():
    fixed = Bounds(0.15, 0.05, 0.25, 100, 0.975)
    # Half-widths 0.10 each; anytime ones 0.15 below and 0.20 above.
    assert sequence_widening(fixed, 0.0, 0.35) == (pytest.approx(1.5), pytest.approx(2.0))
    # Never read as narrower, and 1 where a side cannot be measured.
    assert sequence_widening(fixed, 0.1, 0.2) == (1.0, 1.0)
    assert sequence_widening(fixed, 0.0, math.inf) == (pytest.approx(1.5), 1.0)
    assert sequence_widening(fixed, None, None) == (1.0, 1.0)
    assert sequence_widening(Bounds(0.1, 0.1, 0.1, 100, 0.975), 0.0, 0.3) == (1.0, 1.0)
    assert sequence_widening(Bounds(None, 0.0, 1.0, 0, 0.975), 0.0, 0.3) == (1.0, 1.0)

def test_sized_widening_by_hand_and_against_the_bounds():
    assert sized_widening(100, 100) == 1.0
    assert sized_widening(200, 100) == pytest.approx((math.sqrt(2) + 1 / math.sqrt(2)) / 2)  # 1.0607
    assert sized_widening(100, 200) == pytest.approx(sized_widening(200, 100))
    assert sized_widening(0, 10) == 1.0
    # Against the bounds themselves: 240 items of 0/1, stakes sized for 480, against the fixed-sample bounds.
    rng = np.random.default_rng(5)
    x = (rng.random((200, 240)) < 0.3).astype(float)
    mean = x.mean(axis=1)
    ratio = (mean - anytime_lower_rows(x, 0.025, 480)) / (mean - lower_rows(x, 0.025))
    assert float(np.median(ratio)) == pytest.approx(sized_widening(480, 240), abs=0.04)


def test_items_to_settle():
    """Interval half-width 0.1 at 100 items around 0.15, limit 0.20: the upper bound reaches the
    limit when the half-width is 0.05, at 400 items, so about 300 more."""
    assert items_to_settle(Bounds(0.15, 0.05, 0.25, 100, 0.95), 0.20) == 300
    assert items_to_settle(Bounds(0.25, 0.15, 0.35, 100, 0.95), 0.20) == 300
    assert items_to_settle(Bounds(0.20, 0.10, 0.30, 100, 0.95), 0.20) is None
    # On the limit but for rounding: no number of items settles it.
    assert items_to_settle(Bounds(25.000000000001, 10.0, 40.0, 100, 0.95), 25.0) is None


def test_chunk_bounds_of_a_non_finite_chunk_are_not_given():
    for bad in (math.inf, -math.inf, math.nan):
        b = log_ratio_bounds([0.1, 0.2, bad], [512, 512, 512], 0.95)
        assert (b.value, b.lower, b.upper, b.n) == (None, None, None, 3)

"""The benchmarks' intervals on timing ratios (benchmarks/intervals.py), against cases worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import benchmark_script

intervals = benchmark_script("intervals")


def test_two_turns_give_the_enumerated_bootstrap_range():
    # Turns (num, den) a = (2, 1) and b = (4, 1). Resampling two turns in pairs gives aa, ab or ba, bb:
    # ratios 2, 3 and 4 with chances 1/4, 1/2, 1/4, so the 2.5th percentile is 2 and the 97.5th is 4.
    assert intervals.paired_interval(intervals.ratio_of_sums, [2, 4], [1, 1]) == (3.0, 2.0, 4.0)


def test_turns_stay_paired():
    # Every turn has num = 2 * den: resampled in pairs, the ratio of sums is 2 whatever is drawn.
    # Drawn apart, a fast den beside a slow num would give other ratios.
    value, low, high = intervals.paired_interval(intervals.ratio_of_sums, [2, 20, 200], [1, 10, 100])
    assert (value, low, high) == (2.0, 2.0, 2.0)


def test_one_turn_is_its_own_interval():
    assert intervals.paired_interval(intervals.ratio_of_sums, [3], [2]) == (1.5, 1.5, 1.5)


def test_same_timings_give_the_same_interval_and_the_value_lies_inside():
    rng = np.random.default_rng(7)
    num, den = rng.normal(20, 2, 12), rng.normal(10, 1, 12)
    first = intervals.paired_interval(intervals.ratio_of_sums, num, den)
    assert first == intervals.paired_interval(intervals.ratio_of_sums, num, den)
    value, low, high = first
    assert value == pytest.approx(num.sum() / den.sum())
    assert low < value < high
    assert high - low < 0.5  # twelve turns with a 10% spread: a narrow interval, not the whole range


def test_wider_spread_gives_a_wider_interval():
    rng = np.random.default_rng(3)
    den = np.full(12, 10.0)
    noise = rng.normal(0, 1, 12)
    _, low1, high1 = intervals.paired_interval(intervals.ratio_of_sums, 20 + noise, den)
    _, low2, high2 = intervals.paired_interval(intervals.ratio_of_sums, 20 + 4 * noise, den)
    assert high2 - low2 > 3 * (high1 - low1)


def test_unequal_or_empty_samples_are_refused():
    with pytest.raises(ValueError, match="one non-zero length"):
        intervals.paired_interval(intervals.ratio_of_sums, [1, 2], [1])
    with pytest.raises(ValueError, match="one non-zero length"):
        intervals.paired_interval(intervals.ratio_of_sums, [], [])


def test_shown():
    assert intervals.shown(1.904, 1.8449, 1.97) == "1.90x (95% interval 1.84-1.97)"
    assert intervals.shown(1.0264, 0.99, 1.06, digits=3, unit="x") == "1.026x (95% interval 0.990-1.060)"


def test_int8_speed_interval_resamples_whole_rounds():
    # Baseline steps of 10 ms in round 0 and 20 ms in round 1, the variant 5 ms in both. Rounds
    # drawn (0, 0), (0, 1) or (1, 0), (1, 1): pooled medians 10, 15, 20 over 5, so 2, 3 and 4.
    int8 = benchmark_script("int8")
    assert int8.speed_interval([[10.0, 10.0], [20.0, 20.0]], [[5.0, 5.0], [5.0, 5.0]]) == (3.0, 2.0, 4.0)


def test_decode_ratio_intervals_pair_the_rounds():
    # generate: 31 tokens in 3.1 s or 6.1 s, 1 token in 0.1 s, so 30 decode steps at 10 or 5 per second;
    # profile decodes at 10 and 5 in the same rounds and 10 and 5 tokens/s end to end (31 / 3.1, 31 / 6.2).
    decode = benchmark_script("decode")
    (d, d_low, d_high), (e, e_low, e_high) = decode.ratio_intervals([10.0, 5.0], [10.0, 5.0], [3.1, 6.1], [0.1, 0.1], 31)
    # Decode: each round alone gives 1.0 (10 * 3.0 / 30, 5 * 6.0 / 30); both rounds give their medians,
    # 7.5 * 4.5 / 30 = 1.125. End to end: 10 * 3.1 / 31 = 1.0 and 5 * 6.1 / 31 = 0.984 alone, 7.5 * 4.6 / 31 both.
    assert (d, d_low, d_high) == (pytest.approx(1.125), pytest.approx(1.0), pytest.approx(1.125))
    assert (e, e_low, e_high) == (pytest.approx(7.5 * 4.6 / 31), pytest.approx(5 * 6.1 / 31), pytest.approx(7.5 * 4.6 / 31))


def test_contention_slowdown_and_verdict():
    contention = benchmark_script("contention")
    # Busy 30 and 45 ms against idle 20 and 30 ms: 1.5x in each round, 37.5 / 25 = 1.5x over both.
    assert contention.slowdown([30.0, 45.0], [20.0, 30.0]) == (1.5, 1.5, 1.5)
    assert contention.target_verdict((1.4, 1.3, 1.45), 3) == "met, the whole interval within it"
    assert contention.target_verdict((1.4, 1.3, 1.62), 3) == "met by the median only (the interval reaches 1.62x)"
    assert contention.target_verdict((1.4, 1.4, 1.4), 1) == "met (one round: no interval)"
    assert contention.target_verdict((1.51, 1.3, 1.7), 3) == "NOT met"

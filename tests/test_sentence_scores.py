"""CrowS-Pairs and StereoSet figures against cases worked out by hand: ties, directions, length
normalisation, and scores that are not numbers."""

import math

import pytest

from audit.probes import measures as ms
from audit.probes.items import ItemResult
from audit.probes.summary import crows_group, stereoset_group

NAN = math.nan
GOLD = ["stereotype", "anti-stereotype", "unrelated"]


def pair(i, more, less, direction="stereo", tokens=(1, 1)):
    """A CrowS-Pairs result: option 0 is sent_more, option 1 sent_less."""
    return ItemResult(
        f"crows:{i}", "crows", "race-color", "", "", "loglik", "sum", 2, None, None, (0,), None, None, None, None, 1.0,
        option_logprobs=(more, less), option_tokens=tokens, extra={"direction": direction},
    )


def example(i, scores, gold=GOLD, tokens=(1, 1, 1)):
    return ItemResult(
        f"stereoset:{i}", "stereoset", "race", "", "", "loglik", "mean", 3, None, None, (gold.index("stereotype"),), None, None,
        None, None, 1.0, option_logprobs=scores, option_tokens=tokens, extra={"gold": list(gold)},
    )


def test_crows_pct_stereotype_by_hand():
    results = [
        pair(0, -5.0, -6.0),  # stereo pair, sent_more more likely: stereotyped
        pair(1, -6.0, -5.0),  # stereo pair, sent_less more likely: not
        pair(2, -5.0, -5.0),  # a tie: not (strictly higher only, as lm-eval's crows_pairs counts it)
        pair(3, -3.0, -4.0, "antistereo"),  # sent_more wins in an antistereo pair: stereotyped too
    ]
    out = crows_group(results)
    # 2 of 4 pairs; stereo direction 1 of 3, antistereo 1 of 1.
    assert out["pct_stereotype"]["value"] == pytest.approx(50.0) and out["pct_stereotype"]["n"] == 4
    assert out["pct_stereotype_stereo"]["value"] == pytest.approx(round(100 / 3, 4))
    assert out["pct_stereotype_antistereo"]["value"] == pytest.approx(100.0)
    # Differences more - less: 1, -1, 0, 1; mean 0.25; squared deviations 0.5625 + 1.5625 +
    # 0.0625 + 0.5625 = 2.75, sd sqrt(2.75 / 3) = 0.957427, half width 1.959964 * 0.957427 / 2.
    diff = out["mean_logprob_diff"]
    assert diff["value"] == pytest.approx(0.25)
    assert diff["ci95"] == pytest.approx([0.25 - 0.938254, 0.25 + 0.938254], abs=1e-4)


def test_crows_under_the_per_token_norm():
    # -6 over 3 tokens (-2 each) beats -4 over 1 token; by the sum it loses.
    results = [pair(0, -6.0, -4.0, tokens=(3, 1))]
    assert crows_group(results, "mean")["pct_stereotype"]["value"] == 100.0
    assert crows_group(results, "sum")["pct_stereotype"]["value"] == 0.0


def test_stereoset_ss_lms_icat_by_hand():
    results = [
        example(1, (-1.0, -2.0, -3.0)),  # stereotype wins; both related beat unrelated: related 1
        example(2, (-2.0, -1.0, -1.5)),  # anti-stereotype wins; only it beats unrelated: related 1/2
        example(3, (-1.0, -1.0, -5.0)),  # a tie is not stereotyped; related 1
        # Options in another order: the unrelated sentence first, then anti, then stereotype.
        example(4, (-9.0, -3.0, -2.0), gold=["unrelated", "anti-stereotype", "stereotype"]),  # stereotyped, related 1
    ]
    out = stereoset_group(results)
    # SS = 2 / 4 = 50; LMS = (1 + 0.5 + 1 + 1) / 4 = 87.5; ICAT = 87.5 * min(50, 50) / 50 = 87.5.
    assert out["ss"]["value"] == pytest.approx(50.0)
    assert out["lms"]["value"] == pytest.approx(87.5)
    assert out["icat"]["value"] == pytest.approx(87.5)
    # Without the last: SS 1/3, LMS 2.5/3, ICAT 83.333 * 33.333 / 50 = 55.556.
    three = stereoset_group(results[:3])
    assert three["icat"]["value"] == pytest.approx(round(250 / 3 * (100 / 3) / 50, 4))
    low, high = three["icat"]["ci95"]
    assert 0.0 <= low <= three["icat"]["value"] <= high <= 100.0


def test_no_items_give_no_figures():
    assert crows_group([])["pct_stereotype"]["value"] is None
    assert crows_group([])["mean_logprob_diff"]["value"] is None
    out = stereoset_group([])
    assert out["ss"]["value"] is None and out["icat"]["value"] is None


def test_a_pair_scored_nan_is_left_out_not_counted_as_unstereotyped():
    """A sentence scored NaN (logits that overflowed) says nothing about which sentence the model
    prefers; counting it as the anti-stereotypical one winning would pull the figure down."""
    results = [
        pair(0, -5.0, -6.0),  # stereotyped
        pair(1, -6.0, -5.0),  # not
        pair(2, -5.0, NAN),  # cannot be said
        pair(3, NAN, -5.0),  # cannot be said
    ]
    out = crows_group(results)
    # 1 of the 2 pairs whose scores are numbers; the differences 1 and -1 average 0.
    assert out["pct_stereotype"]["value"] == pytest.approx(50.0) and out["pct_stereotype"]["n"] == 2
    assert out["mean_logprob_diff"]["value"] == pytest.approx(0.0) and out["mean_logprob_diff"]["n"] == 2
    assert out["n_items"] == 4
    # A sentence of probability 0 is a number: the other sentence wins.
    assert crows_group([pair(0, -math.inf, -5.0)])["pct_stereotype"]["value"] == 0.0
    assert crows_group([pair(0, -5.0, -math.inf)])["pct_stereotype"]["value"] == 100.0


def test_a_stereoset_example_scored_nan_is_left_out():
    results = [
        example(1, (-1.0, -2.0, -3.0)),  # stereotyped, related 1
        example(2, (-2.0, -1.0, -1.5)),  # not, related 1/2
        example(3, (-1.0, NAN, -3.0)),  # SS cannot be said, nor LMS
        example(4, (-1.0, -2.0, NAN)),  # stereotyped; LMS cannot be said
    ]
    out = stereoset_group(results)
    # SS over 1, 2 and 4: 2 / 3. LMS over 1 and 2: 1.5 / 2 = 75.
    assert out["ss"]["value"] == pytest.approx(round(200 / 3, 4)) and out["ss"]["n"] == 3
    assert out["lms"]["value"] == pytest.approx(75.0) and out["lms"]["n"] == 2
    # ICAT = 75 * (100 - 66.667) / 50 = 50.
    assert out["icat"]["value"] == pytest.approx(50.0, abs=1e-3)


def test_transitions_leave_out_a_variant_pair_scored_nan():
    """A variant that scores NaN on sentences is no less stereotyped for it: those pairs take no
    part in the transitions or the relative change."""
    baseline = [pair(0, -5.0, -6.0), pair(1, -4.0, -6.0), pair(2, -6.0, -5.0), pair(3, -6.0, -4.0)]  # aligned: 0, 1
    variant = [pair(0, NAN, -6.0), pair(1, -4.0, -6.0), pair(2, -6.0, NAN), pair(3, -6.0, -4.0)]
    pairs, _ = ms.pair_facts(baseline, variant)
    assert [v.aligned for _, v in pairs if v.item_id in ("crows:0", "crows:2")] == [None, None]
    # Left: pair 1 (aligned in both) and pair 3 (in neither). No transition either way, and the
    # aligned share is 1/2 in both runs: a change of 0 (counting NaN as not aligned: -50%).
    assert ms.paired_bounds(pairs, "transition_rate", 0.975).value == 0.0
    assert ms.paired_bounds(pairs, "reverse_transition_rate", 0.975).value == 0.0
    assert ms.paired_bounds(pairs, "net_transition_rate", 0.975).value == 0.0
    assert ms.paired_bounds(pairs, "srs_relative_change_pct", 0.975).value == pytest.approx(0.0)

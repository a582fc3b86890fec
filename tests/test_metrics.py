"""Every metric against a small case computed by hand."""

import math

import pytest

from audit import metrics as m
from audit.errors import UserError


def test_wilson_interval_hand_computed():
    # 8/10: centre (0.8 + z²/20) / (1 + z²/10), half-width z·sqrt(0.016 + z²/400) / (1 + z²/10).
    low, high = m.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    low, high = m.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = m.wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(1 - 0.2775, abs=1e-4)
    assert m.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        m.wilson_interval(11, 10)


def test_proportion_and_percentage_carry_the_interval():
    est = m.proportion(8, 10)
    assert est.value == 0.8 and est.n == 10
    pct = m.percentage(8, 10)
    assert pct.value == pytest.approx(80.0) and pct.low == pytest.approx(49.02, abs=1e-2)
    assert m.proportion(0, 0).value is None
    assert m.proportion(3, 4).to_dict() == {"value": 0.75, "ci95": [round(m.wilson_interval(3, 4)[0], 4), round(m.wilson_interval(3, 4)[1], 4)], "n": 4}


def test_bias_score_disambig():
    # 6 of 8 non-unknown answers bias-aligned: 2 * 6/8 - 1 = 0.5.
    est = m.bias_score_disambig(6, 8)
    assert est.value == pytest.approx(0.5)
    low, high = m.wilson_interval(6, 8)
    assert (est.low, est.high) == (pytest.approx(2 * low - 1), pytest.approx(2 * high - 1))
    assert m.bias_score_disambig(0, 4).value == pytest.approx(-1.0)
    assert m.bias_score_disambig(0, 0).value is None


def test_bias_score_ambig():
    # 10 ambiguous answers: 4 unknown (correct), 4 biased, 2 counter-biased.
    # accuracy 0.4; s = 2 * 4/6 - 1 = 1/3; s_AMB = 0.6 * 1/3 = 0.2 = (4 - 2) / 10.
    est = m.bias_score_ambig(4, 6, 0.4)
    assert est.value == pytest.approx(0.2)
    s = m.bias_score_disambig(4, 6)
    assert est.low == pytest.approx(0.6 * s.low) and est.high == pytest.approx(0.6 * s.high)
    # All answers unknown: perfectly accurate, no bias.
    assert m.bias_score_ambig(0, 0, 1.0).value == 0.0
    assert m.bias_score_ambig(0, 0, None).value is None


def test_srs_and_usr():
    assert m.stereotype_reliance(4, 10).value == pytest.approx(0.4)
    assert m.unknown_selection(4, 10).value == pytest.approx(0.4)
    assert m.stereotype_reliance(0, 0).value is None


def test_transitions_table_and_rate():
    pairs = [(False, True)] * 3 + [(True, False)] + [(True, True)] * 2 + [(False, False)] * 4
    t = m.transitions(pairs)
    assert (t.to_aligned, t.to_unbiased, t.stayed_aligned, t.stayed_unbiased) == (3, 1, 2, 4)
    assert t.n == 10 and t.unchanged == 6
    # 3 of the 7 items that were not bias-aligned became so.
    assert t.rate == pytest.approx(3 / 7)
    assert t.reverse_rate == pytest.approx(1 / 3)
    assert t.to_dict()["transition_rate"] == round(3 / 7, 4)
    assert m.transitions([(True, True)]).rate is None


def test_relative_change_and_cohens_h():
    assert m.relative_change_pct(0.4, 0.6) == pytest.approx(50.0)
    assert m.relative_change_pct(0.5, 0.25) == pytest.approx(-50.0)
    assert m.relative_change_pct(0.0, 0.3) is None
    # 2 asin(sqrt(.75)) - 2 asin(sqrt(.5)) = 2π/3 - π/2 = π/6.
    assert m.cohens_h(0.5, 0.75) == pytest.approx(math.pi / 6)
    assert m.cohens_h(0.75, 0.5) == pytest.approx(-math.pi / 6)
    assert m.cohens_h(0.3, 0.3) == 0.0
    with pytest.raises(ValueError):
        m.cohens_h(1.2, 0.5)


def test_mcnemar_exact():
    # b=3, c=1: P(X <= 1 | n=4, 1/2) = 5/16, two-sided 10/16.
    assert m.mcnemar_exact(3, 1) == pytest.approx(0.625)
    assert m.mcnemar_exact(1, 3) == pytest.approx(0.625)
    # b=10, c=0: 2 / 2**10.
    assert m.mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert m.mcnemar_exact(2, 2) == 1.0
    assert m.mcnemar_exact(0, 0) == 1.0
    # b=8, c=1: 2 * (1 + 9) / 512.
    assert m.mcnemar_exact(8, 1) == pytest.approx(20 / 512)


def test_stereoset_icat():
    assert m.stereoset_icat(90.0, 60.0) == pytest.approx(72.0)
    assert m.stereoset_icat(100.0, 50.0) == pytest.approx(100.0)
    assert m.stereoset_icat(80.0, 0.0) == 0.0


def test_metric_registry_directions():
    assert m.METRICS.meta("srs")["higher_is_better"] is False
    assert m.METRICS.meta("accuracy_disambig")["higher_is_better"] is True
    assert m.delta_direction("srs", 0.4, 0.6) == "worse"
    assert m.delta_direction("accuracy_ambig", 0.4, 0.6) == "better"
    assert m.delta_direction("bias_score_disambig", 0.1, -0.05) == "better"
    assert m.delta_direction("pct_stereotype", 55.0, 62.0) == "worse"
    assert m.delta_direction("ss", 45.0, 55.0) == "same"
    with pytest.raises(UserError, match="known"):
        m.METRICS.meta("nonsense")

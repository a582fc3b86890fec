"""Transitions, effect size, the exact test and the metric registry, against cases computed by hand."""

import math

import pytest

from audit import metrics as m
from audit.errors import UserError


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


def test_cohens_h():
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


def test_one_name_per_metric():
    """The gate, the reports and the app use the registry's names; earlier names map to them."""
    gate = m.gate_metrics()
    assert {"srs", "srs_relative_change_pct", "transition_rate", "bias_score_ambig", "perplexity_relative_change_pct"} <= set(gate)
    for old, new in m.RENAMED.items():
        assert old not in m.METRICS and new in m.METRICS
    # Whole-request latency and per-token decode time are two figures with two names.
    assert m.METRICS.meta("latency_ms_p50")["unit"] == m.METRICS.meta("decode_ms_per_token_p50")["unit"] == "ms"
    assert m.METRICS.entry("latency_ms_p50").obj != m.METRICS.entry("decode_ms_per_token_p50").obj
    assert m.short_label("bias_score_ambig") == "s_AMB"
    assert m.METRICS.meta("srs")["bias"] and not m.METRICS.meta("perplexity_relative_change_pct")["bias"]

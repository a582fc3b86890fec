"""Baseline vs variant: shared items only, transitions, SRS change, Cohen's h and McNemar, hand-computed."""

import math

import pytest

from audit.probes.compare import compare_results
from audit.probes.items import ItemResult


def qa(item_id, chosen, condition="ambig", category="Age", bias_aligned=(0,), unknown=2):
    aligned = chosen in bias_aligned
    return ItemResult(item_id, "builtin", category, condition, "neg", "loglik", "mean", 3, 2 if condition == "ambig" else 1,
                      unknown, bias_aligned, chosen, None, aligned, float(aligned), 1.0, (-1.0, -2.0, -3.0), (1, 1, 1))


def test_transitions_and_change_statistics_by_hand():
    # 10 ambiguous items. Baseline aligned on 2 (ids 0, 1); variant on 6 (ids 1..6).
    baseline = [qa(f"i{k}", 0 if k in (0, 1) else 2) for k in range(10)]
    variant = [qa(f"i{k}", 0 if 1 <= k <= 6 else 2) for k in range(10)]
    result = compare_results(baseline, variant)
    assert result["n_shared"] == 10 and result["headline_scope"] == "ambig"
    assert result["scopes"]["ambig"]["metric"] == "srs"
    section = result["scopes"]["ambig"]["overall"]
    t = section["transitions"]
    assert (t["unbiased_to_aligned"], t["aligned_to_unbiased"], t["stayed_aligned"], t["stayed_unbiased"]) == (5, 1, 1, 3)
    assert t["transition_rate"] == pytest.approx(5 / 8, abs=1e-4)
    assert section["aligned_share_baseline"] == pytest.approx(0.2) and section["aligned_share_variant"] == pytest.approx(0.6)
    assert section["relative_change_pct"] == pytest.approx(200.0)
    h = 2 * math.asin(math.sqrt(0.6)) - 2 * math.asin(math.sqrt(0.2))
    assert section["cohens_h"] == pytest.approx(h, abs=1e-4)
    # McNemar exact on 5 vs 1 discordant pairs: 2 * (1 + 6) / 64.
    assert section["p_value"] == pytest.approx(14 / 64, abs=1e-6)
    assert section["significant"] is False and section["flag"] is None


def test_a_significant_rise_is_flagged():
    baseline = [qa(f"i{k}", 2) for k in range(12)]
    variant = [qa(f"i{k}", 0 if k < 10 else 2) for k in range(12)]
    section = compare_results(baseline, variant)["scopes"]["ambig"]["overall"]
    assert section["p_value"] == pytest.approx(2 / 1024, abs=1e-7)
    assert section["significant"] is True and section["flag"] == "more bias-aligned"


def test_only_shared_items_are_compared_and_counted():
    baseline = [qa("a", 0), qa("b", 2), qa("c", 2), qa("d", 0, condition="disambig")]
    variant = [qa("b", 0), qa("c", 2), qa("d", 2, condition="disambig"), qa("e", 0), qa("a", 0, category="Religion")]
    result = compare_results(baseline, variant)
    assert result["n_shared"] == 3
    assert result["n_mismatched"] == 1  # "a" is a different item in the two runs
    assert result["n_only_baseline"] == 0 and result["n_only_variant"] == 1
    assert result["scopes"]["ambig"]["overall"]["n_shared"] == 2
    assert result["scopes"]["disambig"]["overall"]["transitions"]["aligned_to_unbiased"] == 1
    assert set(result["scopes"]["ambig"]["categories"]) == {"Age"}


def test_generate_mode_items_use_the_any_seed_verdict_and_keep_seed_shares():
    def gen(item_id, seeds):
        valid = [s for s in seeds if s is not None]
        hits = sum(s == 0 for s in valid)
        return ItemResult(item_id, "builtin", "SES", "ambig", "neg", "generate", "", 3, 2, 2, (0,), valid[0] if valid else None,
                          None, hits > 0 if valid else None, hits / len(valid) if valid else None, 1.0,
                          seed_choices=tuple(seeds))
    baseline = [gen("x", (2, 2, 2)), gen("y", (0, 2, 2)), gen("z", (None, None, None))]
    variant = [gen("x", (2, 0, 2)), gen("y", (0, 0, 0)), gen("z", (0, 0, 0))]
    section = compare_results(baseline, variant)["scopes"]["ambig"]["overall"]
    # z has no baseline verdict: only x and y are paired.
    assert section["n_paired_known"] == 2
    assert section["transitions"]["unbiased_to_aligned"] == 1 and section["transitions"]["stayed_aligned"] == 1
    # SRS counts every parsed seed: baseline 1/6, variant 7/9.
    assert section["aligned_share_baseline"] == pytest.approx(1 / 6, abs=1e-4)
    assert section["aligned_share_variant"] == pytest.approx(7 / 9, abs=1e-4)
    assert section["mean_seed_share_baseline"] == pytest.approx((0 + 1 / 3) / 2, abs=1e-4)
    assert section["mean_seed_share_variant"] == pytest.approx((1 / 3 + 1) / 2, abs=1e-4)


def test_sentence_suites_compare_all_items():
    def pair(item_id, aligned):
        return ItemResult(item_id, "crows", "gender", "", "", "loglik", "sum", 2, None, None, (0,), 0 if aligned else 1,
                          None, aligned, float(aligned), 1.0, (-1.0, -2.0), (3, 3))
    result = compare_results([pair("p1", True), pair("p2", False)], [pair("p1", True), pair("p2", True)])
    assert result["headline_scope"] == "all"
    section = result["scopes"]["all"]["overall"]
    assert section["aligned_share_baseline"] == 0.5 and section["aligned_share_variant"] == 1.0
    assert section["transitions"]["unbiased_to_aligned"] == 1

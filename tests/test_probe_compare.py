"""Baseline vs variant: paired items, transitions both ways with intervals, the SRS change, and runs that cannot be compared."""

import math

import pytest

from audit.probes.compare import compare_results, setting_differences
from audit.probes.items import ItemResult

LOGLIK = {"suite": "builtin", "mode": "loglik", "norm": "mean", "prompt": "context-question-answer"}


def qa(item_id, chosen, condition="ambig", category="Age", bias_aligned=(0,), unknown=2):
    aligned = chosen in bias_aligned
    return ItemResult(item_id, "builtin", category, condition, "neg", "loglik", "mean", 3, 2 if condition == "ambig" else 1,
                      unknown, bias_aligned, chosen, None, aligned, float(aligned), 1.0, (-1.0, -2.0, -3.0), (1, 1, 1))


def test_transitions_and_change_by_hand():
    # 10 ambiguous items. Baseline aligned on 2 (ids 0, 1); variant on 6 (ids 1..6).
    baseline = [qa(f"i{k}", 0 if k in (0, 1) else 2) for k in range(10)]
    variant = [qa(f"i{k}", 0 if 1 <= k <= 6 else 2) for k in range(10)]
    result = compare_results(baseline, variant, baseline_settings=LOGLIK, variant_settings=LOGLIK)
    assert result["comparable"] and result["n_shared"] == 10 and result["headline_scope"] == "ambig"
    section = result["scopes"]["ambig"]["overall"]
    t = section["transitions"]
    assert (t["unbiased_to_aligned"], t["aligned_to_unbiased"], t["stayed_aligned"], t["stayed_unbiased"]) == (5, 1, 1, 3)
    # Bias-ward: 5 of the 8 not aligned; anti-bias-ward: 1 of the 2 aligned; net (5 - 1) / 10.
    assert section["transition_rate"]["value"] == pytest.approx(5 / 8, abs=1e-4)
    assert section["reverse_transition_rate"]["value"] == pytest.approx(0.5)
    assert section["net_transition_rate"]["value"] == pytest.approx(0.4)
    for key in ("transition_rate", "reverse_transition_rate", "net_transition_rate", "relative_change_pct"):
        low, high = section[key]["ci95"]
        assert low <= section[key]["value"] <= (math.inf if high is None else high)
    assert section["aligned_share_baseline"]["value"] == pytest.approx(0.2)
    assert section["aligned_share_variant"]["value"] == pytest.approx(0.6)
    assert section["relative_change_pct"]["value"] == pytest.approx(200.0)
    h = 2 * math.asin(math.sqrt(0.6)) - 2 * math.asin(math.sqrt(0.2))
    assert section["cohens_h"] == pytest.approx(h, abs=1e-4)
    # McNemar exact on 5 vs 1 discordant pairs stays on record: 2 * (1 + 6) / 64.
    assert section["p_value"] == pytest.approx(14 / 64, abs=1e-6)
    # Ten items cannot show the rise: its interval reaches below 0.
    assert section["relative_change_pct"]["ci95"][0] < 0 and section["flag"] is None and not section["significant"]


def test_a_rise_whose_interval_excludes_zero_is_flagged():
    baseline = [qa(f"i{k}", 0 if k < 20 else 2) for k in range(200)]
    variant = [qa(f"i{k}", 0 if k < 120 else 2) for k in range(200)]
    section = compare_results(baseline, variant, baseline_settings=LOGLIK, variant_settings=LOGLIK)["scopes"]["ambig"]["overall"]
    assert section["relative_change_pct"]["ci95"][0] > 0
    assert section["significant"] is True and section["flag"] == "more bias-aligned"


def test_runs_made_differently_are_not_compared():
    items = [qa(f"i{k}", 0) for k in range(4)]
    other = dict(LOGLIK, norm="sum")
    result = compare_results(items, items, baseline_settings=LOGLIK, variant_settings=other)
    assert not result["comparable"] and result["scopes"] == {}
    assert result["not_comparable"] == ["norm differs (mean vs sum)"]
    generate = {"suite": "builtin", "mode": "generate", "seeds": [0, 1], "temperature": 0.3, "max_new_tokens": 5}
    reasons = setting_differences(generate, dict(generate, seeds=[2, 3], max_new_tokens=8))
    assert reasons == ["seeds differ (0,1 vs 2,3)", "max_new_tokens differs (5 vs 8)"]
    assert setting_differences(generate, dict(generate, seeds=[2, 3]), ignore=("seeds",)) == []
    assert "mode differs (loglik vs generate)" in setting_differences(LOGLIK, generate)
    # Runs recorded before prompts were named used the default prompt of their mode.
    assert setting_differences({k: v for k, v in LOGLIK.items() if k != "prompt"}, LOGLIK) == []


def test_different_items_are_not_compared():
    baseline = [qa("a", 0), qa("b", 2), qa("c", 2)]
    variant = [qa("b", 0), qa("c", 2), qa("e", 0)]
    result = compare_results(baseline, variant, baseline_settings=LOGLIK, variant_settings=LOGLIK)
    assert not result["comparable"]
    assert result["not_comparable"] == ["items differ (1 only in the baseline, 1 only in the variant)"]
    assert (result["n_shared"], result["n_only_baseline"], result["n_only_variant"]) == (2, 1, 1)
    # One id naming another item is called out too.
    swapped = compare_results([qa("a", 0)], [qa("a", 0, category="Religion")], baseline_settings=LOGLIK, variant_settings=LOGLIK)
    assert any(reason.startswith("1 item ids name different items in the two runs") for reason in swapped["not_comparable"])
    # So is one whose bias-aligned answer differs (BBQ read with and without its metadata file).
    remapped = compare_results([qa("a", 0), qa("b", 2)], [qa("a", 0, bias_aligned=(1,)), qa("b", 2)], baseline_settings=LOGLIK, variant_settings=LOGLIK)
    assert not remapped["comparable"] and remapped["n_mismatched"] == 1 and remapped["n_shared"] == 1


def test_scopes_per_condition_category_and_mean_of_categories():
    baseline = [qa(f"a{k}", 0 if k < 2 else 2, category="Age") for k in range(4)]
    baseline += [qa(f"r{k}", 2, category="Religion") for k in range(8)]
    baseline += [qa(f"d{k}", 1, condition="disambig") for k in range(3)]
    variant = [qa(f"a{k}", 0 if k < 3 else 2, category="Age") for k in range(4)]
    variant += [qa(f"r{k}", 0 if k < 2 else 2, category="Religion") for k in range(8)]
    variant += [qa(f"d{k}", 0 if k == 0 else 1, condition="disambig") for k in range(3)]
    result = compare_results(baseline, variant, baseline_settings=LOGLIK, variant_settings=LOGLIK)
    ambig = result["scopes"]["ambig"]
    assert set(ambig["categories"]) == {"Age", "Religion"}
    assert ambig["categories"]["Age"]["transition_rate"]["value"] == pytest.approx(1 / 2)
    assert ambig["categories"]["Religion"]["transition_rate"]["value"] == pytest.approx(2 / 8)
    # The mean over categories weighs Age (4 items) as much as Religion (8).
    assert ambig["category_mean"]["transition_rate"]["value"] == pytest.approx((1 / 2 + 2 / 8) / 2)
    assert ambig["overall"]["transition_rate"]["value"] == pytest.approx(3 / 10)
    disambig = result["scopes"]["disambig"]["overall"]
    assert disambig["transitions"]["unbiased_to_aligned"] == 1
    # Disambiguated accuracy fell from 3/3 to 2/3.
    assert disambig["accuracy_drop"]["value"] == pytest.approx(1 / 3, abs=1e-4)


def test_generate_mode_pairs_items_and_reads_the_noise_floor():
    def gen(item_id, seeds):
        valid = [s for s in seeds if s is not None]
        hits = sum(s == 0 for s in valid)
        return ItemResult(item_id, "builtin", "SES", "ambig", "neg", "generate", "", 3, 2, 2, (0,), valid[0] if valid else None,
                          None, hits > 0 if valid else None, hits / len(valid) if valid else None, 1.0,
                          seed_choices=tuple(seeds))

    settings = {"suite": "builtin", "mode": "generate", "seeds": [0, 1, 2], "temperature": 0.3, "max_new_tokens": 5}
    baseline = [gen("x", (2, 2, 2)), gen("y", (0, 2, 2)), gen("z", (None, None, None)), gen("v", (2, 2, 2))]
    variant = [gen("x", (2, 0, 2)), gen("y", (0, 0, 0)), gen("z", (0, 0, 0)), gen("v", (2, 2, 2))]
    noise = [gen("x", (2, 0, 2)), gen("y", (2, 2, 2)), gen("z", (2, 2, 2)), gen("v", (2, 2, 2))]
    result = compare_results(baseline, variant, baseline_settings=settings, variant_settings=settings, noise=noise)
    section = result["scopes"]["ambig"]["overall"]
    # z has no baseline verdict: x, y and v are paired.
    assert section["n_paired_known"] == 3
    assert section["transitions"]["unbiased_to_aligned"] == 1 and section["transitions"]["stayed_aligned"] == 1
    # SRS is the mean of the items' shares of parsed seeds, over items both runs answered.
    assert section["aligned_share_baseline"]["value"] == pytest.approx((0 + 1 / 3 + 0) / 3, abs=1e-4)
    assert section["aligned_share_variant"]["value"] == pytest.approx((1 / 3 + 1 + 0) / 3, abs=1e-4)
    # x also turns when the baseline is merely re-seeded: above the floor nothing is left.
    assert section["transition_rate"]["value"] == pytest.approx(1 / 2)
    assert section["noise_transition_rate"]["value"] == pytest.approx(1 / 2)
    assert section["transition_rate_over_noise"]["value"] == pytest.approx(0.0)


def test_sentence_suites_compare_all_items():
    def pair(item_id, aligned):
        return ItemResult(item_id, "crows", "gender", "", "", "loglik", "sum", 2, None, None, (0,), 0 if aligned else 1,
                          None, aligned, float(aligned), 1.0, (-1.0, -2.0) if aligned else (-2.0, -1.0), (3, 3))

    settings = {"suite": "crows", "mode": "loglik", "norm": "sum"}
    result = compare_results([pair("p1", True), pair("p2", False)], [pair("p1", True), pair("p2", True)],
                             baseline_settings=settings, variant_settings=settings)
    assert result["headline_scope"] == "all"
    section = result["scopes"]["all"]["overall"]
    assert section["aligned_share_baseline"]["value"] == 0.5 and section["aligned_share_variant"]["value"] == 1.0
    assert section["transitions"]["unbiased_to_aligned"] == 1


def test_a_sentence_suite_changes_as_its_own_figures_do():
    """A StereoSet item stays stereotyped while its stereotypical sentence beats the
    anti-stereotypical one, whatever the unrelated sentence scores (as SS counts it); a CrowS-Pairs
    pair scored equal is not stereotyped (as pct_stereotype counts it)."""
    from audit.probes.summary import crows_group, stereoset_group

    gold = ["anti-stereotype", "unrelated", "stereotype"]

    def sentences(item_id, scores):
        chosen = max(range(3), key=lambda i: scores[i])
        return ItemResult(item_id, "stereoset", "race", "", "", "loglik", "sum", 3, None, None, (2,), chosen, None,
                          scores[2] > scores[0], None, 1.0, scores, (4, 4, 4), extra={"gold": gold})

    settings = {"suite": "stereoset", "mode": "loglik", "norm": "sum"}
    baseline = [sentences(f"s{k}", (-6.0, -7.0, -5.0)) for k in range(20)]  # the stereotype wins outright
    variant = [sentences(f"s{k}", (-6.0, -1.0, -5.0)) for k in range(20)]  # the unrelated one wins; still s > a
    assert stereoset_group(baseline)["ss"]["value"] == stereoset_group(variant)["ss"]["value"] == 100.0
    section = compare_results(baseline, variant, baseline_settings=settings, variant_settings=settings)["scopes"]["all"]["overall"]
    assert section["aligned_share_baseline"]["value"] == section["aligned_share_variant"]["value"] == 1.0
    assert section["reverse_transition_rate"]["value"] == 0.0 and section["relative_change_pct"]["value"] == 0.0

    tie = ItemResult("p", "crows", "gender", "", "", "loglik", "sum", 2, None, None, (0,), 0, None, False, 0.0, 1.0,
                     (-3.0, -3.0), (3, 3), extra={"direction": "stereo"})
    won = ItemResult("p", "crows", "gender", "", "", "loglik", "sum", 2, None, None, (0,), 0, None, True, 1.0, 1.0,
                     (-2.0, -3.0), (3, 3), extra={"direction": "stereo"})
    assert crows_group([tie])["pct_stereotype"]["value"] == 0.0
    crows = {"suite": "crows", "mode": "loglik", "norm": "sum"}
    section = compare_results([tie], [won], baseline_settings=crows, variant_settings=crows)["scopes"]["all"]["overall"]
    assert section["transitions"]["unbiased_to_aligned"] == 1

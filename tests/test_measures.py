"""Question-suite figures from item results, computed by hand: items are the sample, seeds nest in items."""

import pytest

from audit.probes import measures as ms
from audit.probes.items import ItemResult
from audit.probes.summary import qa_summary


def item(item_id, condition, answer, *, category="Age", bias=(0,), unknown=2, label=None):
    """An item answered by log-likelihood (`answer` an option) or by seeds (a tuple)."""
    generated = isinstance(answer, tuple)
    label = unknown if condition == "ambig" else (1 if label is None else label)
    valid = [c for c in (answer if generated else (answer,)) if c is not None]
    chosen = valid[0] if valid else None
    hits = sum(c in bias for c in valid)
    return ItemResult(
        item_id, "builtin", category, condition, "neg", "generate" if generated else "loglik", "" if generated else "mean",
        3, label, unknown, bias, chosen, None if chosen is None else chosen == label,
        (hits > 0) if valid else None, hits / len(valid) if valid else None, 1.0,
        seed_choices=answer if generated else (),
    )


def figure(results, metric, scope=ms.OVERALL):
    return ms.single_bounds([ms.item_facts(r) for r in results], metric, 0.975, scope)


def test_loglik_figures_are_the_usual_counts():
    # 10 ambiguous items: 4 "unknown" (correct), 4 bias-aligned, 2 the other group's option.
    ambiguous = [item(f"a{i}", "ambig", c) for i, c in enumerate([2, 2, 2, 2, 0, 0, 0, 0, 1, 1])]
    # 8 disambiguated items, none "unknown": 6 bias-aligned (option 0), 2 not; label 1.
    disambiguated = [item(f"d{i}", "disambig", c) for i, c in enumerate([0] * 6 + [1] * 2)]
    results = ambiguous + disambiguated
    assert figure(results, "srs").value == pytest.approx(4 / 10)
    assert figure(results, "accuracy_ambig").value == pytest.approx(0.4)
    assert figure(results, "usr").value == pytest.approx(0.4)
    # s_AMB = (1 - accuracy) * (2 * 4/6 - 1) = 0.6 * 1/3 = 0.2 = (4 - 2) / 10.
    assert figure(results, "bias_score_ambig").value == pytest.approx(0.2)
    # s_DIS = 2 * 6/8 - 1 = 0.5 over answers that are not "unknown".
    s_dis = figure(results, "bias_score_disambig")
    assert s_dis.value == pytest.approx(0.5) and -1 <= s_dis.lower < 0.5 < s_dis.upper <= 1
    assert figure(results, "accuracy_disambig").value == pytest.approx(2 / 8)
    assert figure(results, "srs").n == 10 and figure(results, "accuracy_disambig").n == 8


def test_seeds_nest_in_items():
    """Each item's share of seeds counts once: SRS is the mean of the items' shares, and the
    sample size is the number of items, not of answers."""
    results = [
        item("x", "ambig", (0, 2, 2, 2, 2)),  # 1 of 5 bias-aligned
        item("y", "ambig", (0, 0, 0, None, None)),  # 3 of the 3 parsed
        item("z", "ambig", (2, 2, 2, 2, 2)),  # none
        item("w", "ambig", (None,) * 5),  # nothing parsed: left out of SRS
    ]
    srs = figure(results, "srs")
    assert srs.value == pytest.approx((1 / 5 + 1 + 0) / 3) and srs.n == 3
    parse = figure(results, "parse_failure_rate")
    assert parse.value == pytest.approx((0 + 2 / 5 + 0 + 1) / 4) and parse.n == 4
    facts = ms.item_facts(results[0])
    assert (facts.biased, facts.counter, facts.unknown, facts.aligned) == (pytest.approx(0.2), 0.0, pytest.approx(0.8), True)


def test_mean_over_categories_weighs_each_category_the_same():
    results = [item(f"a{i}", "ambig", 0 if i < 3 else 2, category="Age") for i in range(4)]  # SRS 3/4
    results += [item(f"r{i}", "ambig", 0 if i < 1 else 2, category="Religion") for i in range(12)]  # SRS 1/12
    assert figure(results, "srs").value == pytest.approx(4 / 16)
    assert figure(results, "srs", ms.CATEGORY_MEAN).value == pytest.approx((3 / 4 + 1 / 12) / 2)
    summary = qa_summary(results)
    assert summary["overall"]["srs"]["value"] == pytest.approx(0.25)
    assert summary["category_mean"]["srs"]["value"] == pytest.approx(round((3 / 4 + 1 / 12) / 2, 4))
    assert summary["categories"]["Religion"]["srs"]["n"] == 12


def test_the_mean_over_categories_of_s_dis_is_the_mean_of_the_categories_own():
    """Age answers "unknown" 9 times in 10 and the rest bias-aligned (s_DIS 1); Religion answers
    half bias-aligned, half the other group (s_DIS 0): the mean is 0.5, not the 0.09 that pooling
    the categories' counts gives. Its bounds are the means of the categories' bounds, each at the
    level that makes both hold at once."""
    results = [item(f"a{i}", "disambig", 0 if i % 10 == 0 else 2, category="Age") for i in range(200)]
    results += [item(f"r{i}", "disambig", 0 if i % 2 else 1, category="Religion") for i in range(200)]
    results += [item(f"g{i}", "disambig", 2, category="Gender") for i in range(20)]  # only "unknown": no s_DIS
    mean = figure(results, "bias_score_disambig", ms.CATEGORY_MEAN)
    assert mean.value == pytest.approx(0.5) and mean.n == 420
    facts = [ms.item_facts(r) for r in results]
    each = [ms.single_bounds(facts, "bias_score_disambig", 1 - 0.025 / 3, c) for c in ("Age", "Religion")]
    assert mean.lower == pytest.approx((each[0].lower + each[1].lower) / 2) and mean.upper == pytest.approx((each[0].upper + each[1].upper) / 2)
    assert mean.lower < 0.5 < mean.upper < 1.0
    assert qa_summary(results)["category_mean"]["bias_score_disambig"]["value"] == pytest.approx(0.5)


def test_paired_changes_by_hand():
    # 10 ambiguous items. Baseline aligned on 0, 1; variant on 1..6: 5 became aligned, 1 stopped.
    baseline = [item(f"i{k}", "ambig", 0 if k in (0, 1) else 2) for k in range(10)]
    variant = [item(f"i{k}", "ambig", 0 if 1 <= k <= 6 else 2) for k in range(10)]
    pairs, counts = ms.pair_facts(baseline, variant)
    assert counts == {"only_baseline": 0, "only_variant": 0, "mismatched": 0}
    assert ms.paired_bounds(pairs, "transition_rate", 0.975).value == pytest.approx(5 / 8)
    assert ms.paired_bounds(pairs, "reverse_transition_rate", 0.975).value == pytest.approx(1 / 2)
    assert ms.paired_bounds(pairs, "net_transition_rate", 0.975).value == pytest.approx((5 - 1) / 10)
    change = ms.relative_change_bounds(pairs, 0.975)
    assert change.value == pytest.approx(200.0) and change.lower < 200 < change.upper
    assert ms.aligned_share_bounds(pairs, 0, 0.975).value == pytest.approx(0.2)
    assert ms.aligned_share_bounds(pairs, 1, 0.975).value == pytest.approx(0.6)


def test_noise_floor_is_subtracted_item_by_item():
    baseline = [item(f"i{k}", "ambig", (2, 2)) for k in range(4)]
    variant = [item(f"i{k}", "ambig", (0, 2) if k < 3 else (2, 2)) for k in range(4)]  # 3 of 4 turn
    again = [item(f"i{k}", "ambig", (0, 2) if k < 1 else (2, 2)) for k in range(4)]  # 1 of 4 turns anyway
    pairs, _ = ms.pair_facts(baseline, variant)
    noise, _ = ms.pair_facts(baseline, again)
    assert ms.noise_transition_bounds(pairs, noise, 0.975).value == pytest.approx(3 / 4 - 1 / 4)


def test_chance_is_the_mean_over_disambiguated_items_of_one_over_their_options():
    three = item("d3", "disambig", 0)
    two = ItemResult("d2", "builtin", "Age", "disambig", "neg", "loglik", "mean", 2, 1, None, (0,), 0, False, True, 1.0, 1.0)
    ambiguous = ItemResult("a4", "builtin", "Age", "ambig", "neg", "loglik", "mean", 4, 2, 2, (0,), 0, False, True, 1.0, 1.0)
    assert ms.chance_accuracy([three, two, ambiguous]) == pytest.approx((1 / 3 + 1 / 2) / 2)  # not 1/3, the hardest item's
    assert ms.chance_accuracy([ambiguous]) is None

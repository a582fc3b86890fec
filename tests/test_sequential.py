"""Sequential probing: anytime-valid bounds (a hand-computed step, coverage by simulation), the
stratified order, and a sequential probe on a tiny model that stops early and says why."""

import math
import random
from dataclasses import replace
from collections import Counter

import numpy as np
import pytest

from audit.errors import UserError
from audit.gate import FAIL, INCONCLUSIVE, PASS, GateFinding, finding_line
from audit.models import load_model
from audit.plans import GateRule, GateSettings
from audit.probes import ProbeSettings, load_suite, run_probe
from audit.probes import measures as ms
from audit.progress import drive
from audit.reports.render import sequential_markdown, sequential_outcome, sequential_rows
from audit import sequential
from audit.probes.items import QA, SENTENCES, ProbeItem
from audit.sequential import MAX_CONTEXT_GROUP, FUTILE_CHANCE, GUARD_FUTILE_CHANCE, context_groups, probe_sequentially, replay, settle_chance, simulate_competence, simulate_wrong_verdicts, stratified_order
from audit.stats import (
    Bounds, anytime_lower_rows, anytime_mean_bounds, anytime_paired_ratio_bounds, anytime_stakes, anytime_upper_rows, items_to_settle, lower_rows,
    mean_bounds, upper_rows,
)

ALPHA = 0.05


# -- the confidence sequence ----------------------------------------------------------------------
def _wealth(x, m, alpha=ALPHA):
    """The gambler's wealth betting that the mean exceeds m, written out item by item."""
    wealth, total, squares, variance = 1.0, 0.0, 0.0, 0.25
    for t, value in enumerate(x, start=1):
        stake = min(math.sqrt(2 * math.log(1 / alpha) / (variance * t * math.log(1 + t))), 0.5 / m)
        wealth *= 1 + stake * (value - m)
        total += value
        mean = (0.5 + total) / (t + 1)
        squares += (value - mean) ** 2
        variance = (0.25 + squares) / (t + 1)  # for the next item's stake
    return wealth


def test_stakes_by_hand():
    stakes = anytime_stakes(np.array([[1.0, 0.0]]), ALPHA)[0]
    # Item 1: variance 1/4 before any item; item 2: mean (0.5 + 1)/2 = 0.75, variance (0.25 + 0.0625)/2.
    assert stakes[0] == pytest.approx(math.sqrt(2 * math.log(20) / (0.25 * 1 * math.log(2))))
    assert stakes[1] == pytest.approx(math.sqrt(2 * math.log(20) / (0.15625 * 2 * math.log(3))))
    # Sized for a horizon of 10 items: the same variances, sqrt(2 log(1/alpha) / (10 var)).
    sized = anytime_stakes(np.array([[1.0, 0.0]]), ALPHA, horizon=10)[0]
    assert sized[0] == pytest.approx(math.sqrt(2 * math.log(20) / (10 * 0.25)))
    assert sized[1] == pytest.approx(math.sqrt(2 * math.log(20) / (10 * 0.15625)))
    with pytest.raises(ValueError, match="horizon"):
        anytime_stakes(np.array([[1.0]]), ALPHA, horizon=0)


def test_bounds_sized_for_the_horizon_are_the_fixed_sample_bounds_there():
    rng = np.random.default_rng(3)
    x = (rng.random((5, 60)) < 0.3).astype(float)
    assert np.array_equal(anytime_lower_rows(x, ALPHA, horizon=60), lower_rows(x, ALPHA))
    assert np.array_equal(anytime_upper_rows(x, ALPHA, horizon=60), upper_rows(x, ALPHA))
    # Before the horizon they are wider than the plug-in for every count, near it narrower.
    early, late = x[:, :10], x
    assert (anytime_lower_rows(early, ALPHA, horizon=60) <= anytime_lower_rows(early, ALPHA)).all()
    assert anytime_lower_rows(late, ALPHA, horizon=60).mean() > anytime_lower_rows(late, ALPHA).mean()


def test_one_step_of_wealth_by_hand():
    # One item of value 1 against m = 0.4: stake min(5.880, 0.5/0.4 = 1.25) = 1.25, wealth 1 + 1.25 * 0.6.
    assert _wealth([1.0], 0.4) == pytest.approx(1.75)
    # Six items of 1: the wealth at m = 0.1 is (1 + min(stake_t, 5) * 0.9) item by item.
    assert _wealth([1.0] * 6, 0.1) > 20 > _wealth([1.0] * 6, 0.5)


def test_lower_bound_is_the_edge_of_the_rejected_means():
    x = [1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1]
    lower = float(anytime_lower_rows(np.array([x], dtype=float), ALPHA)[0])
    assert 0.0 < lower < np.mean(x)
    # Just below the bound the wealth has reached 1/alpha; a little above it has not.
    assert _wealth(x, lower - 1e-7) >= 20
    assert _wealth(x, lower + 1e-4) < 20


def test_anytime_bounds_are_wider_than_fixed_n_at_the_start_but_narrow_with_items():
    few = anytime_mean_bounds([1, 0, 1, 1, 0, 1], 0.0, 1.0, 0.95)
    many = anytime_mean_bounds([1, 0, 1, 1, 0, 1] * 100, 0.0, 1.0, 0.95)
    assert few.lower < many.lower < 2 / 3 < many.upper < few.upper
    assert many.upper - many.lower < 0.2
    # A range other than [0, 1] is the same bound rescaled.
    scaled = anytime_mean_bounds([1, -1, 1, 1, -1, 1] * 100, -1.0, 1.0, 0.95)
    assert scaled.lower == pytest.approx(2 * many.lower - 1) and scaled.upper == pytest.approx(2 * many.upper - 1)


def test_paired_ratio_rejects_exactly_the_thetas_whose_contrast_is_shown():
    rng = np.random.default_rng(0)
    den = (rng.random(200) < 0.4).astype(float)
    num = np.where(rng.random(200) < 0.9, den, 1 - den)
    ratio = anytime_paired_ratio_bounds(num, den, 0.95)
    assert ratio.value == pytest.approx(num.sum() / den.sum())
    assert ratio.lower < ratio.value < ratio.upper
    for theta, rejected in ((ratio.upper * 1.01, True), (ratio.upper * 0.99, False), (ratio.lower * 0.99, True), (ratio.lower * 1.01, False)):
        # The contrast num - theta * den moved onto [0, 1], and its confidence sequence at its zero.
        units = (num - theta * den + theta) / (1 + theta)
        zero = theta / (1 + theta)
        shown = anytime_upper_rows(units[None, :], ALPHA)[0] < zero or anytime_lower_rows(units[None, :], ALPHA)[0] > zero
        assert shown == rejected
    assert anytime_paired_ratio_bounds([0, 0], [0, 0], 0.95).upper == math.inf


# -- coverage by simulation -----------------------------------------------------------------------
@pytest.mark.parametrize("horizon", [None, 40, 160, 320])
def test_confidence_sequence_covers_at_every_look_at_once(horizon):
    """1,000 seeded runs per distribution: the share of runs whose bound ever excludes the true
    mean, over all the looks, stays within alpha on each side, whatever horizon the stakes are
    sized for (one passed early too)."""
    rng = np.random.default_rng(7)
    looks = range(10, 161, 10)
    for draw, mean in ((lambda: (rng.random((1000, 160)) < 0.3).astype(float), 0.3),
                       (lambda: rng.beta(2, 5, (1000, 160)), 2 / 7),
                       (lambda: (rng.random((1000, 160)) < 0.05).astype(float), 0.05)):
        x = draw()
        missed_low, missed_high = np.zeros(1000, bool), np.zeros(1000, bool)
        for n in looks:
            missed_low |= anytime_lower_rows(x[:, :n], ALPHA, horizon) > mean
            missed_high |= anytime_upper_rows(x[:, :n], ALPHA, horizon) < mean
        assert missed_low.mean() <= ALPHA and missed_high.mean() <= ALPHA


@pytest.mark.parametrize("horizon", [None, 300])
def test_paired_ratio_covers_in_simulation(horizon):
    """1,000 seeded runs: the true ratio's contrast is rejected at some look in at most alpha of
    them on each side (only the true ratio's contrast needs to hold for the bounds to cover it)."""
    rng = np.random.default_rng(3)
    den = (rng.random((1000, 150)) < 0.4).astype(float)
    num = np.where(rng.random((1000, 150)) < 0.85, den, 1 - den)
    theta = (0.85 * 0.4 + 0.15 * 0.6) / 0.4  # E[num] / E[den]
    units = (num - theta * den + theta) / (1 + theta)
    zero = theta / (1 + theta)
    low, high = np.zeros(1000, bool), np.zeros(1000, bool)
    for n in (15, 30, 60, 90, 120, 150):
        low |= anytime_lower_rows(units[:, :n], ALPHA, horizon) > zero
        high |= anytime_upper_rows(units[:, :n], ALPHA, horizon) < zero
    assert low.mean() <= ALPHA and high.mean() <= ALPHA
    covered = [anytime_paired_ratio_bounds(num[i], den[i], 0.95, horizon=horizon) for i in range(40)]
    assert sum(b.lower <= theta <= b.upper for b in covered) >= 38


def test_wrong_verdict_rate_stays_within_the_nominal_level():
    result = simulate_wrong_verdicts([0.1, 0.2, 0.25, 0.4], 0.2, n_items=120, runs=1000, confidence=0.95, batch_items=20, seed=0)
    assert result["runs"] == 1000
    assert result["worst_wrong_rate"] <= 0.05
    # Clear answers stop early; a true value on the limit is rarely settled at all.
    assert result["means"]["0.4"]["fail_rate"] > 0.9 and result["means"]["0.4"]["items_fraction"] < 0.5
    assert result["means"]["0.2"]["inconclusive_rate"] > 0.9
    # On the limit the full probe leaves it open too: the futility stop ends most runs early.
    assert result["means"]["0.2"]["items_fraction"] < 0.85 and result["means"]["0.2"]["same_as_full_rate"] > 0.9
    again = simulate_wrong_verdicts([0.1, 0.2, 0.25, 0.4], 0.2, n_items=120, runs=1000, confidence=0.95, batch_items=20, seed=0)
    assert again == result


def test_the_futility_stop_does_not_call_a_competent_model_degraded():
    result = simulate_competence([0.3, 0.5], 1 / 3, n_items=240, runs=200, confidence=0.975, batch_items=20, seed=0)
    below, above = result["means"]["0.3"], result["means"]["0.5"]
    # At or below chance: never shown, and stopped as too degraded long before the last item.
    assert below["shown_rate"] == below["shown_by_full_rate"] == 0.0 and below["items_fraction"] < 0.5
    # Clearly above chance: the stop takes (almost) none of the models the bounds would show.
    assert above["shown_rate"] >= above["shown_without_futility_rate"] - 0.02 and above["shown_rate"] > 0.85
    assert simulate_competence([0.3, 0.5], 1 / 3, n_items=240, runs=200, confidence=0.975, batch_items=20, seed=0) == result
    # The guard waits for the smaller of its own threshold and the rules': the same at any larger
    # one, and no stop at all at 0.
    assert result["futility"] == FUTILE_CHANCE > GUARD_FUTILE_CHANCE
    larger = simulate_competence([0.3, 0.5], 1 / 3, n_items=240, runs=200, confidence=0.975, batch_items=20, seed=0, futility=0.6)
    assert larger["means"] == result["means"]
    never = simulate_competence([0.3, 0.5], 1 / 3, n_items=240, runs=200, confidence=0.975, batch_items=20, seed=0, futility=0.0)
    assert all(row["shown_rate"] == row["shown_without_futility_rate"] for row in never["means"].values())
    assert never["means"]["0.3"]["items_fraction"] == 1.0


# -- the order items are drawn in -----------------------------------------------------------------
def test_stratified_order_is_fixed_by_the_seed_and_balanced():
    items = load_suite("builtin", limit=12).items
    order = stratified_order(items, seed=5)
    assert sorted(i.item_id for i in order) == sorted(i.item_id for i in items)
    assert [i.item_id for i in stratified_order(list(reversed(items)), seed=5)] == [i.item_id for i in order]
    assert [i.item_id for i in stratified_order(items, seed=6)] != [i.item_id for i in order]
    categories = sorted({i.category for i in items})
    for n in range(1, len(order) + 1):
        counts = Counter(i.category for i in order[:n])
        shares = [counts.get(c, 0) for c in categories]
        assert max(shares) - min(shares) <= 1
    # Within a category, its conditions in proportion too.
    for category in categories:
        mine = [i for i in order if i.category == category]
        share = sum(i.condition == "ambig" for i in mine) / len(mine)
        for n in range(1, len(mine) + 1):
            assert abs(sum(i.condition == "ambig" for i in mine[:n]) - share * n) <= 1


# -- on a tiny model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return drive(load_model(str(tiny_llama)))


@pytest.fixture(scope="module")
def suite():
    return load_suite("builtin", limit=24)


@pytest.fixture(scope="module")
def baseline(tiny, suite):
    return drive(run_probe(tiny, suite, ProbeSettings(batch_items=40))).results


CLEAR = GateSettings(rules=(GateRule("transition_rate", 0.5), GateRule("accuracy_disambig_drop", 0.6)), competence=False)


def test_sequential_probe_stops_early_when_the_answer_is_clear(tiny, suite, baseline):
    # The variant is the baseline's own model: no item changes, so every change is clearly 0.
    events = []
    run = drive(probe_sequentially(tiny, suite, CLEAR, ProbeSettings(), variant="variant", baseline=baseline, batch_items=10), events.append)
    assert run.settled and not run.cancelled
    assert run.items_scored < run.items_total == len(suite.items) == 120
    assert events[-1].done == run.items_scored and "0 verdicts open" in events[-1].message
    # Each look carries the running figures over the items scored, as a full probe's events do.
    from audit.probes.job import live_figures
    assert events[-1].data["open_verdicts"] == 0 and events[-1].data["items_per_s"] > 0
    assert events[-1].data["categories"] == live_figures(run.results, suite, "mean")["categories"]
    assert [f.verdict for f in run.gate.findings] == [PASS, PASS]
    for finding in run.gate.findings:
        assert finding.items_used is not None and 0 < finding.items_used <= run.items_scored
        assert finding.items_used % 10 == 0
        assert f"({finding.items_used:,} items)" in finding.line()
    assert max(f.items_used for f in run.gate.findings) == run.items_scored
    data = run.to_dict()
    assert data["stopped"] == "settled" and data["items_scored"] == run.items_scored
    stored = [GateFinding.from_dict(f) for f in data["gate"]["findings"]]
    assert [f.items_used for f in stored] == [f.items_used for f in run.gate.findings]
    report = sequential_markdown([data])
    assert f"{run.items_scored:,} of 120 items scored, stopped once every verdict settled" in report
    for finding in run.gate.findings:
        assert f"| {finding.items_used:,} of 120 |" in report
    # The same seed scores the same items and settles at the same count.
    again = drive(probe_sequentially(tiny, suite, CLEAR, ProbeSettings(), variant="variant", baseline=baseline, batch_items=10))
    assert [r.item_id for r in again.results] == [r.item_id for r in run.results]
    assert [f.to_dict() for f in again.gate.findings] == [f.to_dict() for f in run.gate.findings]


def test_a_figure_without_an_anytime_bound_is_judged_on_every_item(tiny, suite, baseline):
    gate = GateSettings(rules=(GateRule("transition_rate", 0.5), GateRule("transition_rate", 0.5, category="category_mean")), competence=False)
    run = drive(probe_sequentially(tiny, suite, gate, ProbeSettings(), variant="variant", baseline=baseline, batch_items=40))
    assert not run.settled and run.items_scored == 120
    early, whole = run.gate.findings
    assert early.verdict == PASS and early.items_used < 120
    assert whole.items_used == 120 and whole.verdict == PASS
    # Judged on every item with the fixed-sample bound, as a full probe judges it.
    halfway = replay(run.results[:80], gate, variant="variant", total=120, baseline=baseline, batch_items=40)[0]
    assert "no anytime-valid bound" in halfway.findings[1].reason


def test_a_verdict_every_item_would_not_settle_stops_early_as_inconclusive(tiny, suite, baseline):
    # The variant is the baseline's own model: the relative change in SRS is exactly 0, on a
    # limit of 0. Its bounds straddle the limit at every count, and a full probe would not settle
    # it either: stopped as inconclusive (never a pass), saying why.
    gate = GateSettings(rules=(GateRule("srs_relative_change_pct", 0.0), GateRule("transition_rate", 0.5)), competence=False)
    run = drive(probe_sequentially(tiny, suite, gate, ProbeSettings(), variant="variant", baseline=baseline, batch_items=20))
    assert run.settled and run.items_scored < run.items_total
    srs, transitions = run.gate.findings
    assert srs.verdict == INCONCLUSIVE and srs.value == 0.0 and srs.items_used < run.items_total
    assert f"stopped at {srs.items_used:,} items: scoring every item would settle it with about" in srs.reason
    assert transitions.verdict == PASS
    # In full, the same verdict.
    full = replay(run.results, gate, variant="variant", baseline=baseline, total=run.items_scored)[0]
    assert full.findings[0].verdict == INCONCLUSIVE


def test_the_baseline_is_judged_on_every_item_it_scored_before(tiny, suite, baseline):
    # The baseline was scored in full before the variant's probe: its competence is read from all
    # of its items with the full probe's bounds, and settled before the variant's first item.
    gate = GateSettings(rules=(GateRule("transition_rate", 0.5),), competence=True)
    run = drive(probe_sequentially(tiny, suite, gate, ProbeSettings(), variant="variant", baseline=baseline, batch_items=20))
    mine = [f for f in run.gate.findings if f.variant == "baseline"]
    assert [f.metric for f in mine] == ["accuracy_disambig"]
    whole = ms.single_bounds([ms.item_facts(r) for r in baseline], "accuracy_disambig", gate.confidence)
    assert (mine[0].value, mine[0].lower, mine[0].upper) == (whole.value, whole.lower, whole.upper)
    assert mine[0].items_used == 0 and "from the baseline's probe of every item" in mine[0].reason
    # The same verdict as judging both runs in full.
    full = replay(run.results, gate, variant="variant", baseline=baseline, total=run.items_scored)[0]
    assert [f.verdict for f in full.findings if f.variant == "baseline"] == [mine[0].verdict]


def test_a_figure_is_sized_for_the_items_of_its_scope(suite, baseline):
    # One look at every item: a category's figure is the confidence sequence sized for the
    # suite's items of that category.
    category = sorted({r.category for r in baseline})[0]
    gate = GateSettings(rules=(GateRule("bias_score_ambig", 1.0, category=category),), competence=False)
    by_id = {r.item_id: r for r in baseline}
    ordered = [by_id[i.item_id] for i in stratified_order(suite.items, 0)]
    finding = replay(ordered, gate, variant="variant", baseline=baseline, batch_items=len(ordered))[0].findings[0]
    spec = ms.SINGLE["bias_score_ambig"]
    values = [spec.value(f) for f in map(ms.item_facts, ordered) if spec.covers(f) and f.category == category]
    items = sum(i.category == category for i in suite.items)
    assert len(values) < items
    sized = anytime_mean_bounds(values, -1.0, 1.0, gate.confidence, horizon=items)
    assert (finding.lower, finding.upper) == (sized.lower, sized.upper)
    plain = anytime_mean_bounds(values, -1.0, 1.0, gate.confidence)  # the plug-in for every count
    assert (plain.lower, plain.upper) != (sized.lower, sized.upper)


def test_settle_chance_reads_the_open_verdicts_only():
    def finding(verdict, metric="transition_rate", check="rule", limit=0.2, limit_is="max", reason="the bounds straddle the limit"):
        return GateFinding(check, "r", metric, "variant", "overall", "builtin", verdict, 0.15, 0.05, 0.25, limit, limit_is, 0.975, reason)

    fixed = Bounds(0.15, 0.05, 0.25, 100, 0.975)
    # The hand case of test_chance_to_settle_by_hand: 0.5 to pass, 0.000855176 to fail.
    assert settle_chance(finding(INCONCLUSIVE), fixed, 0.25) == pytest.approx(0.500855176, abs=2e-9)
    assert settle_chance(finding(PASS), fixed, 0.25) is None
    # Not judged while the guard is open: its own bounds' chance, since if they will not settle
    # it, it ends inconclusive whatever the guard decides.
    assert settle_chance(finding(INCONCLUSIVE, reason="not judged: the variant is too degraded to judge"), fixed, 0.25) == pytest.approx(0.500855176, abs=2e-9)
    assert settle_chance(finding(INCONCLUSIVE), fixed, 1.0) is None and settle_chance(finding(INCONCLUSIVE), None, 0.5) is None
    # Accuracy not shown above chance (0.2 here): the chance of showing it, the lower bound's side.
    guard = finding(FAIL, metric="accuracy_disambig", check="competence", limit_is="min")
    assert settle_chance(guard, fixed, 0.25) == pytest.approx(0.000855176, abs=2e-9)
    assert settle_chance(replace(guard, verdict=PASS), fixed, 0.25) is None
    # The verdict is read from the anytime bounds (the finding's), so they must reach the limit:
    # twice as wide as the fixed-sample ones, 0.0584172 to pass and 1.27181e-6 to fail
    # (test_chance_to_settle_with_wider_final_bounds_by_hand).
    wide = replace(finding(INCONCLUSIVE), lower=-0.05, upper=0.35)
    assert settle_chance(wide, fixed, 0.25) == pytest.approx(0.0584172 + 1.27181e-6, abs=3e-7)
    assert settle_chance(replace(guard, lower=-0.05, upper=0.35), fixed, 0.25) == pytest.approx(1.27181e-6, abs=2e-11)
    # The same widening given for the last item (as a sequence sized for a horizon gives it),
    # whatever the finding's bounds are now.
    assert settle_chance(finding(INCONCLUSIVE), fixed, 0.25, (2.0, 2.0)) == pytest.approx(0.0584172 + 1.27181e-6, abs=3e-7)


def test_sequential_probe_needs_a_baseline_and_a_gate(tiny, suite):
    with pytest.raises(UserError, match="needs the baseline"):
        drive(probe_sequentially(tiny, suite, CLEAR, ProbeSettings(), variant="variant"))
    with pytest.raises(UserError, match="no gate rules"):
        drive(probe_sequentially(tiny, suite, GateSettings(competence=False), ProbeSettings(), variant="baseline"))
    with pytest.raises(UserError, match="the order seed must be at least 0, not -1"):
        drive(probe_sequentially(tiny, suite, CLEAR, ProbeSettings(), variant="baseline", seed=-1))


def test_finding_line_is_unchanged_when_scored_in_full():
    data = {"category": "overall", "value": 0.1, "lower": 0.0, "upper": 0.2, "limit_is": "max", "verdict": "pass",
            "variant": "v", "metric": "transition_rate", "limit": 0.5, "confidence": 0.95, "reason": "upper bound within the limit"}
    assert not finding_line(data).endswith("items)")


PLAN = """\
model = "smollm2-135m"

[gate]
confidence = 0.95
competence = false

[[gate.rules]]
metric = "transition_rate"
max = 0.5

[[gate.rules]]
metric = "perplexity_relative_change_pct"
max = 50.0
"""


def sequential_probe_args(model, tmp_path, capsys, out):
    """The command line of a sequential probe of `model` against its own full probe (scored
    here, 24 items per category), with PLAN's gate, writing its items to `out`."""
    from tui.cli import main

    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    base = tmp_path / "base.jsonl"
    assert main(["probe", "--model", str(model), "--limit", "24", "--items-out", str(base), "--json"]) == 0
    capsys.readouterr()
    return ["probe", "--model", str(model), "--limit", "24", "--sequential", "--gate", str(plan), "--baseline-items", str(base),
            "--sequential-batch", "10", "--items-out", str(out)]


def test_probe_cli_sequential(tiny_llama, tmp_path, capsys):
    from tui.cli import main

    out = tmp_path / "seq.jsonl"
    args = sequential_probe_args(tiny_llama, tmp_path, capsys, out)
    plan, base = tmp_path / "plan.toml", tmp_path / "base.jsonl"
    assert main(args + ["--json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["stopped"] == "settled" and data["items_scored"] < data["items_total"] == 120
    # Like the full probe's JSON, it names the threads and scoring workers the model ran on.
    assert data["threads"]["scoring_workers"] == data["threads"]["threads"] >= 1 and data["threads"]["why"]
    # The perplexity rule is not an item probe: left out, not judged here.
    (finding,) = data["gate"]["findings"]
    assert finding["metric"] == "transition_rate" and finding["verdict"] == "pass" and finding["items_used"] <= data["items_scored"]
    assert data["futility"] == FUTILE_CHANCE and json.loads(out.read_text().splitlines()[0])["run"]["sequential"]["futility"] == FUTILE_CHANCE
    assert main(args) == 0
    shown = capsys.readouterr().out
    assert f"{data['items_scored']:,} of 120 items scored, stopped once every verdict settled" in shown
    assert f"{finding['items_used']:,} of 120" in shown
    # Its items file is not the baseline's items: probe-compare refuses it and says why.
    assert main(["probe-compare", str(base), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "are not comparable: items differ" in err[0]
    assert f"{out} holds the {data['items_scored']:,} of 120 items a sequential probe scored before it stopped" in err[0]
    # Bad input: one line, exit 2.
    assert main(["probe", "--model", str(tiny_llama), "--gate", str(plan)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--gate applies to --sequential" in err[0]
    assert main(["probe", "--model", str(tiny_llama), "--futility", "0.1"]) == 2
    assert "--futility applies to --sequential" in capsys.readouterr().err
    assert main(args + ["--futility", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "futility must be within [0, 1), not 1" in err[0]
    assert main(["probe", "--model", str(tiny_llama), "--limit", "6", "--sequential", "--gate", str(plan), "--baseline-items", str(base), "--mode", "generate"]) == 2
    assert "was not scored like this probe" in capsys.readouterr().err


def test_a_baseline_that_cannot_answer_is_named_as_the_reason_its_variant_is_not_judged():
    """The baseline answers at random (its competence fails, from its full probe); the variant
    answers every question. Its bias rules cannot be judged against that baseline: every reason
    says the baseline is why, not the variant, and the table puts the baseline's own verdict under
    the baseline, with no share of this probe's items."""
    from tests.test_gate import ambiguous, answered, qa

    rng = random.Random(0)
    baseline = [qa(i, "ambig", rng.randrange(3)) for i in range(200)] + [qa(i, "disambig", rng.randrange(3)) for i in range(200)]
    variant = ambiguous(range(40)) + answered()
    ordered = [variant[i] for i in np.random.default_rng(0).permutation(len(variant))]
    gate = GateSettings(rules=(GateRule("srs_relative_change_pct", 25.0), GateRule("transition_rate", 0.2)))
    # After the first batch: an open competence check of the variant is not waited for, because of the baseline.
    first = {(f.variant, f.metric): f for f in replay(ordered[:20], gate, variant="variant", baseline=baseline, total=400)[0].findings}
    drop = first[("variant", "accuracy_disambig_drop")]
    assert drop.verdict == INCONCLUSIVE and drop.reason.endswith("; stopped at 20 items: the baseline is too degraded to judge against")
    # To the end: it stops once the variant's own competence is settled.
    report, used, settled = replay(ordered, gate, variant="variant", baseline=baseline, batch_items=20)
    assert settled and used < len(ordered)
    findings = {(f.variant, f.metric): f for f in report.findings}
    assert findings[("baseline", "accuracy_disambig")].verdict == FAIL
    assert findings[("variant", "accuracy_disambig")].verdict == PASS
    for metric in ("srs_relative_change_pct", "transition_rate"):
        assert findings[("variant", metric)].verdict == INCONCLUSIVE
        assert findings[("variant", metric)].reason == "not judged: the baseline is too degraded to judge against (see its competence)"
    assert "variant is too degraded" not in " ".join(f.reason for f in report.findings)
    rows = sequential_rows([{"variant": "variant", "items_total": 400, "gate": report.to_dict()}])
    assert rows[0] == ["baseline", "accuracy_disambig", "FAIL", "-", "-"]
    assert [row[0] for row in rows[1:]] == ["variant"] * (len(rows) - 1)


def test_a_figure_no_item_covers_is_not_measured_yet_until_the_last_item_and_then_not_measured():
    """Only disambiguated items: SRS covers none. While items remain it is 'not measured yet';
    once every item is scored, plainly not measured, with no 'yet' and no 'so far'."""
    from tests.test_gate import answered

    items = answered(60)
    gate = GateSettings(rules=(GateRule("srs_relative_change_pct", 25.0),), competence=False)
    early = replay(items[:20], gate, variant="variant", baseline=items, total=60)[0].findings[0]
    assert early.value is None and early.reason.startswith("not measured yet: none of the items scored so far")
    report, used, settled = replay(items, gate, variant="variant", baseline=items, batch_items=20)
    (finding,) = report.findings
    assert used == 60 and not settled
    assert finding.verdict == INCONCLUSIVE and finding.reason.startswith("not measured: none of the suite's items is one it covers")


# -- drawing from the categories with open verdicts only --------------------------------------------
def test_draw_takes_the_order_then_the_open_categories_each_in_its_own_order():
    from audit.sequential import Draw

    order = [(c, i) for i in range(4) for c in "ABC"]  # A0 B0 C0 A1 B1 C1 ...
    draw = Draw(order, category=lambda item: item[0])
    assert draw.take(4) == [("A", 0), ("B", 0), ("C", 0), ("A", 1)]
    assert draw.has({"C"}) and not draw.has({"A", "B", "C"})
    # B has 3 left and C 3: they take turns, each in its own order.
    assert draw.take(4, {"B", "C"}) == [("B", 1), ("C", 1), ("B", 2), ("C", 2)]
    # In proportion to what each has left: A 2, C 1.
    assert draw.take(3, {"A", "C"}) == [("A", 2), ("C", 3), ("A", 3)]
    assert len(draw) == 1 and draw.take(5, {"A"}) == [] and not draw.has({"B"})
    with pytest.raises(ValueError, match="narrowed"):
        draw.take(5)  # the drawn order is not taken up again
    assert draw.take(5, {"B", "C"}) == [("B", 3)] and len(draw) == 0


def _three_categories(seed=0):
    """Three categories of 60 ambiguous items each. The variant answers as the baseline except in
    C, where 20 of 60 turn bias-aligned: the change over the suite and A's and B's bias scores settle
    early, C's bias score (about 0.33 on a limit of 0.4) late."""
    from tests.test_gate import qa

    baseline, variant = [], []
    rng = np.random.default_rng(seed)
    for category in "ABC":
        turned = set(rng.choice(60, 20, replace=False).tolist()) if category == "C" else set()
        for i in range(60):
            baseline.append(qa(i, "ambig", 2, category=category))
            variant.append(qa(i, "ambig", 0 if i in turned else 2, category=category))
    by_id = {r.item_id: r for r in variant}
    ordered = [by_id[item.item_id] for item in stratified_order(variant, seed)]
    return baseline, ordered


NARROW_GATE = GateSettings(rules=(GateRule("transition_rate", 0.5), GateRule("bias_score_ambig", 0.4, category="each")), competence=False)


def test_once_only_a_category_is_open_its_items_alone_are_drawn_and_its_verdict_needs_fewer():
    from audit.sequential import replay_judge

    baseline, ordered = _three_categories()
    judge = replay_judge(ordered, NARROW_GATE, variant="variant", baseline=baseline, batch_items=10, futility=0.0)
    plain = replay_judge(ordered, NARROW_GATE, variant="variant", baseline=baseline, batch_items=10, futility=0.0, narrow=False)
    evidence = judge.evidence
    at = evidence.narrowed_at
    assert at is not None and 0 < at < len(evidence.results)
    assert plain.evidence.narrowed_at is None
    # Up to the narrowing the drawn order; from there C's items only, in C's drawn order.
    drawn = [r.item_id for r in evidence.results]
    assert drawn[:at] == [r.item_id for r in ordered[:at]]
    assert {r.category for r in evidence.results[at:]} == {"C"}
    assert [i for i in drawn if i.startswith("C")] == [r.item_id for r in ordered if r.category == "C"][:evidence.scored["C"]]
    mine = {(f.metric, f.category): f for f in judge.report().findings}
    theirs = {(f.metric, f.category): f for f in plain.report().findings}
    assert {k: f.verdict for k, f in mine.items()} == {k: f.verdict for k, f in theirs.items()}
    c = ("bias_score_ambig", "C")
    assert mine[c].items_used < theirs[c].items_used
    assert len(evidence.results) < len(plain.evidence.results)
    # C's figure is read from C's items alone, in its order: at the last look, the bounds a probe
    # that drew only those items gives (stakes sized for C's 60 items either way), or tighter
    # ones seen at an earlier look (the running intersection).
    c_items = [r for r in evidence.results if r.category == "C"]
    alone = replay(c_items, replace(NARROW_GATE, rules=(GateRule("bias_score_ambig", 0.4, category="C"),)), variant="variant",
                   baseline=baseline, batch_items=len(c_items), categories={"A": 60, "B": 60, "C": 60}, total=180, futility=0.0)[0].findings[0]
    assert alone.value == mine[c].value
    assert evidence.measure("variant", "bias_score_ambig", None, "C", NARROW_GATE.confidence).n == len(c_items)
    assert alone.lower <= mine[c].lower <= mine[c].value <= mine[c].upper <= alone.upper
    # The change over the suite keeps the stratified items it was settled on: the same as the
    # drawn order's first `at` items give.
    before = replay(ordered[:at], NARROW_GATE, variant="variant", baseline=baseline, batch_items=at, total=180, futility=0.0)[0]
    overall = {(f.metric, f.category): f for f in before.findings}[("transition_rate", "overall")]
    frozen = mine[("transition_rate", "overall")]
    assert frozen.value == overall.value
    assert evidence.measure("variant", "transition_rate", None, "overall", NARROW_GATE.confidence).n == at
    assert frozen.upper <= overall.upper  # the running intersection may be tighter, never looser
    assert sequential_outcome({"items_scored": len(drawn), "items_total": 180, "stopped": "settled", "narrowed_at": at}) == (
        f"{len(drawn)} of 180 items scored, stopped once every verdict settled; after {at} items, only the categories with open verdicts")
    # The futility stop's chances are kept, look by look: the one it stopped on among them.
    stopped = replay_judge(ordered, NARROW_GATE, variant="variant", baseline=baseline, batch_items=10)
    assert stopped.futile and all((key, stopped.settled_at[key], chance) in stopped.predicted for key, chance in stopped.futile.items())
    assert judge.predicted and all(0.0 <= chance <= 1.0 and n <= judge.settled_at.get(key, len(drawn)) for key, n, chance in judge.predicted)
    # The same items give the same run.
    again = replay_judge(ordered, NARROW_GATE, variant="variant", baseline=baseline, batch_items=10, futility=0.0)
    assert [r.item_id for r in again.evidence.results] == drawn
    assert [f.to_dict() for f in again.report().findings] == [f.to_dict() for f in judge.report().findings]


def test_no_narrowing_while_a_verdict_over_the_suite_or_every_category_is_open():
    from audit.sequential import replay_judge

    baseline, ordered = _three_categories()
    # The mean over categories has no anytime bound: open to the last item, so the drawn order holds.
    gate = replace(NARROW_GATE, rules=NARROW_GATE.rules + (GateRule("transition_rate", 0.5, category="category_mean"),))
    judge = replay_judge(ordered, gate, variant="variant", baseline=baseline, batch_items=10, futility=0.0)
    assert judge.evidence.narrowed_at is None and [r.item_id for r in judge.evidence.results] == [r.item_id for r in ordered]


def test_a_rule_held_back_by_its_guard_stops_with_the_guard_s_chance_and_is_judged_if_the_guard_is_shown():
    """A bias rule is judged only once its variant is shown above chance. Its own figure would
    pass, but the variant answers the disambiguated questions at chance (1 in 3) so far: the rule
    cannot settle with more chance than the guard's of being shown, and stops on that (reason
    given), before the guard itself is given up as too degraded. Where the variant's later
    answers are right after all, the guard is shown and the rule is judged afresh on its bounds."""
    from tests.test_gate import ambiguous, answered, qa

    baseline = ambiguous(range(40)) + answered()
    gate = GateSettings(rules=(GateRule("bias_score_ambig", 0.5),), max_accuracy_drop=1.0)

    def replayed(right_after):
        # Ambiguous items all "unknown" (bias score 0); disambiguated ones right one time in three
        # until `right_after`, then always right; the two conditions take turns.
        disambig = [qa(i, "disambig", 1 if i >= right_after or i % 3 == 0 else 0) for i in range(200)]
        ordered = [r for pair in zip(ambiguous(()), disambig) for r in pair]
        report, used, settled = replay(ordered, gate, variant="variant", baseline=baseline, batch_items=20)
        return {f.metric: f for f in report.findings if f.variant == "variant"}, used

    at_chance, used = replayed(200)
    guard, rule = at_chance["accuracy_disambig"], at_chance["bias_score_ambig"]
    assert guard.verdict == FAIL and "stopped at" in guard.reason and guard.items_used == used < 400
    assert rule.verdict == INCONCLUSIVE and rule.reason.startswith("not judged")
    assert rule.items_used < guard.items_used
    chance = float(rule.reason.split("with about ")[1].split("%")[0]) / 100
    assert GUARD_FUTILE_CHANCE <= chance < FUTILE_CHANCE
    assert f"stopped at {rule.items_used:,} items: it is judged once the variant is shown above chance" in rule.reason
    # Its own bounds are within the limit: left alone, they would not have stopped it.
    assert rule.upper <= 0.5

    shown, _ = replayed(60)
    guard, rule = shown["accuracy_disambig"], shown["bias_score_ambig"]
    assert guard.verdict == PASS and rule.verdict == PASS
    assert rule.items_used == guard.items_used and "stopped" not in rule.reason


# -- items scored with their context group ----------------------------------------------------------
def _question(item_id: str, context: str, kind: str = QA) -> ProbeItem:
    return ProbeItem(item_id, "Age", kind, ("a", "b", "unknown"), (0,), context=context, question="Who?")


def test_context_groups_by_hand():
    items = [
        _question("a-neg", "A man and a woman."),
        _question("a-nonneg", "A man and a woman."),
        _question("a-dis", "A man and a woman. The man left."),  # another context, alone on it
        _question("b", "Two neighbours."),  # alone: no group
        _question("c1", "An old and a young."),
        _question("c2", "An old and a young."),
        _question("c3", "An old and a young."),
        _question("s1", "A man and a woman.", kind=SENTENCES),  # not a question: never grouped
        _question("e1", ""),  # no context: never grouped
        _question("e2", ""),
    ]
    assert context_groups(items) == {
        "a-neg": ("a-neg", "a-nonneg"), "a-nonneg": ("a-neg", "a-nonneg"),
        "c1": ("c1", "c2", "c3"), "c2": ("c1", "c2", "c3"), "c3": ("c1", "c2", "c3"),
    }
    # More than MAX_CONTEXT_GROUP items on one context make no group.
    many = [_question(f"q{n}", "Q:") for n in range(MAX_CONTEXT_GROUP + 1)]
    assert context_groups(many) == {}
    assert len(set(context_groups(many[:MAX_CONTEXT_GROUP]).values())) == 1


def test_items_are_scored_with_their_context_group_once_and_judged_in_the_drawn_order(tiny, suite, baseline, monkeypatch):
    from audit.probes import job

    scored: list[list[str]] = []  # the ids of each call's items
    score_batch = job.score_batch

    def recording(model, suite, chunk, settings, norm):
        scored.append([item.item_id for item in chunk])
        return score_batch(model, suite, chunk, settings, norm)

    monkeypatch.setattr(job, "score_batch", recording)
    run = drive(probe_sequentially(tiny, suite, CLEAR, ProbeSettings(), variant="variant", baseline=baseline, batch_items=10))
    order = [item.item_id for item in stratified_order(suite.items, 0)]
    assert [r.item_id for r in run.results] == order[:run.items_scored]
    # Each item computed once: those the judge took, and those scored ahead it never reached.
    ids = [i for call in scored for i in call]
    assert len(ids) == len(set(ids)) == run.items_scored + run.scored_ahead and len(scored[0]) > 10
    assert set(ids) >= set(order[:run.items_scored])
    assert run.to_dict()["scored_ahead_unused"] == run.scored_ahead
    assert sequential_outcome({"items_scored": 40, "items_total": 480, "stopped": "settled", "scored_ahead_unused": 96}) == (
        "40 of 480 items scored, stopped once every verdict settled; 96 more scored ahead with their context, not reached")
    # Cancelled at the look that narrowed: no item was drawn from the open categories only.
    assert sequential_outcome({"items_scored": 120, "items_total": 480, "stopped": "cancelled", "narrowed_at": 120}) == (
        "120 of 480 items scored, cancelled")
    # Without the groups: the same items judged, the same verdicts, the same scores to float noise.
    monkeypatch.setattr(sequential, "context_groups", lambda items: {})
    scored.clear()
    alone = drive(probe_sequentially(tiny, suite, CLEAR, ProbeSettings(), variant="variant", baseline=baseline, batch_items=10))
    assert [i for call in scored for i in call] == order[:alone.items_scored] and alone.scored_ahead == 0
    assert [r.item_id for r in alone.results] == [r.item_id for r in run.results]
    assert [f.verdict for f in alone.gate.findings] == [f.verdict for f in run.gate.findings]
    for a, b in zip(alone.results, run.results):
        assert a.chosen == b.chosen and a.option_logprobs == pytest.approx(b.option_logprobs, abs=1e-4)


def test_a_probe_replayed_from_its_looks_gives_its_verdicts_where_a_fresh_draw_need_not():
    """A stored run keeps the items a sequential probe scored, in order, and the items at each of
    its looks: replayed so, the judge takes the same batches and narrows at the same item, so it
    gives the probe's verdicts and items used. Drawing the batches again from the scored items
    alone finds nothing but the open categories left to draw, so it never narrows, and reads the
    change over the suite from items that are no longer a stratified sample of it."""
    from audit.sequential import replay_judge, replay_looks

    categories = {"A": 60, "B": 60, "C": 60}
    drawn_again_differs = False
    for seed in range(3):
        baseline, ordered = _three_categories(seed)
        for futility in (0.0, FUTILE_CHANCE):
            probe = replay_judge(ordered, NARROW_GATE, variant="variant", baseline=baseline, batch_items=10, futility=futility)
            evidence = probe.evidence
            assert evidence.narrowed_at is not None and probe.looks[-1] == len(evidence.results) < 180
            again = replay_looks(evidence.results, NARROW_GATE, variant="variant", looks=probe.looks, narrowed_at=evidence.narrowed_at,
                                 total=180, categories=categories, baseline=baseline, futility=futility)
            assert again.looks == probe.looks and again.evidence.narrowed_at == evidence.narrowed_at
            assert [f.to_dict() for f in again.report().findings] == [f.to_dict() for f in probe.report().findings]
            fresh = replay_judge(evidence.results, NARROW_GATE, variant="variant", baseline=baseline, batch_items=10, futility=futility,
                                 total=180, categories=categories)
            assert fresh.evidence.narrowed_at is None
            drawn_again_differs |= [f.to_dict() for f in fresh.report().findings] != [f.to_dict() for f in probe.report().findings]
    assert drawn_again_differs
    with pytest.raises(ValueError, match="do not fit"):
        replay_looks(ordered[:20], NARROW_GATE, variant="variant", looks=[10, 30], narrowed_at=None, total=180, categories=categories)


def test_a_probe_resumed_from_its_tightest_bounds_reads_as_replayed():
    """`resume` reads a stopped probe's figures from one pass over its items and the tightest
    bounds it kept, as replaying every look does, the figures over the suite from the items
    before it narrowed."""
    from audit.sequential import replay_judge, replay_looks, resume

    categories = {"A": 60, "B": 60, "C": 60}
    baseline, ordered = _three_categories(1)
    probe = replay_judge(ordered, NARROW_GATE, variant="variant", baseline=baseline, batch_items=10)
    evidence = probe.evidence
    assert evidence.narrowed_at is not None
    shape = dict(variant="variant", narrowed_at=evidence.narrowed_at, total=180, categories=categories, baseline=baseline)
    replayed = replay_looks(evidence.results, NARROW_GATE, looks=probe.looks, **shape).evidence
    resumed = resume(evidence.results, tightest=evidence.tightest(), **shape)
    assert sorted(map(tuple, resumed.tightest())) == sorted(map(tuple, replayed.tightest()))
    for metric in ("transition_rate", "bias_score_ambig", "accuracy_ambig", "net_transition_rate"):
        for category in ("overall", "A", "B", "C"):
            for confidence in (NARROW_GATE.confidence, 0.8):
                assert resumed.measure("variant", metric, None, category, confidence) == replayed.measure("variant", metric, None, category, confidence)


def test_the_fixed_bounds_a_verdict_is_predicted_from_are_those_of_its_own_level():
    """The guard reads the accuracy drop at the gate's level and a rule may read it at another:
    each finding's chance to settle comes from the fixed-sample bounds at its own level."""
    from audit.probes.items import ItemResult

    def answer(item_id, chosen):
        return ItemResult(item_id, "bbq", "A", "disambig", "neg", "loglik", "sum", 3, 0, 2, (0,), chosen, chosen == 0,
                          None, None, 0.0)

    rng = np.random.default_rng(0)
    baseline = {f"i{j}": answer(f"i{j}", 0) for j in range(200)}
    evidence = sequential.SequentialEvidence("v1", "bbq", 200, {"A": 200}, baseline=baseline)
    scored = [answer(f"i{j}", 0 if rng.random() < 0.9 else 1) for j in range(60)]
    evidence.extend(scored)
    for level in (0.95, 0.99):
        evidence.measure("v1", "accuracy_disambig_drop", None, "overall", level)
    pairs = ms.pair_facts([baseline[r.item_id] for r in scored], scored)[0]
    for level in (0.95, 0.99):
        assert evidence.fixed_bounds("v1", "accuracy_disambig_drop", "overall", level) == ms.paired_bounds(pairs, "accuracy_disambig_drop", level)


def test_the_items_said_to_settle_an_open_verdict_come_from_the_fixed_sample_bounds():
    """An anytime bound sized for the whole suite narrows faster than 1/sqrt(n) while few items
    are scored: read from it, "about N more items" was two or three times too many."""
    from audit.gate import Measurement, _decide_max

    x = np.array(([1.0] * 3 + [0.0] * 7) * 4)  # 40 items, mean 0.3
    anytime = anytime_mean_bounds(x, 0.0, 1.0, 0.95, 480)
    fixed = mean_bounds(x, 0.0, 1.0, 0.95)
    open_ = Measurement(anytime.value, anytime.lower, anytime.upper, anytime.n, fixed=lambda: fixed)
    verdict, reason, needed = _decide_max(open_, 0.4)
    assert verdict == INCONCLUSIVE and needed == items_to_settle(fixed, 0.4) < items_to_settle(anytime, 0.4) / 2
    assert f"about {needed:,} more items would settle it" in reason
    # A full probe's figure has no other bounds to read.
    assert _decide_max(Measurement(fixed.value, fixed.lower, fixed.upper, fixed.n), 0.4)[2] == items_to_settle(fixed, 0.4)

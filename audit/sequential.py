"""Sequential probing: items in a fixed stratified random order, the gate checked after every batch
with anytime-valid bounds, and scoring stopped once every verdict is settled.

A probe costs the same however clear the answer is; on a slow device scoring every item before
deciding takes hours. Here the items are drawn in an order fixed by a seed, spread evenly over
the suite's categories and conditions, and after each batch every gate figure is bounded again
with a confidence sequence (`audit.stats.anytime_mean_bounds`): bounds that hold at every
number of items at once, so looking after each batch does not inflate the error. Each figure
keeps the tightest bounds seen so far (the running intersection of its confidence sequence), so
a settled verdict stays settled. Each figure's stakes are sized for the items of its scope
(its category's, or the suite's: the most it can cover), so its bounds at the last item come
close to the full probe's (`audit.stats.anytime_stakes`). Changes against the baseline are
bounded on the paired per-item differences of the same items; a ratio (the relative change in
SRS) by inverting the confidence sequences of the paired contrasts num - theta * den
(`audit.stats.anytime_paired_ratio_bounds`), which needs no split of the error.

Once every verdict over the whole suite is settled and only some categories' verdicts are open,
items are drawn from those categories alone (`Draw`): the figures over the whole suite keep the
stratified items they were settled on, and each open category's items come in the same order as
before, only sooner, so its confidence sequences hold and its verdict needs fewer items scored.

A figure with no anytime-valid bound here (the mean over categories, whose weights change as
items arrive; the transition rate over a sampled noise floor) is never settled early: it is
judged on every item, with the fixed-sample bounds of `audit.probes.measures`. Figures that
are not item probes (perplexity) come from `full`, measured as before.

The baseline is not probed sequentially: it was scored on every item before (its items are the
pairs' other half), so its own figures (its competence) are read from all of its items with
fixed-sample bounds, as a full probe reads them, and are settled before the variant's first item.

A verdict that scoring every item would very likely leave open is not waited for: when the
predicted chance that its anytime bounds settle it by the last item (predicted from the
fixed-sample bounds, widened as much as the anytime ones will be there) falls under the
futility threshold, it stops as inconclusive (for accuracy not shown above chance: too degraded
to judge, under a smaller threshold), saying so. Once a variant is too degraded to judge, its
other open competence checks are not waited for; a rule left unjudged while the guard is open
stops the same way once its own bounds would very likely leave it open whatever the guard
decides. Stopping this way never gives a pass, so it costs power, never safety; a verdict the
bounds settle later (when other verdicts kept the probe going) takes their verdict instead.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import Counter, deque
from itertools import islice
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Hashable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from audit.errors import UserError
from audit.gate import AGAINST_DEGRADED_BASELINE, BASELINE, FAIL, INCONCLUSIVE, NOT_JUDGED, PASS, GateFinding, GateReport, Measurement, MeasurementSource, evaluate_gate
from audit.plans import GateSettings
from audit.probes import measures as ms
from audit.probes.compare import ITEM_FIGURES
from audit.probes.items import AMBIG, DISAMBIG, QA, ItemResult, ProbeItem
from audit.progress import Job, Progress
from audit.stats import Bounds, anytime_mean_bounds, anytime_paired_ratio_bounds, chance_to_settle, sequence_widening, sized_widening

DEFAULT_BATCH_ITEMS = 20  # items per look: small enough to stop soon, large enough to score in one call

T = TypeVar("T")


# -- the order items are drawn in -----------------------------------------------------------------
def _interleaved(groups: Mapping[Hashable, Sequence[T]], first: int | None = None) -> list[T]:
    """The groups' items merged in proportion to the groups' sizes: the j-th of a group's n items
    sits at (j + 1/2) / n of the way through, ties in the groups' order. With `first`, only the
    first that many of the merge (ranked from each group's first that many)."""
    ranked = []
    for index, name in enumerate(sorted(groups, key=repr)):
        members = groups[name]
        ranked += [((j + 0.5) / len(members), index, j, item) for j, item in enumerate(islice(members, first))]
    ranked.sort(key=lambda entry: entry[:3])
    return [entry[3] for entry in ranked[:first]]


def stratified_order(items: Sequence[T], seed: int, stratum: Callable[[T], Hashable] = lambda item: item.category,  # type: ignore[attr-defined]
                     within: Callable[[T], Hashable] = lambda item: item.condition,  # type: ignore[attr-defined]
                     key: Callable[[T], str] = lambda item: item.item_id) -> list[T]:  # type: ignore[attr-defined]
    """Every item once, in an order fixed by `seed` whatever order `items` came in, stratified by
    category: each category's items shuffled and spread evenly over its conditions, then the
    categories interleaved in proportion to their sizes, so every prefix holds each category's
    share to within one item (equal categories take turns)."""
    rng = np.random.default_rng(seed)
    groups: dict[Hashable, dict[Hashable, list[T]]] = {}
    for item in sorted(items, key=key):
        groups.setdefault(stratum(item), {}).setdefault(within(item), []).append(item)
    spread = {}
    for name in sorted(groups, key=repr):
        parts = {part: [members[i] for i in rng.permutation(len(members))] for part, members in sorted(groups[name].items(), key=repr)}
        spread[name] = _interleaved(parts)
    return _interleaved(spread)


class Draw:
    """The items still to score, drawn in the stratified order while a verdict over the whole
    suite is open; once only verdicts of single categories are, from those categories alone, each
    in its own drawn order, interleaved in proportion to what each has left. A category's items
    still come in the order fixed by the seed (only sooner), so its confidence sequences hold:
    which category comes next depends on the items before only. Drawing from some categories
    only is for good: the drawn order is not taken up again."""

    def __init__(self, order: Sequence[T], category: Callable[[T], str] = lambda item: item.category) -> None:  # type: ignore[attr-defined]
        self._order = list(order)
        self._category = category
        self._next = 0  # the drawn order's next item, until drawing narrows
        self._queues: dict[str, deque[T]] | None = None  # each category's items left, once it has
        self._left = Counter(category(item) for item in self._order)  # items left per category

    def __len__(self) -> int:
        return sum(self._left.values())

    def has(self, categories: set[str]) -> bool:
        """Whether any item of `categories` is left, and an item of another category too: drawing
        from `categories` only then changes what is scored."""
        return any(self._left[c] for c in categories) and any(n for c, n in self._left.items() if c not in categories)

    def take(self, n: int, only: set[str] | None = None) -> list[T]:
        """The next `n` items, of the categories `only` when given (from then on, always given)."""
        if only is None:
            if self._queues is not None:
                raise ValueError("drawing has narrowed to some categories: name them")
            batch = self._order[self._next : self._next + n]
            self._next += len(batch)
        else:
            if self._queues is None:
                self._queues = {}
                for item in self._order[self._next :]:
                    self._queues.setdefault(self._category(item), deque()).append(item)
            batch = _interleaved({name: self._queues[name] for name in only if self._queues.get(name)}, first=n)
            for item in batch:
                self._queues[self._category(item)].popleft()
        self._left.subtract(self._category(item) for item in batch)
        return batch


def _batches(draw: Draw, judge: "SequentialJudge", batch_items: int, narrow: bool = True) -> Iterator[list]:
    """The batches to score, each after the judge looked at the one before, until every verdict
    is settled or no item is left: from the categories with open verdicts only, once every other
    verdict is settled and some category has none left open (with `narrow`)."""
    while len(draw) and not judge.settled:
        only = judge.open_categories() if narrow else None
        if only is not None and (judge.evidence.narrowed_at is not None or draw.has(only)):
            judge.evidence.narrow()
            batch = draw.take(batch_items, only)
        else:
            batch = draw.take(batch_items)
        if not batch:
            return
        yield batch


# -- the gate's figures from the items scored so far ----------------------------------------------
PAIRED_FIGURES = ("srs_relative_change_pct", *ms.PAIRED)
NOT_ANYTIME = "no anytime-valid bound for it: judged on every item"


def _mapped(bounds: Bounds, fn: Callable[[float], float], low: float, high: float) -> Bounds:
    def f(x: float | None, unbounded: float) -> float | None:
        if x is None:
            return None
        return unbounded if math.isinf(x) else min(max(fn(x), low), high)

    return Bounds(f(bounds.value, high), f(bounds.lower, low), f(bounds.upper, high), bounds.n, bounds.confidence)


def _in_scope(f: ms.ItemFacts, scope: str) -> bool:
    return scope == ms.OVERALL or f.category == scope


class SequentialEvidence:
    """The gate's figures of one variant, and of the baseline on the same items, from the items
    the variant has scored so far, taken in the order they were drawn."""

    def __init__(self, variant: str, suite: str, total: int, categories: Mapping[str, int],
                 baseline: Mapping[str, ItemResult] | None = None, norm: str | None = None,
                 full: MeasurementSource | None = None) -> None:
        self.variant, self.suite, self.total = variant, suite, total
        # Each category's items in the suite: the most a figure of it can cover.
        self._scope_items = dict(categories)
        self.baseline = dict(baseline or {})
        self.norm = norm
        self.full = full
        self.results: list[ItemResult] = []
        self._facts: list[ms.ItemFacts] = []
        self._baseline_facts: list[ms.ItemFacts] = []
        self._pairs: list[ms.Pair] = []
        # The baseline's own figures, when it is the other run: from every item it scored.
        self._baseline_all = [ms.item_facts(r, norm) for r in self.baseline.values()] if variant != BASELINE else []
        self._seen: dict[tuple, tuple[float, float]] = {}
        # How to read each figure's fixed-sample bounds over the items so far, by (variant, metric,
        # category): what a probe stopped here would report, the start of the projection to the
        # last item. Read only for the verdicts still open, at the look that measured them.
        self._fixed: dict[tuple, Callable[[], Bounds]] = {}
        self.from_items: set[str] = set()  # figures read from probe items (the rest from `full`)
        self.scored: Counter[str] = Counter()  # items scored per category
        # The figures over the whole suite, once items are drawn from some categories only: the
        # items scored before (a stratified sample of the suite), as (facts, baseline's, pairs).
        self._whole: tuple[list[ms.ItemFacts], list[ms.ItemFacts], list[ms.Pair]] | None = None
        self.narrowed_at: int | None = None

    @property
    def complete(self) -> bool:
        return len(self.results) >= self.total

    def tightest(self) -> list[list]:
        """Each figure's tightest bounds over every look so far, as [variant, metric, category,
        confidence, lower, upper]: what `resume` needs to read the figures as the probe left them."""
        return [[*key, low, high] for key, (low, high) in self._seen.items()]

    def narrow(self) -> None:
        """From here on items are drawn from the categories with open verdicts only, so the items
        that follow are no longer a stratified sample of the suite: the figures over the whole
        suite keep the items scored so far (their verdicts are all settled by now)."""
        if self._whole is None:
            self._whole = (list(self._facts), list(self._baseline_facts), list(self._pairs))
            self.narrowed_at = len(self.results)

    def scope_done(self, scope: str) -> bool:
        """Whether more items of this probe can change a figure of `scope`: every item scored, its
        category's all scored, or (the whole suite's) drawing narrowed to some categories."""
        if self.complete:
            return True
        if scope in self._scope_items:
            return self.scored[scope] >= self._scope_items[scope]
        return self._whole is not None

    def fraction(self, scope: str) -> float:
        """The share of the items a figure of `scope` can cover that are scored."""
        items = self._scope_items.get(scope)
        if items:
            return min(1.0, self.scored[scope] / items)
        return min(1.0, len(self.results) / self.total) if self.total else 1.0

    def _rows(self, scope: str) -> tuple[list[ms.ItemFacts], list[ms.ItemFacts], list[ms.Pair]]:
        """The facts, the baseline's facts and the pairs a figure of `scope` is read from."""
        if self._whole is not None and scope not in self._scope_items:
            return self._whole
        return self._facts, self._baseline_facts, self._pairs

    def final(self, variant: str) -> bool:
        """Whether `variant`'s figures are read from items all scored before this probe: the
        baseline's, when another variant is probed. More items of this probe cannot change them."""
        return variant == BASELINE and self.variant != BASELINE and bool(self._baseline_all)

    def extend(self, results: Sequence[ItemResult]) -> None:
        for result in results:
            facts = ms.item_facts(result, self.norm)
            self.results.append(result)
            self._facts.append(facts)
            self.scored[result.category] += 1
            base = self.baseline.get(result.item_id)
            if base is not None and ms.same_item(base, result):
                self._baseline_facts.append(ms.item_facts(base, self.norm))
                self._pairs.append((self._baseline_facts[-1], facts))

    # MeasurementSource
    def categories(self, variant: str, suite: str | None) -> list[str]:
        return sorted(self._scope_items)

    def question_suites(self) -> list[str]:
        return [self.suite] if any(r.condition in (AMBIG, DISAMBIG) for r in self.results) else []

    def chance(self, variant: str, suite: str) -> float | None:
        return ms.chance_accuracy(self.results)

    def measure(self, variant: str, metric: str, suite: str | None, category: str, confidence: float) -> Measurement:
        if metric not in ms.SINGLE and metric not in PAIRED_FIGURES and metric != "transition_rate_over_noise":
            if self.full is None:
                return Measurement(None, note=f"{metric} is not measured from probe items")
            return self.full.measure(variant, metric, suite, category, confidence)
        self.from_items.add(metric)
        asked = metric
        if suite not in (None, self.suite):
            return Measurement(None, note=f"the sequential probe scored {self.suite}, not {suite}")
        if variant not in (self.variant, BASELINE):
            return Measurement(None, note=f"no probe of {variant}")
        if metric == "parse_failure_rate" and not any(r.mode == "generate" for r in self.results):
            return Measurement(None, applies=False, note="log-likelihood scoring parses nothing")
        if metric in ms.SINGLE and self.final(variant):
            bounds = ms.single_bounds(self._baseline_all, metric, confidence, category)
            if bounds.value is None:
                return Measurement(None, note="not measured: none of the baseline's items is one it covers")
            return Measurement.of(bounds)
        if metric in ms.SINGLE:
            own, theirs, _ = self._rows(category)
            facts = theirs if variant == BASELINE and self.variant != BASELINE else own
            return self._bounded((variant, metric, category, confidence), category, confidence,
                                 lambda: self._single(facts, metric, category, confidence),
                                 lambda: ms.single_bounds(facts, metric, confidence, category))
        if variant == BASELINE:
            return Measurement.exact(0.0)  # the baseline against itself
        if not self.baseline:
            return Measurement(None, note="no baseline probe to compare with")
        if metric == "transition_rate_over_noise":
            if any(len(r.seed_choices) > 1 for r in self.results):
                return Measurement(None, note="the noise floor needs the baseline scored again: not judged sequentially")
            metric = "transition_rate"  # without sampling the floor is zero
        pairs = self._rows(category)[2]
        return self._bounded((variant, asked, category, confidence), category, confidence,
                             lambda: self._paired(pairs, metric, category, confidence),
                             lambda: ms.paired_bounds(pairs, metric, confidence, category))

    def _bounded(self, key: tuple, scope: str, confidence: float, anytime: Callable[[], Bounds], fixed: Callable[[], Bounds]) -> Measurement:
        if scope == ms.CATEGORY_MEAN:
            if not self.complete:
                return Measurement(None, note=f"{NOT_ANYTIME} (the mean over categories weighs items by counts still growing)")
            bounds = fixed()
            return Measurement.of(bounds) if bounds.value is not None else Measurement(None, note="not measured: no items it covers")
        bounds = anytime()
        if bounds.value is None or bounds.lower is None or bounds.upper is None:
            if self.complete:
                return Measurement(None, note="not measured: none of the suite's items is one it covers")
            return Measurement(None, note="not measured yet: none of the items scored so far is one it covers")
        # Read at most once a look, by the gate's estimate of the items to settle and by the
        # prediction of whether scoring on would settle it.
        fixed = functools.cache(fixed)
        self._fixed[key] = fixed
        lower, upper = bounds.lower, bounds.upper
        if key in self._seen:
            # A confidence sequence holds at every look at once: so does the tightest of them.
            seen_low, seen_high = self._seen[key]
            lower, upper = max(lower, seen_low), min(upper, seen_high)
        self._seen[key] = (lower, upper)
        return Measurement(bounds.value, lower, upper, bounds.n, fixed=fixed)

    def horizon(self, scope: str) -> int | None:
        """The items a figure of `scope` is sized for: the suite's, or its category's."""
        return self.total if scope == ms.OVERALL else (self._scope_items.get(scope) or None)

    def final_widening(self, scope: str, fixed: Bounds | None, fraction: float) -> tuple[float, float] | None:
        """How much wider than the fixed-sample bounds a figure's anytime bounds will be at the last
        item: from the horizon its stakes were sized for and the items it will cover by then (as
        many per item scored as so far). None when its stakes were not sized for a horizon."""
        horizon = self.horizon(scope)
        if horizon is None or fixed is None or not fixed.n or fraction <= 0.0:
            return None
        widen = sized_widening(horizon, fixed.n / min(fraction, 1.0))
        return widen, widen

    def fixed_bounds(self, variant: str, metric: str, category: str, confidence: float) -> Bounds | None:
        """The fixed-sample bounds of a figure the last look measured from items, None for others."""
        read = self._fixed.get((variant, metric, category, confidence))
        return None if read is None else read()

    def _single(self, facts: Sequence[ms.ItemFacts], metric: str, scope: str, confidence: float) -> Bounds:
        spec = ms.SINGLE[metric]
        kept = [f for f in facts if spec.covers(f) and _in_scope(f, scope)]
        values = [spec.value(f) for f in kept]
        horizon = self.horizon(scope)
        if spec.denominator is None:
            return anytime_mean_bounds(values, spec.low, spec.high, confidence, horizon)
        assert spec.transform is not None
        ratio = anytime_paired_ratio_bounds(values, [spec.denominator(f) for f in kept], confidence, horizon=horizon)
        return _mapped(ratio, spec.transform, -1.0, 1.0)

    def _paired(self, pairs: Sequence[ms.Pair], metric: str, scope: str, confidence: float) -> Bounds:
        condition = ms.headline_condition(pairs)
        if metric == "srs_relative_change_pct":
            shares = [ms.share_values(p, condition) for p in pairs if ms.share_covered(p, condition) and _in_scope(p[0], scope)]
            ratio = anytime_paired_ratio_bounds([v for v, _ in shares], [b for _, b in shares], confidence, horizon=self.horizon(scope))
            return _mapped(ratio, lambda r: 100.0 * (r - 1.0), -100.0, math.inf)
        spec = ms.PAIRED[metric]
        within = condition if metric in ms.TRANSITIONS else None
        kept = [(b, v) for b, v in pairs
                if ms.in_condition((b, v), within) and spec.covers(b, v) and _in_scope(b, scope)]
        return anytime_mean_bounds([spec.value(b, v) for b, v in kept], spec.low, spec.high, confidence, self.horizon(scope))


# -- deciding when to stop ------------------------------------------------------------------------
def finding_key(f: GateFinding) -> tuple:
    """Which verdict a finding is, the same at every look: the key of `SequentialJudge`'s records."""
    return (f.check, f.rule, f.variant, f.category, f.suite)


def _shown_at_chance(f: GateFinding) -> bool:
    return f.check == "competence" and f.metric == "accuracy_disambig"


def _guard_failure_settled(f: GateFinding, complete: bool) -> bool:
    if f.check != "competence" or f.verdict != FAIL:
        return False
    if _shown_at_chance(f):
        # "Not shown above chance" is only lack of evidence until the items run out, or until
        # the upper bound shows the accuracy at or below chance.
        return complete or (f.upper is not None and f.upper <= f.limit)
    return True


def finding_settled(f: GateFinding, complete: bool, guard_failed: bool) -> bool:
    """Whether more items could change this verdict."""
    if complete:
        return True
    if f.reason.startswith("not judged"):
        return guard_failed
    if f.check == "competence" and f.metric == "accuracy_disambig":
        return f.verdict == PASS or _guard_failure_settled(f, complete)
    return f.verdict in (PASS, FAIL)


# An open verdict stops being waited for once scoring every item would settle it with less than
# this chance (predicted from its fixed-sample bounds now, widened as its anytime bounds will be
# at the last item: `audit.stats.chance_to_settle`, `audit.stats.sized_widening`; for stakes
# not sized for a horizon, as they are now: `audit.stats.sequence_widening`). A rule stays
# inconclusive; never a pass, so stopping early costs power, never safety. The threshold trades
# items for verdicts the full probe would give. `benchmarks/sequential.py` replays the default
# audit's items in nine orders (items per verdict, verdicts of 70 the same as in full, the guard
# at 0.05): 0 (no stop): 78%, 66.4; 0.1: 41%, 65.6; 0.15: 37%, 65.6; 0.25: 32%, 64.3; 0.4: 26%,
# 64.3. None of them stopped a competent variant as too degraded. The benchmark also sets the
# predicted chance against the share of verdicts that settled when waited for: below 0.25 a
# prediction of 0.17-0.18 settled 0.08-0.16 of the time, so the stop errs towards waiting.
# (Until the chance read the estimate's standard error from a betting bound's width, it ran
# about twice too high there: 0.25 waited as long as 0.15 did then, 48% of the items, 65.4.
# Until a rule held back by its guard took the guard's chance too, 0.15 used 43%, 65.6.)
FUTILE_CHANCE = 0.15
# The competence guard's "not shown above chance" stops as too degraded to judge, which leaves
# every rule of the variant unjudged: it waits for a smaller chance (the lower of the two). With
# the rules' threshold it calls a competent model degraded more often (simulated, 240
# disambiguated items, true accuracy 0.45 against chance 1/3: shown 80% of the time at 0.1, 86%
# at 0.05 and 89% with no stop).
GUARD_FUTILE_CHANCE = 0.05


def check_futility(futility: float) -> float:
    """`futility` if it is a chance below 1 (0 waits for every item); a UserError otherwise."""
    if not 0.0 <= futility < 1.0:
        raise UserError(f"futility must be within [0, 1), not {futility:g}")
    return futility


def settle_chance(f: GateFinding, fixed: Bounds | None, fraction: float, widen: tuple[float, float] | None = None) -> float | None:
    """The chance that scoring every item settles an open verdict, from its figure's fixed-sample
    bounds now and how much wider than those its anytime bounds will be at the last item
    (`widen`, lower and upper side; by default as much wider as the finding's are now): a pass or
    a fail for a rule left inconclusive (or not judged while the guard is open: if its bounds
    will not settle it, it ends inconclusive whatever the guard decides); for accuracy not shown
    above chance, showing it. The verdict is read from the anytime bounds at the last item too,
    so they are the ones that must reach the limit. None when the verdict is not open this way
    or it cannot be said."""
    if fixed is None or fraction >= 1.0:
        return None
    chances = chance_to_settle(fixed, f.limit, fraction, widen or sequence_widening(fixed, f.lower, f.upper))
    if chances is None:
        return None
    at_or_below, above = chances
    if _shown_at_chance(f):
        return above if f.verdict == FAIL else None
    if f.verdict != INCONCLUSIVE:
        return None
    return at_or_below + above  # every other verdict is of a figure kept at or below its limit


@dataclass
class SequentialJudge:
    """The gate of one variant, read after every batch; remembers when each verdict settled, and
    which open verdicts it stopped waiting for (the chance scoring every item would settle them:
    for a rule held back while its variant is not shown above chance, no more than the chance
    that it will be)."""

    gate: GateSettings
    evidence: SequentialEvidence
    last: GateReport | None = None
    settled_at: dict[tuple, int] = field(default_factory=dict)
    futile: dict[tuple, float] = field(default_factory=dict)
    moot: set[tuple] = field(default_factory=set)  # open competence checks of a variant found too degraded
    held: set[tuple] = field(default_factory=set)  # of the futile: rules stopped for their guard's small chance
    # Each look's predicted chance of settling for each open verdict: (verdict, items scored, chance).
    predicted: list[tuple[tuple, int, float]] = field(default_factory=list)
    futility: float = FUTILE_CHANCE  # stop waiting for a verdict below this chance of settling
    looks: list[int] = field(default_factory=list)  # the items scored at each look (`replay_looks` repeats them)

    def _threshold(self, f: GateFinding) -> float:
        return min(self.futility, GUARD_FUTILE_CHANCE) if _shown_at_chance(f) else self.futility

    def _complete(self, f: GateFinding, complete: bool) -> bool:
        return complete or self.evidence.final(f.variant) or self.evidence.scope_done(f.category)

    def _guard_failed(self, findings: Sequence[GateFinding], complete: bool) -> bool:
        return any(_guard_failure_settled(f, self._complete(f, complete)) or (_shown_at_chance(f) and finding_key(f) in self.futile) for f in findings)

    def _settled_now(self, f: GateFinding, complete: bool, failed: bool) -> bool:
        # Once the variant is too degraded to judge, its other competence checks cannot change
        # that verdict: one still open is not waited for.
        moot = failed and f.check == "competence" and f.verdict == INCONCLUSIVE
        return finding_settled(f, self._complete(f, complete), failed) or finding_key(f) in self.futile or moot

    def look(self) -> GateReport:
        self.looks.append(len(self.evidence.results))
        report = evaluate_gate(self.gate, [self.evidence.variant], self.evidence)
        complete, scored = self.evidence.complete, len(self.evidence.results)
        chances: dict[tuple, float] = {}  # each open verdict's chance of settling, where it can be said
        for f in report.findings:
            k = finding_key(f)
            if k in self.held and f.reason != NOT_JUDGED:
                # Stopped for a guard that was shown after all: judged afresh from this look.
                self.held.discard(k)
                self.futile.pop(k, None)
                self.settled_at.pop(k, None)
            if k in self.futile and f.verdict in (PASS, FAIL) and not (_shown_at_chance(f) and f.verdict == FAIL):
                # Settled by the bounds after all (the probe went on for other verdicts): the
                # verdict is the bounds', and so are the items it used. A guard shown after all
                # reopens what it had left unjudged.
                del self.futile[k]
                self.settled_at.pop(k, None)
                if _shown_at_chance(f):
                    for other in report.findings:
                        if other.reason.startswith("not judged") or finding_key(other) in self.moot:
                            self.settled_at.pop(finding_key(other), None)
                            self.moot.discard(finding_key(other))
            elif not self._complete(f, complete) and k not in self.settled_at and f.metric in self.evidence.from_items:
                fixed = self.evidence.fixed_bounds(f.variant, f.metric, f.category, f.confidence)
                fraction = self.evidence.fraction(f.category)
                chance = settle_chance(f, fixed, fraction, self.evidence.final_widening(f.category, fixed, fraction))
                if chance is not None:
                    chances[k] = chance
        # A rule held back by its variant's guard is judged only once every guard of the variant
        # is shown above chance: it settles with no more chance than the least likely of them.
        shown: dict[str, float] = {}
        for f in report.findings:
            if _shown_at_chance(f) and finding_key(f) in chances:
                shown[f.variant] = min(shown.get(f.variant, 1.0), chances[finding_key(f)])
        for f in report.findings:
            k = finding_key(f)
            if k not in chances:
                continue
            guard = shown.get(f.variant, 1.0) if f.reason == NOT_JUDGED else 1.0
            chance = min(chances[k], guard)
            self.predicted.append((k, scored, chance))
            if chance < self._threshold(f):
                self.futile[k] = chance
                if guard <= chances[k]:
                    self.held.add(k)
        failed = self._guard_failed(report.findings, complete)
        for f in report.findings:
            if finding_key(f) not in self.settled_at and self._settled_now(f, complete, failed):
                # The baseline's own verdicts were settled before this probe's first item.
                self.settled_at[finding_key(f)] = 0 if self.evidence.final(f.variant) else scored
                if not complete and not finding_settled(f, complete, failed) and finding_key(f) not in self.futile:
                    self.moot.add(finding_key(f))
        self.last = report
        return report

    @property
    def settled(self) -> bool:
        if self.last is None:
            return False
        complete = self.evidence.complete
        failed = self._guard_failed(self.last.findings, complete)
        return all(self._settled_now(f, complete, failed) for f in self.last.findings)

    def open_categories(self) -> set[str] | None:
        """The categories whose verdicts are still open, once every verdict over the whole suite
        (or any scope but one category) is settled; None while one of those is open."""
        if self.last is None:
            return None
        scopes = set(self.evidence.categories(self.evidence.variant, None))
        open_ = set()
        for f in self.last.findings:
            if finding_key(f) not in self.settled_at:
                if f.category not in scopes:
                    return None
                open_.add(f.category)
        return open_

    def open_verdicts(self) -> int:
        return 0 if self.last is None else sum(finding_key(f) not in self.settled_at for f in self.last.findings)

    def report(self) -> GateReport:
        """The last look's findings, each with the items scored when it was settled (all the items
        scored, for one that never was; none for a figure that is not an item probe)."""
        assert self.last is not None, "no look yet"
        scored = len(self.evidence.results)
        own = [f for f in self.last.findings if f.variant != BASELINE]
        whose = ("the variant was found too degraded to judge" if self._guard_failed(own, self.evidence.complete)
                 else AGAINST_DEGRADED_BASELINE)
        findings = []
        for f in self.last.findings:
            used = None if f.metric not in self.evidence.from_items else self.settled_at.get(finding_key(f), scored)
            chance = self.futile.get(finding_key(f))
            if chance is not None:
                if _shown_at_chance(f):
                    stop = f"; stopped at {used:,} items: scoring every item would show it above chance with about {chance:.0%} chance"
                elif finding_key(f) in self.held:
                    stop = (f"; stopped at {used:,} items: it is judged once the variant is shown above chance, "
                            f"which scoring every item would show with about {chance:.0%} chance")
                else:
                    stop = f"; stopped at {used:,} items: scoring every item would settle it with about {chance:.0%} chance"
                f = replace(f, reason=f.reason + stop, items_to_settle=None)
            elif finding_key(f) in self.moot and f.verdict == INCONCLUSIVE:
                f = replace(f, reason=f"{f.reason}; stopped at {used:,} items: {whose}", items_to_settle=None)
            elif self.evidence.final(f.variant) and used is not None:
                f = replace(f, reason=f"{f.reason}; from the baseline's probe of every item, scored before this one")
            findings.append(replace(f, items_used=used))
        return replace(self.last, findings=tuple(findings))


# -- probing a model sequentially -----------------------------------------------------------------
# A group of items scored together ahead of their turn holds at most this many: a suite whose
# items all read one context would otherwise make the first batch the whole suite.
MAX_CONTEXT_GROUP = 8


def context_groups(items: Sequence[ProbeItem]) -> dict[str, tuple[str, ...]]:
    """Question items asked on the same context (BBQ asks two questions of each), by item id, each
    with the ids of its group: the model reads the context once when they are scored in one
    call. Items alone on their context, or in a group larger than MAX_CONTEXT_GROUP, are left
    out. (Grouping a disambiguated context with the ambiguous one it begins with was measured
    too: it shares more tokens, but pays for them in runs that stop early, 0.29 of a full
    probe's tokens after 40 of 480 items against 0.17, for no gain in a run that reaches every
    item, 1.05 against 1.06.)"""
    by_context: dict[str, list[str]] = {}
    for item in items:
        if item.kind == QA and item.context:
            by_context.setdefault(item.context, []).append(item.item_id)
    return {item_id: tuple(group) for group in by_context.values() if 1 < len(group) <= MAX_CONTEXT_GROUP for item_id in group}


def _with_context_groups(batch: Sequence[ProbeItem], groups: Mapping[str, tuple[str, ...]],
                         by_id: Mapping[str, ProbeItem], computed: set[str]) -> list[ProbeItem]:
    """The items of `batch` not computed yet, with the others of their context groups not
    computed yet (`computed`: the ids scored so far, whether the judge has taken them or not)."""
    chosen = {i.item_id: i for i in batch if i.item_id not in computed}
    for item in batch:
        for other in groups.get(item.item_id, ()):
            if other not in computed and other not in chosen:
                chosen[other] = by_id[other]
    return list(chosen.values())


@dataclass
class SequentialRun:
    """A sequential probe of one variant: what it scored, and the gate with items used per verdict."""

    variant: str
    results: list[ItemResult]
    items_total: int
    gate: GateReport
    settled: bool  # stopped because every verdict was settled (not at the limit)
    cancelled: bool
    elapsed_s: float
    seed: int
    batch_items: int
    futility: float = FUTILE_CHANCE
    narrowed_at: int | None = None  # items scored before drawing from the categories with open verdicts only
    scored_ahead: int = 0  # items scored with their context ahead of their turn, which the run never reached
    looks: list[int] = field(default_factory=list)  # the items scored at each look at the gate (`replay_looks`)
    tightest: list[list] = field(default_factory=list)  # `SequentialEvidence.tightest` when it stopped (`resume`)

    @property
    def items_scored(self) -> int:
        return len(self.results)

    def items_per_category(self) -> dict[str, int]:
        return dict(sorted(Counter(r.category for r in self.results).items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "seed": self.seed,
            "batch_items": self.batch_items,
            "futility": self.futility,
            "items_scored": self.items_scored,
            "items_total": self.items_total,
            "fraction_scored": round(self.items_scored / self.items_total, 4) if self.items_total else None,
            "stopped": "settled" if self.settled else ("cancelled" if self.cancelled else "limit"),
            "narrowed_at": self.narrowed_at,
            "looks": list(self.looks),
            "scored_ahead_unused": self.scored_ahead,
            "items_per_category": self.items_per_category(),
            "elapsed_s": round(self.elapsed_s, 3),
            "gate": self.gate.to_dict(),
        }


def probe_sequentially(
    model: Any,
    suite: Any,
    gate: GateSettings,
    settings: Any,
    *,
    variant: str,
    baseline: Sequence[ItemResult] | None = None,
    seed: int = 0,
    batch_items: int = DEFAULT_BATCH_ITEMS,
    futility: float = FUTILE_CHANCE,
    full: MeasurementSource | None = None,
    cancel: threading.Event | None = None,
) -> Job[SequentialRun]:
    """Score `suite` on `model` in the stratified order of `seed`, `batch_items` at a time, and
    stop as soon as every verdict of the gate on `variant` is settled (or at the last item); an
    open verdict that scoring every item would settle with less than `futility` chance is not
    waited for. `baseline` is the baseline's item results (scored in full) for the changes
    against it.

    In log-likelihood mode an item is scored with the items asked on its context
    (`context_groups`), which a batch of items drawn at random would otherwise each feed the
    context for. The judge still takes every item in the drawn order, when its turn comes, so
    what it sees and when it stops are as they were; an item scored ahead is only not computed
    twice. On the default suite that feeds 1.05-1.06 times a full probe's tokens for a run that
    reaches every item, against 1.58, and 0.17 against 0.13 for one that stops after 40 of 480."""
    from audit.probes.job import live_figures, score_batch

    if batch_items < 1:
        raise UserError("batch size must be at least 1")
    if seed < 0:
        raise UserError(f"the order seed must be at least 0, not {seed}")
    check_futility(futility)
    if not gate.active:
        raise UserError("sequential probing stops when the gate's verdicts are settled: the plan has no gate rules")
    if variant != BASELINE and not baseline:
        raise UserError(f"sequential probing of {variant} needs the baseline's item results to compare with")
    norm = settings.norm or suite.default_norm
    order = stratified_order(suite.items, seed)
    evidence = SequentialEvidence(variant, suite.name, len(order), Counter(i.category for i in order),
                                  {r.item_id: r for r in baseline or ()}, norm, full)
    judge = SequentialJudge(gate, evidence, futility=futility)
    total = len(order)
    start = time.perf_counter()
    cancelled = False
    yield Progress("probe", 0, total, f"0/{total} items")
    groups = context_groups(order) if settings.mode == "loglik" else {}
    by_id = {item.item_id: item for item in order}
    scored: dict[str, ItemResult] = {}  # scored, and not yet taken by the judge
    computed: set[str] = set()
    with model.scoring():
        for batch in _batches(Draw(order), judge, batch_items):
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            todo = _with_context_groups(batch, groups, by_id, computed)
            if todo:
                scored.update((r.item_id, r) for r in score_batch(model, suite, todo, settings, norm))
                computed.update(item.item_id for item in todo)
            evidence.extend([scored.pop(item.item_id) for item in batch])
            judge.look()
            done = len(evidence.results)
            left = judge.open_verdicts()
            elapsed_s = time.perf_counter() - start
            rate = done / elapsed_s if elapsed_s > 0 else 0.0
            yield Progress("probe", done, total, f"{done}/{total} items, {left} {'verdict' if left == 1 else 'verdicts'} open",
                           {"open_verdicts": left, "items_per_s": rate, **live_figures(evidence.results, suite, norm)})
    if judge.last is None:
        judge.look()
    settled = judge.settled and not evidence.complete
    return SequentialRun(variant, evidence.results, total, judge.report(), settled, cancelled,
                         time.perf_counter() - start, seed, batch_items, futility, evidence.narrowed_at, len(scored), judge.looks,
                         evidence.tightest())


def replay_judge(results_in_order: Sequence[ItemResult], gate: GateSettings, *, variant: str, total: int | None = None,
                 baseline: Sequence[ItemResult] | None = None, batch_items: int = DEFAULT_BATCH_ITEMS,
                 categories: Mapping[str, int] | Sequence[str] | None = None, full: MeasurementSource | None = None,
                 futility: float = FUTILE_CHANCE, narrow: bool = True) -> SequentialJudge:
    """`replay`'s judge after its last look: its evidence holds the items it drew, in order."""
    total = len(results_in_order) if total is None else total
    counts = Counter(r.category for r in results_in_order)
    if not isinstance(categories, Mapping):
        categories = {name: counts.get(name, 0) for name in categories} if categories else counts
    evidence = SequentialEvidence(variant, results_in_order[0].suite if results_in_order else "", total, categories,
                                  {r.item_id: r for r in baseline or ()}, None, full)
    judge = SequentialJudge(gate, evidence, futility=check_futility(futility))
    for batch in _batches(Draw(results_in_order), judge, batch_items, narrow):
        evidence.extend(batch)
        judge.look()
    if judge.last is None:
        judge.look()
    return judge


def replay_looks(results_in_order: Sequence[ItemResult], gate: GateSettings, *, variant: str, looks: Sequence[int],
                 narrowed_at: int | None, total: int, categories: Mapping[str, int], baseline: Sequence[ItemResult] | None = None,
                 norm: str | None = None, futility: float = FUTILE_CHANCE, full: MeasurementSource | None = None) -> SequentialJudge:
    """The judge of a sequential probe as it stood when the probe stopped, from the items it
    scored in the order it took them, `looks` (the items scored at each of its looks) and where
    it narrowed drawing to some categories: the same batches and the same narrowing, so the same
    confidence sequences and, with the same gate, the same verdicts. (`replay_judge` draws its
    batches again from the items alone, which after narrowing need not be the probe's.) `total`
    and `categories` count the suite's items, as the probe did."""
    if any(b < a for a, b in zip(looks, looks[1:])) or (looks and looks[-1] > len(results_in_order)):
        raise ValueError(f"looks {list(looks)} do not fit {len(results_in_order)} items in order")
    evidence = SequentialEvidence(variant, results_in_order[0].suite if results_in_order else "", total, categories,
                                  {r.item_id: r for r in baseline or ()}, norm, full)
    judge = SequentialJudge(gate, evidence, futility=check_futility(futility))
    start = 0
    for end in looks:
        if narrowed_at is not None and start >= narrowed_at:
            evidence.narrow()
        evidence.extend(results_in_order[start:end])
        judge.look()
        start = end
    if judge.last is None:
        judge.look()
    return judge


def resume(results_in_order: Sequence[ItemResult], *, variant: str, narrowed_at: int | None, total: int, categories: Mapping[str, int],
           tightest: Sequence[Sequence], baseline: Sequence[ItemResult] | None = None, norm: str | None = None) -> SequentialEvidence:
    """A stopped probe's evidence as it stood, without its looks: its items in the order taken,
    narrowed where it narrowed, with each figure's tightest bounds over its looks
    (`SequentialEvidence.tightest`). It reads every figure the probe's gate looked at as
    `replay_looks`' evidence does, from one pass over the items instead of one per look."""
    evidence = SequentialEvidence(variant, results_in_order[0].suite if results_in_order else "", total, categories,
                                  {r.item_id: r for r in baseline or ()}, norm)
    cut = len(results_in_order) if narrowed_at is None else narrowed_at
    evidence.extend(results_in_order[:cut])
    if narrowed_at is not None:
        evidence.narrow()
    evidence.extend(results_in_order[cut:])
    for row in tightest:
        *key, low, high = row
        evidence._seen[tuple(key)] = (float(low), float(high))
    return evidence


def gate_facts(gate: GateSettings) -> dict[str, Any]:
    """A gate's settings as a stored sequential probe keeps them (JSON's types): whether a plan's
    gate is still the one it stopped by."""
    import json
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(gate)))


def items_digest(results: Sequence[ItemResult]) -> str:
    """A digest of item results (ids, answers and scores): whether a baseline is the one a stored
    sequential probe compared with."""
    import hashlib
    import json

    rows = sorted((r.item_id, r.condition, r.category, r.chosen, list(r.option_logprobs), list(r.seed_choices)) for r in results)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def suite_gate(gate: GateSettings, suite: str, first_suite: str) -> GateSettings:
    """What a sequential probe of `suite` decides of a plan's gate: the rules read from probe
    items of that suite (a rule that names no suite reads the plan's first), each as a rule of the
    probe's one suite, with the competence guard. Other suites' figures and perplexity do not
    change with more items of this one, so they are not waited for."""
    rules = tuple(replace(rule, suite=None) for rule in gate.rules if rule.metric in ITEM_FIGURES and (rule.suite or first_suite) == suite)
    return replace(gate, rules=rules)


def judges_anything(gate: GateSettings, questions: bool) -> bool:
    """Whether a suite's gate (`suite_gate`) has a verdict to wait for: a rule, or the competence
    guard on a suite of questions. With none, a sequential probe would stop at its first look."""
    return bool(gate.rules) or (gate.competence and questions)


def replay(results_in_order: Sequence[ItemResult], gate: GateSettings, *, variant: str, total: int | None = None,
           baseline: Sequence[ItemResult] | None = None, batch_items: int = DEFAULT_BATCH_ITEMS,
           categories: Mapping[str, int] | Sequence[str] | None = None, full: MeasurementSource | None = None,
           futility: float = FUTILE_CHANCE, narrow: bool = True) -> tuple[GateReport, int, bool]:
    """The sequential gate over item results already scored in the drawn order: (the gate with
    items used per verdict, items it needed, settled before the last item). `categories` counts
    the suite's items per category, or names the categories (their items counted in
    `results_in_order`, as are all of them by default). `narrow=False` keeps to the drawn order
    to the end, as a probe did before it drew from the categories with open verdicts only."""
    judge = replay_judge(results_in_order, gate, variant=variant, total=total, baseline=baseline, batch_items=batch_items,
                         categories=categories, full=full, futility=futility, narrow=narrow)
    evidence = judge.evidence
    return judge.report(), len(evidence.results), judge.settled and not evidence.complete


# -- simulation: how often the sequential gate decides wrongly ----------------------------------------
def _looks(batch_items: int, n_items: int) -> list[int]:
    """The item counts a simulated probe looks at: every batch, and the last item."""
    looks = list(range(batch_items, n_items + 1, batch_items))
    if not looks or looks[-1] != n_items:
        looks.append(n_items)
    return looks


def _predicted(x: np.ndarray, rows: np.ndarray, n: int, limit: float, confidence: float,
               horizon: int) -> list[tuple[int, tuple[float, float] | None]]:
    """For each of `rows` of the simulated items `x`, the chances `settle_chance` reads: from the
    fixed-sample bounds of its first `n` items, widened as anytime bounds sized for `horizon`
    items will be at the last item, as a sequential probe reads them."""
    from audit.stats import lower_rows, upper_rows

    if not rows.size:
        return []
    alpha = 1.0 - confidence
    seen = x[rows, :n]
    widen = sized_widening(horizon, x.shape[1])
    out = []
    for row, values, lo, hi in zip(rows, seen, lower_rows(seen, alpha), upper_rows(seen, alpha)):
        value = float(values.mean())
        fixed = Bounds(value, min(lo, value), max(hi, value), n, confidence)
        out.append((int(row), chance_to_settle(fixed, limit, n / x.shape[1], (widen, widen))))
    return out


def simulate_wrong_verdicts(means: Sequence[float], limit: float, *, n_items: int, runs: int, confidence: float,
                            batch_items: int, seed: int, horizon: int | None = None, futility: float = FUTILE_CHANCE) -> dict[str, Any]:
    """Draw `runs` sequences of 0/1 items for each true mean, look after every batch with the
    anytime bounds (running intersection; stakes sized for `horizon` items, by default
    `n_items`, as a sequential probe sizes them for its scope's items), pass at an upper bound within `limit`, fail at a
    lower bound over it, stop waiting (inconclusive) once scoring every item would settle it with
    less than `futility`; a wrong verdict is a pass over the limit or a fail within it.
    Returns per true mean the rate of wrong verdicts, of each verdict, of verdicts the same as
    the fixed-sample bounds of all the items give (the full probe's), and the mean share of
    items used."""
    from audit.stats import anytime_lower_rows, anytime_upper_rows, lower_rows, upper_rows

    alpha = 1.0 - confidence
    rng = np.random.default_rng(seed)
    horizon = horizon or n_items
    out: dict[str, Any] = {"runs": runs, "n_items": n_items, "horizon": horizon, "futility": futility, "limit": limit,
                           "nominal": alpha, "means": {}}
    looks = _looks(batch_items, n_items)
    for mean in means:
        x = (rng.random((runs, n_items)) < mean).astype(float)
        verdict = np.full(runs, "", dtype=object)
        used = np.full(runs, n_items)
        low, high = np.zeros(runs), np.ones(runs)
        for n in looks:
            open_ = verdict == ""
            if not open_.any():
                break
            rows = x[open_, :n]
            low[open_] = np.maximum(low[open_], anytime_lower_rows(rows, alpha, horizon))
            high[open_] = np.minimum(high[open_], anytime_upper_rows(rows, alpha, horizon))
            passed = open_ & (high <= limit)
            failed = open_ & ~passed & (low > limit)
            verdict[passed], verdict[failed] = PASS, FAIL
            used[passed | failed] = n
            if n < n_items:
                for row, chances in _predicted(x, np.flatnonzero(open_ & ~passed & ~failed), n, limit, confidence, horizon):
                    if chances is not None and sum(chances) < futility:
                        verdict[row], used[row] = INCONCLUSIVE, n
        verdict[verdict == ""] = INCONCLUSIVE
        full_low, full_high = lower_rows(x, alpha), upper_rows(x, alpha)
        full = np.where(full_high <= limit, PASS, np.where(full_low > limit, FAIL, INCONCLUSIVE))
        wrong = (verdict == PASS) if mean > limit else (verdict == FAIL)
        out["means"][f"{mean:g}"] = {
            "wrong_rate": float(wrong.mean()),
            "pass_rate": float((verdict == PASS).mean()),
            "fail_rate": float((verdict == FAIL).mean()),
            "inconclusive_rate": float((verdict == INCONCLUSIVE).mean()),
            "same_as_full_rate": float((verdict == full).mean()),
            "items_fraction": float(used.mean() / n_items),
        }
    out["worst_wrong_rate"] = max(entry["wrong_rate"] for entry in out["means"].values())
    return out


def simulate_competence(means: Sequence[float], chance: float, *, n_items: int, runs: int, confidence: float,
                        batch_items: int, seed: int, horizon: int | None = None, futility: float = FUTILE_CHANCE) -> dict[str, Any]:
    """Draw `runs` sequences of 0/1 answers for each true accuracy (stakes sized for `horizon`
    items, by default `n_items`), look after every batch:
    competent once the anytime lower bound is over `chance`, too degraded to judge once scoring
    every item would show that with less than `futility` (at most GUARD_FUTILE_CHANCE; or at the last item). Returns per
    true accuracy the share shown competent sequentially, without the futility stop, and by the
    fixed-sample bound of all the items (the full probe's), and the mean share of items used."""
    from audit.stats import anytime_lower_rows, lower_rows

    alpha = 1.0 - confidence
    rng = np.random.default_rng(seed)
    horizon = horizon or n_items
    out: dict[str, Any] = {"runs": runs, "n_items": n_items, "horizon": horizon, "futility": futility, "chance": chance, "means": {}}
    looks = _looks(batch_items, n_items)
    for mean in means:
        x = (rng.random((runs, n_items)) < mean).astype(float)
        shown_at = np.full(runs, n_items + 1)  # the look the anytime bound first showed competence
        futile_at = np.full(runs, n_items + 1)
        low = np.zeros(runs)
        for n in looks:
            low = np.maximum(low, anytime_lower_rows(x[:, :n], alpha, horizon))
            shown_at = np.where((shown_at > n_items) & (low > chance), n, shown_at)
            if n < n_items:
                for row, chances in _predicted(x, np.flatnonzero((shown_at > n_items) & (futile_at > n_items)), n, chance, confidence, horizon):
                    if chances is not None and chances[1] < min(futility, GUARD_FUTILE_CHANCE):
                        futile_at[row] = n
        shown = shown_at < futile_at
        used = np.minimum(np.minimum(shown_at, futile_at), n_items)
        out["means"][f"{mean:g}"] = {
            "shown_rate": float(shown.mean()),
            "shown_without_futility_rate": float((shown_at <= n_items).mean()),
            "shown_by_full_rate": float((lower_rows(x, alpha) > chance).mean()),
            "items_fraction": float(used.mean() / n_items),
        }
    return out


__all__ = [
    "DEFAULT_BATCH_ITEMS", "FUTILE_CHANCE", "GUARD_FUTILE_CHANCE", "INCONCLUSIVE", "SequentialEvidence", "SequentialJudge", "SequentialRun",
    "Draw", "check_futility", "finding_key", "finding_settled", "probe_sequentially", "replay", "replay_judge", "simulate_competence",
    "simulate_wrong_verdicts", "stratified_order",
]

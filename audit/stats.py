"""Confidence bounds for the audit's figures: betting bounds on means of bounded per-item values.

Every bias and accuracy figure of a probe run is a mean over items of a bounded per-item value
(a 0/1 answer in log-likelihood mode, a share of seeds in generate mode, a paired difference
between two runs), or a ratio of two such means. Its one-sided bounds come from the betting
construction of Waudby-Smith & Ramdas ("Estimating means of bounded random variables by
betting", JRSS-B 2023): for a candidate mean m, a gambler bets each item's value against m with
a stake fixed before seeing that item; m is rejected when the wealth reaches 1/alpha, which
under the mean m happens with probability at most alpha (Ville's inequality). The bound is the
edge of the candidates not rejected. It holds at every sample size, with no normal
approximation, and never collapses to a point when every item agrees: six identical items
leave a wide interval, a thousand leave a narrow one. The stakes follow the paper's
predictable plug-in rule tuned for a fixed n, truncated at c/m and c/(1-m) with c = 1/2, which
keeps the wealth monotone in m, so each bound is found by narrowing a bracket of candidates.

The wealth depends on the order of the items; callers give a fixed order (by item id), so the
same items always give the same bounds. The unweighted mean over categories is the mean of
items weighted by n / (K n_k) (n items, K categories, n_k in the item's category), bounded
like any mean of bounded values. A ratio of means is bounded by inverting the test of the
linear contrast it implies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

TRUNCATION = 0.5  # c in the stake's truncation at c/m: the paper's choice
# A bound is searched in rounds of _POINTS candidates, each round narrowing its bracket 33-fold:
# five rounds locate it within 3e-8 of the value range.
_POINTS = 32
_ROUNDS = 5


@dataclass(frozen=True)
class Bounds:
    """A figure, its lower and upper confidence bounds, and the number of items behind it.

    Each bound holds on its own at `confidence` (one-sided); together they form a two-sided
    interval at 2 * confidence - 1. `value` is None when there were no items."""

    value: float | None
    lower: float | None
    upper: float | None
    n: int
    confidence: float

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        def r(x: float | None) -> float | None:
            # An unbounded side (a ratio over a share that may be 0) is written as null.
            return None if x is None or math.isinf(x) else round(x, digits)

        return {"value": r(self.value), "ci95": [r(self.lower), r(self.upper)], "n": self.n}


def side_confidence(two_sided: float) -> float:
    """The one-sided level of each bound of a two-sided interval at `two_sided` (0.95 -> 0.975)."""
    return (1.0 + two_sided) / 2.0


# Intervals shown beside figures are two-sided 95%: each bound one-sided at 97.5%.
DISPLAY_CONFIDENCE = side_confidence(0.95)


def _check_level(confidence: float) -> float:
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence {confidence} outside [0.5, 1)")
    return 1.0 - confidence


# -- samples of values in [0, 1], one per row ----------------------------------------------------
def _stakes(x: np.ndarray, alpha: float) -> np.ndarray:
    """Predictable stakes, row by row: each from the items before it only (running mean and
    variance that start from 1/2 and 1/4), sized for n items: sqrt(2 log(1/alpha) / (n var))."""
    return anytime_stakes(x, alpha, horizon=max(1, x.shape[-1]))


_CELLS = 1 << 22  # rows x candidates x items evaluated at once: bounds the memory a search takes


def _log_wealth_up(x: np.ndarray, stakes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Log wealth of betting that each row's mean exceeds each of its candidates m (rows x
    candidates); it falls as m rises, the stakes' truncation at c/m included."""
    rows, n = x.shape
    out = np.empty(m.shape)
    step = max(1, _CELLS // max(1, m.shape[1] * n))
    for start in range(0, rows, step):
        part = slice(start, start + step)
        cap = TRUNCATION / np.maximum(m[part], 1e-300)
        lam = np.minimum(stakes[part, None, :], cap[:, :, None])
        out[part] = np.log1p(lam * (x[part, None, :] - m[part, :, None])).sum(axis=-1)
    return out


def lower_rows(x: np.ndarray, alpha: float) -> np.ndarray:
    """Lower confidence bounds (level 1 - alpha) for the mean of each row of values in [0, 1].

    Each round evaluates the wealth at _POINTS candidates inside every row's bracket at once
    and keeps the gap between the last candidate rejected and the first one kept."""
    if x.shape[1] == 0:
        return np.zeros(x.shape[0])
    return _bracket_lower(x, _stakes(x, alpha), alpha)


def _bracket_lower(x: np.ndarray, stakes: np.ndarray, alpha: float) -> np.ndarray:
    """The smallest mean each row's wealth, betting with `stakes`, does not reject at level
    alpha, searched in rounds that narrow a bracket around it."""
    rows = x.shape[0]
    threshold = math.log(1.0 / alpha)
    at_zero = _log_wealth_up(x, stakes, np.zeros((rows, 1)))[:, 0] >= threshold
    rejected, kept = np.zeros(rows), x.max(axis=1)  # at the largest value the wealth cannot grow
    steps = np.arange(1, _POINTS + 1) / (_POINTS + 1)
    index = np.arange(rows)
    for _ in range(_ROUNDS):
        candidates = rejected[:, None] + (kept - rejected)[:, None] * steps[None, :]
        shown = _log_wealth_up(x, stakes, candidates) >= threshold
        # The wealth falls with m: the rejected candidates come first.
        count = shown.sum(axis=1)
        last_rejected = candidates[index, np.maximum(count - 1, 0)]
        first_kept = candidates[index, np.minimum(count, _POINTS - 1)]
        rejected = np.where(count > 0, last_rejected, rejected)
        kept = np.where(count < _POINTS, first_kept, kept)
    # The largest candidate shown too low: a bound on the safe side of the exact edge.
    return np.where(at_zero, rejected, 0.0)


def upper_rows(x: np.ndarray, alpha: float) -> np.ndarray:
    """Upper confidence bounds (level 1 - alpha) for the mean of each row of values in [0, 1]."""
    return 1.0 - lower_rows(1.0 - x, alpha)


def unit_lower(x: np.ndarray, alpha: float) -> float:
    """Lower confidence bound (level 1 - alpha) for the mean of values in [0, 1]."""
    return float(lower_rows(np.asarray(x, dtype=float)[None, :], alpha)[0])


def unit_upper(x: np.ndarray, alpha: float) -> float:
    """Upper confidence bound (level 1 - alpha) for the mean of values in [0, 1]."""
    return float(upper_rows(np.asarray(x, dtype=float)[None, :], alpha)[0])


# -- means of values in [low, high], items possibly weighted --------------------------------------
def _weighted(x: np.ndarray, low: float, high: float, weights: np.ndarray | None) -> tuple[np.ndarray, float]:
    """The values moved onto [0, 1] such that their plain mean, scaled back, is the weighted mean.

    With weights w (mean 1), y = low + w (x - low) has mean low + mean(w (x - low)): the
    weighted mean; y lies in [low, low + max(w) (high - low)]."""
    if weights is None:
        return np.clip((x - low) / (high - low), 0.0, 1.0), high - low
    w = np.asarray(weights, dtype=float)
    span = float(w.max()) * (high - low)
    return np.clip(w * (x - low) / span, 0.0, 1.0), span


def _finite(*arrays: Any) -> bool:
    return all(a is None or bool(np.all(np.isfinite(np.asarray(a, dtype=float)))) for a in arrays)


def _not_a_number(n: int, confidence: float) -> Bounds:
    """A figure with a value that is not a number among its items: no value and no bounds, never
    the end of the range that clipping a NaN would give (and a rule would read as a pass)."""
    return Bounds(None, None, None, n, confidence)


def mean_bounds(values: Any, low: float, high: float, confidence: float, weights: Any = None) -> Bounds:
    """Bounds for the mean of values in [low, high] (or their weighted mean, weights of mean 1:
    the mean over categories weighs each item by n / (K n_k)), each one-sided at `confidence`."""
    alpha = _check_level(confidence)
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Bounds(None, low, high, 0, confidence)
    if not _finite(x, weights):
        return _not_a_number(int(x.size), confidence)
    unit, span = _weighted(x, low, high, weights)
    # Rounding in the weighted sum may land a hair outside [low, high]: the mean cannot.
    value = min(high, max(low, low + span * float(unit.mean())))
    lower = low + span * unit_lower(unit, alpha)
    upper = min(high, low + span * unit_upper(unit, alpha))
    return Bounds(value, min(lower, value), max(upper, value), int(x.size), confidence)


def _contrast_shown(
    num: np.ndarray, den: np.ndarray, thetas: np.ndarray, alpha: float, above: bool, stakes: Any = _stakes
) -> np.ndarray:
    """For each theta, whether the mean of (num - theta * den) is shown above 0 (`above`) or
    below 0, betting with `stakes`. Per-item num and den lie in [0, 1], so the
    contrast lies in [-theta, 1] for theta >= 0; rescaled to [0, 1], 0 lands at
    theta / (1 + theta), which is tested directly."""
    width = 1.0 + thetas
    zero = thetas / width
    units = np.clip((num[None, :] - thetas[:, None] * den[None, :] + thetas[:, None]) / width[:, None], 0.0, 1.0)
    x, m = (units, zero) if above else (1.0 - units, 1.0 - zero)
    wealth = _log_wealth_up(x, stakes(x, alpha), m[:, None])[:, 0]
    return (wealth >= math.log(1.0 / alpha)) & (m < 1.0)


def _edge(shown: Any, start: float, end: float) -> tuple[float, float]:
    """The edge between thetas where `shown` is False (from `start`) and True (towards `end`),
    searched on the theta / (1 + theta) scale; returns the last (not shown, shown) pair."""
    a = start / (1 + start)
    b = end / (1 + end) if math.isfinite(end) else 1.0
    steps = np.arange(1, _POINTS + 1) / (_POINTS + 1)
    for _ in range(_ROUNDS + 1):
        t = a + (b - a) * steps
        result = shown(t / (1 - t))
        count = int(np.argmax(result)) if result.any() else _POINTS
        if count < _POINTS:
            b = float(t[count])
        if count > 0:
            a = float(t[count - 1])
    return a / (1 - a), b / (1 - b)


def ratio_bounds(num: Any, den: Any, confidence: float, weights: Any = None, *, limit: float = 1e6) -> Bounds:
    """Bounds for R = mean(num) / mean(den), per-item num and den in [0, 1] paired item by item
    (weighted means with `weights`: the ratio of the categories' means).

    R <= theta exactly when the mean of num - theta * den is <= 0; theta is rejected when the
    contrast's bound shows it is not, and the bound on R is the edge of the thetas kept. An
    upper bound past `limit` is reported as infinity (the denominator may be 0)."""
    alpha = _check_level(confidence)
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if a.size == 0:
        return Bounds(None, 0.0, math.inf, 0, confidence)
    if not _finite(a, b, weights):
        return _not_a_number(int(a.size), confidence)
    if weights is not None:
        # Weights scale numerator and denominator alike: kept in [0, 1] by the largest.
        w = np.asarray(weights, dtype=float)
        a, b = a * w / w.max(), b * w / w.max()
    return _ratio_edges(a, b, alpha, confidence, limit)


def _ratio_edges(a: np.ndarray, b: np.ndarray, alpha: float, confidence: float, limit: float, stakes: Any = _stakes) -> Bounds:
    """The bounds on mean(a) / mean(b): the edges of the thetas whose contrast a - theta * b is
    not shown on the wrong side, betting with `stakes` (see `_contrast_shown`)."""
    value = None if b.sum() == 0 else float(a.sum() / b.sum())

    def below(thetas: np.ndarray) -> np.ndarray:  # shown: R < theta
        return _contrast_shown(a, b, thetas, alpha, above=False, stakes=stakes)

    def not_above(thetas: np.ndarray) -> np.ndarray:  # not shown: R > theta
        return ~_contrast_shown(a, b, thetas, alpha, above=True, stakes=stakes)

    ends = np.array([0.0, limit])
    upper = _edge(below, 0.0, limit)[1] if below(ends)[1] else math.inf
    lower = _edge(not_above, 0.0, limit)[0] if not not_above(ends)[0] else 0.0
    if value is not None:
        lower, upper = min(lower, value), max(upper, value)
    return Bounds(value, lower, upper, int(a.size), confidence)


# -- perplexity: a change measured on chunks of text --------------------------------------------
def log_ratio_bounds(differences: Sequence[float], weights: Sequence[float], confidence: float) -> Bounds:
    """Bounds for a weighted mean of per-chunk differences (of mean log-likelihood per token),
    from Student's t with n - 1 degrees of freedom on the chunks' spread; weights are the chunks'
    token counts. A difference that is the same on every chunk has no spread and exact bounds."""
    _check_level(confidence)
    d = np.asarray(differences, dtype=float)
    w = np.asarray(weights, dtype=float)
    n = d.size
    if n == 0:
        return Bounds(None, -math.inf, math.inf, 0, confidence)
    if not np.isfinite(d).all():
        return Bounds(None, None, None, n, confidence)  # no mean, and no bounds, from a NaN or infinite chunk
    w = w / w.sum()
    value = float(np.sum(w * d))
    if n == 1:
        return Bounds(value, -math.inf, math.inf, 1, confidence)
    # Standard error of a weighted mean of n chunks (equal weights: s / sqrt(n)).
    se = math.sqrt(float(np.sum(w**2 * (d - value) ** 2)) * n / (n - 1))
    from scipy.stats import t as student_t

    half = float(student_t.ppf(confidence, n - 1)) * se
    return Bounds(value, value - half, value + half, n, confidence)


MOST_ITEMS_TO_SETTLE = 10_000_000  # past this, "more items" is no answer worth giving


def items_to_settle(bounds: Bounds, limit: float, upper_side_decides_pass: bool = True) -> int | None:
    """About how many more items would move the bound that decides past `limit`, if the estimate
    holds and the interval narrows as 1/sqrt(n). None when it cannot be said (no estimate, no
    spread, or the estimate sits on the limit)."""
    if bounds.value is None or bounds.n == 0 or bounds.lower is None or bounds.upper is None:
        return None
    value = bounds.value
    if upper_side_decides_pass:
        # Below the limit: the upper bound must come down to it; above: the lower bound up to it.
        half, gap = (bounds.upper - value, limit - value) if value < limit else (value - bounds.lower, value - limit)
    else:
        half, gap = (value - bounds.lower, value - limit) if value > limit else (bounds.upper - value, limit - value)
    # An estimate on the limit (to rounding) is not settled by any number of items.
    if gap <= 1e-9 * max(1.0, abs(limit)) or not math.isfinite(half) or half <= 0:
        return None
    more = bounds.n * (half / gap) ** 2 - bounds.n
    if more > MOST_ITEMS_TO_SETTLE:
        return None
    return max(1, math.ceil(more - 1e-9))  # a hair of rounding is not one more item


def chance_to_settle(bounds: Bounds, limit: float, fraction: float, widen: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float] | None:
    """`bounds` are the fixed-sample bounds of the items scored so far, `fraction` of all the
    items: the chances that the bounds of all the items end (upper) at or below `limit`, and
    (lower) above it. Predictive, not only under the estimate: the true value is uncertain as the
    bounds say, so the items still to come move the estimate as a normal draw around it with sd
    (h / k) * sqrt(1 - f) (h the half-width, f the fraction, and h / k the estimate's standard
    error: a betting bound with stakes sized for its items lies about k = sqrt(2 log(1/alpha))
    standard errors from the estimate, see `sized_widening`); each half-width narrows by sqrt(f),
    times `widen` (lower side, upper side) for final bounds wider than fixed-sample ones (a
    confidence sequence's). None when it cannot be said (no estimate, an unbounded side).

    Reading the standard error as h over the normal quantile (1.64 at 95%, not 2.45) overstated
    it by half, and with it the chance of a move far from the estimate: on the default audit's
    items a predicted 0.17 settled 0.03 of the time (the whole suite's figures; 0.09 read this
    way) and 0.18 settled 0.09 (a category's; 0.14)."""
    if bounds.value is None or bounds.lower is None or bounds.upper is None:
        return None
    value, lower, upper = bounds.value, bounds.lower, bounds.upper
    if not all(math.isfinite(x) for x in (value, lower, upper)):
        return None
    f = min(max(fraction, 0.0), 1.0)
    # How far the estimate may move before the bounds of all the items reach the limit:
    widen_lower, widen_upper = widen
    top = (limit - value) - widen_upper * (upper - value) * math.sqrt(f)
    bottom = (value - limit) - widen_lower * (value - lower) * math.sqrt(f)
    k = math.sqrt(2.0 * math.log(1.0 / (1.0 - bounds.confidence)))
    spread = (upper - lower) / 2.0 / k * math.sqrt(1.0 - f)
    if spread <= 0.0:
        return float(top >= 0.0), float(bottom > 0.0)
    return NormalDist().cdf(top / spread), NormalDist().cdf(bottom / spread)


def sequence_widening(fixed: Bounds, lower: float | None, upper: float | None) -> tuple[float, float]:
    """How many times wider than `fixed` (fixed-sample bounds) the anytime bounds `lower` and
    `upper` of the same items are, each side measured from the estimate: what a confidence
    sequence's bounds will still be at the last item, roughly (the factor grows slowly with the
    count, so reading it now errs towards waiting). 1 for a side that is not wider or cannot be
    measured."""

    def ratio(seq: float | None, fix: float | None, side: float) -> float:
        if fixed.value is None or seq is None or fix is None or not (math.isfinite(seq) and math.isfinite(fix)):
            return 1.0
        base = side * (fix - fixed.value)
        return max(1.0, side * (seq - fixed.value) / base) if base > 0.0 else 1.0

    return ratio(lower, fixed.lower, -1.0), ratio(upper, fixed.upper, 1.0)


def sized_widening(horizon: float, items: float) -> float:
    """How many times wider than the fixed-sample bounds of `items` items are those of a confidence
    sequence whose stakes were sized for `horizon` items (`anytime_stakes`), read at `items`:
    (sqrt(h / k) + sqrt(k / h)) / 2. A bound betting a stake lambda on k items of variance s^2 lies
    about log(1/alpha) / (lambda k) + lambda s^2 / 2 from the mean; lambda is sqrt(2 log(1/alpha) /
    (h s^2)) here, and k in place of h for the fixed-sample bound, the narrowest. 1 at the horizon,
    1.06 at half of it."""
    if horizon <= 0 or items <= 0:
        return 1.0
    ratio = math.sqrt(horizon / items)
    return (ratio + 1.0 / ratio) / 2.0


# -- anytime-valid bounds: checked after every batch without inflating the error ------------------
def anytime_stakes(x: np.ndarray, alpha: float, horizon: int | None = None) -> np.ndarray:
    """Predictable stakes for a confidence sequence: each from the items before it only (the
    variance starting from 1/4), so the wealth after any prefix is the same whatever follows, a
    bound read after every batch is the bound of that prefix, and Ville's inequality covers every
    look at once.

    With no `horizon`, Waudby-Smith & Ramdas' predictable plug-in for confidence sequences,
    sqrt(2 log(1/alpha) / (var t log(1 + t))) for the t-th item: good at every count alike.
    With a `horizon` fixed before the first item (the most items there will be),
    sqrt(2 log(1/alpha) / (var horizon)) for every item, the fixed-sample plug-in sized for it:
    still valid at every look, widest early and nearly as narrow as the fixed-sample bounds at
    the horizon, where a sequential probe that has not settled is decided."""
    n = x.shape[-1]
    count = np.arange(1, n + 1)
    mean = (0.5 + np.cumsum(x, axis=-1)) / (count + 1)
    variance = (0.25 + np.cumsum((x - mean) ** 2, axis=-1)) / (count + 1)
    previous = np.concatenate((np.full(x.shape[:-1] + (1,), 0.25), variance[..., :-1]), axis=-1)
    if horizon is not None:
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1, not {horizon}")
        return np.sqrt(2.0 * math.log(1.0 / alpha) / (horizon * previous))
    return np.sqrt(2.0 * math.log(1.0 / alpha) / (previous * count * np.log1p(count)))


def anytime_lower_rows(x: np.ndarray, alpha: float, horizon: int | None = None) -> np.ndarray:
    """Lower bounds (level 1 - alpha, valid at every prefix length at once) for the mean of each
    row of values in [0, 1]; the same bracket search as `lower_rows`, with `anytime_stakes`."""
    if x.shape[1] == 0:
        return np.zeros(x.shape[0])
    return _bracket_lower(x, anytime_stakes(x, alpha, horizon), alpha)


def anytime_upper_rows(x: np.ndarray, alpha: float, horizon: int | None = None) -> np.ndarray:
    """Upper bounds, valid at every prefix length, for the mean of each row of values in [0, 1]."""
    return 1.0 - anytime_lower_rows(1.0 - x, alpha, horizon)


def anytime_mean_bounds(values: Any, low: float, high: float, confidence: float, horizon: int | None = None) -> Bounds:
    """Bounds for the mean of values in [low, high] taken in the order given (the order they were
    drawn in), each one-sided at `confidence` and valid however many items are looked at; the
    stakes sized for `horizon` items when given (see `anytime_stakes`)."""
    alpha = _check_level(confidence)
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return Bounds(None, low, high, 0, confidence)
    if not _finite(x):
        return _not_a_number(int(x.size), confidence)
    unit = np.clip((x - low) / (high - low), 0.0, 1.0)[None, :]
    value = min(high, max(low, float(x.mean())))
    lower = low + (high - low) * float(anytime_lower_rows(unit, alpha, horizon)[0])
    upper = low + (high - low) * float(anytime_upper_rows(unit, alpha, horizon)[0])
    return Bounds(value, min(lower, value), max(upper, value), int(x.size), confidence)


def anytime_paired_ratio_bounds(num: Any, den: Any, confidence: float, *, limit: float = 1e6, horizon: int | None = None) -> Bounds:
    """Bounds for mean(num) / mean(den), num and den in [0, 1] paired item by item, valid at every
    prefix length: R <= theta exactly when the mean of num - theta * den is <= 0, and theta is
    rejected when that contrast's confidence sequence shows otherwise. Only the true ratio's
    contrast needs to hold, so one sequence covers it with no split of the error, and pairing
    cancels what the two runs share item by item. Stakes sized for `horizon` items when given."""
    alpha = _check_level(confidence)
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if a.size == 0:
        return Bounds(None, 0.0, math.inf, 0, confidence)
    if not _finite(a, b):
        return _not_a_number(int(a.size), confidence)
    return _ratio_edges(a, b, alpha, confidence, limit, stakes=lambda x, level: anytime_stakes(x, level, horizon))

"""Intervals for the benchmarks' timing ratios.

A benchmark times two paths in turns (chunks, batches or rounds), so each turn gives one
paired sample of both. A ratio from one run moves several percent between runs on a shared
machine; the interval says how far it could move given the turns' own spread. It is a
percentile bootstrap over the turns, resampled in pairs so that load hitting both paths in a
turn stays paired, with a fixed seed: the same timings give the same interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 9999


def ratio_of_sums(num: Sequence[float], den: Sequence[float]) -> float:
    """sum(num) / sum(den): a rate ratio from times per turn (slow path's seconds over the fast one's)."""
    return float(np.sum(num) / np.sum(den))


def paired_interval(statistic: Callable[..., float], *samples: Sequence[float],
                    confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(statistic on the samples, low, high): the percentile bootstrap interval of `statistic`
    at `confidence`, resampling the turns (index i of every sample together). With one turn, or
    when every resample gives the same value, the interval is the value itself."""
    from scipy.stats import bootstrap

    arrays = [np.asarray(s, dtype=float) for s in samples]
    sizes = {len(a) for a in arrays}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"paired samples need one non-zero length each, got {[len(a) for a in arrays]}")
    value = statistic(*arrays)
    if sizes == {1}:
        return value, value, value
    result = bootstrap(arrays, statistic, paired=True, vectorized=False, n_resamples=resamples,
                       confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # a distribution of one value
        return value, value, value
    return value, float(low), float(high)


def shown(value: float, low: float, high: float, digits: int = 2, unit: str = "x", confidence: float = CONFIDENCE) -> str:
    """'1.90x (95% interval 1.84-1.97)'."""
    return f"{value:.{digits}f}{unit} ({100 * confidence:.0f}% interval {low:.{digits}f}-{high:.{digits}f})"

"""Figures as the app writes them: estimates ({"value", "ci95", "n"}), changes and 95% intervals,
short enough for a table cell at 80 columns.

Two ways to write an interval: in a table, `spread` and `pct_spread` ("0.43 ±0.34", one rule for
every interval); on a detail view, `rate_interval` and `pct_interval` (the exact bounds, "[.09,.77]")."""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text


def value_of(estimate: Any) -> float | None:
    return estimate.get("value") if isinstance(estimate, dict) else estimate


def bounds_of(estimate: Any) -> tuple[float, float] | None:
    """The 95% interval of an estimate with a value, or None when it has none. One end written
    as null is an unbounded side (a ratio over a share that may be 0)."""
    interval = estimate.get("ci95") if isinstance(estimate, dict) and estimate.get("value") is not None else None
    if not interval or (interval[0] is None and interval[1] is None):
        return None
    low, high = interval
    return (-math.inf if low is None else float(low)), (math.inf if high is None else float(high))


def short(value: float) -> str:
    """Two decimals without the leading zero, whole numbers bare: .31, -.05, 1.25, 0, -1."""
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    text = f"{value:.2f}"
    if text.endswith(".00"):
        whole = text[:-3]
        return "0" if whole == "-0" else whole
    return text.replace("0.", ".", 1) if text.lstrip("-").startswith("0.") else text


def pct_number(pct: float) -> str:
    if math.isinf(pct):
        return "+∞" if pct > 0 else "-∞"
    return f"{pct:+.0f}" if abs(pct) >= 10 else f"{pct:+.1f}"


def pct_text(pct: float) -> str:
    return pct_number(pct) + "%"


def half_width(estimate: Any) -> float | None:
    """How far the 95% interval of an estimate reaches from its value, on its wider side; None
    when it has no interval, ∞ when that side is unbounded.

    The one rule for writing an interval in a table: value ± the larger of the two distances from
    the value to a bound. It reads the same for a symmetric interval and an asymmetric one (a rate
    near 0, a ratio), is never narrower than the interval it stands for, and is short enough to
    keep every number whole at 80 columns. The exact bounds are on the variant's detail view
    (`rate_interval`, `pct_interval`) and in the exported report."""
    value, bounds = value_of(estimate), bounds_of(estimate)
    if value is None or bounds is None:
        return None
    low, high = bounds
    return max(value - low, high - value, 0.0)


def fixed(value: float | None, digits: int = 2) -> str:
    """A figure with `digits` decimals, as it stands beside its ± ("0.07", "-0.35"); "-" for none."""
    return "-" if value is None else f"{value:.{digits}f}"


def spread(estimate: Any, digits: int = 2) -> Text:
    """"±0.34", dim: the half-width of a rate's or score's 95% interval (`half_width`); empty when
    the estimate has no interval."""
    reach = half_width(estimate)
    if reach is None:
        return Text("", style="dim")
    return Text("±∞" if math.isinf(reach) else f"±{reach:.{digits}f}", style="dim")


def pct_spread(estimate: Any) -> Text:
    """"±1.4%", dim: the half-width of a change's 95% interval in percent (`half_width`), with
    as many decimals as the change is written with; empty when the change has no interval."""
    reach = half_width(estimate)
    if reach is None:
        return Text("", style="dim")
    if math.isinf(reach):
        return Text("±∞%", style="dim")
    # Thousands written in full with a separator (±1,688%), as the report writes big changes.
    words = f"{reach:,.0f}" if reach >= 10 else f"{reach:.1f}"
    return Text(f"±{words}%", style="dim")


def with_spread(estimate: Any, digits: int = 2) -> str:
    """"0.43 ±0.34": a rate or score and its 95% interval as a table writes them; the value alone
    when it has no interval, "-" when it has no value."""
    reach = spread(estimate, digits).plain
    text = fixed(value_of(estimate), digits)
    return f"{text} {reach}" if reach and text != "-" else text


def rate_interval(estimate: Any) -> Text:
    """[low,high] of a rate or score, dim, for a detail view; empty when the estimate has no
    interval."""
    bounds = bounds_of(estimate)
    return Text("" if bounds is None else f"[{short(bounds[0])},{short(bounds[1])}]", style="dim")


def pct_interval(estimate: Any) -> Text:
    """[low,high] of a change in percent, dim, for a detail view; empty when the change has no
    interval."""
    bounds = bounds_of(estimate)
    return Text("" if bounds is None else f"[{pct_number(bounds[0])},{pct_number(bounds[1])}]", style="dim")

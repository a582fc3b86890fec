"""Figures as the app writes them: estimates ({"value", "ci95", "n"}), changes and 95% intervals,
short enough for a table cell at 80 columns."""

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


def rate_interval(estimate: Any) -> Text:
    """[low,high] of a rate or score, dim; empty when the estimate has no interval."""
    bounds = bounds_of(estimate)
    return Text("" if bounds is None else f"[{short(bounds[0])},{short(bounds[1])}]", style="dim")


def pct_interval(estimate: Any) -> Text:
    """[low,high] of a change in percent, dim; empty when the change has no interval."""
    bounds = bounds_of(estimate)
    return Text("" if bounds is None else f"[{pct_number(bounds[0])},{pct_number(bounds[1])}]", style="dim")

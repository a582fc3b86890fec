"""Sparsity against a measured figure, one line per pruning method, the baseline at sparsity 0."""

from __future__ import annotations

from typing import Any

from textual_plotext import PlotextPlot

from audit.metrics import METRICS
from tui.widgets.numbers import value_of


def _point(row: dict[str, Any], key: str) -> float | None:
    # A variant too degraded to judge has bias figures that cannot be read: no point to plot.
    if row.get("degraded") and key in METRICS and METRICS.meta(key)["bias"]:
        return None
    value = value_of(row.get(key))
    return None if value is None else float(value)


def method_series(rows: list[dict[str, Any]], key: str, baseline: str = "baseline") -> dict[str, list[tuple[float, float]]]:
    """Per method, (sparsity, value) points of `rows` (`summary_rows` of a report), sorted."""
    base = next((r for r in rows if r["variant"] == baseline), None)
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        value = None if row is base or row.get("sparsity") is None else _point(row, key)
        if value is not None:
            series.setdefault(row.get("method") or row["variant"], []).append((float(row["sparsity"]), value))
    start = None if base is None else _point(base, key)
    if start is not None:
        for points in series.values():
            points.append((0.0, start))
    return {method: sorted(points) for method, points in series.items()}


class SparsityChart(PlotextPlot):
    def __init__(self, title: str, key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chart_title = title
        self.key = key

    def show(self, rows: list[dict[str, Any]]) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        series = method_series(rows, self.key)
        plt.title(self.chart_title if series else f"{self.chart_title}: no pruned variant measured yet")
        for method, points in series.items():
            plt.plot([p[0] for p in points], [p[1] for p in points], label=method, marker="braille")
        plt.xlabel("sparsity")
        self.refresh()

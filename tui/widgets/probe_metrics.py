"""Per-category probe figures with their 95% intervals, live while a probe runs or as stored."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from audit.results import METRIC_NAMES

# The bias figures first, with their 95% intervals: at 80 columns the accuracies scroll.
QA_INTERVALS = (("SRS [95% CI]", "srs"), ("s_AMB [95% CI]", "s_amb"), ("s_DIS [95% CI]", "s_dis"))
QA_VALUES = (("acc amb", "accuracy_ambiguous"), ("acc dis", "accuracy_disambiguated"))
SENTENCE_METRICS = (("% stereo", "pct_stereotype"), ("SS", "ss"), ("LMS", "lms"), ("ICAT", "icat"))


def renamed(metrics: dict[str, Any]) -> dict[str, Any]:
    """Probe summary names as the reports and the app name them (s_amb, s_dis...)."""
    return {METRIC_NAMES.get(k, k): v for k, v in metrics.items()}


def value_of(estimate: Any) -> float | None:
    return estimate.get("value") if isinstance(estimate, dict) else estimate


def estimate_text(estimate: Any, digits: int = 2) -> Text:
    value = value_of(estimate)
    if value is None:
        return Text("-", style="dim")
    return Text(f"{value:.{digits}f}")


def _short(value: float) -> str:
    """Two decimals without the leading zero: .31, -.05, 1.00."""
    text = f"{value:.2f}"
    return text.replace("0.", ".", 1) if text.lstrip("-").startswith("0.") else text


def interval_text(estimate: Any) -> Text:
    """value [low,high]: the 95% interval the core computed."""
    text = estimate_text(estimate)
    interval = estimate.get("ci95") if isinstance(estimate, dict) else None
    if interval and interval[0] is not None and interval[1] is not None:
        text.append(f" [{_short(interval[0])},{_short(interval[1])}]", style="dim")
    return text


class ProbeMetricsTable(DataTable):
    DEFAULT_CSS = """
    ProbeMetricsTable {
        height: auto;
        max-height: 12;
    }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)

    def show(self, metrics: dict[str, Any] | None) -> None:
        """`metrics`: {"overall": {...}, "categories": {name: {...}}} of a probe summary."""
        self.clear(columns=True)
        if not metrics:
            return
        overall = renamed(metrics.get("overall") or {})
        groups = [("overall", overall)] + [(c, renamed(m)) for c, m in sorted((metrics.get("categories") or {}).items())]
        qa = "srs" in overall
        self.add_column("category", key="category")
        if qa:
            for label, key in QA_INTERVALS + QA_VALUES:
                self.add_column(label, key=key)
        else:
            for label, key in SENTENCE_METRICS:
                if key in overall:
                    self.add_column(label, key=key)
        self.add_column("items", key="items")
        for name, group in groups:
            cells: list[Text] = [Text(name, style="bold" if name == "overall" else "")]
            if qa:
                cells += [interval_text(group.get(key)) for _, key in QA_INTERVALS]
                cells += [estimate_text(group.get(key)) for _, key in QA_VALUES]
            else:
                cells += [interval_text(group.get(key)) for _, key in SENTENCE_METRICS if key in overall]
            cells.append(Text(str(group.get("n_items", "-"))))
            self.add_row(*cells, key=name)

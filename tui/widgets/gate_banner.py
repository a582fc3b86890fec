"""The verdict banner: whether the run's models may ship, in plain words with an icon, and what
decides it (`audit.verdict` words it, for the app, History and `edge-audit runs list` alike)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget

from audit.verdict import DEGRADED, LABELS, Verdict, run_verdict

STATES = tuple(LABELS)
# The room the banner may take: the headline wraps, its last line ends in an ellipsis.
MOST_LINES = 3


def verdict_text(verdict: Verdict, width: int, lines: int = MOST_LINES) -> Text:
    """" ✖ DO NOT SHIP  1 rule fails (...)": the label in reverse, then what decides it, in at most
    `lines` lines of `width` cells (cut at the end, never inside the label)."""
    label = Text(f" {verdict.icon} {verdict.label} ", style="bold reverse")
    if not verdict.detail:
        return label
    text = Text.assemble(label, " ", verdict.detail)
    room = max(width * lines, label.cell_len + 8)
    if text.cell_len > room:
        text.truncate(room - 1)
        text.append("…")
    return text


def banner_state(verdict: Verdict) -> str:
    # A variant too degraded to judge blocks shipping as a failure does.
    return "fail" if verdict.state == DEGRADED else verdict.state


class GateBanner(Widget):
    DEFAULT_CSS = """
    GateBanner {
        height: auto;
        max-height: 3;
        padding: 0 1;
    }
    GateBanner.-fail { background: $error 40%; }
    GateBanner.-pass { background: $success 30%; }
    GateBanner.-inconclusive { background: $warning 40%; }
    GateBanner.-pending { background: $primary 25%; }
    GateBanner.-none { color: $text-muted; }
    """

    verdict: Verdict = run_verdict(None)

    def show(self, report: dict[str, Any] | None) -> None:
        report = report or {}
        self.verdict = run_verdict(report.get("gate"), status=(report.get("run") or {}).get("status"))
        state = banner_state(self.verdict)
        for name in ("pass", "fail", "inconclusive", "pending", "none"):
            self.set_class(name == state, f"-{name}")
        self.refresh(layout=True)

    def render(self) -> Text:
        return verdict_text(self.verdict, max(self.size.width, 20))

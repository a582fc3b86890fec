"""The verdict's key: every finding of the gate in words, with its bound and its limit, variant
by variant, under the run's headline."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from audit.verdict import DEGRADED, FAIL, ICONS, INCONCLUSIVE, LABELS, PASS, KeyLine, run_verdict, variant_verdict, verdict_key
from tui.widgets.comparison import VERDICT_STYLES as STYLES
from tui.widgets.gate_banner import GateBanner

LEGEND = f"{ICONS[PASS]} holds   {ICONS[FAIL]} fails   {ICONS[INCONCLUSIVE]} not settled   {ICONS[DEGRADED]} too degraded to judge"


def key_sections(gate: dict[str, Any] | None) -> list[tuple[str, Text, list[Text]]]:
    """(variant, its verdict line, its findings) in the gate's order. The bias rules not judged
    for a variant too degraded to judge are said once, by name."""
    sections: dict[str, list[KeyLine]] = {}
    for line in verdict_key(gate):
        sections.setdefault(line.variant, []).append(line)
    out = []
    for variant, lines in sections.items():
        verdict = variant_verdict(gate, variant)
        head = Text.assemble((variant, "bold"), "  ", (f"{verdict.icon} {verdict.label}", STYLES.get(verdict.state, "")))
        judged = [line for line in lines if line.judged]
        unjudged = [line.figure for line in lines if not line.judged]
        body = [Text.assemble((f"{line.icon} ", STYLES[line.state]), line.words) for line in judged]
        if unjudged:
            whose = "the baseline " if any(line.against_degraded_baseline for line in lines) else ""
            body.append(Text.assemble((f"{ICONS[INCONCLUSIVE]} ", "yellow"), f"not judged, {whose}too degraded: {', '.join(unjudged)}"))
        out.append((variant, head, body))
    return out


class VerdictScreen(Screen[None]):
    """Opened from Compare with `v`; esc goes back."""

    BINDINGS = [Binding("escape,v,q", "app.pop_screen", "Back")]

    def __init__(self, report: dict[str, Any]) -> None:
        super().__init__()
        self.report = report

    def compose(self) -> ComposeResult:
        run = self.report.get("run") or {}
        yield Static(Text.assemble((f"Run {run.get('id', '?')}", "bold"), f" · why the verdict · {LEGEND}"), id="verdict-caption")
        yield GateBanner(id="verdict-banner")
        with VerticalScroll(id="verdict-key"):
            gate = self.report.get("gate")
            sections = key_sections(gate)
            if not sections:
                yield Static(run_verdict(gate).detail or LABELS["none"])
            for variant, head, body in sections:
                yield Static(head, classes="key-variant")
                for line in body:
                    yield Static(line, classes="key-finding")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(GateBanner).show(self.report)
        self.query_one("#verdict-key").focus()

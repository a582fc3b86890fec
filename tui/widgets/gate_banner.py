"""The gate banner: the gate's verdict on the numbers stored so far, in plain words, naming the
finding that decides it."""

from __future__ import annotations

import math
from typing import Any

from rich.text import Text
from textual.widget import Widget

from audit.reports.render import fmt

STATES = ("pass", "fail", "inconclusive", "pending", "none")
LABELS = {"pass": " GATE PASS ", "fail": " GATE FAIL ", "inconclusive": " GATE INCONCLUSIVE ", "pending": " GATE PENDING "}


def _bound(x: float | None, low: bool) -> str:
    # A bound the gate could not give (None) is as good as unbounded.
    if x is None or math.isinf(x):
        return "-∞" if low else "∞"
    return fmt(x, 3)


def finding_forms(finding: dict[str, Any]) -> list[str]:
    """A finding in words, longest first: "wanda-50 perplexity_relative_change_pct 137 [120,155]
    > 50" (the figure with its one-sided bounds against the limit), then without the bounds,
    then only what was checked; a failed check of competence says the variant is too degraded
    to judge."""
    where = "" if finding["category"] == "overall" else f" [{finding['category']}]"
    degraded = finding.get("check") == "competence" and finding["verdict"] == "fail"
    who = f"{finding['variant']} too degraded to judge" if degraded else finding["variant"]
    name = f"{who}{':' if degraded else ''} {finding['metric']}{where}"
    if finding["value"] is None:
        return [f"{name}: {finding.get('reason') or 'not measured'}", f"{name} not measured", name]
    value = fmt(finding["value"], 3)
    bounds = f" [{_bound(finding.get('lower'), True)},{_bound(finding.get('upper'), False)}]"
    limit = fmt(finding["limit"], 3)
    if finding["verdict"] != "fail":
        against = f", limit {limit}"
    elif finding.get("limit_is") == "min":
        against = f" not above {'chance ' if finding['metric'] == 'accuracy_disambig' else ''}{limit}"
    else:
        against = f" > {limit}"
    return [f"{name} {value}{bounds}{against}", f"{name} {value}{against}", who if degraded else name]


def _named(label: str, words: str, findings: list[dict[str, Any]], width: int) -> Text:
    """The label, then the first finding in `width` cells (in fewer words if need be) and how
    many more there are."""
    line = Text(label, style="bold reverse")
    more = Text(f"  (+{len(findings) - 1} more)" if len(findings) > 1 else "")
    room = max(width - line.cell_len - more.cell_len, 8)
    forms = [Text(f" {words}: {form}") for form in finding_forms(findings[0])]
    detail = next((form for form in forms if form.cell_len <= room), forms[-1])
    detail.truncate(room, overflow="ellipsis")
    return Text.assemble(line, detail, more)


def gate_text(gate: dict[str, Any] | None, n_rules: int, width: int = 200, in_progress: bool = False) -> tuple[Text, str]:
    """The banner's line in `width` cells and its state: pass, fail, inconclusive, pending
    (checks not measured yet while the run is in progress) or none."""
    if gate is None:
        return Text(" GATE  no rules in this plan", style="dim"), "none"
    findings = gate.get("findings") or []
    if not findings:
        if in_progress:
            return Text.assemble((LABELS["pending"], "bold reverse"), " nothing the gate checks is measured yet"), "pending"
        return Text(" GATE  nothing in this run for the gate to check", style="dim"), "none"
    verdict = gate.get("verdict")
    if verdict == "fail":
        return _named(LABELS["fail"], "do not ship", [f for f in findings if f["verdict"] == "fail"], width), "fail"
    unmeasured = [f for f in findings if f["value"] is None]
    if in_progress and unmeasured:
        line = Text(LABELS["pending"], style="bold reverse")
        line.append(f" {len(unmeasured)} of {len(findings)} checks not measured yet; none fails so far")
        return line, "pending"
    if verdict == "inconclusive":
        return _named(LABELS["inconclusive"], "not settled", [f for f in findings if f["verdict"] == "inconclusive"], width), "inconclusive"
    line = Text(LABELS["pass"], style="bold reverse")
    checked = [f"{n_rules} rule{'' if n_rules == 1 else 's'}"] if n_rules else []
    if any(f.get("check") == "competence" for f in findings):
        checked.append("the competence guard")
    line.append(f" may ship: all {len(findings)} checks hold ({' and '.join(checked)})")
    return line, "pass"


class GateBanner(Widget):
    DEFAULT_CSS = """
    GateBanner {
        height: 1;
        padding: 0 1;
    }
    GateBanner.-fail { background: $error 40%; }
    GateBanner.-pass { background: $success 30%; }
    GateBanner.-inconclusive { background: $warning 40%; }
    GateBanner.-pending { background: $primary 25%; }
    """

    _report: dict[str, Any] | None = None

    def show(self, report: dict[str, Any] | None) -> None:
        self._report = report
        _, state = self._line(200)
        for name in STATES:
            self.set_class(name == state, f"-{name}")
        self.refresh()

    def _line(self, width: int) -> tuple[Text, str]:
        report = self._report or {}
        settings = (report.get("plan") or {}).get("gate") or {}
        in_progress = (report.get("run") or {}).get("status") != "finished"
        return gate_text(report.get("gate"), len(settings.get("rules") or ()), width, in_progress)

    def render(self) -> Text:
        text, _ = self._line(max(self.size.width, 20))
        text.truncate(max(self.size.width, 20), overflow="ellipsis")
        return text

"""The gate banner: the plan's rules against the numbers stored so far, naming a rule that fails."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widget import Widget


def finding_text(finding: dict[str, Any]) -> str:
    where = "" if finding["category"] == "overall" else f" [{finding['category']}]"
    text = f"{finding['variant']}: {finding['metric']}{where} = {finding['value']:.4g} > {finding['limit']:g}"
    if finding.get("p_value") is not None:
        text += f" (p = {finding['p_value']:.2g})"
    return text


def gate_text(gate: dict[str, Any] | None, n_rules: int, width: int = 200) -> tuple[Text, str]:
    """The banner's line in `width` cells and its state: pass, fail, pending (rules not
    measured yet) or none. A failing rule is named; the count of others follows it."""
    if not n_rules or gate is None:
        return Text(" GATE  no rules in this plan", style="dim"), "none"
    findings = gate.get("findings") or []
    failed = [f for f in findings if not f["passed"] and f["value"] is not None]
    unmeasured = [f for f in findings if f["value"] is None]
    if failed:
        line = Text(" GATE FAIL ", style="bold reverse")
        more = Text(f"  (+{len(failed) - 1} more)" if len(failed) > 1 else "")
        detail = Text(" " + finding_text(failed[0]))
        detail.truncate(max(width - line.cell_len - more.cell_len, 8), overflow="ellipsis")
        return Text.assemble(line, detail, more), "fail"
    if unmeasured:
        line = Text(" GATE PENDING ", style="bold reverse")
        line.append(f" {len(unmeasured)} of {len(findings)} checks not measured yet; none fails so far")
        return line, "pending"
    line = Text(" GATE PASS ", style="bold reverse")
    line.append(f" {len(findings)} checks of {n_rules} rules hold")
    return line, "pass"


class GateBanner(Widget):
    DEFAULT_CSS = """
    GateBanner {
        height: 1;
        padding: 0 1;
    }
    GateBanner.-fail { background: $error 40%; }
    GateBanner.-pass { background: $success 30%; }
    GateBanner.-pending { background: $warning 25%; }
    """

    _report: dict[str, Any] | None = None

    def show(self, report: dict[str, Any] | None) -> None:
        self._report = report
        _, state = self._line(200)
        for name in ("fail", "pass", "pending", "none"):
            self.set_class(name == state, f"-{name}")
        self.refresh()

    def _line(self, width: int) -> tuple[Text, str]:
        report = self._report or {}
        n_rules = len((report.get("plan") or {}).get("gate") or ())
        return gate_text(report.get("gate"), n_rules, width)

    def render(self) -> Text:
        text, _ = self._line(max(self.size.width, 20))
        text.truncate(max(self.size.width, 20), overflow="ellipsis")
        return text

"""The deployment gate: a plan's rules checked against each variant's measured numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, Sequence

from audit.plans import GateRule


@dataclass(frozen=True)
class Measurement:
    value: float | None
    p_value: float | None = None  # of the change against the baseline, where a test applies
    test: str | None = None


class MeasurementSource(Protocol):
    def categories(self, variant: str, suite: str | None) -> list[str]:
        """Categories measured for a variant in a suite (without "overall")."""

    def measure(self, variant: str, metric: str, suite: str | None, category: str) -> Measurement:
        """The value of a gate metric for a variant, suite and category ("overall" for all)."""


@dataclass(frozen=True)
class GateFinding:
    rule: str
    metric: str
    variant: str
    category: str
    value: float | None
    limit: float
    p_value: float | None
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        value = "not measured" if self.value is None else f"{self.value:.4g}"
        where = "" if self.category == "overall" else f" [{self.category}]"
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict} {self.variant}: {self.metric}{where} = {value} (limit {self.limit:g}) - {self.reason}"


@dataclass(frozen=True)
class GateReport:
    findings: tuple[GateFinding, ...]

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.findings)

    def failures(self) -> list[GateFinding]:
        return [f for f in self.findings if not f.passed]

    def variant_passed(self, variant: str) -> bool:
        return all(f.passed for f in self.findings if f.variant == variant)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "findings": [f.to_dict() for f in self.findings],
            "failures": [f.line() for f in self.failures()],
        }


def _check(rule: GateRule, variant: str, category: str, measured: Measurement) -> GateFinding:
    def finding(passed: bool, reason: str) -> GateFinding:
        return GateFinding(rule.describe(), rule.metric, variant, category, measured.value, rule.max, measured.p_value, passed, reason)

    if measured.value is None:
        # A gate that cannot measure must not let a model through.
        return finding(False, "not measured, so the rule cannot be shown to hold")
    if measured.value <= rule.max:
        return finding(True, "within the limit")
    if rule.significance is not None:
        if measured.p_value is None:
            return finding(False, f"over the limit; no significance test available for {rule.metric}")
        if measured.p_value >= rule.significance:
            return finding(True, f"over the limit but not significant (p = {measured.p_value:.3g} >= {rule.significance:g})")
        return finding(False, f"over the limit and significant (p = {measured.p_value:.3g} < {rule.significance:g})")
    return finding(False, "over the limit")


def evaluate_gate(rules: Sequence[GateRule], variants: Sequence[str], source: MeasurementSource) -> GateReport:
    findings: list[GateFinding] = []
    for variant in variants:
        for rule in rules:
            categories = source.categories(variant, rule.suite) if rule.category == "each" else [rule.category]
            for category in categories:
                findings.append(_check(rule, variant, category, source.measure(variant, rule.metric, rule.suite, category)))
    return GateReport(tuple(findings))

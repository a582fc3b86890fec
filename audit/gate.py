"""The deployment gate: each rule's confidence bound against its limit, and the competence guard.

A rule passes only when the figure's one-sided upper confidence bound is within its limit; it
fails when the lower bound is over the limit; otherwise it is inconclusive, which blocks
shipping as a failure does and says about how many more items would settle it. A figure that
could not be measured, or that compares probe runs made with different settings, is
inconclusive too: lack of evidence is never evidence of safety.

Before any bias rule is read, the competence guard asks whether the variant still answers the
questions: a model degraded toward chance picks the bias-aligned option about as often as any
other, which reads as "less biased". A variant fails as too degraded to judge when its
disambiguated accuracy is not shown above chance, when its accuracy drop is shown beyond the
limit, or when its parse-failure rate is shown beyond the limit; its bias rules are then not
judged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

from audit.metrics import METRICS
from audit.plans import GateRule, GateSettings
from audit.stats import Bounds, items_to_settle

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
BASELINE = "baseline"

# What each verdict means for the person deciding whether to ship.
PLAIN = {
    PASS: "may ship",
    FAIL: "do not ship",
    INCONCLUSIVE: "not settled: do not ship yet",
    "degraded": "too degraded to judge: do not ship",
    "baseline degraded": "baseline too degraded: do not ship",  # as long as the variant's own, for the same table cells
}
# Why a bias rule was not read: the variant's own competence failed, or the baseline's did.
NOT_JUDGED = "not judged: the variant is too degraded to judge (see its competence)"
AGAINST_DEGRADED_BASELINE = "the baseline is too degraded to judge against"
NOT_JUDGED_BASELINE = f"not judged: {AGAINST_DEGRADED_BASELINE} (see its competence)"


@dataclass(frozen=True)
class Measurement:
    """A figure with its one-sided bounds at the confidence asked for; `note` says why the value
    is missing (not measured, not comparable) or that the figure does not apply."""

    value: float | None
    lower: float | None = None
    upper: float | None = None
    n: int = 0
    note: str | None = None
    applies: bool = True
    # A sequential figure's fixed-sample bounds over the same items, read only to say how many
    # more items would settle it: its own bounds, sized for the whole suite, narrow faster than
    # 1/sqrt(n) while few items are scored, and would overstate the items needed two- or threefold.
    fixed: Callable[[], Bounds] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, bounds: Bounds) -> "Measurement":
        return cls(bounds.value, bounds.lower, bounds.upper, bounds.n)

    @classmethod
    def exact(cls, value: float) -> "Measurement":
        return cls(value, value, value)


class MeasurementSource(Protocol):
    def categories(self, variant: str, suite: str | None) -> list[str]:
        """Categories measured for a variant in a suite."""

    def measure(self, variant: str, metric: str, suite: str | None, category: str, confidence: float) -> Measurement:
        """A gate figure of a variant, in a suite and scope ("overall", "category_mean" or a
        category), with one-sided bounds at `confidence` each."""

    def question_suites(self) -> list[str]:
        """The probe suites whose items are questions (where the competence guard applies)."""

    def chance(self, variant: str, suite: str) -> float | None:
        """Accuracy of answering the suite's questions at random."""


@dataclass(frozen=True)
class GateFinding:
    check: str  # "rule" or "competence"
    rule: str
    metric: str
    variant: str
    category: str
    suite: str | None
    verdict: str
    value: float | None
    lower: float | None
    upper: float | None
    limit: float
    limit_is: str  # "max": the figure must stay at or below it; "min": above it
    confidence: float
    reason: str
    items_to_settle: int | None = None
    # Sequential probing: the items scored when this verdict was settled (or all, at the limit).
    items_used: int | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("value", "lower", "upper"):
            x = data[key]
            data[key] = None if x is None or not math.isfinite(x) else round(x, 6)
        data["passed"] = self.passed
        if data["items_used"] is None:
            del data["items_used"]  # scored in full, as every finding was before sequential probing
        return data

    def line(self) -> str:
        return finding_line(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GateFinding":
        """A finding as `to_dict` stored it (in a run's gate or an audit record)."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def finding_line(finding: dict[str, Any]) -> str:
    """A finding (as `GateFinding.to_dict` gives it, stored or fresh) on one line."""
    where = "" if finding["category"] == "overall" else f" [{finding['category']}]"
    if finding["value"] is None:
        figure = "not measured"
    else:
        # A side written as null is unbounded.
        low = "-inf" if finding["lower"] is None else f"{finding['lower']:.4g}"
        high = "inf" if finding["upper"] is None else f"{finding['upper']:.4g}"
        figure = f"{finding['value']:.4g} [{low}, {high}]"
    sign = "<=" if finding["limit_is"] == "max" else ">"
    used = f" ({finding['items_used']:,} items)" if finding.get("items_used") is not None else ""
    return (
        f"{finding['verdict'].upper()} {finding['variant']}: {finding['metric']}{where} = {figure}, "
        f"limit {sign} {finding['limit']:g} at {finding['confidence']:g} - {finding['reason']}{used}"
    )


# Gate figures as a user would name them (a change is shown signed, e.g. "perplexity +146%").
_PLAIN_NAMES = {
    "perplexity_relative_change_pct": "perplexity",
    "srs_relative_change_pct": "SRS",
    "srs": "SRS",
    "transition_rate": "bias-ward transitions",
    "net_transition_rate": "net bias-ward transitions",
    "transition_rate_over_noise": "bias-ward transitions over noise",
    "bias_score_ambig": "ambiguous bias score",
    "bias_score_disambig": "disambiguated bias score",
    "accuracy_ambig_drop": "ambiguous accuracy drop",
    "accuracy_disambig_drop": "disambiguated accuracy drop",
    "accuracy_disambig": "disambiguated accuracy",
    "parse_failure_rate": "unparsed answers",
}


def figure_name(finding: dict[str, Any]) -> str:
    """What a finding judges, as a user names it: "perplexity", "ambiguous bias score in Age"."""
    metric = finding["metric"]
    meta = METRICS.meta(metric) if metric in METRICS else {"short": metric}
    where = "" if finding.get("category") in ("overall", None) else f" in {finding['category']}"
    return f"{_PLAIN_NAMES.get(metric, meta['short'])}{where}"


def plain_finding(finding: dict[str, Any]) -> str:
    """A finding that blocks shipping, in a user's words: "perplexity +146% > 50%",
    "bias score in Age 0.41 > 0.3", "SRS change not settled: 12% to 31%, limit 25%"."""
    metric = finding["metric"]
    meta = METRICS.meta(metric) if metric in METRICS else {"short": metric, "unit": ""}
    unit = meta.get("unit") or ""
    named = figure_name(finding)
    value, limit = finding.get("value"), finding["limit"]
    sign = "<=" if finding["limit_is"] == "max" else ">"
    if finding["verdict"] == PASS:
        return f"{named}: {value:.3g}{unit} {sign} {limit:g}{unit}"
    if finding["check"] == "competence" and finding["verdict"] == FAIL:
        return finding["reason"].split(";")[0]  # "too degraded to judge: ...", without the why
    if finding["reason"].startswith("not judged"):
        return f"{named} not judged ({'baseline ' if against_degraded_baseline(finding['reason']) else ''}too degraded)"
    if value is None:
        # A figure decided without a finite value is infinite (perplexity of a token of probability 0).
        return f"{named} infinite" if finding["verdict"] == FAIL else f"{named} not measured ({finding['reason']})"
    shown = f"{value:+.3g}" if unit == "%" else f"{value:.3g}"
    if finding["verdict"] == FAIL:
        over = ">" if finding["limit_is"] == "max" else "<="
        return f"{named} {shown}{unit} {over} {limit:g}{unit}"
    low = "-inf" if finding.get("lower") is None else f"{finding['lower']:.3g}"
    high = "inf" if finding.get("upper") is None else f"{finding['upper']:.3g}"
    return f"{named} not settled: {low} to {high}{unit}, limit {sign} {limit:g}{unit}"


def against_degraded_baseline(reason: str) -> bool:
    """Whether a bias rule was left unjudged because the baseline, not the variant, is too degraded."""
    return reason.startswith(NOT_JUDGED_BASELINE)


def _worst(findings: Sequence[GateFinding]) -> str:
    """Fail if any fails, else inconclusive if any is, else pass; inconclusive without findings:
    nothing checked is nothing shown to hold."""
    verdicts = {f.verdict for f in findings}
    if FAIL in verdicts:
        return FAIL
    return INCONCLUSIVE if INCONCLUSIVE in verdicts or not verdicts else PASS


def _competence_failed(findings: Sequence[GateFinding]) -> bool:
    return any(f.check == "competence" and f.verdict == FAIL for f in findings)


@dataclass(frozen=True)
class GateReport:
    findings: tuple[GateFinding, ...]
    confidence: float = 0.95
    variants: tuple[str, ...] = field(default=())

    @property
    def verdict(self) -> str:
        return _worst(self.findings)

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def failures(self) -> list[GateFinding]:
        """Every finding that blocks shipping: the failed ones first, then the inconclusive."""
        return [f for f in self.findings if f.verdict == FAIL] + [f for f in self.findings if f.verdict == INCONCLUSIVE]

    def _own(self, variant: str) -> list[GateFinding]:
        # The baseline's own competence decides for every variant judged against it.
        return [f for f in self.findings if f.variant in (variant, BASELINE)]

    def variant_verdict(self, variant: str) -> str:
        return _worst(self._own(variant))

    def variant_passed(self, variant: str) -> bool:
        return self.variant_verdict(variant) == PASS

    def degraded(self, variant: str) -> bool:
        """Too degraded to judge: a competence check failed (its own, or the baseline's)."""
        return _competence_failed(self._own(variant))

    def plain(self, variant: str) -> str:
        if _competence_failed([f for f in self.findings if f.variant == variant]):
            return PLAIN["degraded"]
        return PLAIN["baseline degraded"] if self.degraded(variant) else PLAIN[self.variant_verdict(variant)]

    def to_dict(self) -> dict[str, Any]:
        names = list(self.variants) or sorted({f.variant for f in self.findings})
        return {
            "verdict": self.verdict,
            "passed": self.passed,
            "confidence": self.confidence,
            "variants": {
                v: {"verdict": self.variant_verdict(v), "degraded": self.degraded(v), "plain": self.plain(v)} for v in names
            },
            "findings": [f.to_dict() for f in self.findings],
            "failures": [f.line() for f in self.failures()],
        }


# -- deciding ------------------------------------------------------------------------------------
# What a figure's n counts, where it is not probe items: the perplexity change is measured over
# chunks of its text, and more of them means a longer text.
_COUNTED = {"perplexity_relative_change_pct": "chunks of perplexity text"}


def _decide_max(measured: Measurement, limit: float, counted: str = "items") -> tuple[str, str, int | None]:
    """(verdict, reason, items to settle) for a figure that must stay at or below `limit`; how
    many more would settle it is said only from a spread over two or more of them."""
    if measured.value is None or measured.lower is None or measured.upper is None:
        return INCONCLUSIVE, measured.note or "not measured, so the rule cannot be shown to hold", None
    if any(math.isnan(x) for x in (measured.value, measured.lower, measured.upper)):
        return INCONCLUSIVE, "not a number, so the rule cannot be shown to hold", None
    if measured.upper <= limit:
        return PASS, "upper bound within the limit", None
    if measured.lower > limit:
        return FAIL, "lower bound over the limit", None
    basis = measured.fixed() if measured.fixed is not None else None
    if basis is None or basis.value is None or basis.lower is None or basis.upper is None:
        basis = Bounds(measured.value, measured.lower, measured.upper, measured.n, 0.0)
    needed = items_to_settle(basis, limit) if basis.n >= 2 else None
    more = f"; about {needed:,} more {counted} would settle it if the estimate holds" if needed else ""
    return INCONCLUSIVE, f"the bounds straddle the limit{more}", needed


def _finding(check: str, rule: str, metric: str, variant: str, category: str, suite: str | None, measured: Measurement,
             limit: float, limit_is: str, confidence: float, verdict: str, reason: str, needed: int | None = None) -> GateFinding:
    return GateFinding(check, rule, metric, variant, category, suite, verdict, measured.value, measured.lower,
                       measured.upper, limit, limit_is, confidence, reason, needed)


def _rule_findings(rule: GateRule, level: float, variant: str, source: MeasurementSource) -> list[GateFinding]:
    categories = source.categories(variant, rule.suite) if rule.category == "each" else [rule.category]
    if not categories:
        # No category to check one by one: the rule is not shown to hold, and says why.
        overall = source.measure(variant, rule.metric, rule.suite, "overall", level)
        why = overall.note if overall.value is None and overall.note else "no categories measured"
        unmeasured = Measurement(None, note=f"{why}: no category can be checked")
        verdict, reason, _ = _decide_max(unmeasured, rule.max)
        return [_finding("rule", rule.describe(), rule.metric, variant, "each", rule.suite, unmeasured, rule.max, "max", level, verdict, reason)]
    named = rule.category not in ("overall", "category_mean", "each")
    known = source.categories(variant, rule.suite) if named else []
    findings = []
    for category in categories:
        measured = source.measure(variant, rule.metric, rule.suite, category, level)
        if named and known and category not in known and measured.value is None:
            # A category the suite does not have (a misspelling, often): say so, not "no items".
            measured = replace(measured, note=f"{category!r} is not a category of this suite (its categories: {', '.join(known)})")
        verdict, reason, needed = _decide_max(measured, rule.max, _COUNTED.get(rule.metric, "items"))
        findings.append(_finding("rule", rule.describe(), rule.metric, variant, category, rule.suite, measured, rule.max, "max", level, verdict, reason, needed))
    return findings


def _competence(settings: GateSettings, variant: str, suite: str, source: MeasurementSource) -> list[GateFinding]:
    """The guard's three checks of one variant on one question suite."""
    level = settings.confidence
    out = []
    accuracy = source.measure(variant, "accuracy_disambig", suite, "overall", level)
    chance = source.chance(variant, suite)
    rule = "accuracy_disambig above chance"
    if accuracy.value is None or chance is None:
        out.append(_finding("competence", rule, "accuracy_disambig", variant, "overall", suite, accuracy, chance or 0.0, "min", level,
                            INCONCLUSIVE, accuracy.note or "no disambiguated items answered: competence cannot be shown"))
    elif accuracy.lower is not None and accuracy.lower > chance:
        out.append(_finding("competence", rule, "accuracy_disambig", variant, "overall", suite, accuracy, chance, "min", level,
                            PASS, "lower bound above chance"))
    else:
        out.append(_finding("competence", rule, "accuracy_disambig", variant, "overall", suite, accuracy, chance, "min", level, FAIL,
                            f"too degraded to judge: disambiguated accuracy is not shown above chance ({chance:.3g}); its bias figures cannot be read"))
    if variant != BASELINE:
        drop = source.measure(variant, "accuracy_disambig_drop", suite, "overall", level)
        verdict, reason, needed = _decide_max(drop, settings.max_accuracy_drop)
        if verdict == FAIL:
            reason = f"too degraded to judge: disambiguated accuracy fell by more than {settings.max_accuracy_drop:g}; its bias figures cannot be read"
        out.append(_finding("competence", f"accuracy_disambig_drop <= {settings.max_accuracy_drop:g}", "accuracy_disambig_drop", variant,
                            "overall", suite, drop, settings.max_accuracy_drop, "max", level, verdict, reason, needed))
    parse = source.measure(variant, "parse_failure_rate", suite, "overall", level)
    if parse.applies:
        verdict, reason, needed = _decide_max(parse, settings.max_parse_failure_rate)
        if verdict == FAIL:
            reason = f"too degraded to judge: more than {settings.max_parse_failure_rate:g} of its answers could not be parsed; the rest cannot stand for it"
        out.append(_finding("competence", f"parse_failure_rate <= {settings.max_parse_failure_rate:g}", "parse_failure_rate", variant,
                            "overall", suite, parse, settings.max_parse_failure_rate, "max", level, verdict, reason, needed))
    return out


def evaluate_gate(settings: GateSettings, variants: Sequence[str], source: MeasurementSource) -> GateReport:
    """Every rule for every variant, after the competence guard (the baseline's first: a baseline
    that cannot answer leaves nothing to compare against)."""
    findings: list[GateFinding] = []
    suites = source.question_suites() if settings.competence else []
    if settings.competence and BASELINE not in variants:
        for suite in suites:
            findings += [f for f in _competence(settings, BASELINE, suite, source) if f.metric == "accuracy_disambig"]
    for variant in variants:
        guard: list[GateFinding] = []
        for suite in suites:
            guard += _competence(settings, variant, suite, source)
        own = _competence_failed(guard)
        degraded = own or _competence_failed([f for f in findings if f.variant == BASELINE])
        findings += guard
        for rule in settings.rules:
            for finding in _rule_findings(rule, settings.level(rule), variant, source):
                if degraded and METRICS.meta(rule.metric)["bias"]:
                    finding = _not_judged(finding, NOT_JUDGED if own else NOT_JUDGED_BASELINE)
                findings.append(finding)
    return GateReport(tuple(findings), settings.confidence, tuple(variants))


def _not_judged(finding: GateFinding, reason: str) -> GateFinding:
    """A bias rule of a variant too degraded to judge, or judged against a baseline that is: its
    figures stay on record, unread."""
    return replace(finding, verdict=INCONCLUSIVE, reason=reason, items_to_settle=None)

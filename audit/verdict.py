"""The gate's verdict in the words of the person at the device: one headline for a run ("MAY
SHIP", "DO NOT SHIP", "NOT ENOUGH EVIDENCE", "TOO DEGRADED TO JUDGE") and a key that says every
finding with its bound and its limit.

Everything here reads a gate as `GateReport.to_dict` gives it, fresh or stored, so the app's
banner, its History, `edge-audit runs list` and the reports all say the same thing of one run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from audit.gate import AGAINST_DEGRADED_BASELINE, BASELINE, FAIL, INCONCLUSIVE, PASS, against_degraded_baseline, figure_name, plain_finding
from audit.metrics import METRICS

DEGRADED, NONE, PENDING = "degraded", "none", "pending"

LABELS = {
    PASS: "MAY SHIP",
    FAIL: "DO NOT SHIP",
    INCONCLUSIVE: "NOT ENOUGH EVIDENCE",
    DEGRADED: "TOO DEGRADED TO JUDGE",
    PENDING: "IN PROGRESS",
    NONE: "NO VERDICT",
}
# The same verdicts where a table column has little room.
SHORT_LABELS = {
    PASS: "may ship",
    FAIL: "do not ship",
    INCONCLUSIVE: "not settled",
    DEGRADED: "too degraded",
    PENDING: "in progress",
    NONE: "-",
}
# Marks that carry the verdict without colour (a terminal may show none).
ICONS = {PASS: "✔", FAIL: "✖", INCONCLUSIVE: "?", DEGRADED: "⚠", PENDING: "…", NONE: "·"}


@dataclass(frozen=True)
class Verdict:
    """A run's verdict: its state (pass, fail, inconclusive, degraded, pending or none), and
    what decides it in words."""

    state: str
    detail: str = ""

    @property
    def label(self) -> str:
        return LABELS[self.state]

    @property
    def short(self) -> str:
        return SHORT_LABELS[self.state]

    @property
    def icon(self) -> str:
        return ICONS[self.state]

    @property
    def ships(self) -> bool:
        return self.state == PASS

    def to_dict(self) -> dict[str, str]:
        return {"state": self.state, "label": self.label, "icon": self.icon, "detail": self.detail}

    def line(self) -> str:
        """"✖ DO NOT SHIP: 2 rules fail (...)"."""
        return f"{self.icon} {self.label}: {self.detail}" if self.detail else f"{self.icon} {self.label}"


def _not_judged(finding: dict[str, Any]) -> bool:
    return str(finding.get("reason") or "").startswith("not judged")


def _unjudged_for_the_baseline(finding: dict[str, Any]) -> bool:
    """A bias rule left unjudged because the baseline, not the variant, is too degraded."""
    return _not_judged(finding) and against_degraded_baseline(str(finding.get("reason") or ""))


def _degraded(finding: dict[str, Any]) -> bool:
    return finding.get("check") == "competence" and finding["verdict"] == FAIL


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _named(finding: dict[str, Any], words: str) -> str:
    return f"{finding['variant']} {words}"


def _list(parts: Sequence[str], most: int = 3) -> str:
    shown = list(parts[:most])
    if len(parts) > most:
        shown.append(f"+{len(parts) - most} more")
    return ", ".join(shown)


def _degraded_variants(findings: Iterable[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for f in findings:
        if _degraded(f) and f["variant"] not in names:
            names.append(f["variant"])
    return names


def _why_degraded(finding: dict[str, Any]) -> str:
    """The competence check a variant failed, in a few words: "accuracy not shown above chance
    (0.333)", "accuracy fell by more than 0.1"."""
    metric, limit = finding["metric"], finding["limit"]
    if metric == "accuracy_disambig":
        return f"accuracy not shown above chance ({limit:.3g})"
    if metric == "accuracy_disambig_drop":
        return f"accuracy fell by more than {limit:g}"
    if metric == "parse_failure_rate":
        return f"more than {limit:g} of its answers could not be parsed"
    return f"{figure_name(finding)} failed its check"


def _degraded_detail(findings: Sequence[dict[str, Any]]) -> str:
    """Who is too degraded to judge and which check says so, the baseline first: "the baseline:
    accuracy not shown above chance (0.333), so no variant can be compared with it"."""
    whys: dict[str, list[str]] = {}
    for name in _degraded_variants(findings):
        first = next(f for f in findings if f["variant"] == name and _degraded(f))
        whys.setdefault(_why_degraded(first), []).append(name)
    parts = []
    for why, names in whys.items():
        if BASELINE in names:
            parts.insert(0, f"the baseline: {why}, so no variant can be compared with it")
            names = [n for n in names if n != BASELINE]
        if names:
            parts.append(f"{_list(names)}: {why}")
    return "; ".join(parts)


def run_verdict(gate: dict[str, Any] | None, in_progress: bool = False, status: str | None = None) -> Verdict:
    """The headline of a run's gate. A failed rule is "do not ship" even while the run goes on;
    while it runs (`in_progress`, or `status` "running"), checks not measured yet make it "in
    progress" rather than "not enough evidence". A run that stopped before its planned steps
    (`status` "interrupted") may not ship however its checks stand so far."""
    verdict = _gate_verdict(gate, in_progress or status == "running")
    if status == "interrupted" and verdict.state == PASS:
        return Verdict(INCONCLUSIVE, f"the run stopped before its planned steps ({verdict.detail} so far): resume it to finish")
    return verdict


def _gate_verdict(gate: dict[str, Any] | None, in_progress: bool) -> Verdict:
    if not gate:
        return Verdict(NONE, "no gate rules in this plan" if gate is None else "the gate was not checked")
    if gate.get("error"):
        return Verdict(NONE, f"the run failed: {gate['error']}")
    findings = gate.get("findings")
    if findings is None:  # a gate stored before findings were kept: its verdict and failure lines
        state = gate.get("verdict") or (PASS if gate.get("passed") else FAIL)
        return Verdict(state, "; ".join(gate.get("failures") or []))
    if not findings:
        return Verdict(PENDING if in_progress else NONE, "nothing the gate checks is measured yet" if in_progress else "nothing in this run for the gate to check")
    failed = [f for f in findings if f["verdict"] == FAIL and not _degraded(f)]
    degraded = _degraded_variants(findings)
    open_ = [f for f in findings if f["verdict"] == INCONCLUSIVE and not _not_judged(f)]
    if failed:
        detail = _failed_detail(failed)
        if degraded:
            detail += f"; {_list(degraded)} too degraded to judge"
        return Verdict(FAIL, detail)
    if degraded:
        return Verdict(DEGRADED, _degraded_detail(findings))
    unmeasured = [f for f in open_ if f.get("value") is None]
    if in_progress and unmeasured:
        return Verdict(PENDING, f"{len(unmeasured)} of {len(findings)} checks not measured yet; none fails so far")
    if open_:
        return Verdict(INCONCLUSIVE, _evidence_needed(open_))
    return Verdict(PASS, f"all {len(findings)} checks hold")


def _failed_detail(failed: Sequence[dict[str, Any]]) -> str:
    """"2 rules fail (wanda-50 SRS +40% > 25%, ...)"."""
    return f"{_plural(len(failed), 'rule')} {'fails' if len(failed) == 1 else 'fail'} ({_list([_named(f, plain_finding(f)) for f in failed])})"


def _evidence_needed(open_: list[dict[str, Any]]) -> str:
    """"about 340 more items needed (wanda-50 SRS ...)", or what no number of items settles."""
    counted = [f for f in open_ if f.get("items_to_settle")]
    unmeasured = [f for f in open_ if f.get("value") is None]
    parts = []
    if counted:
        most = max(counted, key=lambda f: f["items_to_settle"])
        parts.append(f"about {most['items_to_settle']:,} more items needed ({_named(most, plain_finding(most))})")
    if unmeasured:
        parts.append(f"{_plural(len(unmeasured), 'check')} not measured ({_list([_named(f, figure_name(f)) for f in unmeasured])})")
    rest = len(open_) - len(counted) - len(unmeasured)
    if rest:
        parts.append(f"{_plural(rest, 'check')} on the limit, which more items may not settle")
    return "; ".join(parts)


def variant_verdict(gate: dict[str, Any] | None, variant: str) -> Verdict:
    """One variant's verdict, judged with the baseline's competence as the gate judges it. A
    variant too degraded to judge is named so even when it fails a rule as well, as the comparison
    table names it."""
    if not gate or gate.get("findings") is None:
        return Verdict(NONE)
    own = [f for f in gate["findings"] if f["variant"] in (variant, BASELINE)]
    if not own:
        return Verdict(NONE, "not judged by the gate")
    verdict = run_verdict({**gate, "findings": own})
    if verdict.state == FAIL and _degraded_variants(own):
        # One variant is named as the comparison table, its detail view and the reports name it:
        # too degraded to judge; the rules it fails as well follow. Either way it may not ship.
        failed = [f for f in own if f["verdict"] == FAIL and not _degraded(f)]
        return Verdict(DEGRADED, f"{_degraded_detail(own)}; and {_failed_detail(failed)}")
    return verdict


# -- the key: every finding in words ----------------------------------------------------------------
def _number(x: float, unit: str) -> str:
    if unit == "%":
        return f"{abs(x):,.3g}%" if abs(x) < 1000 else f"{abs(x):,.0f}%"
    return f"{x:.3g}{unit}"


def _bound(x: float | None, unit: str) -> str:
    if x is None or not math.isfinite(x):
        return "unbounded"
    sign = "-" if unit == "%" and x < 0 else ""
    return f"{sign}{_number(x, unit)}"


def finding_words(finding: dict[str, Any]) -> str:
    """One finding as a person would say it, with the bound that decides it and the limit:
    "perplexity rose 137% (at least 120%), limit 50%", "SRS rose 18% (could be 4% to 31%), limit
    25%: about 340 more items would settle it"; from a sequential probe, with the items it used
    ("..., limit 25%; on 120 items")."""
    words = _finding_words(finding)
    used = finding.get("items_used")
    if used is None or _not_judged(finding) or _unjudged_for_the_baseline(finding):
        return words
    return f"{words}; {'stopped at' if finding['verdict'] == INCONCLUSIVE else 'on'} {used:,} items"


def _finding_words(finding: dict[str, Any]) -> str:
    metric = finding["metric"]
    unit = (METRICS.meta(metric).get("unit") or "") if metric in METRICS else ""
    name = figure_name(finding)
    value, limit = finding.get("value"), finding["limit"]
    limit_text = f"limit {_bound(limit, unit)}" if finding["limit_is"] == "max" else f"must be above {limit:.3g}"
    if _unjudged_for_the_baseline(finding):
        return f"{name} not judged: {AGAINST_DEGRADED_BASELINE}"
    if _not_judged(finding):
        return f"{name} not judged: the variant is too degraded to judge"
    if value is None:
        return f"{name} not measured: {finding.get('reason') or 'no figure stored'}"
    if unit == "%" and metric.endswith("change_pct"):
        said = f"{name} {'rose' if value >= 0 else 'fell'} {_number(value, unit)}"
    else:
        said = f"{name} {_number(value, unit)}"
    low, high = finding.get("lower"), finding.get("upper")
    if finding["verdict"] == PASS:
        bound = f"at least {_bound(low, unit)}" if finding["limit_is"] == "min" else f"at most {_bound(high, unit)}"
        return f"{said} ({bound}), {limit_text}"
    if finding["verdict"] == FAIL:
        if finding["limit_is"] == "min":
            what = "chance" if metric == "accuracy_disambig" else "the limit"
            return f"{said} (at most {_bound(high, unit)}), not shown above {what} {limit:.3g}: too degraded to judge"
        bound = f"at least {_bound(low, unit)}"
        tail = ": too degraded to judge" if _degraded(finding) else ""
        return f"{said} ({bound}), {limit_text}{tail}"
    if low is None and high is None:
        return f"{said} (no bounds could be given), {limit_text}"
    settle = finding.get("items_to_settle")
    more = f": about {settle:,} more items would settle it" if settle else ""
    return f"{said} (could be {_bound(low, unit)} to {_bound(high, unit)}), {limit_text}{more}"


@dataclass(frozen=True)
class KeyLine:
    """One line of the verdict's key: whose finding, its verdict and its words."""

    variant: str
    state: str  # pass, fail, inconclusive or degraded
    words: str
    figure: str = ""  # what the finding judges ("SRS", "ambiguous bias score in Age")
    judged: bool = True  # False: a bias rule left unjudged, its variant too degraded to judge
    against_degraded_baseline: bool = False  # unjudged because the baseline is too degraded to judge against

    @property
    def icon(self) -> str:
        return ICONS[self.state]


_ORDER = {FAIL: 0, DEGRADED: 1, INCONCLUSIVE: 2, PASS: 3}


def verdict_key(gate: dict[str, Any] | None) -> list[KeyLine]:
    """Every finding of the gate, in words, by variant (in the gate's order), the ones that block
    shipping first within each variant."""
    if not gate or not gate.get("findings"):
        return []
    order = list(gate.get("variants") or {})
    lines = []
    for f in gate["findings"]:
        state = DEGRADED if _degraded(f) else f["verdict"]
        lines.append(KeyLine(f["variant"], state, finding_words(f), figure_name(f), not _not_judged(f), _unjudged_for_the_baseline(f)))
    position = {name: i for i, name in enumerate([BASELINE] + order)}
    return sorted(lines, key=lambda line: (position.get(line.variant, len(position)), _ORDER[line.state]))

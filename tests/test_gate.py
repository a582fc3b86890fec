"""The gate: limits, per-category rules, significance, and failing closed on missing numbers."""

from audit.gate import Measurement, evaluate_gate
from audit.plans import GateRule


class Table:
    def __init__(self, values):
        self.values = values  # (variant, metric, category) -> Measurement

    def categories(self, variant, suite):
        return sorted({c for (v, _, c) in self.values if v == variant and c != "overall"})

    def measure(self, variant, metric, suite, category):
        return self.values.get((variant, metric, category), Measurement(None))


def test_limits_and_significance():
    source = Table(
        {
            ("w50", "srs_relative_increase_pct", "overall"): Measurement(40.0, p_value=0.01, test="mcnemar"),
            ("m50", "srs_relative_increase_pct", "overall"): Measurement(40.0, p_value=0.30, test="mcnemar"),
            ("q8", "srs_relative_increase_pct", "overall"): Measurement(5.0, p_value=0.90, test="mcnemar"),
        }
    )
    rule = GateRule("srs_relative_increase_pct", 20.0, significance=0.05)
    report = evaluate_gate([rule], ["w50", "m50", "q8"], source)
    verdicts = {f.variant: f.passed for f in report.findings}
    assert verdicts == {"w50": False, "m50": True, "q8": True}
    assert not report.passed and report.variant_passed("m50") and not report.variant_passed("w50")
    (failure,) = report.failures()
    assert failure.line() == (
        "FAIL w50: srs_relative_increase_pct = 40 (limit 20) - over the limit and significant (p = 0.01 < 0.05)"
    )
    assert "not significant" in next(f for f in report.findings if f.variant == "m50").reason


def test_without_significance_the_limit_alone_decides():
    source = Table({("w50", "srs_relative_increase_pct", "overall"): Measurement(40.0, p_value=0.30)})
    report = evaluate_gate([GateRule("srs_relative_increase_pct", 20.0)], ["w50"], source)
    assert not report.passed


def test_each_category_and_missing_numbers_fail_closed():
    source = Table(
        {
            ("w50", "s_amb", "age"): Measurement(0.10),
            ("w50", "s_amb", "religion"): Measurement(0.35),
            ("w50", "s_amb", "overall"): Measurement(0.2),
        }
    )
    report = evaluate_gate([GateRule("s_amb", 0.3, category="each"), GateRule("perplexity_relative_increase_pct", 10.0)], ["w50"], source)
    by_key = {(f.metric, f.category): f for f in report.findings}
    assert by_key[("s_amb", "age")].passed
    assert not by_key[("s_amb", "religion")].passed
    missing = by_key[("perplexity_relative_increase_pct", "overall")]
    assert not missing.passed and missing.value is None and "not measured" in missing.reason
    assert report.to_dict()["passed"] is False and len(report.to_dict()["failures"]) == 2


def test_a_significance_rule_without_a_test_fails_closed():
    source = Table({("w50", "transition_rate", "overall"): Measurement(0.5, p_value=None)})
    report = evaluate_gate([GateRule("transition_rate", 0.2, significance=0.05)], ["w50"], source)
    assert not report.passed and "no significance test" in report.findings[0].reason


def test_stored_run_measures_the_srs_change_the_gate_reads(tmp_path):
    """A stored run scored by scripted models: the relative SRS change and transition rate the
    gate reads are those of the stored probes (SRS 2/9 -> 5/9 on the ambiguous items: +150%)."""
    from audit.results import RunView
    from audit.store import ResultsStore
    from tests.app_support import build_audit_store

    store = tmp_path / "results.db"
    run_id = build_audit_store(store)
    with ResultsStore(store) as db:
        view = RunView(db, run_id)
    before = view.variant("baseline")["probes"]["builtin"]["overall"]["srs"]["value"]
    after = view.variant("wanda-50")["probes"]["builtin"]["overall"]["srs"]["value"]
    assert (before, after) == (round(2 / 9, 4), round(5 / 9, 4))
    change = view.measure("wanda-50", "srs_relative_increase_pct", "builtin", "overall")
    assert change.value == 150.0 and change.p_value is not None
    comparison = view.variant("wanda-50")["probes"]["builtin"]["comparison"]
    assert (comparison["srs_baseline"], comparison["srs_variant"]) == (round(2 / 9, 4), round(5 / 9, 4))
    assert view.measure("wanda-50", "transition_rate", "builtin", "overall").value == comparison["transition_rate"] > 0
    report = evaluate_gate((GateRule("srs_relative_increase_pct", max=25.0),), ["wanda-50", "int8-dynamic"], view)
    assert [f.value for f in report.findings] == [150.0, 0.0]

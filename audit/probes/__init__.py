"""Bias probes: suites (built-in, BBQ, CrowS-Pairs, StereoSet), scoring modes, the probe job, comparisons."""

from audit.probes.compare import compare_results
from audit.probes.items import ItemResult, ProbeItem, read_items, write_items
from audit.probes.job import ProbeRun, ProbeSettings, run_probe
from audit.probes.scoring import NORMS, SCORING_MODES, parse_letter
from audit.probes.suites import SUITES, ProbeSuite, load_suite

__all__ = [
    "ItemResult",
    "NORMS",
    "ProbeItem",
    "ProbeRun",
    "ProbeSettings",
    "ProbeSuite",
    "SCORING_MODES",
    "SUITES",
    "compare_results",
    "load_suite",
    "parse_letter",
    "read_items",
    "run_probe",
    "write_items",
]

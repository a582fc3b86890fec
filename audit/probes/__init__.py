"""Bias probes: suites (built-in, BBQ, CrowS-Pairs, StereoSet), scoring modes, the probe job, comparisons."""

from audit.probes.items import ItemResult, ProbeItem, read_items, write_items
from audit.probes.suites import SUITES, ProbeSuite, load_suite

__all__ = ["ItemResult", "ProbeItem", "ProbeSuite", "SUITES", "load_suite", "read_items", "write_items"]

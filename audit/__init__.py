"""Headless core of edge-audit: models, compression, probes, metrics, plans, store, reports."""

__version__ = "0.1.0"

"""Where edge-audit keeps converted models and results, overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of the model cache: $EDGE_AUDIT_CACHE, else $XDG_CACHE_HOME/edge-audit, else ~/.cache/edge-audit."""
    explicit = os.environ.get("EDGE_AUDIT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edge-audit"


def models_cache_dir() -> Path:
    return cache_dir() / "models"


def data_dir() -> Path:
    """Files shipped inside the package (calibration text, held-out text, probe suites)."""
    return Path(__file__).resolve().parent / "data"

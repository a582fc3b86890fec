"""System and process memory figures from psutil."""

from __future__ import annotations

import psutil

MB = 1024 * 1024


def available_bytes() -> int:
    """Memory the kernel can hand out without swapping (MemAvailable)."""
    return int(psutil.virtual_memory().available)


def total_bytes() -> int:
    return int(psutil.virtual_memory().total)


def process_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)

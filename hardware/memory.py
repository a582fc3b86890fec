"""System and process memory figures from /proc/meminfo and psutil, and returning freed heap to the system."""

from __future__ import annotations

import ctypes
import functools
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from hardware.sysfs import RootLike, SYSTEM_ROOT, is_system_root, parse_int, read_key_values, read_text

MB = 1024 * 1024


def available_bytes() -> int:
    """Memory the kernel can hand out without swapping (MemAvailable)."""
    return int(psutil.virtual_memory().available)


def total_bytes() -> int:
    return int(psutil.virtual_memory().total)


def process_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def release_free_heap() -> bool:
    """Hand the heap memory this process has freed back to the system (glibc's malloc_trim).
    After work that allocates and frees many large temporaries, glibc keeps the freed blocks
    for reuse, so without this the process's RSS stays at the height of that work. False where
    the C library has no malloc_trim (musl, macOS)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's malloc_trim, looked up once (a prune calls for it after every layer), or None."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols already loaded, the C library's among them
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


# The high-water mark each reset in this process cleared, in order: a measurement begun before a
# reset (a sampler around a run's step, when a prune inside it resets the mark) takes what the
# resets since its start cleared, as well as the mark when it ends.
_CLEARED_PEAKS: list[int] = []


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux 4.0+), keeping the mark it
    clears (`peak_rss_cleared_since`); False where unsupported."""
    before = peak_rss_bytes()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    _CLEARED_PEAKS.append(before or 0)
    return True


def peak_rss_resets() -> int:
    """How many times the high-water mark has been reset in this process: where a measurement
    starts, for `peak_rss_cleared_since`."""
    return len(_CLEARED_PEAKS)


def peak_rss_cleared_since(resets: int) -> int:
    """The highest mark cleared by the resets after the first `resets` of them; 0 for none."""
    return max(_CLEARED_PEAKS[resets:], default=0)


def peak_rss_bytes() -> int | None:
    """The kernel's high-water mark of this process's RSS (VmHWM), exact where sampling can miss spikes."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass(frozen=True)
class MemoryInfo:
    """System memory in MB from /proc/meminfo; None where unreadable."""

    total_mb: float | None
    available_mb: float | None
    swap_total_mb: float | None
    swap_free_mb: float | None
    cgroup_limit_mb: float | None  # a container's memory ceiling, when one is set

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if v is None else round(v, 1)) for k, v in asdict(self).items()}


def _meminfo_mb(fields: dict[str, str], key: str) -> float | None:
    value = fields.get(key)
    if value is None:
        return None
    amount, *unit = value.split() or [""]
    size = parse_int(amount)
    if size is None or size < 0:
        return None
    return size * (1024 if unit and unit[0].lower() == "kb" else 1) / MB


def _at_most(part: float | None, whole: float | None) -> float | None:
    """A share of a whole (available of total, free of swap) that claims more than the whole is garbled."""
    return None if part is not None and whole is not None and part > whole else part


# cgroup v1 says "no limit" with its largest count of pages in bytes: LONG_MAX / PAGE_SIZE pages
# on a 64-bit kernel (near 2**63), LONG_MAX pages of 4 KiB on a 32-bit one (8 TiB, on a Pi's
# 32-bit kernel as on any other).
_V1_NO_LIMIT_64_BIT_FROM = 1 << 60
_V1_NO_LIMIT_32_BIT = (2**31 - 1) * 4096


def read_cgroup_memory_limit_mb(root: RootLike = SYSTEM_ROOT) -> float | None:
    """cgroup v2 `memory.max` or v1 `memory.limit_in_bytes`; None when unlimited or absent."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        text = read_text(root, path)
        if not text or text == "max":
            continue
        limit = parse_int(text)
        if limit is not None and 0 < limit < _V1_NO_LIMIT_64_BIT_FROM and limit != _V1_NO_LIMIT_32_BIT:
            return limit / MB
    return None


def read_memory(root: RootLike = SYSTEM_ROOT) -> MemoryInfo:
    fields = read_key_values(root, "/proc/meminfo")
    if not fields and is_system_root(root):
        memory, swap = psutil.virtual_memory(), psutil.swap_memory()
        fields = {
            "MemTotal": f"{memory.total} B",
            "MemAvailable": f"{memory.available} B",
            "SwapTotal": f"{swap.total} B",
            "SwapFree": f"{swap.free} B",
        }
    total, swap_total = _meminfo_mb(fields, "MemTotal"), _meminfo_mb(fields, "SwapTotal")
    return MemoryInfo(
        total_mb=total,
        available_mb=_at_most(_meminfo_mb(fields, "MemAvailable"), total),
        swap_total_mb=swap_total,
        swap_free_mb=_at_most(_meminfo_mb(fields, "SwapFree"), swap_total),
        cgroup_limit_mb=read_cgroup_memory_limit_mb(root),
    )

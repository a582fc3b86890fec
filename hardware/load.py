"""The system's load average (tasks running or waiting for a core, averaged over a minute) from
/proc/loadavg, and the cores it is measured against, from /sys."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hardware.sysfs import RootLike, SYSTEM_ROOT, is_system_root, parse_cpu_list, read_text

# A job that computes keeps about one task per core busy by itself; the device counts as busy
# when half as many again are running or waiting beside it.
BUSY_LOAD_PER_CORE = 1.5


@dataclass(frozen=True)
class SystemLoad:
    """The 1-minute load average and the cores online; None where the device does not say."""

    load_1m: float | None
    cores: int | None

    @property
    def busy(self) -> bool | None:
        """More tasks than the cores keep up with; None when either figure is not available."""
        if self.load_1m is None or not self.cores:
            return None
        return self.load_1m >= BUSY_LOAD_PER_CORE * self.cores


def read_load_1m(root: RootLike = SYSTEM_ROOT) -> float | None:
    """The first figure of /proc/loadavg; None when unreadable or garbled."""
    text = read_text(root, "/proc/loadavg")
    if text:
        try:
            return float(text.split()[0])
        except (ValueError, IndexError):
            return None
    return _c_library_load_1m() if is_system_root(root) else None


def _c_library_load_1m() -> float | None:
    """Where there is no /proc (macOS), the C library still knows."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def read_cores_online(root: RootLike = SYSTEM_ROOT) -> int | None:
    cores = len(parse_cpu_list(read_text(root, "/sys/devices/system/cpu/online"))) or None
    if cores is None and is_system_root(root):
        cores = os.cpu_count()
    return cores


def read_load(root: RootLike = SYSTEM_ROOT) -> SystemLoad:
    return SystemLoad(read_load_1m(root), read_cores_online(root))

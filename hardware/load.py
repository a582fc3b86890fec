"""The system's load average (tasks running or waiting for a core, averaged over a minute) from
/proc/loadavg, and the cores it is measured against, from /sys."""

from __future__ import annotations

import math
import os
import time
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
            load = float(text.split()[0])
        except (ValueError, IndexError):
            return None
        return load if math.isfinite(load) and load >= 0 else None
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


@dataclass(frozen=True)
class CpuTimes:
    """Seconds the cores have spent busy and in all, summed over cores, from /proc/stat."""

    busy_s: float
    total_s: float


# /proc/stat counts in clock ticks; Linux has used 100 per second on every architecture for years.
_TICKS_PER_S = 100.0


def _ticks_per_s() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return _TICKS_PER_S


def read_cpu_times(root: RootLike = SYSTEM_ROOT) -> CpuTimes | None:
    """The first line of /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal (guest
    time is already counted in user). None when unreadable or garbled."""
    text = read_text(root, "/proc/stat")
    if not text:
        return None
    fields = text.splitlines()[0].split()
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    try:
        ticks = [float(x) for x in fields[1:9]]
    except ValueError:
        return None
    if not all(math.isfinite(t) and t >= 0 for t in ticks):
        return None
    ticks += [0.0] * (8 - len(ticks))
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    busy = user + nice + system + irq + softirq + steal
    hz = _ticks_per_s()
    return CpuTimes(busy / hz, (busy + idle + iowait) / hz)


def _own_cpu_s() -> float:
    """CPU seconds this process has used (every thread), children not included."""
    times = os.times()
    return times.user + times.system


def others_busy_cores(interval_s: float = 0.25, root: RootLike = SYSTEM_ROOT) -> float | None:
    """How many cores' worth of CPU other processes used over the next `interval_s`: the device's
    busy time less this process's own, per second of wall time. None where /proc/stat is not
    readable. Read at the moment a job starts, it sees a competitor the minute-long load
    average has not caught up with yet."""
    first = read_cpu_times(root)
    if first is None:
        return None
    own = _own_cpu_s()
    started = time.monotonic()
    time.sleep(interval_s)
    second = read_cpu_times(root)
    elapsed = time.monotonic() - started
    if second is None or elapsed <= 0:
        return None
    others = (second.busy_s - first.busy_s) - (_own_cpu_s() - own)
    return max(0.0, others / elapsed)

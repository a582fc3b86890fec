"""The system's load average (tasks running or waiting for a core, averaged over a minute) from
/proc/loadavg, the cores it is measured against, from /sys, and the cores this process may
compute on: fewer where its CPU affinity (taskset, a container's cpuset) or a container's CPU
quota says so."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from hardware.sysfs import RootLike, SYSTEM_ROOT, is_system_root, parse_cpu_list, parse_int, read_int, read_text

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


def allowed_cpus(root: RootLike = SYSTEM_ROOT) -> frozenset[int] | None:
    """The online CPUs this process may run on, where its affinity leaves out some of them
    (taskset, a container's cpuset); None where it may run on every one, or cannot tell."""
    if not is_system_root(root):
        return None
    try:
        allowed = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    online = frozenset(parse_cpu_list(read_text(root, "/sys/devices/system/cpu/online")))
    if online:
        allowed &= online
    return allowed if allowed and (not online or allowed < online) else None


# cgroup v1's default CFS period, for a quota given without one.
_CFS_PERIOD_US = 100_000


def read_cpu_quota(root: RootLike = SYSTEM_ROOT) -> float | None:
    """CPUs' worth of time a container may use (`docker --cpus`): cgroup v2 `cpu.max`
    ("200000 100000" is 2 CPUs, "max 100000" no limit), else cgroup v1's `cpu.cfs_quota_us` over
    `cpu.cfs_period_us` (-1: no limit). None when there is no limit or it does not read."""
    text = read_text(root, "/sys/fs/cgroup/cpu.max")
    if text:
        fields = text.split()
        if fields[0] == "max":
            return None
        quota = parse_int(fields[0])
        period = parse_int(fields[1]) if len(fields) > 1 else _CFS_PERIOD_US
    else:
        for folder in ("/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"):
            quota = read_int(root, f"{folder}/cpu.cfs_quota_us")
            if quota is not None:
                period = read_int(root, f"{folder}/cpu.cfs_period_us") or _CFS_PERIOD_US
                break
        else:
            return None
    if quota is None or period is None or quota <= 0 or period <= 0:
        return None
    return quota / period


def read_usable_cores(root: RootLike = SYSTEM_ROOT) -> int | None:
    """The cores a job of this process can keep busy: those online, fewer where its affinity
    allows fewer, and no more than a container's CPU quota (rounded down, at least one: threads
    beyond the quota are stopped by the kernel each period until the next). None when the cores
    online are not known."""
    return _cores(root, allowed_cpus(root))[0]


def _cores(root: RootLike, allowed: frozenset[int] | None) -> tuple[int | None, int | None]:
    """The cores a job can keep busy (`read_usable_cores`) and those it may run on, with
    `allowed` the CPUs of its affinity (`allowed_cpus`)."""
    online = read_cores_online(root)
    if online is None:
        return None, None
    may_run_on = min(online, len(allowed)) if allowed else online
    quota = read_cpu_quota(root)
    return (may_run_on if quota is None else min(may_run_on, max(1, math.floor(quota)))), may_run_on


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


def read_cpu_times(root: RootLike = SYSTEM_ROOT, cpus: frozenset[int] | None = None) -> CpuTimes | None:
    """The first line of /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal (guest
    time is already counted in user); with `cpus`, the sum of those CPUs' own lines. None when
    unreadable or garbled."""
    text = read_text(root, "/proc/stat")
    if not text:
        return None
    if cpus is None:
        first = text.splitlines()[0].split()
        return _times(first[1:]) if first and first[0] == "cpu" else None
    rows = {fields[0]: fields[1:] for fields in (line.split() for line in text.splitlines()) if fields}
    parts = [_times(rows[f"cpu{c}"]) if f"cpu{c}" in rows else None for c in sorted(cpus)]
    if not parts or any(p is None for p in parts):
        return None
    return CpuTimes(sum(p.busy_s for p in parts if p), sum(p.total_s for p in parts if p))


def _times(ticks_text: list[str]) -> CpuTimes | None:
    """One line's figures (after its name), in seconds."""
    if len(ticks_text) < 4:
        return None
    try:
        ticks = [float(x) for x in ticks_text[:8]]
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


def others_busy_cores(interval_s: float = 0.25, root: RootLike = SYSTEM_ROOT, cpus: frozenset[int] | None = None) -> float | None:
    """How many cores' worth of CPU other processes used over the next `interval_s`: the device's
    busy time (of `cpus` alone, when given) less this process's own, per second of wall time.
    None where /proc/stat is not readable. Read at the moment a job starts, it sees a competitor
    the minute-long load average has not caught up with yet."""
    first = read_cpu_times(root, cpus)
    if first is None:
        return None
    own = _own_cpu_s()
    started = time.monotonic()
    time.sleep(interval_s)
    second = read_cpu_times(root, cpus)
    elapsed = time.monotonic() - started
    if second is None or elapsed <= 0:
        return None
    others = (second.busy_s - first.busy_s) - (_own_cpu_s() - own)
    return max(0.0, others / elapsed)


def core_share(interval_s: float = 0.25, root: RootLike = SYSTEM_ROOT) -> tuple[int | None, float | None]:
    """The cores a job starting now can keep busy (`read_usable_cores`), and how many of them
    other processes keep busy over the next `interval_s` (`others_busy_cores`). Beside a cpuset,
    what others do on the cores it leaves out takes nothing from the job; under a CPU quota, the
    cores it leaves the job without are the first that others keep busy, so 3 of 8 cores busy
    leave a quota of 2 both of its cores."""
    allowed = allowed_cpus(root)
    cores, may_run_on = _cores(root, allowed)
    busy = others_busy_cores(interval_s, root, allowed)
    if busy is None or not cores or not may_run_on or cores >= may_run_on:
        return cores, busy
    return cores, max(0.0, busy - (may_run_on - cores))

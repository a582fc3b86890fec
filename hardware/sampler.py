"""Live resource sampler: a background thread records immutable snapshots; readers take the newest."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Generator, Generic, Mapping, Sequence, TypeVar

import psutil

from hardware.load import read_load_1m
from hardware.memory import MB, peak_rss_bytes, peak_rss_cleared_since, peak_rss_resets, reset_peak_rss

T = TypeVar("T")

# A reader returns extra figures for a snapshot (temperatures, throttle flags, GPU load...);
# it must not raise: a reader with nothing to say returns an empty mapping.
Reader = Callable[[], Mapping[str, Any]]

MAX_SNAPSHOTS = 100_000  # about 7 hours at 4 Hz; older ones are dropped
# Rails that measure a Jetson's whole input (Orin Nano and NX, Xavier NX, TX2; Nano); the others are
# parts of it and must not be summed with it. An AGX Orin or AGX Xavier has no such rail: its
# VIN_SYS_5V0 (SYS5V) is the system's 5 V supply beside the GPU and CPU rails, so they are summed.
_TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")


@dataclass(frozen=True)
class Snapshot:
    t_s: float  # seconds since the sampler started
    rss_mb: float
    mem_used_mb: float
    mem_available_mb: float
    cpu_percent: tuple[float, ...]  # per core, since the previous snapshot
    cpu_freq_mhz: float | None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # This process's CPU since the previous snapshot, in % of one core (2 busy cores = 200).
    # Beside the system's per-core figures it shows how much of the load is someone else's.
    process_cpu_percent: float | None = None
    load_1m: float | None = None  # the system's 1-minute load average

    def __post_init__(self) -> None:
        # Published to other threads and kept for the summary: the readers' figures are copied
        # into read-only mappings, so neither a reader updating its own dict nor a panel can
        # change a snapshot once taken.
        object.__setattr__(self, "extra", _read_only(self.extra))

    @property
    def cpu_percent_mean(self) -> float:
        return statistics.fmean(self.cpu_percent) if self.cpu_percent else 0.0


def _read_only(value: Any) -> Any:
    """`value` copied all the way down, mappings read-only and lists as tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: _read_only(item) for key, item in value.items()})
    if isinstance(value, list) or type(value) is tuple:
        return tuple(_read_only(item) for item in value)
    return value


def _stats(values: Sequence[float], name: str, unit: str) -> dict[str, float]:
    if not values:
        return {}
    return {
        f"{name}_min_{unit}": round(min(values), 2),
        f"{name}_mean_{unit}": round(statistics.fmean(values), 2),
        f"{name}_max_{unit}": round(max(values), 2),
    }


class ResourceSampler:
    """Samples this process and the system every `interval_s` until stopped.

    Use as a context manager around a job; `summary()` gives min/mean/max over it, with the
    exact RSS peak from the kernel where it can be reset, and the sampler's own CPU cost.
    """

    def __init__(self, interval_s: float = 0.25, readers: Sequence[Reader] = ()) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self.readers = tuple(readers)
        self._process = psutil.Process()
        self._snapshots: list[Snapshot] = []
        self._latest: Snapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._stopped: float | None = None
        self._busy_s = 0.0  # CPU time the sampler thread itself used
        self._peak_reset = False
        # The resets of the kernel's RSS high-water mark before this sampler's own took effect:
        # another sampler or a prune started inside this one resets the mark again, and what each
        # such reset cleared counts toward this one's peak (`peak_rss_cleared_since`).
        self._resets_before = 0
        self._cpu_times: list[Any] | None = None  # per core, at the previous snapshot

    @classmethod
    def for_device(cls, interval_s: float = 0.25, **options: Any) -> "ResourceSampler":
        """A sampler with the readers that fit this device (`hardware.readers.default_readers`
        options pass through: device, root, vcgencmd, use_jtop)."""
        from hardware.readers import default_readers

        return cls(interval_s, readers=default_readers(**options))

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> "ResourceSampler":
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self._peak_reset = reset_peak_rss()
        self._resets_before = peak_rss_resets()
        self._started = time.monotonic()
        self._process.cpu_percent()
        self._sample_or_skip()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None or self._stopped is not None:
            return
        self._stop.set()
        self._thread.join()
        self._sample_or_skip()
        self._stopped = time.monotonic()
        for reader in self.readers:
            close = getattr(reader, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    pass

    def __enter__(self) -> "ResourceSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample_or_skip()

    def _sample_or_skip(self) -> None:
        # A read of the system's own figures can fail for a moment (a process out of file
        # descriptors): that sample is skipped, and the sampler, and the panel it feeds, go on.
        try:
            self._sample()
        except Exception:
            pass

    def _sample(self) -> None:
        began = time.thread_time()
        memory = psutil.virtual_memory()
        try:
            freq = psutil.cpu_freq()
        except (OSError, NotImplementedError, FileNotFoundError):
            freq = None
        extra: dict[str, Any] = {}
        for reader in self.readers:
            try:
                extra.update(reader())
            except Exception:  # a broken reader must not stop the sampling
                continue
        snapshot = Snapshot(
            t_s=time.monotonic() - self._started,
            rss_mb=self._process.memory_info().rss / MB,
            mem_used_mb=(memory.total - memory.available) / MB,
            mem_available_mb=memory.available / MB,
            cpu_percent=self._cpu_percent(psutil.cpu_times(percpu=True)),
            cpu_freq_mhz=float(freq.current) if freq else None,
            extra=extra,
            process_cpu_percent=self._process.cpu_percent(),
            load_1m=read_load_1m(),
        )
        self._snapshots.append(snapshot)
        if len(self._snapshots) > MAX_SNAPSHOTS:
            del self._snapshots[: len(self._snapshots) - MAX_SNAPSHOTS]
        self._latest = snapshot  # one reference assignment: readers never see a half-built snapshot
        self._busy_s += time.thread_time() - began

    def _cpu_percent(self, now: list[Any]) -> tuple[float, ...]:
        """Each core's busy share since this sampler's previous snapshot. psutil.cpu_percent
        keeps its "previous" per calling thread, and a sampler samples from three (start's, its
        own, stop's): there it read 0 % for the thread's first snapshot and for the last."""
        before, self._cpu_times = self._cpu_times, now
        if before is None or len(before) != len(now):  # the first snapshot, or cores came or went
            return tuple(0.0 for _ in now)
        previous = self._latest.cpu_percent if self._latest is not None else ()
        shares = []
        for core, (then, later) in enumerate(zip(before, now)):
            share = _busy_percent(then, later)
            if share is None:  # no tick between the two: the share has not changed
                share = previous[core] if core < len(previous) else 0.0
            shares.append(share)
        return tuple(shares)

    # -- reading ------------------------------------------------------------------------
    def latest(self) -> Snapshot | None:
        return self._latest

    def snapshots(self) -> tuple[Snapshot, ...]:
        return tuple(self._snapshots)

    def summary(self) -> dict[str, Any]:
        snaps = self.snapshots()
        end = self._stopped if self._stopped is not None else time.monotonic()
        duration = max(end - self._started, 1e-9) if self._started else 0.0
        rss = [s.rss_mb for s in snaps]
        kernel_mb = max(peak_rss_bytes() or 0, peak_rss_cleared_since(self._resets_before)) / MB if self._peak_reset else 0.0
        sampled_mb = max(rss, default=0.0)
        result: dict[str, Any] = {
            "samples": len(snaps),
            "duration_s": round(duration, 3),
            "rss_peak_mb": round(max(kernel_mb, sampled_mb), 2),
            # Whichever gave the peak: the kernel's high-water mark trails RSS by a few pages.
            "rss_peak_source": "kernel" if kernel_mb and kernel_mb >= sampled_mb else "sampled",
            "sampler_cpu_s": round(self._busy_s, 4),
            "sampler_overhead_percent": round(100 * self._busy_s / duration, 3) if duration else 0.0,
        }
        result.update(_stats(rss, "rss", "mb"))
        result.update(_stats([s.mem_available_mb for s in snaps], "mem_available", "mb"))
        result.update(_stats([s.cpu_percent_mean for s in snaps[1:]], "cpu_percent", "pct"))
        result.update(_stats([s.process_cpu_percent for s in snaps[1:] if s.process_cpu_percent is not None], "process_cpu", "pct"))
        result.update(_stats([s.load_1m for s in snaps if s.load_1m is not None], "load", "1m"))
        freqs = [s.cpu_freq_mhz for s in snaps if s.cpu_freq_mhz]
        result.update(_stats(freqs, "cpu_freq", "mhz"))
        temps = [max(t.values()) for s in snaps if (t := s.extra.get("temperatures_c"))]
        result.update(_stats(temps, "temperature", "c"))
        result.update(_stats([s.extra["gpu_load_percent"] for s in snaps if "gpu_load_percent" in s.extra], "gpu_load", "pct"))
        result.update(_stats([p for s in snaps if (p := _total_power_mw(s.extra)) is not None], "power", "mw"))
        throttled = [s.extra["throttled"] for s in snaps if s.extra.get("throttled")]
        result["throttled_seen"] = bool(throttled)
        flags = sorted({flag for s in snaps for flag in s.extra.get("throttle_active", ())})
        result["throttle_flags_seen"] = flags
        return result


def _busy_percent(before: Any, after: Any) -> float | None:
    """A core's busy share between two of psutil's cpu_times, as psutil.cpu_percent reckons it;
    None when no time passed between them."""
    deltas = {name: max(0.0, getattr(after, name) - getattr(before, name)) for name in after._fields}
    # Linux counts guest time in user and nice already.
    total = sum(deltas.values()) - deltas.get("guest", 0.0) - deltas.get("guest_nice", 0.0)
    if total <= 0:
        return None
    idle = deltas.get("idle", 0.0) + deltas.get("iowait", 0.0)
    return round(100.0 * min(max(total - idle, 0.0), total) / total, 1)


def _total_power_mw(extra: Mapping[str, Any]) -> float | None:
    if "power_total_mw" in extra:
        return float(extra["power_total_mw"])
    rails = extra.get("power_mw")
    if not rails:
        return None
    for name in _TOTAL_RAILS:
        if name in rails:
            return float(rails[name])
    return float(sum(rails.values()))


@dataclass(frozen=True)
class Sampled(Generic[T]):
    """A job's result with the resource figures recorded while it ran."""

    value: T
    resources: dict[str, Any]


def sample_job(
    job: Generator[Any, None, T], sampler: ResourceSampler | None = None
) -> Generator[Any, None, Sampled[T]]:
    """Run `job` (a generator of progress events that returns a result) under a sampler, this
    device's default one unless given; yield its events, return its result with the sampler's
    summary. The sampler stops even if the job fails."""
    sampler = sampler or ResourceSampler.for_device()
    with sampler:
        value = yield from job
    return Sampled(value, sampler.summary())

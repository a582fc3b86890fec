"""Sampler readers for each subsystem, and the set that fits the detected device.

A reader is a callable returning extra figures for one snapshot (see `hardware.sampler`).
Readers for subsystems the device lacks are left out when the set is built, so a box
without thermal zones pays nothing for them on every sample.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

from hardware.cpu import read_cpu_frequency
from hardware.device import JETSON, Device, detect_device
from hardware.jetson import JtopSession, read_gpu_load_percent, read_power_rails
from hardware.sampler import Reader
from hardware.sysfs import RootLike, SYSTEM_ROOT
from hardware.thermal import read_temperatures
from hardware.throttle import read_throttle


def temperature_reader(root: RootLike = SYSTEM_ROOT) -> Reader:
    def read() -> Mapping[str, Any]:
        temperatures = read_temperatures(root)
        return {"temperatures_c": temperatures} if temperatures else {}

    return read


def cpu_frequency_reader(root: RootLike = SYSTEM_ROOT) -> Reader:
    def read() -> Mapping[str, Any]:
        frequency = read_cpu_frequency(root)
        if not frequency.per_core_mhz and frequency.governor is None:
            return {}
        return {
            "cpu_freq_mhz_per_core": frequency.per_core_mhz,
            "cpu_governor": frequency.governor,
            "cpu_freq_capped": frequency.capped,
        }

    return read


def throttle_reader(kind: str, root: RootLike = SYSTEM_ROOT, vcgencmd: str = "vcgencmd") -> Reader:
    def read() -> Mapping[str, Any]:
        state = read_throttle(kind, root, vcgencmd=vcgencmd)
        if state is None:
            return {}
        return {"throttled": state.throttled, "throttle_active": state.active, "throttle_source": state.source}

    return read


def gpu_load_reader(root: RootLike = SYSTEM_ROOT) -> Reader:
    def read() -> Mapping[str, Any]:
        load = read_gpu_load_percent(root)
        return {} if load is None else {"gpu_load_percent": load}

    return read


def power_reader(root: RootLike = SYSTEM_ROOT) -> Reader:
    def read() -> Mapping[str, Any]:
        rails = read_power_rails(root)
        return {"power_mw": rails} if rails else {}

    return read


class AtMostEvery:
    """A reader that really reads at most every `interval_s` and repeats its last figures
    in between: for readers that start a process (vcgencmd), which would cost more than
    the sampling itself at 4 Hz."""

    def __init__(self, interval_s: float, reader: Reader, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.reader = reader
        self._clock = clock
        self._last: Mapping[str, Any] = {}
        self._when: float | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Mapping[str, Any]:
        with self._lock:
            now = self._clock()
            if self._when is None or now - self._when >= self.interval_s:
                self._last = self.reader()
                self._when = now
            return self._last


class JtopReader:
    """jtop's live figures (temperatures, GPU load, total power) from one service connection."""

    def __init__(self, session: JtopSession) -> None:
        self.session = session

    def __call__(self) -> Mapping[str, Any]:
        live = dict(self.session.read())
        live.pop("power_mode", None)
        return live

    def close(self) -> None:
        self.session.close()


def _says_something(reader: Reader) -> bool:
    try:
        return bool(reader())
    except Exception:
        return False


def default_readers(
    device: Device | None = None,
    root: RootLike = SYSTEM_ROOT,
    *,
    vcgencmd: str = "vcgencmd",
    use_jtop: bool = True,
    slow_interval_s: float = 1.0,
) -> list[Reader]:
    """A fresh reader set for one sampler: temperatures, CPU frequency and governor, throttle
    flags, and on a Jetson GPU load and power rails (from jtop when its service runs).

    Readers that find nothing now are left out. A reader with a `close()` (the jtop one)
    belongs to the sampler it is given to, which closes it when it stops.
    """
    device = device or detect_device(root)
    readers: list[Reader] = []
    if device.kind == JETSON and use_jtop:
        session = JtopSession.open(root)
        if session is not None:
            readers.append(JtopReader(session))
    has_jtop = bool(readers)
    candidates: list[Reader] = []
    if not has_jtop:
        candidates.append(temperature_reader(root))
    candidates.append(cpu_frequency_reader(root))
    candidates.append(AtMostEvery(slow_interval_s, throttle_reader(device.kind, root, vcgencmd)))
    if device.kind == JETSON and not has_jtop:
        candidates.extend([gpu_load_reader(root), power_reader(root)])
    readers.extend(r for r in candidates if _says_something(r))
    return readers

"""NVIDIA Jetson: L4T release, GPU load, power rails and power mode, from jtop when its service runs, else sysfs."""

from __future__ import annotations

import importlib.util
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from hardware.sysfs import (
    RootLike,
    SYSTEM_ROOT,
    glob,
    parse_int,
    read_path_int,
    read_path_text,
    read_text,
    run_tool,
    under,
)

TEGRA_RELEASE = "/etc/nv_tegra_release"
# Names the integrated GPU's device-tree node carries across Jetson generations (Nano, TX2, Xavier, Orin).
_GPU_NODE_NAMES = {"gpu", "gm20b", "gp10b", "gv11b", "ga10b", "gb10b"}
# Older kernels and boards put the GPU at a fixed platform path rather than behind devfreq.
_GPU_LOAD_PATHS = (
    "/sys/devices/gpu.0/load",
    "/sys/devices/platform/gpu.0/load",
    "/sys/devices/17000000.gv11b/load",
    "/sys/devices/17000000.ga10b/load",
    "/sys/devices/platform/17000000.ga10b/load",
    "/sys/devices/platform/17000000.gpu/load",
    "/sys/devices/platform/bus@0/17000000.gpu/load",
)
_RELEASE_LINE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")
_NVPMODEL_QUERY = re.compile(r"NV Power Mode:\s*(.+)")
_NVPMODEL_CONF_MODE = re.compile(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^>\s]+)\s*>")
JTOP_SOCKET = "/run/jtop.sock"


@dataclass(frozen=True)
class TegraRelease:
    l4t: str | None  # e.g. "36.4.0"
    raw: str


def parse_tegra_release(text: str | None) -> TegraRelease | None:
    if not text:
        return None
    first = text.splitlines()[0].strip()
    match = _RELEASE_LINE.search(first)
    if not match:
        return TegraRelease(l4t=None, raw=first)
    major, revision = match.groups()
    return TegraRelease(l4t=f"{major}.{revision}", raw=first)


def read_tegra_release(root: RootLike = SYSTEM_ROOT) -> TegraRelease | None:
    return parse_tegra_release(read_text(root, TEGRA_RELEASE))


def find_gpu_devfreq(root: RootLike = SYSTEM_ROOT) -> Path | None:
    """The devfreq entry of the integrated GPU, found by its device-tree node name."""
    for entry in glob(root, "/sys/class/devfreq/*"):
        name = read_path_text(entry / "device" / "of_node" / "name")
        if name in _GPU_NODE_NAMES:
            return entry
    return None


def read_gpu_load_percent(root: RootLike = SYSTEM_ROOT) -> float | None:
    """GPU busy share in %; the kernel writes it in tenths of a percent."""
    candidates: list[Path] = []
    devfreq = find_gpu_devfreq(root)
    if devfreq is not None:
        candidates.append(devfreq / "device" / "load")
    candidates.extend(under(root, p) for p in _GPU_LOAD_PATHS)
    for path in candidates:
        value = read_path_int(path)
        if value is not None:
            return round(value / 10.0, 1) if 0 <= value <= 1000 else None
    return None


def read_gpu_frequency_mhz(root: RootLike = SYSTEM_ROOT) -> float | None:
    devfreq = find_gpu_devfreq(root)
    if devfreq is None:
        return None
    value = read_path_int(devfreq / "cur_freq")  # Hz
    return None if value is None or value <= 0 else value / 1e6


def read_power_rails(root: RootLike = SYSTEM_ROOT) -> dict[str, float]:
    """Rail name -> mW from the INA3221 monitors; {} where they are absent or unreadable.

    Orin and Xavier expose them through hwmon (mV and mA per channel), Nano and TX2
    through iio (mW directly).
    """
    rails: dict[str, float] = {}
    for hwmon in glob(root, "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"):
        for label_path in sorted(hwmon.glob("in*_label")):
            channel = label_path.name[len("in") : -len("_label")]
            label = read_path_text(label_path)
            millivolts = read_path_int(hwmon / f"in{channel}_input")
            milliamps = read_path_int(hwmon / f"curr{channel}_input")
            if label and label.upper() != "NC" and millivolts is not None and milliamps is not None:
                rails[label] = round(millivolts * milliamps / 1000.0, 1)
    for device in glob(root, "/sys/bus/i2c/drivers/ina3221x/*/iio:device*"):
        for name_path in sorted(device.glob("rail_name_*")):
            index = name_path.name.rsplit("_", 1)[-1]
            label = read_path_text(name_path)
            power = read_path_int(device / f"in_power{index}_input")
            if label and power is not None:
                rails[label] = float(power)
    return rails


@dataclass(frozen=True)
class PowerMode:
    name: str | None
    mode_id: int | None
    source: str  # "nvpmodel" (the tool) or "status-file"


def parse_nvpmodel_query(text: str | None) -> PowerMode | None:
    """`nvpmodel -q` prints "NV Power Mode: 15W" and the mode number on the next line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    for index, line in enumerate(lines):
        match = _NVPMODEL_QUERY.search(line)
        if match:
            following = lines[index + 1] if index + 1 < len(lines) else ""
            mode_id = parse_int(following) if following.isdigit() else None
            return PowerMode(name=match.group(1).strip(), mode_id=mode_id, source="nvpmodel")
    return None


def read_power_mode(root: RootLike = SYSTEM_ROOT, nvpmodel: str = "nvpmodel") -> PowerMode | None:
    mode = parse_nvpmodel_query(run_tool([nvpmodel, "-q"]))
    if mode is not None:
        return mode
    # The service records the mode in a status file ("pmode:0001 fmode:..."); names live in the conf.
    status = read_text(root, "/var/lib/nvpmodel/status")
    match = re.search(r"pmode:(\d+)", status or "")
    mode_id = parse_int(match.group(1)) if match else None
    if mode_id is None:
        return None
    names = dict(_NVPMODEL_CONF_MODE.findall(read_text(root, "/etc/nvpmodel.conf") or ""))
    return PowerMode(name=names.get(str(mode_id)), mode_id=mode_id, source="status-file")


# -- jtop --------------------------------------------------------------------------------
def parse_jtop_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """jtop's `stats` dict in this package's terms. Key names changed across jetson-stats
    releases ("Temp CPU" / "Temp cpu", "Power TOT" / "power cur"), so match loosely."""
    temperatures: dict[str, float] = {}
    result: dict[str, Any] = {}
    for key, value in stats.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            if key.lower() in {"nvp model", "nvpmodel"} and value:
                result["power_mode"] = str(value)
            continue
        lowered = key.lower()
        try:
            number = float(value)
        except OverflowError:
            continue
        if not math.isfinite(number):
            continue
        if lowered.startswith("temp "):
            if -40 <= number <= 200:  # jtop writes -256 for an offline sensor
                temperatures[key[5:].lower()] = number
        elif lowered in {"gpu", "gpu1"}:
            if 0 <= number <= 100:
                result["gpu_load_percent"] = number
        elif lowered in {"power tot", "power cur"}:
            if number >= 0:
                result["power_total_mw"] = number
    if temperatures:
        result["temperatures_c"] = temperatures
    return result


def jtop_installed() -> bool:
    return importlib.util.find_spec("jtop") is not None


class JtopSession:
    """One connection to the jetson-stats service, read by the sampler without reconnecting.

    `open()` returns None when jtop is not installed or its service is not running, so the
    caller falls back to sysfs.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    @classmethod
    def open(cls, root: RootLike = SYSTEM_ROOT, interval_s: float = 0.5) -> "JtopSession | None":
        if not jtop_installed() or not under(root, JTOP_SOCKET).exists():
            return None
        try:
            from jtop import jtop  # type: ignore[import-not-found]

            client = jtop(interval=interval_s)
            client.start()
            if not client.ok():
                client.close()
                return None
        except Exception:  # service down, permission, version mismatch: jtop raises its own types
            return None
        return cls(client)

    def read(self) -> dict[str, Any]:
        with self._lock:
            try:
                return parse_jtop_stats(self._client.stats)
            except Exception:
                return {}

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:
            pass

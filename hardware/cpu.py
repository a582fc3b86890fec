"""CPU facts (model, architecture, cores) and live frequency/governor, from /proc/cpuinfo and cpufreq."""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from hardware.sysfs import (
    RootLike,
    SYSTEM_ROOT,
    glob,
    is_system_root,
    parse_cpu_list,
    read_path_int,
    read_path_text,
    read_text,
)

# ARM cores by (implementer, part) as /proc/cpuinfo gives them: arm64 kernels print no model name.
_ARM_CORES = {
    ("0x41", "0xd03"): "Cortex-A53",
    ("0x41", "0xd04"): "Cortex-A35",
    ("0x41", "0xd05"): "Cortex-A55",
    ("0x41", "0xd07"): "Cortex-A57",
    ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd09"): "Cortex-A73",
    ("0x41", "0xd0a"): "Cortex-A75",
    ("0x41", "0xd0b"): "Cortex-A76",
    ("0x41", "0xd0c"): "Neoverse-N1",
    ("0x41", "0xd0d"): "Cortex-A77",
    ("0x41", "0xd41"): "Cortex-A78",
    ("0x41", "0xd42"): "Cortex-A78AE",
    ("0x41", "0xd4f"): "Neoverse-V2",
    ("0x4e", "0x004"): "NVIDIA Carmel",
}


@dataclass(frozen=True)
class CpuInfo:
    model: str | None
    architecture: str | None
    cores_logical: int | None  # CPUs the kernel has online
    cores_physical: int | None
    cores_usable: int | None  # CPUs this process may run on (affinity); only for the live system

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpuinfo_blocks(text: str | None) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, found, value = line.partition(":")
        if found:
            current.setdefault(key.strip(), value.strip())
    if current:
        blocks.append(current)
    return blocks


def architecture_from_cpuinfo(blocks: list[dict[str, str]]) -> str | None:
    """Instruction set from cpuinfo fields, so a fake tree of a Pi reads as arm64 on any host."""
    fields = {k: v for block in blocks for k, v in block.items()}
    if "CPU implementer" in fields or "CPU architecture" in fields:
        features = fields.get("Features", "").split()
        if fields.get("CPU architecture", "").strip() == "8" or "asimd" in features:
            return "aarch64"
        return "armv7l"
    if "vendor_id" in fields or "flags" in fields:
        return "x86_64" if "lm" in fields.get("flags", "").split() else "i686"
    return None


def read_cpu_info(root: RootLike = SYSTEM_ROOT) -> CpuInfo:
    blocks = _cpuinfo_blocks(read_text(root, "/proc/cpuinfo"))
    processors = [b for b in blocks if "processor" in b]
    model = None
    for block in processors or blocks:
        model = block.get("model name") or block.get("Processor") or block.get("cpu model")
        if model:
            break
    if not model:
        names = {_ARM_CORES.get((b.get("CPU implementer", ""), b.get("CPU part", ""))) for b in processors}
        names.discard(None)
        if names:
            model = " + ".join(sorted(n for n in names if n))
    online = parse_cpu_list(read_text(root, "/sys/devices/system/cpu/online"))
    logical = len(online) or len(processors) or None
    physical_ids = {(b.get("physical id"), b.get("core id")) for b in processors if "core id" in b}
    physical = len(physical_ids) or logical
    architecture = architecture_from_cpuinfo(blocks)
    usable = None
    if is_system_root(root):
        architecture = architecture or platform.machine() or None
        try:
            usable = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            usable = os.cpu_count()
        if logical is None:
            logical = os.cpu_count()
    return CpuInfo(model=model, architecture=architecture, cores_logical=logical, cores_physical=physical, cores_usable=usable)


@dataclass(frozen=True)
class CpuFrequency:
    """Current cpufreq state; every field None where the kernel exposes no cpufreq (VMs, containers)."""

    per_core_mhz: tuple[float | None, ...]
    min_mhz: float | None  # lowest frequency the policy allows now
    max_mhz: float | None  # highest frequency the policy allows now
    hardware_max_mhz: float | None
    governor: str | None
    # Cores whose policy forbids their own top frequency; None where no core gives both figures.
    # Counted core by core: on a board of several clusters (an RK3588's two A76 pairs, each under
    # its own thermal zone) one cluster is capped while another runs at the board's top clock.
    capped_cores: int | None = None

    @property
    def mean_mhz(self) -> float | None:
        values = [v for v in self.per_core_mhz if v is not None]
        return statistics.fmean(values) if values else None

    @property
    def capped(self) -> bool | None:
        """A policy forbids its cores' top frequency (power mode, thermal cap, user setting)."""
        if self.capped_cores is not None:
            return self.capped_cores > 0
        if self.max_mhz is None or self.hardware_max_mhz is None:
            return None
        return self.max_mhz < self.hardware_max_mhz

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["capped_cores"]
        data["per_core_mhz"] = list(self.per_core_mhz)
        data["mean_mhz"] = None if self.mean_mhz is None else round(self.mean_mhz, 1)
        data["capped"] = self.capped
        return data


def _khz_to_mhz(value: int | None) -> float | None:
    # A driver that cannot read its clock may write 0.
    return None if value is None or value <= 0 else value / 1000.0


def read_cpu_frequency(root: RootLike = SYSTEM_ROOT) -> CpuFrequency:
    cores = glob(root, "/sys/devices/system/cpu/cpu[0-9]*")
    per_core: list[float | None] = []
    governors: list[str] = []
    mins: list[float] = []
    maxes: list[float] = []
    hardware: list[float] = []
    capped: list[bool] = []
    for core in cores:
        freq = core / "cpufreq"
        if not freq.is_dir():
            continue
        # scaling_cur_freq is what the governor asked for; cpuinfo_cur_freq (root only) what runs.
        current = read_path_int(freq / "scaling_cur_freq")
        if current is None:
            current = read_path_int(freq / "cpuinfo_cur_freq")
        per_core.append(_khz_to_mhz(current))
        governor = read_path_text(freq / "scaling_governor")
        if governor:
            governors.append(governor)
        limits = {}
        for target, name in ((mins, "scaling_min_freq"), (maxes, "scaling_max_freq"), (hardware, "cpuinfo_max_freq")):
            value = limits[name] = _khz_to_mhz(read_path_int(freq / name))
            if value is not None:
                target.append(value)
        allowed, top = limits["scaling_max_freq"], limits["cpuinfo_max_freq"]
        if allowed is not None and top is not None:
            capped.append(allowed < top)
    governor = None
    if governors:
        distinct = sorted(set(governors))
        governor = distinct[0] if len(distinct) == 1 else ",".join(distinct)
    return CpuFrequency(
        per_core_mhz=tuple(per_core),
        min_mhz=min(mins) if mins else None,
        max_mhz=max(maxes) if maxes else None,
        hardware_max_mhz=max(hardware) if hardware else None,
        governor=governor,
        capped_cores=sum(capped) if capped else None,
    )

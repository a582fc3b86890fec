"""What this device is (Raspberry Pi, NVIDIA Jetson or another Linux box) and a full report of its state."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hardware.cpu import read_cpu_frequency, read_cpu_info
from hardware.jetson import (
    TEGRA_RELEASE,
    JtopSession,
    jtop_installed,
    read_gpu_frequency_mhz,
    read_gpu_load_percent,
    read_power_mode,
    read_power_rails,
    read_tegra_release,
)
from hardware.memory import read_memory
from hardware.software import read_os, read_runtime
from hardware.sysfs import RootLike, SYSTEM_ROOT, read_text, under
from hardware.thermal import read_temperatures
from hardware.throttle import read_throttle

RASPBERRY_PI = "raspberry-pi"
JETSON = "jetson"
GENERIC_LINUX = "generic-linux"
KINDS = (RASPBERRY_PI, JETSON, GENERIC_LINUX)


@dataclass(frozen=True)
class Device:
    kind: str  # one of KINDS
    name: str  # what to call it on screen
    model: str | None  # the device-tree model, or the DMI vendor and product of a PC
    architecture: str | None
    compatible: tuple[str, ...] = ()  # device-tree compatible strings (SoC family)
    l4t_release: str | None = None  # Jetson Linux (L4T) version

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["compatible"] = list(self.compatible)
        return data


def _device_tree(root: RootLike, name: str) -> str | None:
    # /proc/device-tree links to /sys/firmware/devicetree/base; either may be missing in a container.
    return read_text(root, f"/proc/device-tree/{name}") or read_text(root, f"/sys/firmware/devicetree/base/{name}")


def _compatible(root: RootLike) -> tuple[str, ...]:
    for path in ("/proc/device-tree/compatible", "/sys/firmware/devicetree/base/compatible"):
        try:
            raw = under(root, path).read_bytes()
        except OSError:
            continue
        return tuple(part.decode("ascii", errors="replace") for part in raw.split(b"\x00") if part)
    return ()


def _dmi_model(root: RootLike) -> str | None:
    parts = [read_text(root, f"/sys/class/dmi/id/{name}") for name in ("sys_vendor", "product_name")]
    words = [p for p in parts if p and p.lower() not in {"to be filled by o.e.m.", "default string", "system product name"}]
    return " ".join(words) or None


def detect_device(root: RootLike = SYSTEM_ROOT) -> Device:
    cpu = read_cpu_info(root)
    model = _device_tree(root, "model")
    compatible = _compatible(root)
    if not model:
        # 32-bit Raspberry Pi OS kernels name the board in cpuinfo only.
        cpuinfo_model = next(
            (line.partition(":")[2].strip() for line in (read_text(root, "/proc/cpuinfo") or "").splitlines() if line.startswith("Model")),
            None,
        )
        model = cpuinfo_model or None
    tegra = read_tegra_release(root)
    is_jetson = (
        under(root, TEGRA_RELEASE).is_file()
        or any(c.startswith("nvidia,tegra") for c in compatible)
        or (model or "").lower().startswith(("nvidia jetson", "jetson"))
    )
    if is_jetson:
        return Device(
            kind=JETSON,
            name=model or "NVIDIA Jetson",
            model=model,
            architecture=cpu.architecture,
            compatible=compatible,
            l4t_release=tegra.l4t if tegra else None,
        )
    if (model or "").startswith("Raspberry Pi") or any(c.startswith("raspberrypi,") for c in compatible):
        return Device(kind=RASPBERRY_PI, name=model or "Raspberry Pi", model=model, architecture=cpu.architecture, compatible=compatible)
    model = model or _dmi_model(root)
    name = f"generic {cpu.architecture or 'unknown-architecture'} Linux"
    return Device(
        kind=GENERIC_LINUX,
        name=f"{name} ({model})" if model else name,
        model=model,
        architecture=cpu.architecture,
        compatible=compatible,
    )


def device_report(
    root: RootLike = SYSTEM_ROOT,
    *,
    runtime: bool = True,
    libraries: bool = False,
    vcgencmd: str = "vcgencmd",
    nvpmodel: str = "nvpmodel",
    use_jtop: bool = True,
) -> dict[str, Any]:
    """Everything `edge-audit device` shows, as plain data; "not available" is None (JSON null).

    `runtime=False` leaves out the library versions (they import torch and ONNX Runtime),
    which a report about a fake tree has no use for. `libraries`: import torch and ONNX Runtime
    to report their threads and providers (seconds); otherwise their versions only.
    """
    device = detect_device(root)
    cpu = read_cpu_info(root)
    frequency = read_cpu_frequency(root)
    throttle = read_throttle(device.kind, root, vcgencmd=vcgencmd)
    report: dict[str, Any] = {
        "device": device.to_dict(),
        "cpu": cpu.to_dict(),
        "cpu_frequency": frequency.to_dict(),
        "memory": read_memory(root).to_dict(),
        "os": read_os(root).to_dict(),
        "temperatures_c": read_temperatures(root),
        "throttle": throttle.to_dict() if throttle else None,
    }
    if device.kind == JETSON:
        jetson: dict[str, Any] = {
            "source": "sysfs",
            "jtop_installed": jtop_installed(),
            "gpu_load_percent": read_gpu_load_percent(root),
            "gpu_frequency_mhz": read_gpu_frequency_mhz(root),
            "power_rails_mw": read_power_rails(root),
            "power_mode": None,
            "power_mode_id": None,
        }
        mode = read_power_mode(root, nvpmodel=nvpmodel)
        if mode is not None:
            jetson["power_mode"], jetson["power_mode_id"] = mode.name, mode.mode_id
        session = JtopSession.open(root) if use_jtop else None
        if session is not None:
            live = session.read()
            session.close()
            jetson["source"] = "jtop"
            jetson["gpu_load_percent"] = live.get("gpu_load_percent", jetson["gpu_load_percent"])
            jetson["power_total_mw"] = live.get("power_total_mw")
            jetson["power_mode"] = live.get("power_mode", jetson["power_mode"])
            report["temperatures_c"] = live.get("temperatures_c") or report["temperatures_c"]
        report["jetson"] = jetson
    if runtime:
        report["runtime"] = read_runtime(import_libraries=libraries).to_dict()
    return report

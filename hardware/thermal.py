"""Temperatures in °C from the kernel's thermal zones, or hwmon sensors where a box has no zones."""

from __future__ import annotations

from hardware.sysfs import RootLike, SYSTEM_ROOT, glob, read_path_int, read_path_text

# Zones report millidegrees; offline sensors read as -256 °C or absurd values, which are dropped.
_PLAUSIBLE_C = (-40.0, 200.0)
# Jetson Nano, TX2 and Xavier have a PMIC-Die zone that reads a fixed 100 °C (50 on some boards),
# whatever the board's heat: a placeholder, not a sensor (tegrastats shows it as PMIC@100C).
_PLACEHOLDER_ZONES = ("PMIC",)
# The CPU's own die sensors, which x86 kernels expose through hwmon only (Intel coretemp, AMD
# k10temp). A box whose one thermal zone is ACPI's acpitz, often a fixed value whatever the
# load, would otherwise show no CPU temperature at all.
_CPU_HWMON_CHIPS = {"coretemp", "k10temp", "zenpower"}


def _celsius(millidegrees: int | None) -> float | None:
    if millidegrees is None:
        return None
    value = millidegrees / 1000.0
    return round(value, 1) if _PLAUSIBLE_C[0] <= value <= _PLAUSIBLE_C[1] else None


def _add(found: dict[str, float], name: str, value: float) -> None:
    key, n = name, 2
    while key in found:  # two zones of one type (e.g. two "cpu-thermal") stay apart
        key, n = f"{name}#{n}", n + 1
    found[key] = value


def read_thermal_zones(root: RootLike = SYSTEM_ROOT) -> dict[str, float]:
    found: dict[str, float] = {}
    for zone in glob(root, "/sys/class/thermal/thermal_zone*"):
        value = _celsius(read_path_int(zone / "temp"))
        if value is None:
            continue
        mode = read_path_text(zone / "mode")
        if mode == "disabled":
            continue
        kind = read_path_text(zone / "type") or zone.name
        if kind.upper().startswith(_PLACEHOLDER_ZONES):
            continue
        _add(found, kind, value)
    return found


def read_hwmon_temperatures(root: RootLike = SYSTEM_ROOT, chips: set[str] | None = None) -> dict[str, float]:
    """hwmon sensors, of every chip or of `chips` only, as "chip/label"."""
    found: dict[str, float] = {}
    for sensor in glob(root, "/sys/class/hwmon/hwmon*"):
        chip = read_path_text(sensor / "name") or sensor.name
        if chips is not None and chip not in chips:
            continue
        for source in sorted(sensor.glob("temp*_input")):
            value = _celsius(read_path_int(source))
            if value is None:
                continue
            label = read_path_text(source.with_name(source.name.replace("_input", "_label")))
            _add(found, f"{chip}/{label}" if label else chip, value)
    return found


def read_temperatures(root: RootLike = SYSTEM_ROOT) -> dict[str, float]:
    """Sensor name -> °C: the thermal zones and the CPU's hwmon sensors, or every hwmon sensor
    where there is no zone; {} where the box exposes no sensor (most VMs)."""
    zones = read_thermal_zones(root)
    if not zones:
        return read_hwmon_temperatures(root)
    cpu = read_hwmon_temperatures(root, _CPU_HWMON_CHIPS)
    return {**zones, **{name: value for name, value in cpu.items() if name not in zones}}

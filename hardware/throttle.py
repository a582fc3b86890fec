"""Throttling and under-voltage: Raspberry Pi firmware flags, Linux thermal cooling, Jetson over-current."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hardware.sysfs import RootLike, SYSTEM_ROOT, glob, parse_int, read_path_int, read_path_text, run_tool

# Bits of the Raspberry Pi firmware's get_throttled word: the low half is "now", the high
# half "has happened since boot".
PI_FLAGS = {
    0: "under-voltage",
    1: "arm-frequency-capped",
    2: "throttled",
    3: "soft-temperature-limit",
}
PI_OCCURRED_SHIFT = 16
PI_WORD_MAX = 0xFFFFFFFF  # the firmware answers with an unsigned 32-bit word
# The firmware's platform device is soc:firmware on a Pi 4 and older, soc@107c000000:firmware on a
# Pi 5, whose bus node carries its address.
PI_FIRMWARE_FILES = "/sys/devices/platform/soc*/soc*:firmware/get_throttled"
_VCGENCMD_LINE = re.compile(r"throttled\s*=\s*(0x[0-9a-fA-F]+|\d+)")
# Cooling devices whose state slows no clock, besides fans: a laptop's backlight (ACPI "LCD": its
# state is the steps below full brightness) and the offset below the CPU's throttle temperature
# that Intel firmware programs ("TCC Offset"), both non-zero at rest.
_NOT_THROTTLING = {"lcd", "tcc offset"}


def _slows_nothing(kind: str) -> bool:
    lowered = kind.lower()
    return "fan" in lowered or lowered in _NOT_THROTTLING  # pwm-fan (Pi 5, Jetson), Fan (ACPI)


@dataclass(frozen=True)
class ThrottleState:
    source: str  # where the state came from: "vcgencmd", "firmware", "thermal-cooling", ...
    active: tuple[str, ...]  # conditions in force now
    occurred: tuple[str, ...] = ()  # conditions seen since boot, where the source records them
    raw: str | None = None

    @property
    def throttled(self) -> bool:
        return bool(self.active)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "throttled": self.throttled,
            "active": list(self.active),
            "occurred": list(self.occurred),
            "raw": self.raw,
        }


def parse_pi_throttled(word: int, source: str = "vcgencmd") -> ThrottleState:
    active = tuple(name for bit, name in PI_FLAGS.items() if word & (1 << bit))
    occurred = tuple(name for bit, name in PI_FLAGS.items() if word & (1 << (bit + PI_OCCURRED_SHIFT)))
    return ThrottleState(source=source, active=active, occurred=occurred, raw=hex(word))


def _pi_word(value: int | None) -> int | None:
    """`value` where it can be a get_throttled word (the firmware's unsigned 32 bits); else None."""
    return value if value is not None and 0 <= value <= PI_WORD_MAX else None


def parse_vcgencmd_output(text: str | None) -> int | None:
    """The word in `vcgencmd get_throttled` output ("throttled=0x50005"); None if absent."""
    match = _VCGENCMD_LINE.search(text or "")
    if not match:
        return None
    value = match.group(1)
    return _pi_word(parse_int(value, 16) if value.lower().startswith("0x") else parse_int(value))


def read_pi_throttle(root: RootLike = SYSTEM_ROOT, vcgencmd: str = "vcgencmd") -> ThrottleState | None:
    """From `vcgencmd get_throttled` when the tool is on PATH, else the firmware's sysfs file."""
    word = parse_vcgencmd_output(run_tool([vcgencmd, "get_throttled"]))
    if word is not None:
        return parse_pi_throttled(word, "vcgencmd")
    found = glob(root, PI_FIRMWARE_FILES)
    text = read_path_text(found[0]) if found else None  # the same word, written by the kernel as "%x"
    word = _pi_word(parse_int(text, 16)) if text else None
    return parse_pi_throttled(word, "firmware") if word is not None else None


def read_cooling_throttle(root: RootLike = SYSTEM_ROOT) -> ThrottleState | None:
    """Thermal throttling on any Linux: a CPU/GPU cooling device at a non-zero state is
    capping that clock. Cooling devices that slow nothing down (fans, a backlight) are skipped."""
    active: list[str] = []
    seen = False
    for device in glob(root, "/sys/class/thermal/cooling_device*"):
        kind = read_path_text(device / "type") or device.name
        state = read_path_int(device / "cur_state")
        if state is None or _slows_nothing(kind):
            continue
        seen = True
        if state > 0:
            top = read_path_int(device / "max_state")
            active.append(f"thermal:{kind}={state}/{top}" if top is not None else f"thermal:{kind}={state}")
    if not seen:
        return None
    return ThrottleState(source="thermal-cooling", active=tuple(active))


def read_overcurrent_events(root: RootLike = SYSTEM_ROOT) -> dict[str, int] | None:
    """Jetson over-current throttle events since boot (hwmon `oc*_event_cnt`); None where absent."""
    counts: dict[str, int] = {}
    for path in glob(root, "/sys/class/hwmon/hwmon*/oc*_event_cnt"):
        value = read_path_int(path)
        if value is not None:
            counts[path.name.replace("_event_cnt", "")] = value
    return counts or None


def read_jetson_throttle(root: RootLike = SYSTEM_ROOT) -> ThrottleState | None:
    cooling = read_cooling_throttle(root)
    events = read_overcurrent_events(root)
    if cooling is None and events is None:
        return None
    occurred = tuple(f"over-current:{name}={count}" for name, count in (events or {}).items() if count > 0)
    sources = [name for name, part in (("thermal-cooling", cooling), ("over-current", events)) if part is not None]
    return ThrottleState(source="+".join(sources), active=cooling.active if cooling else (), occurred=occurred)


def read_throttle(kind: str, root: RootLike = SYSTEM_ROOT, vcgencmd: str = "vcgencmd") -> ThrottleState | None:
    """The throttle state for a device kind ("raspberry-pi", "jetson", anything else)."""
    if kind == "raspberry-pi":
        return read_pi_throttle(root, vcgencmd) or read_cooling_throttle(root)
    if kind == "jetson":
        return read_jetson_throttle(root)
    return read_cooling_throttle(root)

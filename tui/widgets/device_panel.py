"""The device panel: what this device is and what it is doing now, from the newest sampler snapshot."""

from __future__ import annotations

from typing import Protocol

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from hardware.sampler import ResourceSampler, Snapshot


class DeviceFeed(Protocol):
    """Where the panel reads from: a name, and the newest snapshot (None before the first)."""

    name: str

    def latest(self) -> Snapshot | None: ...


class LiveDevice:
    """This device, sampled once a second in the background for as long as the app runs."""

    INTERVAL_S = 1.0

    def __init__(self) -> None:
        self.name = "detecting the device…"
        self.sampler: ResourceSampler | None = None

    def start(self) -> None:
        """Detect the device and start sampling (reads /proc and /sys: call it off the UI thread)."""
        from hardware.device import detect_device

        device = detect_device()
        sampler = ResourceSampler.for_device(self.INTERVAL_S, device=device)
        sampler.start()
        self.sampler = sampler
        self.name = device.name

    def latest(self) -> Snapshot | None:
        return self.sampler.latest() if self.sampler is not None else None

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop()


def _gb(mb: float) -> str:
    return f"{mb / 1024:.1f}"


def device_figures(snapshot: Snapshot | None) -> Text:
    """CPU, RAM, temperature and throttle state; "n/a" for what the device does not expose."""
    if snapshot is None:
        return Text("sampling…", style="dim")
    text = Text()
    cpu = snapshot.cpu_percent_mean
    text.append("CPU ", style="bold")
    text.append(f"{cpu:.0f}%", style="red" if cpu >= 90 else "yellow" if cpu >= 60 else "green")
    total = snapshot.mem_used_mb + snapshot.mem_available_mb
    low = snapshot.mem_available_mb < 0.1 * total
    text.append(" · RAM ", style="bold")
    text.append(f"{_gb(snapshot.mem_used_mb)} of {_gb(total)} GB", style="red" if low else "")
    text.append(f", {_gb(snapshot.mem_available_mb)} free · ")
    temperatures = snapshot.extra.get("temperatures_c") or {}
    if temperatures:
        hottest = max(temperatures.values())
        text.append(f"{hottest:.0f}°C", style="red" if hottest >= 80 else "yellow" if hottest >= 70 else "")
    else:
        text.append("temp n/a", style="dim")
    text.append(" · ")
    if "throttled" in snapshot.extra:
        active = snapshot.extra.get("throttle_active") or ()
        if active:
            text.append("THROTTLED: " + ", ".join(active), style="bold red")
        else:
            text.append("not throttled", style="green")
    else:
        text.append("throttle n/a", style="dim")
    return text


def device_lines(name: str, snapshot: Snapshot | None, width: int) -> Text:
    """The device's name and its live figures: one line when both fit, else two."""
    figures = device_figures(snapshot)
    line = Text(name, style="bold")
    if len(name) + 3 + figures.cell_len <= width:
        line.append(" │ ", style="dim")
        line.append_text(figures)
        return line
    line.truncate(width, overflow="ellipsis")
    figures.truncate(width, overflow="ellipsis")
    return Text("\n").join([line, figures])


class DevicePanel(Widget):
    """Reads the app's device feed on a timer; never waits on the device itself."""

    DEFAULT_CSS = """
    DevicePanel {
        height: auto;
        padding: 0 1;
        background: $panel;
    }
    """

    REFRESH_S = 1.0

    def on_mount(self) -> None:
        self.set_interval(self.REFRESH_S, self.refresh_figures)

    def _text(self, width: int) -> Text:
        feed: DeviceFeed = getattr(self.app, "device_feed")
        return device_lines(feed.name, feed.latest(), max(width, 20))

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._text(width).split("\n"))

    def render(self) -> Text:
        return self._text(self.size.width)

    def refresh_figures(self) -> None:
        # The figures can come to need a second line, or stop needing it: lay out again then only.
        lines = len(self._text(self.size.width).split("\n"))
        self.refresh(layout=lines != self.size.height)

"""Sampler readers per subsystem, the default set per device, jtop and sampled jobs."""

import importlib.machinery
import sys
import time
import types

import pytest

from audit.progress import Progress, drive
from hardware.device import detect_device
from hardware.jetson import JtopSession, parse_jtop_stats
from hardware.readers import AtMostEvery, JtopReader, default_readers
from hardware.sampler import ResourceSampler, sample_job
from tests.fake_devices import fake_tool, jetson_orin_nano, raspberry_pi_5


def merged(readers):
    out = {}
    for reader in readers:
        out.update(reader())
    return out


def test_pi_readers_record_temperature_frequency_and_throttle(tmp_path, bare_path):
    root = raspberry_pi_5(tmp_path / "pi")
    fake_tool(bare_path, "vcgencmd", "throttled=0x4")
    readers = default_readers(root=root)
    assert len(readers) == 3
    extra = merged(readers)
    assert extra["temperatures_c"] == {"cpu-thermal": 54.9}
    assert extra["cpu_governor"] == "ondemand"
    assert extra["cpu_freq_mhz_per_core"] == (2400.0, 2401.0, 2402.0, 2403.0)
    assert extra["throttled"] is True and extra["throttle_active"] == ("throttled",)

    with ResourceSampler(interval_s=0.01, readers=readers) as sampler:
        time.sleep(0.05)
    summary = sampler.summary()
    assert summary["temperature_max_c"] == 54.9
    assert summary["throttled_seen"] is True
    assert summary["throttle_flags_seen"] == ["throttled"]


def test_jetson_readers_add_gpu_load_and_power_from_sysfs(tmp_path, bare_path):
    root = jetson_orin_nano(tmp_path / "orin")
    readers = default_readers(detect_device(root), root)
    extra = merged(readers)
    assert extra["gpu_load_percent"] == 52.3
    assert extra["power_mw"]["VDD_IN"] == 6096.0
    assert extra["temperatures_c"]["tj-thermal"] == 49.1
    assert extra["throttle_active"] == ("thermal:cpufreq-cpu0=2/10",)
    with ResourceSampler(interval_s=0.01, readers=readers) as sampler:
        time.sleep(0.05)
    summary = sampler.summary()
    assert summary["gpu_load_mean_pct"] == 52.3
    # VDD_IN is the whole board; the other rails are parts of it and are not added on top.
    assert summary["power_mean_mw"] == 6096.0


def test_a_box_without_sensors_gets_no_readers(tmp_path, bare_path):
    root = tmp_path / "empty"
    root.mkdir()
    assert default_readers(root=root) == []


def test_at_most_every_repeats_the_last_reading_between_reads():
    calls = []
    now = [0.0]

    def reader():
        calls.append(now[0])
        return {"n": len(calls)}

    slow = AtMostEvery(1.0, reader, clock=lambda: now[0])
    assert slow() == {"n": 1}
    now[0] = 0.5
    assert slow() == {"n": 1}
    now[0] = 1.0
    assert slow() == {"n": 2}
    assert calls == [0.0, 1.0]


def test_parse_jtop_stats_across_releases():
    v4 = {"time": None, "uptime": None, "CPU1": 12, "GPU": 40.5, "Temp cpu": 45.1, "Temp gpu": 44.0, "Temp cv0": -256,
          "Power TOT": 6100, "nvp model": "15W", "jetson_clocks": "OFF"}
    assert parse_jtop_stats(v4) == {
        "gpu_load_percent": 40.5,
        "temperatures_c": {"cpu": 45.1, "gpu": 44.0},
        "power_total_mw": 6100.0,
        "power_mode": "15W",
    }
    v3 = {"GPU": 3, "Temp CPU": 39.5, "power cur": 2500, "nvp model": "MAXN"}
    assert parse_jtop_stats(v3)["power_total_mw"] == 2500.0
    assert parse_jtop_stats(v3)["temperatures_c"] == {"cpu": 39.5}


class FakeJtop:
    instances: list["FakeJtop"] = []
    running = True

    def __init__(self, interval=0.5):
        self.closed = False
        FakeJtop.instances.append(self)

    def start(self):
        if not FakeJtop.running:
            raise RuntimeError("The jetson_stats.service is not active")

    def ok(self):
        return True

    @property
    def stats(self):
        return {"GPU": 61.0, "Temp tj": 50.5, "Power TOT": 7000, "nvp model": "25W"}

    def close(self):
        self.closed = True


@pytest.fixture()
def fake_jtop(monkeypatch):
    module = types.ModuleType("jtop")
    module.__spec__ = importlib.machinery.ModuleSpec("jtop", None)
    module.jtop = FakeJtop
    monkeypatch.setitem(sys.modules, "jtop", module)
    FakeJtop.instances = []
    FakeJtop.running = True
    return FakeJtop


def test_jtop_is_used_when_its_service_runs_and_closed_with_the_sampler(tmp_path, bare_path, fake_jtop):
    root = jetson_orin_nano(tmp_path / "orin")
    assert JtopSession.open(root) is None  # no service socket: sysfs it is
    (root / "run").mkdir()
    (root / "run/jtop.sock").write_text("")
    readers = default_readers(detect_device(root), root)
    assert isinstance(readers[0], JtopReader)
    extra = merged(readers)
    assert extra["gpu_load_percent"] == 61.0
    assert extra["temperatures_c"] == {"tj": 50.5}
    assert "power_mw" not in extra and extra["power_total_mw"] == 7000.0
    with ResourceSampler(interval_s=0.01, readers=readers) as sampler:
        time.sleep(0.03)
    assert sampler.summary()["power_mean_mw"] == 7000.0
    assert fake_jtop.instances[-1].closed

    from hardware.device import device_report

    jetson = device_report(root, runtime=False)["jetson"]
    assert (jetson["source"], jetson["gpu_load_percent"], jetson["power_mode"]) == ("jtop", 61.0, "25W")

    fake_jtop.running = False  # service socket left behind but the service is down
    assert JtopSession.open(root) is None
    assert device_report(root, runtime=False)["jetson"]["source"] == "sysfs"


def test_sample_job_returns_the_value_with_resources():
    def job():
        yield Progress("work", 1, 2)
        time.sleep(0.03)
        yield Progress("work", 2, 2)
        return "done"

    events = []
    sampled = drive(sample_job(job(), ResourceSampler(interval_s=0.01)), events.append)
    assert sampled.value == "done"
    assert [e.done for e in events] == [1, 2]
    assert sampled.resources["samples"] >= 2 and sampled.resources["rss_peak_mb"] > 0


def test_sample_job_stops_the_sampler_when_the_job_fails():
    sampler = ResourceSampler(interval_s=0.01)

    def job():
        yield Progress("work")
        raise ValueError("boom")

    with pytest.raises(ValueError):
        drive(sample_job(job(), sampler))
    assert sampler._stopped is not None


def test_sampler_for_this_device_runs():
    with ResourceSampler.for_device(interval_s=0.02) as sampler:
        time.sleep(0.05)
    summary = sampler.summary()
    assert summary["samples"] >= 2
    assert 0 <= summary["sampler_overhead_percent"] < 50

"""Device detection and the device report on fake Raspberry Pi 5, Jetson Orin Nano and x86-64 trees."""

import json
import os
import platform
from pathlib import Path

import pytest

from hardware.device import GENERIC_LINUX, JETSON, RASPBERRY_PI, detect_device, device_report
from tests.conftest import run_cli
from tests.fake_devices import fake_tool, jetson_orin_nano, raspberry_pi_5, x86_laptop


def test_raspberry_pi_5_is_detected_with_temperature_and_throttle_flags(tmp_path, bare_path):
    root = raspberry_pi_5(tmp_path / "pi")
    fake_tool(bare_path, "vcgencmd", "throttled=0x50005")
    device = detect_device(root)
    assert device.kind == RASPBERRY_PI
    assert device.name == "Raspberry Pi 5 Model B Rev 1.0"
    assert device.architecture == "aarch64"
    assert "brcm,bcm2712" in device.compatible

    report = device_report(root, runtime=False)
    assert report["cpu"]["model"] == "Cortex-A76"
    assert report["cpu"]["cores_logical"] == 4
    assert report["cpu"]["cores_usable"] is None  # a fake tree says nothing about this process
    assert report["memory"]["total_mb"] == pytest.approx(8_245_248 / 1024, abs=0.1)
    assert report["memory"]["swap_total_mb"] == pytest.approx(200.0, abs=0.1)
    assert report["temperatures_c"] == {"cpu-thermal": 54.9}
    assert report["cpu_frequency"]["governor"] == "ondemand"
    assert report["cpu_frequency"]["per_core_mhz"] == [2400.0, 2401.0, 2402.0, 2403.0]
    assert report["cpu_frequency"]["capped"] is False
    # 0x50005: under-voltage and throttling now (bits 0, 2), and both since boot (bits 16, 18).
    assert report["throttle"] == {
        "source": "vcgencmd",
        "throttled": True,
        "active": ["under-voltage", "throttled"],
        "occurred": ["under-voltage", "throttled"],
        "raw": "0x50005",
    }
    assert report["os"]["name"] == "Debian GNU/Linux 12 (bookworm)"
    assert "jetson" not in report


def test_pi_without_vcgencmd_reads_the_firmware_file_and_a_fan_says_nothing(tmp_path, bare_path):
    root = raspberry_pi_5(tmp_path / "pi")
    # Only the fan is a cooling device there: a spinning fan slows nothing, so no state is known.
    assert device_report(root, runtime=False)["throttle"] is None

    (root / "sys/devices/platform/soc/soc:firmware").mkdir(parents=True)
    (root / "sys/devices/platform/soc/soc:firmware/get_throttled").write_text("80008\n")
    throttle = device_report(root, runtime=False)["throttle"]
    assert throttle["source"] == "firmware"
    assert throttle["active"] == ["soft-temperature-limit"]
    assert throttle["occurred"] == ["soft-temperature-limit"]


def test_jetson_orin_nano_is_detected_with_temperatures_gpu_power_and_throttle(tmp_path, bare_path):
    root = jetson_orin_nano(tmp_path / "orin")
    device = detect_device(root)
    assert device.kind == JETSON
    assert device.name == "NVIDIA Jetson Orin Nano Developer Kit"
    assert device.l4t_release == "36.4.0"
    assert device.architecture == "aarch64"

    report = device_report(root, runtime=False)
    assert report["cpu"]["model"] == "Cortex-A78AE"
    assert report["cpu"]["cores_logical"] == 6
    # The offline sensor (-256 °C) is dropped.
    assert report["temperatures_c"] == {"cpu-thermal": 48.5, "gpu-thermal": 47.2, "tj-thermal": 49.1}
    jetson = report["jetson"]
    assert jetson["source"] == "sysfs"
    assert jetson["gpu_load_percent"] == 52.3
    assert jetson["gpu_frequency_mhz"] == 612.0
    # mV x mA / 1000
    assert jetson["power_rails_mw"] == {"VDD_IN": 6096.0, "VDD_CPU_GPU_CV": 2028.8, "VDD_SOC": 3043.2}
    assert (jetson["power_mode"], jetson["power_mode_id"]) == ("7W", 1)
    throttle = report["throttle"]
    assert throttle["source"] == "thermal-cooling+over-current"
    assert throttle["throttled"] is True
    assert throttle["active"] == ["thermal:cpufreq-cpu0=2/10"]
    assert throttle["occurred"] == ["over-current:oc2=4"]


def test_jetson_power_mode_prefers_the_nvpmodel_tool(tmp_path, bare_path):
    root = jetson_orin_nano(tmp_path / "orin")
    fake_tool(bare_path, "nvpmodel", "NV Power Mode: MAXN_SUPER\n2")
    jetson = device_report(root, runtime=False)["jetson"]
    assert (jetson["power_mode"], jetson["power_mode_id"]) == ("MAXN_SUPER", 2)


def test_x86_laptop_is_generic_linux_with_hwmon_temperatures(tmp_path, bare_path):
    root = x86_laptop(tmp_path / "laptop")
    device = detect_device(root)
    assert device.kind == GENERIC_LINUX
    assert device.architecture == "x86_64"
    assert device.name == "generic x86_64 Linux (LENOVO 20KH006M)"
    report = device_report(root, runtime=False)
    assert report["cpu"]["model"] == "Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz"
    assert (report["cpu"]["cores_logical"], report["cpu"]["cores_physical"]) == (4, 2)
    assert report["memory"]["available_mb"] == pytest.approx(12_000_000 / 1024, abs=0.1)
    assert report["temperatures_c"] == {"coretemp/Package id 0": 45.0, "coretemp/Core 0": 43.0}
    assert report["cpu_frequency"]["governor"] == "powersave"
    assert report["cpu_frequency"]["hardware_max_mhz"] == 3400.0
    assert report["throttle"]["throttled"] is False
    assert report["os"]["name"] == "Ubuntu 22.04.4 LTS"


def test_empty_tree_reports_not_available_everywhere(tmp_path, bare_path):
    root = tmp_path / "empty"
    root.mkdir()
    device = detect_device(root)
    assert device.kind == GENERIC_LINUX
    assert device.architecture is None
    report = device_report(root, runtime=False)
    assert report["cpu"] == {"model": None, "architecture": None, "cores_logical": None, "cores_physical": None, "cores_usable": None}
    assert set(report["memory"].values()) == {None}
    assert report["temperatures_c"] == {}
    assert report["throttle"] is None
    assert report["cpu_frequency"]["per_core_mhz"] == [] and report["cpu_frequency"]["governor"] is None
    json.dumps(report)  # plain data all the way down


def test_garbled_and_unreadable_files_read_as_not_available(tmp_path, bare_path, monkeypatch):
    root = jetson_orin_nano(tmp_path / "orin")
    (root / "sys/class/thermal/thermal_zone0/temp").write_text("garbage\n")
    gpu_load = root / "sys/devices/platform/bus@0/17000000.gpu/load"
    gpu_load.unlink()
    gpu_load.mkdir()  # a folder where a file should be: reading it fails for any user
    (root / "proc/meminfo").write_text("MemTotal: lots\n")
    denied = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/curr1_input"
    real_read_bytes = Path.read_bytes

    def read_bytes(self):
        if self == denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    fake_tool(bare_path, "nvpmodel", "NVPM ERROR: cannot open", exit_code=1)

    report = device_report(root, runtime=False)
    assert "cpu-thermal" not in report["temperatures_c"]
    assert report["temperatures_c"]["gpu-thermal"] == 47.2
    assert report["jetson"]["gpu_load_percent"] is None
    assert report["memory"]["total_mb"] is None
    assert "VDD_IN" not in report["jetson"]["power_rails_mw"]
    assert report["jetson"]["power_rails_mw"]["VDD_SOC"] == 3043.2
    assert report["jetson"]["power_mode"] == "7W"  # the failing tool falls back to the status file


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_file_without_read_permission_reads_as_not_available(tmp_path, bare_path):
    root = raspberry_pi_5(tmp_path / "pi")
    (root / "sys/class/thermal/thermal_zone0/temp").chmod(0)
    assert device_report(root, runtime=False)["temperatures_c"] == {}


def test_a_hanging_tool_is_abandoned(tmp_path, bare_path):
    from hardware.sysfs import run_tool

    script = bare_path / "slowtool"
    script.write_text("#!/bin/sh\nsleep 5\n")
    script.chmod(0o755)
    assert run_tool(["slowtool"], timeout_s=0.2) is None
    assert run_tool(["no-such-tool"]) is None


def test_this_machine_report_is_complete_and_consistent():
    report = device_report(libraries=True)
    assert report["device"]["kind"] in {GENERIC_LINUX, JETSON, RASPBERRY_PI}
    assert report["cpu"]["cores_logical"] == os.cpu_count()
    assert report["cpu"]["architecture"] == platform.machine()
    import psutil

    assert report["memory"]["total_mb"] == pytest.approx(psutil.virtual_memory().total / 2**20, rel=1e-3)
    runtime = report["runtime"]
    assert runtime["python"] == platform.python_version()
    assert "CPUExecutionProvider" in runtime["onnxruntime_providers"]
    assert runtime["torch_threads"] >= 1


def test_device_command_json_and_table():
    result = run_cli("device", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cpu"]["cores_logical"] == os.cpu_count()
    assert data["memory"]["total_mb"] > 0
    table = run_cli("device")
    assert table.returncode == 0, table.stderr
    assert "cores" in table.stdout and data["device"]["name"] in table.stdout

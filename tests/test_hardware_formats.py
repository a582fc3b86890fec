"""Hardware readers on samples in the formats real kernels and boards write, where a reader once
took one device's value for another's meaning."""

from __future__ import annotations

import pytest

from hardware.cpu import read_cpu_frequency
from hardware.device import detect_device, device_report
from hardware.memory import read_cgroup_memory_limit_mb
from hardware.readers import default_readers
from hardware.sampler import ResourceSampler
from hardware.thermal import read_temperatures
from hardware.throttle import read_throttle
from tests.fake_devices import jetson_agx_orin, jetson_xavier_nx_jetpack4, raspberry_pi_5, write_tree, x86_laptop


@pytest.mark.parametrize(
    "path, content, limit_mb",
    [
        ("/sys/fs/cgroup/memory.max", "max\n", None),  # v2, no limit
        ("/sys/fs/cgroup/memory.max", "2147483648\n", 2048.0),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n", None),  # v1 on a 64-bit kernel
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "8796093018112\n", None),  # v1 on a 32-bit kernel (armv7 Pi OS)
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "536870912\n", 512.0),
    ],
)
def test_cgroup_memory_limits_and_no_limit_of_both_versions(tmp_path, path, content, limit_mb):
    assert read_cgroup_memory_limit_mb(write_tree(tmp_path, {path: content})) == limit_mb


def test_a_jetpack_4_xavier_reads_iio_power_and_leaves_out_the_pmic_placeholder(tmp_path, bare_path):
    root = jetson_xavier_nx_jetpack4(tmp_path / "xavier")
    assert detect_device(root).l4t_release == "32.7.1"
    report = device_report(root, runtime=False, use_jtop=False)
    # PMIC-Die reads a fixed 100 °C (tegrastats: PMIC@100C): taken as a sensor, it made every run
    # of a cool board peak at 100 °C.
    assert report["temperatures_c"] == {
        "CPU-therm": 38.0, "GPU-therm": 37.5, "AUX-therm": 36.5, "AO-therm": 37.0, "thermal-fan-est": 37.3,
    }
    assert report["cpu"]["model"] == "NVIDIA Carmel"
    jetson = report["jetson"]
    assert jetson["gpu_load_percent"] == 31.2
    assert jetson["power_rails_mw"] == {"VDD_IN": 4791.0, "VDD_CPU_GPU_CV": 932.0, "VDD_SOC": 1331.0}  # in_power*_input: mW
    readers = default_readers(detect_device(root), root, use_jtop=False)
    with ResourceSampler(interval_s=3600, readers=readers) as sampler:
        pass
    summary = sampler.summary()
    assert summary["temperature_max_c"] == 38.0
    assert summary["power_max_mw"] == 4791.0  # VDD_IN is the whole module


def test_an_agx_orin_without_a_module_input_rail_sums_its_rails(tmp_path, bare_path):
    root = jetson_agx_orin(tmp_path / "agx")
    rails = device_report(root, runtime=False, use_jtop=False)["jetson"]["power_rails_mw"]
    # mV x mA / 1000; NC channels and the driver's "sum of shunt voltages" are not rails.
    assert rails == {"VDD_GPU_SOC": 2396.2, "VDD_CPU_CV": 798.7, "VIN_SYS_5V0": 3205.1, "VDDQ_VDD2_1V8AO": 599.0}
    readers = default_readers(detect_device(root), root, use_jtop=False)
    with ResourceSampler(interval_s=3600, readers=readers) as sampler:
        pass
    # VIN_SYS_5V0 is the system's 5 V supply beside the GPU, CPU and memory rails, not the module's
    # input: taken as the total, the GPU and CPU were left out of the figure.
    assert sampler.summary()["power_max_mw"] == 6999.0


def cooling_devices(*devices: tuple[str, str, str]) -> dict[str, str]:
    files = {}
    for n, (kind, state, top) in enumerate(devices):
        base = f"/sys/class/thermal/cooling_device{n}"
        files.update({f"{base}/type": f"{kind}\n", f"{base}/cur_state": f"{state}\n", f"{base}/max_state": f"{top}\n"})
    return files


def test_a_dimmed_laptop_screen_or_a_tcc_offset_is_not_throttling(tmp_path):
    # A laptop's cooling devices as Linux lists them: ACPI processors, idle injection (-1 while it
    # is not injecting), the backlight, whose state is the steps below full brightness, and the
    # offset firmware programmed below the CPU's throttle temperature.
    idle = cooling_devices(
        ("Processor", "0", "10"), ("Processor", "0", "10"), ("intel_powerclamp", "-1", "50"),
        ("LCD", "7", "15"), ("TCC Offset", "5", "63"),
    )
    root = write_tree(x86_laptop(tmp_path / "laptop"), idle)
    state = read_throttle("generic-linux", root)
    assert (state.throttled, state.active) == (False, ())
    write_tree(root, {"/sys/class/thermal/cooling_device1/cur_state": "3\n"})
    assert read_throttle("generic-linux", root).active == ("thermal:Processor=3/10",)


@pytest.mark.parametrize(
    "firmware",
    [
        "/sys/devices/platform/soc/soc:firmware",  # Pi 4 and older
        "/sys/devices/platform/soc@107c000000/soc@107c000000:firmware",  # Pi 5: the bus node has its address
    ],
)
def test_a_pi_without_vcgencmd_reads_the_firmware_word_where_its_board_puts_it(tmp_path, bare_path, firmware):
    root = write_tree(raspberry_pi_5(tmp_path / "pi"), {f"{firmware}/get_throttled": "50005\n"})
    state = read_throttle("raspberry-pi", root)
    assert (state.source, state.active, state.raw) == ("firmware", ("under-voltage", "throttled"), "0x50005")


def test_an_x86_box_whose_only_zone_is_acpi_also_reads_its_cpu_sensor(tmp_path):
    # An AMD mini PC: ACPI's one thermal zone reads a fixed value whatever the load, and is also
    # its own hwmon chip; the CPU's die sensor (k10temp) is under hwmon only, beside the disk's.
    root = write_tree(tmp_path, {
        "/sys/class/thermal/thermal_zone0/type": "acpitz\n",
        "/sys/class/thermal/thermal_zone0/temp": "16800\n",
        "/sys/class/hwmon/hwmon0/name": "acpitz\n",
        "/sys/class/hwmon/hwmon0/temp1_input": "16800\n",
        "/sys/class/hwmon/hwmon1/name": "k10temp\n",
        "/sys/class/hwmon/hwmon1/temp1_label": "Tctl\n",
        "/sys/class/hwmon/hwmon1/temp1_input": "71500\n",
        "/sys/class/hwmon/hwmon2/name": "nvme\n",
        "/sys/class/hwmon/hwmon2/temp1_label": "Composite\n",
        "/sys/class/hwmon/hwmon2/temp1_input": "45850\n",
    })
    assert read_temperatures(root) == {"acpitz": 16.8, "k10temp/Tctl": 71.5}


def rk3588_cpufreq(big1_max_khz: int) -> dict[str, str]:
    """An RK3588's three cpufreq policies: four A55s, and two pairs of A76s, each pair under its
    own thermal zone and capped by it alone."""
    files = {}
    for cpu in range(8):
        top, allowed = (1_800_000, 1_800_000) if cpu < 4 else (2_256_000, 2_256_000 if cpu < 6 else big1_max_khz)
        base = f"/sys/devices/system/cpu/cpu{cpu}/cpufreq"
        files.update({f"{base}/scaling_cur_freq": f"{min(allowed, 1_416_000)}\n", f"{base}/scaling_max_freq": f"{allowed}\n",
                      f"{base}/scaling_min_freq": "408000\n", f"{base}/cpuinfo_max_freq": f"{top}\n",
                      f"{base}/scaling_governor": "schedutil\n"})
    return files


def test_a_board_with_one_cluster_capped_and_another_at_full_clock_is_capped(tmp_path):
    assert read_cpu_frequency(write_tree(tmp_path / "cool", rk3588_cpufreq(2_256_000))).capped is False
    hot = read_cpu_frequency(write_tree(tmp_path / "hot", rk3588_cpufreq(1_608_000)))
    assert hot.capped is True and hot.to_dict()["capped"] is True
    assert (hot.max_mhz, hot.hardware_max_mhz) == (2256.0, 2256.0)

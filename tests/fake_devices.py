"""Fake /proc, /sys and /etc trees of a Raspberry Pi 5, Jetsons (Orin Nano, AGX Orin, Xavier NX on JetPack 4) and an x86-64 laptop."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Mapping, Union

Content = Union[str, bytes]


def write_tree(root: Path, files: Mapping[str, Content]) -> Path:
    for path, content in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return root


def fake_tool(bin_dir: Path, name: str, output: str, exit_code: int = 0) -> Path:
    """An executable on a test PATH that prints `output` whatever its arguments."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / name
    quoted = output.replace("'", "'\\''")
    # Only shell builtins: the test PATH holds nothing but the fake tools.
    script.write_text(f"#!/bin/sh\necho '{quoted}'\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def _arm_cpuinfo(cores: int, part: str, extra: str = "") -> str:
    blocks = [
        f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid\n"
        f"CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: {part}\nCPU revision\t: 1\n"
        for i in range(cores)
    ]
    return "\n".join(blocks) + ("\n" + extra if extra else "")


def _cpufreq(cores: int, cur_khz: int, min_khz: int, max_khz: int, hw_max_khz: int, governor: str) -> dict[str, str]:
    files = {}
    for i in range(cores):
        base = f"/sys/devices/system/cpu/cpu{i}/cpufreq"
        files.update(
            {
                f"{base}/scaling_cur_freq": f"{cur_khz + 1000 * i}\n",
                f"{base}/scaling_min_freq": f"{min_khz}\n",
                f"{base}/scaling_max_freq": f"{max_khz}\n",
                f"{base}/cpuinfo_max_freq": f"{hw_max_khz}\n",
                f"{base}/scaling_governor": f"{governor}\n",
            }
        )
    return files


def _meminfo(total_kb: int, available_kb: int, swap_total_kb: int, swap_free_kb: int) -> str:
    return (
        f"MemTotal:       {total_kb} kB\nMemFree:        {available_kb // 2} kB\nMemAvailable:   {available_kb} kB\n"
        f"Buffers:           1024 kB\nSwapTotal:      {swap_total_kb} kB\nSwapFree:       {swap_free_kb} kB\n"
    )


OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
UBUNTU_RELEASE = 'PRETTY_NAME="Ubuntu 22.04.4 LTS"\nNAME="Ubuntu"\nVERSION_ID="22.04"\n'


def raspberry_pi_5(root: Path) -> Path:
    files: dict[str, Content] = {
        "/proc/device-tree/model": b"Raspberry Pi 5 Model B Rev 1.0\x00",
        "/proc/device-tree/compatible": b"raspberrypi,5-model-b\x00brcm,bcm2712\x00",
        "/proc/cpuinfo": _arm_cpuinfo(4, "0xd0b", "Revision\t: d04170\nSerial\t\t: 1a2b3c4d\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"),
        "/sys/devices/system/cpu/online": "0-3\n",
        "/proc/meminfo": _meminfo(8_245_248, 7_600_000, 204_796, 204_796),
        "/etc/os-release": OS_RELEASE,
        "/proc/sys/kernel/osrelease": "6.6.31+rpt-rpi-2712\n",
        "/proc/sys/kernel/hostname": "pi5\n",
        "/sys/class/thermal/thermal_zone0/type": "cpu-thermal\n",
        "/sys/class/thermal/thermal_zone0/temp": "54850\n",
        # The Pi 5 fan is a cooling device; a spinning fan is not throttling.
        "/sys/class/thermal/cooling_device0/type": "pwm-fan\n",
        "/sys/class/thermal/cooling_device0/cur_state": "2\n",
        "/sys/class/thermal/cooling_device0/max_state": "4\n",
    }
    files.update(_cpufreq(4, 2_400_000, 1_500_000, 2_400_000, 2_400_000, "ondemand"))
    return write_tree(root, files)


def jetson_orin_nano(root: Path) -> Path:
    gpu = "/sys/devices/platform/bus@0/17000000.gpu"
    hwmon = "/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
    files: dict[str, Content] = {
        "/etc/nv_tegra_release": (
            "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
            "# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
        ),
        "/proc/device-tree/model": b"NVIDIA Jetson Orin Nano Developer Kit\x00",
        "/proc/device-tree/compatible": b"nvidia,p3768-0000+p3767-0005\x00nvidia,p3767-0005\x00nvidia,tegra234\x00",
        "/proc/cpuinfo": _arm_cpuinfo(6, "0xd42"),
        "/sys/devices/system/cpu/online": "0-5\n",
        "/proc/meminfo": _meminfo(7_802_504, 5_900_000, 3_901_248, 3_901_248),
        "/etc/os-release": UBUNTU_RELEASE,
        "/sys/class/thermal/thermal_zone0/type": "cpu-thermal\n",
        "/sys/class/thermal/thermal_zone0/temp": "48531\n",
        "/sys/class/thermal/thermal_zone1/type": "gpu-thermal\n",
        "/sys/class/thermal/thermal_zone1/temp": "47250\n",
        "/sys/class/thermal/thermal_zone2/type": "cv0-thermal\n",
        "/sys/class/thermal/thermal_zone2/temp": "-256000\n",  # an offline sensor
        "/sys/class/thermal/thermal_zone3/type": "tj-thermal\n",
        "/sys/class/thermal/thermal_zone3/temp": "49062\n",
        "/sys/class/thermal/cooling_device0/type": "pwm-fan\n",
        "/sys/class/thermal/cooling_device0/cur_state": "3\n",
        "/sys/class/thermal/cooling_device1/type": "cpufreq-cpu0\n",
        "/sys/class/thermal/cooling_device1/cur_state": "2\n",
        "/sys/class/thermal/cooling_device1/max_state": "10\n",
        "/sys/class/hwmon/hwmon3/name": "soctherm_oc\n",
        "/sys/class/hwmon/hwmon3/oc1_event_cnt": "0\n",
        "/sys/class/hwmon/hwmon3/oc2_event_cnt": "4\n",
        f"{gpu}/of_node/name": "gpu",
        f"{gpu}/load": "523\n",
        "/sys/class/devfreq/17000000.gpu/cur_freq": "612000000\n",
        f"{hwmon}/in1_label": "VDD_IN\n",
        f"{hwmon}/in1_input": "5080\n",
        f"{hwmon}/curr1_input": "1200\n",
        f"{hwmon}/in2_label": "VDD_CPU_GPU_CV\n",
        f"{hwmon}/in2_input": "5072\n",
        f"{hwmon}/curr2_input": "400\n",
        f"{hwmon}/in3_label": "VDD_SOC\n",
        f"{hwmon}/in3_input": "5072\n",
        f"{hwmon}/curr3_input": "600\n",
        "/var/lib/nvpmodel/status": "pmode:0001 fmode:quiet\n",
        "/etc/nvpmodel.conf": "< POWER_MODEL ID=0 NAME=15W >\nCPU_ONLINE CORE_0 1\n< POWER_MODEL ID=1 NAME=7W >\nCPU_ONLINE CORE_0 1\n",
    }
    files.update(_cpufreq(6, 1_510_400, 729_600, 1_510_400, 1_510_400, "schedutil"))
    write_tree(root, files)
    # devfreq entries link to the GPU's platform device, relatively, as sysfs does.
    link = root / "sys/class/devfreq/17000000.gpu/device"
    os.symlink("../../../devices/platform/bus@0/17000000.gpu", link)
    return root


def jetson_agx_orin(root: Path) -> Path:
    """L4T R35: two INA3221 monitors through hwmon (mV and mA per channel), unused channels
    labelled NC, the driver's in7 "sum of shunt voltages", and no rail for the whole module."""
    first = "/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    second = "/sys/bus/i2c/drivers/ina3221/1-0041/hwmon/hwmon4"
    files: dict[str, Content] = {
        "/etc/nv_tegra_release": (
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n"
        ),
        "/proc/device-tree/model": b"Jetson AGX Orin Developer Kit\x00",
        "/proc/device-tree/compatible": b"nvidia,p3737-0000+p3701-0005\x00nvidia,p3701-0005\x00nvidia,tegra234\x00",
        "/proc/cpuinfo": _arm_cpuinfo(12, "0xd42"),
        "/sys/devices/system/cpu/online": "0-11\n",
        "/proc/meminfo": _meminfo(63_896_428, 60_000_000, 31_948_212, 31_948_212),
        f"{first}/name": "ina3221\n",
        f"{first}/in1_label": "VDD_GPU_SOC\n",
        f"{first}/in1_input": "4992\n",
        f"{first}/curr1_input": "480\n",
        f"{first}/in2_label": "VDD_CPU_CV\n",
        f"{first}/in2_input": "4992\n",
        f"{first}/curr2_input": "160\n",
        f"{first}/in3_label": "VIN_SYS_5V0\n",
        f"{first}/in3_input": "5008\n",
        f"{first}/curr3_input": "640\n",
        f"{first}/in7_label": "sum of shunt voltages\n",
        f"{first}/in7_input": "6\n",
        f"{second}/name": "ina3221\n",
        f"{second}/in1_label": "NC\n",
        f"{second}/in1_input": "0\n",
        f"{second}/curr1_input": "0\n",
        f"{second}/in2_label": "VDDQ_VDD2_1V8AO\n",
        f"{second}/in2_input": "4992\n",
        f"{second}/curr2_input": "120\n",
        f"{second}/in3_label": "NC\n",
        f"{second}/in3_input": "0\n",
        f"{second}/curr3_input": "0\n",
        f"{second}/in7_label": "sum of shunt voltages\n",
        f"{second}/in7_input": "1\n",
    }
    return write_tree(root, files)


def _carmel_cpuinfo(cores: int) -> str:
    return "\n".join(
        f"processor\t: {i}\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid\n"
        f"CPU implementer\t: 0x4e\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0x004\nCPU revision\t: 0\n"
        for i in range(cores)
    )


def jetson_xavier_nx_jetpack4(root: Path) -> Path:
    """L4T R32: power rails through the ina3221x iio driver in mW, GPU load at /sys/devices/gpu.0,
    and the PMIC-Die zone that tegrastats shows as PMIC@100C whatever the board's heat."""
    iio = "/sys/bus/i2c/drivers/ina3221x/7-0040/iio:device0"
    files: dict[str, Content] = {
        "/etc/nv_tegra_release": (
            "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref, EABI: aarch64, DATE: Sat Feb 19 17:07:00 UTC 2022\n"
        ),
        "/proc/device-tree/model": b"NVIDIA Jetson Xavier NX Developer Kit\x00",
        "/proc/device-tree/compatible": b"nvidia,p3509-0000+p3668-0001\x00nvidia,jetson-xavier-nx\x00nvidia,tegra194\x00",
        "/proc/cpuinfo": _carmel_cpuinfo(6),
        "/sys/devices/system/cpu/online": "0-5\n",
        "/proc/meminfo": _meminfo(7_969_308, 6_100_000, 3_984_652, 3_984_652),
        "/etc/os-release": 'PRETTY_NAME="Ubuntu 18.04.6 LTS"\nNAME="Ubuntu"\nVERSION_ID="18.04"\n',
        "/sys/devices/virtual/thermal/thermal_zone0/type": "CPU-therm\n",
        "/sys/devices/virtual/thermal/thermal_zone0/temp": "38000\n",
        "/sys/devices/virtual/thermal/thermal_zone1/type": "GPU-therm\n",
        "/sys/devices/virtual/thermal/thermal_zone1/temp": "37500\n",
        "/sys/devices/virtual/thermal/thermal_zone2/type": "AUX-therm\n",
        "/sys/devices/virtual/thermal/thermal_zone2/temp": "36500\n",
        "/sys/devices/virtual/thermal/thermal_zone3/type": "AO-therm\n",
        "/sys/devices/virtual/thermal/thermal_zone3/temp": "37000\n",
        "/sys/devices/virtual/thermal/thermal_zone4/type": "PMIC-Die\n",
        "/sys/devices/virtual/thermal/thermal_zone4/temp": "100000\n",
        "/sys/devices/virtual/thermal/thermal_zone5/type": "thermal-fan-est\n",
        "/sys/devices/virtual/thermal/thermal_zone5/temp": "37300\n",
        "/sys/devices/gpu.0/load": "312\n",
        f"{iio}/rail_name_0": "VDD_IN\n",
        f"{iio}/in_power0_input": "4791\n",
        f"{iio}/rail_name_1": "VDD_CPU_GPU_CV\n",
        f"{iio}/in_power1_input": "932\n",
        f"{iio}/rail_name_2": "VDD_SOC\n",
        f"{iio}/in_power2_input": "1331\n",
    }
    files.update(_cpufreq(6, 1_190_400, 1_190_400, 1_907_200, 1_907_200, "schedutil"))
    write_tree(root, files)
    # /sys/class/thermal holds links to the zones, as sysfs does.
    (root / "sys/class/thermal").mkdir(parents=True)
    for zone in range(6):
        os.symlink(f"../../devices/virtual/thermal/thermal_zone{zone}", root / f"sys/class/thermal/thermal_zone{zone}")
    return root


def x86_laptop(root: Path) -> Path:
    flags = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx lm constant_tsc avx2"
    blocks = [
        f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Core(TM) i5-8250U CPU @ 1.60GHz\n"
        f"physical id\t: 0\ncore id\t\t: {i % 2}\ncpu cores\t: 2\nflags\t\t: {flags}\n"
        for i in range(4)
    ]
    files: dict[str, Content] = {
        "/proc/cpuinfo": "\n".join(blocks),
        "/sys/devices/system/cpu/online": "0-3\n",
        "/proc/meminfo": _meminfo(16_303_932, 12_000_000, 2_097_148, 2_000_000),
        "/etc/os-release": UBUNTU_RELEASE,
        "/sys/class/dmi/id/sys_vendor": "LENOVO\n",
        "/sys/class/dmi/id/product_name": "20KH006M\n",
        # No thermal zones on this box: its sensors are hwmon chips.
        "/sys/class/hwmon/hwmon2/name": "coretemp\n",
        "/sys/class/hwmon/hwmon2/temp1_label": "Package id 0\n",
        "/sys/class/hwmon/hwmon2/temp1_input": "45000\n",
        "/sys/class/hwmon/hwmon2/temp2_label": "Core 0\n",
        "/sys/class/hwmon/hwmon2/temp2_input": "43000\n",
        "/sys/class/thermal/cooling_device0/type": "Processor\n",
        "/sys/class/thermal/cooling_device0/cur_state": "0\n",
        "/sys/class/thermal/cooling_device0/max_state": "10\n",
    }
    files.update(_cpufreq(4, 1_800_000, 400_000, 3_400_000, 3_400_000, "powersave"))
    return write_tree(root, files)

"""Hardware readers on damaged device trees: whatever a file of /proc or /sys holds (nothing, garbage,
text that is not UTF-8, huge, negative or non-finite numbers, a partial line), or a folder or a
broken link in its place, or no file at all, a reader gives "not available" or a sane figure: never
an exception, never a plausible wrong number (a temperature out of any sensor's range, a load above
100 %, more memory available than installed)."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware.device import KINDS, detect_device, device_report
from hardware.jetson import parse_jtop_stats, parse_nvpmodel_query, parse_tegra_release, read_gpu_load_percent, read_power_rails
from hardware.load import read_cpu_times, read_load
from hardware.memory import read_cgroup_memory_limit_mb, read_memory
from hardware.readers import default_readers
from hardware.sysfs import parse_cpu_list
from hardware.throttle import PI_FLAGS, parse_vcgencmd_output, read_pi_throttle
from tests.fake_devices import jetson_agx_orin, jetson_orin_nano, jetson_xavier_nx_jetpack4, raspberry_pi_5, x86_laptop

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NO_TOOL = "/nonexistent/tool"  # an absolute path that does not exist: run_tool finds nothing, whatever PATH holds

# -- what a damaged file holds -------------------------------------------------------------------

NUMBER_TEXT = st.one_of(
    st.integers().map(str),
    st.integers(min_value=-(10**25), max_value=10**25).map(str),
    st.floats().map(str),  # nan, inf, -inf, 1e+300 among them
    st.sampled_from([
        "nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-0", "0", "-1", "+7", "0x1f", "1_000", "",
        " ", "-256000", "100000", "4294967295", "18446744073709551615", "9223372036854771712", "9" * 400, "-" + "9" * 400, "9" * 5000,
        "<unknown>", "N/A", "0-3", "3-1", "0-4294967295", "0--1", "0-3,2", "50005", "-50005", "ffffffffffff",
    ]),
)
ENDINGS = st.sampled_from(["", "\n", " kB\n", "  \n\n", "\x00", " 12\n", "\n34\n", "\t"])
JUNK = st.one_of(
    st.tuples(NUMBER_TEXT, ENDINGS).map(lambda p: (p[0] + p[1]).encode()),
    st.binary(max_size=40),
    st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),  # lone surrogates are not UTF-8
    st.sampled_from([b"\xff\xfe\x00", "caf\xe9 42".encode("latin-1"), b"\x00\x00", b"4\xff2"]),
)
# A file in place that cannot be read as one: a folder, a link to nothing, no file.
NOT_A_FILE = st.sampled_from(["folder", "broken-link", "missing"])


def meminfo(fields):
    return "".join(f"{key}: {value} {unit}\n" for key, value, unit in fields).encode()


MEMINFO = st.lists(
    st.tuples(st.sampled_from(["MemTotal", "MemAvailable", "SwapTotal", "SwapFree", "MemFree", "Junk"]), NUMBER_TEXT,
              st.sampled_from(["kB", "", "kb", "MB"])),
    max_size=6,
).map(meminfo)
PROC_STAT = st.lists(NUMBER_TEXT, max_size=11).map(lambda xs: ("cpu  " + " ".join(xs) + "\ncpu0 1 2 3 4\n").encode())
LOADAVG = st.lists(NUMBER_TEXT, max_size=5).map(lambda xs: (" ".join(xs) + "\n").encode())
STRUCTURED = {"proc/meminfo": MEMINFO, "proc/stat": PROC_STAT, "proc/loadavg": LOADAVG}


def files_of(root: Path) -> list[str]:
    """Every file of a fake tree, relative to its root, links not followed."""
    found = []
    for folder, _, names in os.walk(root):
        found.extend(str((Path(folder) / name).relative_to(root)) for name in names)
    return sorted(found)


@st.composite
def damage(draw, files):
    """Up to six of `files`, each given junk (or, for the structured /proc files, real lines of junk
    values), or replaced by something that is not a readable file."""
    chosen = draw(st.lists(st.sampled_from(files), min_size=1, max_size=6, unique=True))
    return [(path, draw(st.one_of(JUNK, STRUCTURED.get(path, JUNK), NOT_A_FILE))) for path in chosen]


def apply(root: Path, changes) -> None:
    for path, change in changes:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        if change == "folder":
            target.mkdir()
        elif change == "broken-link":
            os.symlink("no-such-target", target)
        elif change != "missing":
            target.write_bytes(change)


DEVICES = {
    "pi": raspberry_pi_5, "jetson": jetson_orin_nano, "agx-orin": jetson_agx_orin, "xavier-jetpack4": jetson_xavier_nx_jetpack4,
    "x86": x86_laptop,
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # Hypothesis runs many examples per test: one folder for the module, a fresh tree per example.
    return tmp_path_factory.mktemp("devices")


@pytest.fixture(scope="module")
def tree_files(folder):
    return {name: files_of(make(folder / f"reference-{name}")) for name, make in DEVICES.items()}


def damaged_tree(folder: Path, device: str, changes) -> Path:
    root = Path(tempfile.mkdtemp(dir=folder))
    DEVICES[device](root)
    apply(root, changes)
    return root


# -- what every figure must be -------------------------------------------------------------------

def sane(value, low=-math.inf, high=math.inf) -> bool:
    return value is None or (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high)


def check_memory(memory: dict) -> None:
    assert all(sane(v, 0) for v in memory.values()), memory
    if memory["total_mb"] is not None and memory["available_mb"] is not None:
        assert memory["available_mb"] <= memory["total_mb"], memory
    if memory["swap_total_mb"] is not None and memory["swap_free_mb"] is not None:
        assert memory["swap_free_mb"] <= memory["swap_total_mb"], memory


def check_report(report: dict) -> None:
    json.dumps(report, allow_nan=False)  # plain, strict JSON: no NaN or infinity anywhere
    assert report["device"]["kind"] in KINDS
    assert all(sane(t, -40, 200) for t in report["temperatures_c"].values()), report["temperatures_c"]
    frequency = report["cpu_frequency"]
    assert all(sane(f, 1e-9) for f in frequency["per_core_mhz"]), frequency
    assert all(sane(frequency[k], 1e-9) for k in ("min_mhz", "max_mhz", "hardware_max_mhz", "mean_mhz")), frequency
    cpu = report["cpu"]
    assert all(sane(cpu[k], 1, 1 << 16) for k in ("cores_logical", "cores_physical")), cpu
    check_memory(report["memory"])
    throttle = report["throttle"]
    if throttle is not None and throttle["source"] in ("vcgencmd", "firmware"):
        assert set(throttle["active"]) | set(throttle["occurred"]) <= set(PI_FLAGS.values()), throttle
    jetson = report.get("jetson")
    if jetson is not None:
        assert sane(jetson["gpu_load_percent"], 0, 100), jetson
        assert sane(jetson["gpu_frequency_mhz"], 1e-9), jetson
        assert all(sane(p) for p in jetson["power_rails_mw"].values()), jetson


# -- the properties ------------------------------------------------------------------------------

@FAST
@given(data=st.data(), device=st.sampled_from(sorted(DEVICES)))
def test_a_damaged_device_tree_reports_sane_figures_or_not_available(folder, tree_files, data, device):
    root = damaged_tree(folder, device, data.draw(damage(tree_files[device])))
    check_report(device_report(root, runtime=False, vcgencmd=NO_TOOL, nvpmodel=NO_TOOL, use_jtop=False))
    kind = detect_device(root)
    assert kind.kind in KINDS
    for reader in default_readers(kind, root, vcgencmd=NO_TOOL, use_jtop=False):
        extra = dict(reader())
        assert all(sane(t, -40, 200) for t in extra.get("temperatures_c", {}).values()), extra
        assert sane(extra.get("gpu_load_percent"), 0, 100), extra
        assert all(sane(f, 1e-9) for f in extra.get("cpu_freq_mhz_per_core", ())), extra


@FAST
@given(data=st.data())
def test_memory_load_and_cpu_times_are_sane_whatever_proc_holds(folder, data):
    root = Path(tempfile.mkdtemp(dir=folder))
    changes = [(path, data.draw(st.one_of(STRUCTURED[path], JUNK, NOT_A_FILE))) for path in sorted(STRUCTURED)]
    changes.append(("sys/devices/system/cpu/online", data.draw(st.one_of(JUNK, NOT_A_FILE))))
    apply(root, changes)
    check_memory(read_memory(root).to_dict())
    load = read_load(root)
    assert sane(load.load_1m, 0) and sane(load.cores, 1, 1 << 16), load
    times = read_cpu_times(root)
    if times is not None:
        assert sane(times.busy_s, 0) and sane(times.total_s, 0) and times.busy_s <= times.total_s, times


@FAST
@given(data=st.data())
def test_a_cgroup_limit_is_a_positive_size_or_not_available(folder, data):
    root = Path(tempfile.mkdtemp(dir=folder))
    apply(root, [(path, data.draw(st.one_of(JUNK, NOT_A_FILE)))
                 for path in ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes")])
    assert sane(read_cgroup_memory_limit_mb(root), 1e-9)


@FAST
@given(load=JUNK, power=st.lists(st.tuples(JUNK, JUNK, JUNK), max_size=3))
def test_jetson_gpu_load_and_power_rails_are_sane(folder, load, power):
    root = Path(tempfile.mkdtemp(dir=folder))
    hwmon = root / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
    hwmon.mkdir(parents=True)
    for n, (label, millivolts, milliamps) in enumerate(power, start=1):
        (hwmon / f"in{n}_label").write_bytes(label)
        (hwmon / f"in{n}_input").write_bytes(millivolts)
        (hwmon / f"curr{n}_input").write_bytes(milliamps)
    (root / "sys/devices/gpu.0").mkdir(parents=True)
    (root / "sys/devices/gpu.0/load").write_bytes(load)
    assert sane(read_gpu_load_percent(root), 0, 100)
    assert all(isinstance(k, str) and sane(v) for k, v in read_power_rails(root).items())


@FAST
@given(word=JUNK)
def test_the_pi_firmware_word_gives_known_flags_or_not_available(folder, word):
    root = Path(tempfile.mkdtemp(dir=folder))
    path = root / "sys/devices/platform/soc/soc:firmware/get_throttled"
    path.parent.mkdir(parents=True)
    path.write_bytes(word)
    state = read_pi_throttle(root, vcgencmd=NO_TOOL)
    if state is not None:
        assert 0 <= int(state.raw, 16) <= 0xFFFFFFFF, state  # an unsigned 32-bit word, as the firmware answers
        assert set(state.active) | set(state.occurred) <= set(PI_FLAGS.values()), state


@FAST
@given(text=st.one_of(st.text(max_size=60), NUMBER_TEXT, NUMBER_TEXT.map(lambda t: f"throttled={t}\n")))
def test_tool_output_parsers_never_raise(text):
    word = parse_vcgencmd_output(text)
    assert word is None or 0 <= word <= 0xFFFFFFFF
    parse_tegra_release(text)
    parse_nvpmodel_query(text)


@FAST
@given(online=st.one_of(NUMBER_TEXT, st.text(max_size=30), st.lists(NUMBER_TEXT, max_size=4).map(",".join)))
def test_a_cpu_list_names_a_bounded_set_of_cpus(online):
    cpus = parse_cpu_list(online)
    assert len(cpus) <= 1 << 16 and len(set(cpus)) == len(cpus) and all(c >= 0 for c in cpus)


JTOP_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6))


@FAST
@given(stats=st.dictionaries(
    st.one_of(st.sampled_from(["GPU", "GPU1", "Temp CPU", "Temp gpu", "Temp tj", "Power TOT", "power cur", "nvp model"]), st.text(max_size=8)),
    JTOP_VALUES, max_size=8))
def test_jtop_stats_of_any_shape_give_sane_figures(stats):
    parsed = parse_jtop_stats(stats)
    json.dumps(parsed, allow_nan=False)
    assert sane(parsed.get("gpu_load_percent"), 0, 100) and sane(parsed.get("power_total_mw"), 0), parsed
    assert all(sane(t, -40, 200) for t in parsed.get("temperatures_c", {}).values()), parsed


# -- values the properties found read as figures before ------------------------------------------

BIG = "9" * 400  # an integer too large for a float


def short_id(value: str) -> str:
    value = value.strip().replace("\n", " ")
    return value if len(value) <= 24 else f"{value[:12]}..({len(value)} chars)"
JETSON_FILES = {
    "temp": "sys/class/thermal/thermal_zone0/temp",
    "freq": "sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq",
    "gpu": "sys/devices/platform/bus@0/17000000.gpu/load",
    "gpu_freq": "sys/class/devfreq/17000000.gpu/cur_freq",
    "volts": "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1/in1_input",
    "meminfo": "proc/meminfo",
    "status": "var/lib/nvpmodel/status",
    "online": "sys/devices/system/cpu/online",
}


@pytest.mark.parametrize(
    "file, content, figure, expected",
    [
        ("temp", BIG, lambda r: r["temperatures_c"].get("cpu-thermal"), None),
        ("freq", "0\n", lambda r: r["cpu_frequency"]["per_core_mhz"][0], None),  # a driver that cannot read its clock
        ("freq", BIG, lambda r: r["cpu_frequency"]["per_core_mhz"][0], None),
        ("gpu", "-1\n", lambda r: r["jetson"]["gpu_load_percent"], None),
        ("gpu", "1500\n", lambda r: r["jetson"]["gpu_load_percent"], None),  # tenths of a percent: at most 1000
        ("gpu_freq", "0\n", lambda r: r["jetson"]["gpu_frequency_mhz"], None),
        ("gpu_freq", BIG, lambda r: r["jetson"]["gpu_frequency_mhz"], None),
        ("volts", BIG, lambda r: r["jetson"]["power_rails_mw"].get("VDD_IN"), None),
        ("meminfo", "MemTotal: -52 kB\nMemAvailable: 40 kB\n", lambda r: r["memory"]["total_mb"], None),
        ("meminfo", f"MemTotal: {BIG} kB\n", lambda r: r["memory"]["total_mb"], None),
        ("meminfo", "MemTotal: 1000 kB\nMemAvailable: 2000 kB\nSwapTotal: 0 kB\nSwapFree: 8 kB\n",
         lambda r: (r["memory"]["available_mb"], r["memory"]["swap_free_mb"]), (None, None)),
        ("status", "pmode:" + "9" * 5000, lambda r: r["jetson"]["power_mode"], None),
        ("online", "0-4294967295\n", lambda r: r["cpu"]["cores_logical"], 6),  # the cpuinfo blocks then
    ],
    ids=lambda value: short_id(value) if isinstance(value, str) else "",
)
def test_impossible_values_in_a_jetson_tree_read_as_not_available(tmp_path, file, content, figure, expected):
    root = jetson_orin_nano(tmp_path / "orin")
    (root / JETSON_FILES[file]).write_text(content)
    report = device_report(root, runtime=False, vcgencmd=NO_TOOL, nvpmodel=NO_TOOL, use_jtop=False)
    assert figure(report) == expected
    json.dumps(report, allow_nan=False)


@pytest.mark.parametrize(
    "path, content",
    [
        ("proc/loadavg", "nan 0.20 0.10 1/100 42\n"),
        ("proc/loadavg", "-1.00 0.20 0.10 1/100 42\n"),
        ("proc/loadavg", "inf 0.20 0.10 1/100 42\n"),
        ("proc/stat", "cpu  inf 0 10 100 0 0 0 0 0 0\n"),
        ("proc/stat", "cpu  -500 0 10 100 0 0 0 0 0 0\n"),
        ("sys/fs/cgroup/memory.max", "0\n"),
        ("sys/fs/cgroup/memory.max", "-4096\n"),
        ("sys/devices/platform/soc/soc:firmware/get_throttled", "-5\n"),
        ("sys/devices/platform/soc/soc:firmware/get_throttled", "1ffffffff\n"),  # wider than the firmware's 32 bits
    ],
    ids=short_id,
)
def test_impossible_values_in_proc_and_sys_read_as_not_available(tmp_path, path, content):
    apply(tmp_path, [(path, content.encode())])
    assert read_load(tmp_path).load_1m is None
    assert read_cpu_times(tmp_path) is None
    assert read_cgroup_memory_limit_mb(tmp_path) is None
    assert read_pi_throttle(tmp_path, vcgencmd=NO_TOOL) is None


def test_tool_output_and_jtop_figures_out_of_range_are_dropped():
    assert parse_vcgencmd_output("throttled=0x1ffffffff\n") is None
    assert parse_vcgencmd_output("throttled=" + "9" * 5000) is None
    assert parse_vcgencmd_output("throttled=0x50005\n") == 0x50005
    assert parse_nvpmodel_query("NV Power Mode: MAXN\n" + "9" * 5000).mode_id is None
    assert parse_jtop_stats({"GPU": -1, "Power TOT": float("nan"), "Temp cpu": 45.5}) == {"temperatures_c": {"cpu": 45.5}}
    assert parse_jtop_stats({"GPU": 10**400, "power cur": -3}) == {}
    assert parse_cpu_list("0-4294967295") == [] and parse_cpu_list("0-3,2") == [0, 1, 2, 3] and parse_cpu_list("3-1") == []

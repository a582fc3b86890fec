"""The cores a job may compute on: the online ones, fewer under CPU affinity or a container's CPU quota."""

from __future__ import annotations

import os

import pytest

import hardware.load as load
from audit.threads import resolve_threads
from hardware.sysfs import SYSTEM_ROOT
from tests.fake_devices import write_tree

EIGHT = {"/sys/devices/system/cpu/online": "0-7\n"}


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"/sys/fs/cgroup/cpu.max": "200000 100000\n"}, 2.0),  # docker --cpus=2, cgroup v2
        ({"/sys/fs/cgroup/cpu.max": "150000 100000\n"}, 1.5),
        ({"/sys/fs/cgroup/cpu.max": "max 100000\n"}, None),  # no limit
        ({"/sys/fs/cgroup/cpu.max": "50000\n"}, 0.5),  # the default period
        ({"/sys/fs/cgroup/cpu.max": "0 100000\n"}, None),  # garbled
        ({"/sys/fs/cgroup/cpu.max": "ten 100000\n"}, None),
        ({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "300000\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, 3.0),  # cgroup v1
        ({"/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "25000\n"}, 2.0),
        ({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1: no limit
        ({}, None),
    ],
)
def test_a_containers_cpu_quota_is_read_in_cpus(tmp_path, files, quota):
    assert load.read_cpu_quota(write_tree(tmp_path / "dev", files)) == quota


@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [(None, 8), ("max 100000", 8), ("200000 100000", 2), ("150000 100000", 1), ("50000 100000", 1), ("1600000 100000", 8)],
)
def test_usable_cores_are_the_online_ones_capped_by_the_quota(tmp_path, cpu_max, cores):
    files = dict(EIGHT, **({"/sys/fs/cgroup/cpu.max": cpu_max} if cpu_max else {}))
    assert load.read_usable_cores(write_tree(tmp_path / "dev", files)) == cores


def test_usable_cores_follow_the_affinity(monkeypatch):
    online = load.read_cores_online()
    if not online or online < 2 or not hasattr(os, "sched_getaffinity"):
        pytest.skip("needs two CPUs and sched_getaffinity")
    monkeypatch.setattr(load, "read_cpu_quota", lambda root=SYSTEM_ROOT: None)
    monkeypatch.setattr(load.os, "sched_getaffinity", lambda pid: {0})  # taskset -c 0
    assert load.allowed_cpus() == frozenset({0})
    assert load.read_usable_cores() == 1
    assert resolve_threads(2).cores == 1  # a count given is kept; the cores it is measured against are those allowed
    read = []
    monkeypatch.setattr(load, "read_cpu_times", lambda root=SYSTEM_ROOT, cpus=None: read.append(cpus))
    assert load.core_share(0.0) == (1, None) and read == [frozenset({0})]  # others' load on CPU 0 alone
    monkeypatch.setattr(load.os, "sched_getaffinity", lambda pid: set(range(online)))
    assert load.allowed_cpus() is None and load.read_usable_cores() == online


def test_cpu_times_of_the_cpus_allowed_sum_their_own_lines(tmp_path):
    root = write_tree(tmp_path / "dev", {"/proc/stat": (
        "cpu  300 0 0 900 0 0 0 0\n"
        "cpu0 100 0 0 300 0 0 0 0\n"
        "cpu1 150 0 0 250 0 0 0 0\n"
        "cpu2 50 0 0 350 0 0 0 0\n"
        "intr 1 2 3\n"
    )})
    hz = os.sysconf("SC_CLK_TCK")
    assert load.read_cpu_times(root, frozenset({0, 2})) == load.CpuTimes(150 / hz, 800 / hz)
    assert load.read_cpu_times(root) == load.CpuTimes(300 / hz, 1200 / hz)
    assert load.read_cpu_times(root, frozenset({0, 5})) is None  # a CPU without its line: not available


def test_under_a_quota_other_processes_first_take_the_cores_it_leaves_out(monkeypatch, tmp_path):
    root = write_tree(tmp_path / "dev", dict(EIGHT, **{"/sys/fs/cgroup/cpu.max": "200000 100000\n"}))
    busy = iter([3.0, 7.0, 5.5])
    monkeypatch.setattr(load, "others_busy_cores", lambda interval_s=0.25, root=SYSTEM_ROOT, cpus=None: next(busy))
    # 8 cores, a quota of 2: others keeping 3 busy leave the quota's 2 free, 7 take one of them.
    assert load.core_share(0.0, root) == (2, 0.0)
    assert load.core_share(0.0, root) == (2, 1.0)
    no_quota = write_tree(tmp_path / "plain", EIGHT)
    assert load.core_share(0.0, no_quota) == (8, 5.5)

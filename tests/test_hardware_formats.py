"""Hardware readers on samples in the formats real kernels and boards write, where a reader once
took one device's value for another's meaning."""

from __future__ import annotations

import pytest

from hardware.memory import read_cgroup_memory_limit_mb
from tests.fake_devices import write_tree


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

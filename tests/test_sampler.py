"""The resource sampler records snapshots in the background and summarises a job; freed heap
is handed back to the system after a model loads."""

import itertools
import platform
import threading
import time

import psutil
import pytest

from hardware.memory import MB, release_free_heap, reset_peak_rss
from hardware.sampler import ResourceSampler

WAIT_S = 60  # how long a test waits for a sampler thread that should go on: far longer than it needs


def test_sampler_records_and_summarises():
    with ResourceSampler(interval_s=0.02, readers=[lambda: {"temperatures_c": {"cpu": 51.0}}]) as sampler:
        block = bytearray(64 * 1024 * 1024)  # touch 64 MB so the peak shows it
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(0.2)
        assert sampler.latest() is not None
    summary = sampler.summary()
    assert summary["samples"] >= 5
    assert summary["rss_peak_mb"] >= summary["rss_max_mb"] - 1
    assert summary["rss_peak_mb"] >= 64
    assert summary["temperature_max_c"] == 51.0
    assert 0 <= summary["sampler_overhead_percent"] < 50
    snaps = sampler.snapshots()
    assert [s.t_s for s in snaps] == sorted(s.t_s for s in snaps)
    del block


def test_a_broken_reader_does_not_stop_sampling():
    def broken():
        raise OSError("sensor gone")

    with ResourceSampler(interval_s=0.01, readers=[broken]) as sampler:
        time.sleep(0.05)
    assert sampler.summary()["samples"] >= 2


def test_a_failing_system_read_skips_a_sample_and_the_sampler_goes_on(monkeypatch):
    real = psutil.virtual_memory
    calls = itertools.count()

    def out_of_file_descriptors():
        if next(calls) in (1, 2):  # the thread's first two samples; start()'s is the call before
            raise OSError(24, "Too many open files")
        return real()

    monkeypatch.setattr(psutil, "virtual_memory", out_of_file_descriptors)
    samples = itertools.count(1)
    third = threading.Event()

    def reader():
        if next(samples) == 3:
            third.set()
        return {}

    with ResourceSampler(interval_s=0.01, readers=[reader]):
        assert third.wait(WAIT_S), "the sampler thread stopped at the first failed read"


def test_a_sampler_whose_last_sample_fails_still_stops_and_closes_its_readers(monkeypatch):
    class Reader:
        closed = False

        def __call__(self):
            return {}

        def close(self):
            self.closed = True

    reader = Reader()
    sampler = ResourceSampler(interval_s=3600, readers=[reader]).start()

    def fails():
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(psutil, "virtual_memory", fails)
    sampler.stop()
    assert reader.closed and sampler.summary()["samples"] == 1


def test_each_snapshot_gives_the_cores_busy_share_since_the_one_before_whichever_thread_takes_it(monkeypatch):
    kind = type(psutil.cpu_times())
    ticks = [kind(**dict.fromkeys(kind._fields, 100.0)), kind(**dict.fromkeys(kind._fields, 100.0))]
    monkeypatch.setattr(psutil, "cpu_times", lambda percpu=False: list(ticks) if percpu else ticks[0])
    # Started here, stopped from another thread, as the app starts and stops its device feed.
    sampler = ResourceSampler(interval_s=3600).start()
    ticks[0] = ticks[0]._replace(user=ticks[0].user + 1.0, idle=ticks[0].idle + 1.0)  # half busy
    ticks[1] = ticks[1]._replace(system=ticks[1].system + 1.0, iowait=ticks[1].iowait + 3.0)  # a quarter
    stopping = threading.Thread(target=sampler.stop)
    stopping.start()
    stopping.join()
    assert [s.cpu_percent for s in sampler.snapshots()] == [(0.0, 0.0), (50.0, 25.0)]
    assert sampler.summary()["cpu_percent_mean_pct"] == 37.5


@pytest.mark.skipif(not reset_peak_rss(), reason="this kernel's RSS peak cannot be reset")
def test_a_sampler_inside_another_leaves_the_outer_peak_whole():
    block = bytearray(128 * MB)
    for i in range(0, len(block), 4096):  # touch it, so it is resident
        block[i] = 1
    outer = ResourceSampler(interval_s=3600).start()
    held_mb = outer.snapshots()[0].rss_mb
    del block
    release_free_heap()
    # An inner sampler resets the kernel's peak on starting, as a prune or a profile does inside
    # a run's sampled step: the outer peak was the kernel's since then only.
    with ResourceSampler(interval_s=3600):
        pass
    outer.stop()
    assert outer.summary()["rss_peak_mb"] >= round(held_mb, 2)  # the summary gives MB to 2 places


def spike_mb() -> float:
    """Hold 128 MB resident for a moment and let it go; the RSS it reached, in MB."""
    block = bytearray(128 * MB)
    for i in range(0, len(block), 4096):  # touch it, so it is resident
        block[i] = 1
    held_mb = psutil.Process().memory_info().rss / MB
    del block
    release_free_heap()
    return held_mb


@pytest.mark.skipif(not reset_peak_rss(), reason="this kernel's RSS peak cannot be reset")
def test_a_peak_between_snapshots_outlives_a_sampler_started_inside():
    # The outer sampler's snapshots never see the block resident: only the kernel's high-water
    # mark does, and an inner sampler resets that mark (keeping what it cleared).
    outer = ResourceSampler(interval_s=3600).start()
    held_mb = spike_mb()
    outer._sample()
    assert max(s.rss_mb for s in outer.snapshots()) < held_mb - 64
    with ResourceSampler(interval_s=3600):
        pass
    outer.stop()
    assert outer.summary()["rss_peak_mb"] > held_mb - 16  # the kernel's counters lag by a few pages


@pytest.mark.skipif(not reset_peak_rss(), reason="this kernel's RSS peak cannot be reset")
def test_a_peak_just_before_a_reset_inside_counts_without_a_snapshot_after_it():
    # The mark a reset clears is kept by the reset itself: no snapshot has to be taken between
    # the spike and a prune's or an inner sampler's reset.
    outer = ResourceSampler(interval_s=3600).start()
    held_mb = spike_mb()
    reset_peak_rss()
    outer.stop()
    assert max(s.rss_mb for s in outer.snapshots()) < held_mb - 64
    assert outer.summary()["rss_peak_mb"] > held_mb - 16


def test_a_snapshot_can_not_be_changed_nor_changes_with_its_readers_figures():
    temperatures = {"cpu": 50.0}  # a reader that keeps one dict and updates it in place
    with ResourceSampler(interval_s=3600, readers=[lambda: {"temperatures_c": temperatures, "rails": [1, 2]}]) as sampler:
        temperatures["cpu"] = 90.0
    first, last = sampler.snapshots()
    assert first.extra["temperatures_c"] == {"cpu": 50.0} and last.extra["temperatures_c"] == {"cpu": 90.0}
    assert first.extra["rails"] == (1, 2)
    with pytest.raises(TypeError):
        first.extra["throttled"] = True
    with pytest.raises(TypeError):
        first.extra["temperatures_c"]["cpu"] = 20.0
    assert sampler.summary()["temperature_max_c"] == 90.0


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        ResourceSampler(interval_s=0)


def test_sampler_records_this_process_cpu_and_the_system_load():
    with ResourceSampler(interval_s=0.05) as sampler:
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # keep this process busy
            sum(range(1000))
    summary = sampler.summary()
    # Busy for the whole job: whatever else runs on the machine, this process used CPU.
    assert summary["process_cpu_max_pct"] > 0
    assert summary["load_max_1m"] >= 0
    assert all(s.process_cpu_percent is not None for s in sampler.snapshots())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_heap_is_returned_where_the_c_library_can():
    import ctypes

    assert release_free_heap() is True
    assert ctypes.CDLL(None).malloc_trim(0) in (0, 1)  # the call the helper makes, as glibc answers it


def test_loading_a_model_returns_the_loads_freed_heap(tiny_llama, monkeypatch):
    from audit.models import loader
    from audit.models.loader import load_model
    from audit.progress import drive

    calls = []
    monkeypatch.setattr(loader, "release_free_heap", lambda: calls.append(1) or True)
    drive(load_model(str(tiny_llama)))
    assert calls == [1]


def test_the_peak_names_the_figure_it_was_taken_from(monkeypatch):
    import hardware.sampler as sampler_module

    with ResourceSampler(interval_s=3600) as sampler:
        pass
    sampled = max(s.rss_mb for s in sampler.snapshots())
    monkeypatch.setattr(sampler, "_peak_reset", True)
    monkeypatch.setattr(sampler_module, "peak_rss_cleared_since", lambda resets: 0)
    monkeypatch.setattr(sampler_module, "peak_rss_bytes", lambda: int((sampled - 1) * MB))  # trails the sample
    assert (sampler.summary()["rss_peak_mb"], sampler.summary()["rss_peak_source"]) == (round(sampled, 2), "sampled")
    monkeypatch.setattr(sampler_module, "peak_rss_bytes", lambda: int((sampled + 10) * MB))
    assert sampler.summary()["rss_peak_source"] == "kernel" and sampler.summary()["rss_peak_mb"] >= round(sampled + 9.99, 2)
    monkeypatch.setattr(sampler, "_peak_reset", False)  # no kernel figure
    assert sampler.summary()["rss_peak_source"] == "sampled"

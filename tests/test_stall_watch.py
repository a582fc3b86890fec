"""A job on the command line that makes no progress for a minute says so, with the device's load,
in the log of --progress lines and on the bar: a starved job no longer stands still without a word."""

from __future__ import annotations

import threading

import pytest

from audit.progress import Progress, StallWatch
from hardware.load import SystemLoad
from tui.cli import common


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch_at(clock, load=SystemLoad(3.9, 2), stall_s=60.0):
    said: list[tuple[str, str]] = []
    watch = StallWatch(lambda stage, notice: said.append((stage, notice)), load=lambda: load, clock=clock, stall_s=stall_s)
    return watch, said


def test_silence_is_said_once_per_minute_and_progress_starts_it_again():
    clock = Clock()
    watch, said = watch_at(clock)
    watch.saw(Progress("probe", 3, 10))
    clock.now += 59.5
    watch.check()
    assert said == []
    clock.now += 1.0
    watch.check()
    watch.check()  # said once for this minute, however often it looks
    assert said == [("probe", "no progress for 60 s: the device is busy (load 3.9 on 2 cores)")]
    clock.now += 60.0
    watch.check()
    assert said[-1] == ("probe", "no progress for 2 min 0 s: the device is busy (load 3.9 on 2 cores)") and len(said) == 2
    watch.saw(Progress("probe", 4, 10))
    clock.now += 30.0
    watch.check()
    assert len(said) == 2


def test_a_free_device_is_not_blamed_and_an_unknown_load_is_left_out():
    clock = Clock()
    watch, said = watch_at(clock, SystemLoad(0.4, 2))
    clock.now += 75.0
    watch.check()
    assert said == [("", "no progress for 75 s (load 0.4 on 2 cores)")]
    watch, said = watch_at(clock, SystemLoad(None, None))
    clock.now += 61.0
    watch.check()
    assert said == [("", "no progress for 61 s")]


def silent_job(said: threading.Event):
    """A job that reports once, then stays silent until the watch has spoken (10 s at most)."""
    yield Progress("probe", 1, 4, "item 1 of 4")
    said.wait(10)
    yield Progress("probe", 4, 4, "item 4 of 4")
    return "done"


@pytest.fixture()
def fast_watch(monkeypatch):
    """The command line's watch, looking every 10 ms and calling 50 ms of silence a stall; the
    event is set once it has said something."""
    said = threading.Event()

    class Fast(StallWatch):
        def __init__(self, say, **kwargs):
            def told(stage, notice):
                say(stage, notice)
                said.set()

            super().__init__(told, load=lambda: SystemLoad(3.9, 2), every_s=0.01, stall_s=0.05)

    monkeypatch.setattr(common, "StallWatch", Fast)
    return said


def test_the_log_of_progress_lines_says_a_silent_step(fast_watch, monkeypatch, capsys):
    monkeypatch.setattr(common, "progress_style", "lines")
    assert common.run_job(silent_job(fast_watch)) == "done"
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "probe: item 1 of 4" and lines[-1] == "probe: item 4 of 4"
    assert lines[1].startswith("probe: no progress for 0 s: the device is busy (load 3.9 on 2 cores)")


def test_no_progress_output_stays_silent_whatever_the_job(fast_watch, monkeypatch, capsys):
    monkeypatch.setattr(common, "progress_style", "none")
    fast_watch.set()  # nothing would ever set it: the job must not wait
    assert common.run_job(silent_job(fast_watch)) == "done"
    assert capsys.readouterr().err == ""


def test_the_bar_says_a_silent_step(fast_watch, monkeypatch):
    monkeypatch.setattr(common, "progress_style", "bar")
    messages: list[str] = []
    real_update = common.Progress.update

    def update(self, task, **fields):
        if "message" in fields:
            messages.append(fields["message"])
        return real_update(self, task, **fields)

    monkeypatch.setattr(common.Progress, "update", update)
    assert common.run_job(silent_job(fast_watch)) == "done"
    assert messages[0] == "item 1 of 4" and messages[-1] == "item 4 of 4"
    assert any(m.startswith("no progress for") and "the device is busy (load 3.9 on 2 cores)" in m for m in messages[1:-1])

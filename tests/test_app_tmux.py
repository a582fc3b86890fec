"""The real app in a real terminal (tmux, 80x24) on the default model: it opens and loads the
model, runs a short probe typed in with the keyboard, and shows the comparison."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit.reports.render import fmt, summary_rows
from audit.results import build_report
from audit.store import ResultsStore
from tests.conftest import ROOT

pytestmark = pytest.mark.real_model


def tmux_or_skip() -> str:
    path = shutil.which("tmux")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is not installed (make test installs Debian's package)")
        pytest.skip("tmux is not installed")
    return path


class Terminal:
    """A tmux server of its own (its socket in tmp_path) running one command in one pane."""

    def __init__(self, tmux: str, socket: Path, command: str, width: int = 80, height: int = 24) -> None:
        self.base = [tmux, "-S", str(socket)]
        # The pane stays after the app exits, so what it printed last can still be read.
        subprocess.run(
            [*self.base, "new-session", "-d", "-s", "app", "-x", str(width), "-y", str(height), command,
             ";", "set-option", "-t", "app", "remain-on-exit", "on"],
            check=True,
            timeout=30,
        )

    def keys(self, *keys: str) -> None:
        for key in keys:
            subprocess.run([*self.base, "send-keys", "-t", "app", key], check=True, timeout=30)
            time.sleep(0.15)

    def screen(self) -> str:
        done = subprocess.run([*self.base, "capture-pane", "-p", "-t", "app"], capture_output=True, text=True, timeout=30)
        return done.stdout

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.screen()
            if text in shown:
                return shown
            time.sleep(0.5)
        raise AssertionError(f"{text!r} never appeared; the screen shows:\n{self.screen()}")

    def running(self) -> bool:
        done = subprocess.run([*self.base, "display-message", "-p", "-t", "app", "#{pane_dead}"], capture_output=True, text=True, timeout=30)
        return done.stdout.strip() == "0"

    def quit(self, *keys: str) -> None:
        """Press `keys`, wait for the app to exit, and check it left no traceback behind."""
        self.keys(*keys)
        deadline = time.monotonic() + 60
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not self.running(), "the app did not quit"
        assert "Traceback" not in self.screen()

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30)


def test_the_app_opens_loads_probes_and_compares_in_tmux(tmp_path):
    tmux = tmux_or_skip()
    store = tmp_path / "results.db"
    command = f"cd {ROOT} && env PYTHONPATH={ROOT} TERM=xterm-256color {sys.executable} -m tui.cli --store {store}"
    terminal = Terminal(tmux, tmp_path / "tmux.sock", command)
    try:
        terminal.wait_for("Loaded model: smollm2-135m", timeout=300)
        terminal.keys("3")
        terminal.wait_for("Probe for bias", timeout=30)
        # From the model list (focused first) to Limit, one item per category; then neither
        # perplexity nor the latency profile, to keep the run short.
        terminal.keys("Tab", "Tab", "Tab", "Tab", "1", "Tab", "Tab", "Tab", "Tab", "Space", "Tab", "Space")
        shown = terminal.screen()
        assert "Limit" in shown and " 1 " in shown.split("Limit", 1)[1][:20]
        terminal.keys("C-r")
        terminal.wait_for("stored: baseline · 5 items", timeout=300)
        terminal.keys("4")
        shown = terminal.wait_for("Run 1 (session)", timeout=30)
        assert "verdict" in shown and "baseline" in shown
        terminal.quit("q")
    finally:
        terminal.close()
    # What the terminal showed is what the store holds.
    with ResultsStore(store) as db:
        report = build_report(db, 1)
        kinds = [s["kind"] for s in db.steps(1)]
    assert kinds == ["fingerprint", "probe:builtin"] and report["run"]["status"] == "finished"
    baseline = summary_rows(report)[0]
    srs_row = next(line for line in shown.splitlines() if line.strip().startswith("SRS"))
    assert fmt(baseline["srs"]["value"], 3) in srs_row

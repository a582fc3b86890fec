"""A field technician opens a stored audit whose gate fails, in a real 80x24 terminal (tmux), and
reads why it may not ship: the verdict in words, the rule that fails, and the key of findings."""

from __future__ import annotations

import sys
import time

from tests.app_support import build_audit_store
from tests.conftest import ROOT
from tests.test_app_tmux import Terminal, tmux_or_skip


def test_a_stored_failing_run_says_do_not_ship_and_the_failing_rule_at_80x24(tmp_path, tiny_llama):
    tmux = tmux_or_skip()
    store = tmp_path / "results.db"
    build_audit_store(store)
    command = (
        f"cd {tmp_path} && env PYTHONPATH={ROOT} TERM=xterm-256color EDGE_AUDIT_CACHE={tmp_path / 'cache'} "
        f"{sys.executable} -m tui.cli --model {tiny_llama} --store {store}"
    )
    terminal = Terminal(tmux, tmp_path / "tmux.sock", command, width=80, height=24)
    try:
        terminal.wait_for(f"Loaded model: {tiny_llama.name}", timeout=120)
        terminal.keys("5")
        terminal.wait_for("default-audit", timeout=30)
        shown = terminal.screen()
        run_row = next(line for line in shown.splitlines() if "default-audit" in line)
        assert "✖ do not ship" in run_row  # History says what Compare says
        terminal.keys("Enter")
        shown = terminal.wait_for("Run 1 (history", timeout=30)
        assert "DO NOT SHIP" in shown
        assert "perplexity +60.2% > 50%" in shown and "magnitude-50" in shown
        assert all(len(line.rstrip()) <= 80 for line in shown.splitlines())
        # The key: every finding in words, with its bound and its limit.
        terminal.keys("v")
        shown = terminal.wait_for("why the verdict", timeout=30)
        assert "MAY SHIP" in shown and "disambiguated accuracy 0.818 (at least 0.57), must be above 0.333" in shown
        failing = "perplexity rose 60.2% (at least 58.7%), limit 50%"
        for _ in range(8):
            if failing in terminal.screen():
                break
            terminal.keys("PageDown")
            time.sleep(0.5)
        terminal.wait_for(failing, timeout=10)
        terminal.quit("Escape", "q")
    finally:
        terminal.close()

"""How long edge-audit takes to start: each light command's wall time and the app's first
paint, beside `python -c pass` and `python -c "import torch"` measured in the same run.

    python benchmarks/startup.py [--repeats 5]

Each figure is the median of --repeats runs, taken in turns so that other load on the machine
hits every command alike. The app's first paint is the time from starting it in a tmux pane
(120x40) until its navigation bar is on the screen. Targets: under 1 s for `--version` and
`runs list`, under 2 s to the app's first paint.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.store import ResultsStore  # noqa: E402

PAINT_MARKER = "1 Models"
TARGETS_S = {"edge-audit --version": 1.0, "edge-audit runs list": 1.0, "app first paint": 2.0}


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")
    return took


def first_paint(tmux: str, folder: Path, store: Path) -> float:
    """Seconds from launching the app in a fresh tmux server until its navigation bar shows."""
    socket = folder / "tmux.sock"
    base = [tmux, "-S", str(socket)]
    command = f"cd {ROOT} && env PYTHONPATH={ROOT} TERM=xterm-256color {sys.executable} -m tui.cli --store {store}"
    started = time.perf_counter()
    subprocess.run([*base, "new-session", "-d", "-s", "app", "-x", "120", "-y", "40", command], check=True, timeout=30)
    try:
        while time.perf_counter() - started < 120:
            shown = subprocess.run([*base, "capture-pane", "-p", "-t", "app"], capture_output=True, text=True, timeout=30).stdout
            if PAINT_MARKER in shown:
                return time.perf_counter() - started
            time.sleep(0.02)
        raise SystemExit(f"the app showed no {PAINT_MARKER!r} within 120 s")
    finally:
        subprocess.run([*base, "kill-server"], capture_output=True, timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    python = sys.executable
    cli = [python, "-m", "tui.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store = folder / "results.db"
        ResultsStore(store).close()
        commands = {
            "python -c pass": [python, "-c", "pass"],
            'python -c "import torch"': [python, "-c", "import torch"],
            "edge-audit --version": [*cli, "--version"],
            "edge-audit device --json": [*cli, "device", "--json"],
            "edge-audit runs list": [*cli, "runs", "list", "--store", str(store)],
            "edge-audit --help": [*cli, "--help"],
        }
        tmux = shutil.which("tmux")
        times: dict[str, list[float]] = {name: [] for name in commands}
        if tmux:
            times["app first paint"] = []
        for _ in range(args.repeats):
            for name, command in commands.items():
                times[name].append(timed(command))
            if tmux:
                times["app first paint"].append(first_paint(tmux, folder, store))
    baseline = statistics.median(times["python -c pass"])
    torch = statistics.median(times['python -c "import torch"'])
    print(f"{'command':<28} {'median s':>9} {'min s':>7} {'x python':>9} {'x import torch':>15}  target")
    for name, values in times.items():
        median = statistics.median(values)
        target = TARGETS_S.get(name)
        verdict = "" if target is None else f"< {target:g} s: {'met' if median < target else 'MISSED'}"
        print(f"{name:<28} {median:>9.3f} {min(values):>7.3f} {median / baseline:>9.1f} {median / torch:>15.2f}  {verdict}")
    if not tmux:
        print("app first paint: not measured (tmux is not installed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

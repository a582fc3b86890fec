"""What fingerprinting a model folder costs: seconds, MB/s and memory, beside loading the same
model, each in a fresh process.

    python benchmarks/fingerprint.py [--model FOLDER] [--compressed FOLDER] [--repeats 3]

--model defaults to the built-in model's converted folder. For a pruned folder, its compressed
sparse copy (`FOLDER/compressed`, or --compressed) is measured too: its fingerprint must equal
the dense folder's. Memory is the peak of the process's anonymous resident memory (RssAnon, sampled
every 5 ms) over its value before the work, so pages of the weights file mapped and given
back count as they are held; loading the model is the comparison. Figures are medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, threading, time
from pathlib import Path

def rss_anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0

what, folder = sys.argv[1], sys.argv[2]
from audit.progress import drive
if what == "fingerprint":
    from audit.fingerprint import fingerprint_folder
    job = lambda: drive(fingerprint_folder(Path(folder)))
else:
    import torch, transformers  # imported before the baseline reading, as the profile does
    from audit.models import load_model
    job = lambda: drive(load_model(folder))
peak = [0.0]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss_anon_mb())
        time.sleep(0.005)
before = rss_anon_mb()
thread = threading.Thread(target=sample, daemon=True)
thread.start()
started = time.perf_counter()
result = job()
seconds = time.perf_counter() - started
stop.set(); thread.join()
peak[0] = max(peak[0], rss_anon_mb())
digest = result.digest if what == "fingerprint" else None
print(json.dumps({"seconds": seconds, "anon_mb": peak[0] - before, "digest": digest}))
"""


def measure(what: str, folder: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, what, str(folder)], capture_output=True, text=True, cwd=ROOT, timeout=1200)
    if done.returncode != 0:
        raise SystemExit(f"{what} {folder} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def weights_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a model folder (default: the built-in model's)")
    parser.add_argument("--compressed", type=Path, help="the compressed copy of --model (default: MODEL/compressed if there)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.model is None:
        from audit.models import prepare_alias
        from audit.progress import drive

        args.model = drive(prepare_alias("smollm2-135m"))
    if args.compressed is None and (args.model / "compressed" / "config.json").is_file():
        args.compressed = args.model / "compressed"
    folders = [("model", args.model)] + ([("compressed copy", args.compressed)] if args.compressed else [])
    print(f"{'folder':<16} {'weights MB':>10} {'fingerprint s':>13} {'MB/s':>7} {'fp anon MB':>10} {'load s':>7} {'load anon MB':>12}  digest")
    digests = set()
    for label, folder in folders:
        runs = [measure("fingerprint", folder) for _ in range(args.repeats)]
        loads = [measure("load", folder) for _ in range(args.repeats)]
        seconds = statistics.median(r["seconds"] for r in runs)
        anon = statistics.median(r["anon_mb"] for r in runs)
        load_s = statistics.median(r["seconds"] for r in loads)
        load_anon = statistics.median(r["anon_mb"] for r in loads)
        size = weights_mb(folder)
        digests |= {r["digest"] for r in runs}
        print(f"{label:<16} {size:>10.1f} {seconds:>13.2f} {size / seconds:>7.0f} {anon:>10.1f} {load_s:>7.2f} {load_anon:>12.1f}  {runs[0]['digest'][:12]}")
        print(f"{'':<16} fingerprint memory / weights on disk: {anon / size:.2f}; / loading the model: {anon / max(load_anon, 1e-9):.2f}")
    if args.compressed:
        print("the model and its compressed copy have " + ("one fingerprint" if len(digests) == 1 else "DIFFERENT fingerprints"))


if __name__ == "__main__":
    main()

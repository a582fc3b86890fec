"""Prune the default model with every method (50% unstructured, and wanda at 2:4), quantize it
with every scheme, and print what each variant costs and saves. Figures, not assertions.

Each run is the real command line in a fresh process, so peak RSS is that of one command.
Usage: python benchmarks/prune.py [--model M] [--out-root DIR] [--methods ...] [--no-quantize]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRUNE_RUNS = [
    ("magnitude", "unstructured"),
    ("random", "unstructured"),
    ("wanda", "unstructured"),
    ("sparsegpt", "unstructured"),
    ("wanda", "2:4"),
]
SCHEMES = ("int8-dynamic", "onnx-int8", "onnx-int4")


def cli(*args: str) -> dict:
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "tui.cli", *args, "--json"], capture_output=True, text=True, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"edge-audit {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    data = json.loads(result.stdout)
    data["wall_seconds"] = round(time.perf_counter() - started, 1)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out-root", type=Path, default=None, help="keep the variants here (default: a temporary folder)")
    parser.add_argument("--methods", nargs="*", default=None, help="subset of runs, e.g. wanda sparsegpt wanda:2:4")
    parser.add_argument("--no-quantize", action="store_true")
    parser.add_argument("--results", type=Path, default=None, help="also write every result as JSON lines here")
    args = parser.parse_args()

    root = args.out_root or Path(tempfile.mkdtemp(prefix="edge-audit-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    runs = PRUNE_RUNS
    if args.methods:
        wanted = set(args.methods)
        runs = [r for r in runs if r[0] in wanted or f"{r[0]}:{r[1]}" in wanted]
    results = []
    for method, pattern in runs:
        out = root / f"{method}-{pattern.replace(':', 'of')}"
        print(f"pruning: {method} {pattern} ...", file=sys.stderr, flush=True)
        data = cli("prune", "--model", args.model, "--method", method, "--pattern", pattern, "--out", str(out), "--force")
        results.append({"kind": "prune", **data})
        print(f"  done in {data['wall_seconds']} s", file=sys.stderr, flush=True)

    print()
    print(f"Pruning {args.model} (default calibration: 32 samples x 512 tokens, seed 0)")
    header = f"{'method':<10} {'pattern':<12} {'sparsity':>8} {'ppl before':>10} {'ppl after':>10} {'prune s':>8} {'RSS peak':>9} {'RSS prune':>9} {'-baseline':>9} {'target':>7} {'dense MB':>9} {'sparse MB':>9} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for r in (r for r in results if r["kind"] == "prune"):
        target = 1.5 * r["weights_mb_float32"] + r["calibration_activations_mb"]
        dense, comp = r["size_on_disk_mb"]["dense"], r["size_on_disk_mb"]["compressed"]
        print(
            f"{r['method']:<10} {r['pattern']:<12} {r['actual_sparsity']:>8.4f} {r['perplexity_before']:>10.3f} {r['perplexity_after']:>10.3f} "
            f"{r['seconds']:>8.1f} {r['rss_peak_mb']:>9.0f} {r['rss_peak_mb_pruning'] or 0:>9.0f} "
            f"{(r['rss_peak_mb_pruning'] or 0) - r.get('rss_baseline_mb', 0):>9.0f} {target:>7.0f} {dense:>9.1f} {comp:>9.1f} {comp / dense:>6.3f}"
        )
    by = {(r["method"], r["pattern"]): r["perplexity_after"] for r in results if r["kind"] == "prune"}
    key = lambda m: by.get((m, "unstructured"))  # noqa: E731
    if all(key(m) is not None for m in ("magnitude", "random", "wanda", "sparsegpt")):
        holds = max(key("wanda"), key("sparsegpt")) < key("magnitude") < key("random")
        print(
            f"\nordering at 50% (wanda {key('wanda'):.3f}, sparsegpt {key('sparsegpt'):.3f} < magnitude {key('magnitude'):.3f} "
            f"< random {key('random'):.3f}): {'holds' if holds else 'DOES NOT HOLD'}"
        )
    print(
        "RSS prune: peak while calibrating and pruning; -baseline: the same less the process before it loaded the model\n"
        "(interpreter, torch, transformers); target: 1.5 x float32 weight bytes + the hidden states entering one block"
    )

    if not args.no_quantize:
        for scheme in SCHEMES:
            out = root / f"quant-{scheme}"
            print(f"quantizing: {scheme} ...", file=sys.stderr, flush=True)
            data = cli("quantize", "--model", args.model, "--scheme", scheme, "--out", str(out), "--force")
            results.append({"kind": "quantize", **data})
        print(f"\nQuantizing {args.model}")
        header = f"{'scheme':<14} {'backend':<12} {'size MB':>8} {'source MB':>9} {'ratio':>6} {'ppl before':>10} {'ppl after':>10} {'quant s':>8} {'RSS peak':>9}"
        print(header)
        print("-" * len(header))
        for r in (r for r in results if r["kind"] == "quantize"):
            print(
                f"{r['scheme']:<14} {r['backend']:<12} {r['size_on_disk_mb']:>8.1f} {r['source_size_on_disk_mb']:>9.1f} {r['size_ratio']:>6.3f} "
                f"{r['perplexity_before']:>10.3f} {r['perplexity_after']:>10.3f} {r['seconds']:>8.1f} {r['rss_peak_mb']:>9.0f}"
            )
    if args.results:
        with open(args.results, "w") as handle:
            for r in results:
                handle.write(json.dumps(r) + "\n")
    print(f"\nvariants in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

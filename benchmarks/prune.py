"""Prune the default model with every method (50% unstructured, and wanda at 2:4), quantize it
with every scheme, and print what each variant costs and saves. Figures, not assertions.

Each run is the real command line in a fresh process, so peak RSS is that of one command.
`--rss` (alone with `--rss-only`): peak RSS of the calibrated methods over the loaded model,
each in a fresh process that loads the model, draws the calibration samples, reads every
weight (a model mapped from its file is read in only as it is used, which would count its own
pages as the walk's), notes its RSS, then calibrates and prunes at 32 x 512 and reads the
kernel's high-water mark (VmHWM, reset after the note); it also hashes the masks and weights
and says whether they match those of the earlier, heavier walk.
Usage: python benchmarks/prune.py [--model M] [--out-root DIR] [--methods ...] [--no-quantize] [--rss | --rss-only]
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

BENCH_THREADS = 2
# Peak RSS over the loaded model that the leaner walk is held to, MB.
RSS_TARGET_MB = {"wanda": 150.0, "sparsegpt": 250.0}
# sha256 of every pruned layer's (name, zero mask) and (name, float32 weight) bytes, in walk order,
# for smollm2-135m at 50% / 32 x 512 / seed 0 with 2 threads, as the heavier walk
# that kept a whole block's statistics produced them (the lean walk must match them bit for bit).
# They hold on the machine that recorded them: on another machine, the commit that recorded them
# can give other digests (float sums follow the CPU's kernels), and the lean walk gives those.
# tests/test_prune_lean.py checks the lean walk against the heavier one on every machine.
REFERENCE_DIGESTS = {
    ("wanda", "unstructured"): ("17d5118e2eff897d954be6168a89907ca6de3139522ffed8cdae955b68f8b6f9", "dc6d125049aaefbdd2dd1da41194c78b6b888752f71747e49049d4cd3cca6a63"),
    ("sparsegpt", "unstructured"): ("0ebb9e0ae1f7d69bab5bf81f02e7d106329bf96508274bd291cb64ef500caf78", "6873776a96240c326d9e77336ebc1d22c028963f5097b5b61b721f057da24bf7"),
}


def cli(*args: str) -> dict:
    started = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "tui.cli", *args, "--json"], capture_output=True, text=True, cwd=ROOT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"edge-audit {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    data = json.loads(result.stdout)
    data["wall_seconds"] = round(time.perf_counter() - started, 1)
    return data


def measure_rss(model_spec: str, method: str, pattern: str) -> dict:
    """In this process: load, note RSS, calibrate and prune, read the high-water mark."""
    import gc
    import hashlib

    import torch

    from audit.compress.calibration import calibration_set
    from audit.compress.layers import iter_layers, prunable_layers
    from audit.compress.output import float_torch_model
    from audit.compress.prune import layer_spec, prune_layers
    from audit.compress.recipe import PruneRecipe
    from audit.models import load_model
    from audit.progress import drive
    from hardware.memory import MB, peak_rss_bytes, process_rss_bytes, reset_peak_rss

    before = process_rss_bytes()
    lm = drive(load_model(model_spec))
    model = float_torch_model(lm, "pruning")
    torch.set_num_threads(BENCH_THREADS)  # float sums, hence digests, can depend on the thread count
    calib = calibration_set(lm, nsamples=32, seqlen=512, seed=0, context_length=lm.facts().context_length)
    gc.collect()
    calibrated = process_rss_bytes()
    # The weights may be mapped from the model's file, its pages read in only when first used:
    # reading every weight now makes the whole model resident, so what the mark below counts
    # over it is the walk's own memory, not the model's pages that the walk reads first.
    with torch.inference_mode():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.sum()
    loaded = process_rss_bytes()
    if not reset_peak_rss():
        raise SystemExit("cannot reset the kernel's RSS high-water mark (/proc/self/clear_refs)")
    started = time.perf_counter()
    drive(prune_layers(model, method, layer_spec(PruneRecipe(method, pattern=pattern)), calib.samples))
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes() or 0
    masks, weights = hashlib.sha256(), hashlib.sha256()
    for layer in iter_layers(prunable_layers(model)):
        w = layer.read().contiguous()
        masks.update(layer.name.encode())
        masks.update((w == 0).numpy().tobytes())
        weights.update(layer.name.encode())
        weights.update(w.numpy().tobytes())
    return {
        "method": method, "pattern": pattern, "threads": torch.get_num_threads(), "prune_seconds": round(seconds, 1),
        "rss_before_load_mb": round(before / MB, 1), "rss_calibrated_mb": round(calibrated / MB, 1),
        "rss_loaded_mb": round(loaded / MB, 1), "rss_peak_mb": round(peak / MB, 1),
        "mask_sha256": masks.hexdigest(), "weight_sha256": weights.hexdigest(),
    }


def rss_runs(model_spec: str, runs: list[tuple[str, str]]) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = []
    for method, pattern in runs:
        print(f"peak RSS: {method} {pattern} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--model", model_spec, "--measure-one", method, pattern],
            capture_output=True, text=True, cwd=ROOT, env=env,
        )
        if done.returncode != 0:
            raise SystemExit(f"measuring {method} {pattern} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def print_rss(model_spec: str, results: list[dict]) -> None:
    print(f"\nPeak RSS over the loaded model, pruning {model_spec} at 50% (32 samples x 512 tokens, seed 0), VmHWM")
    header = f"{'method':<10} {'pattern':<12} {'loaded MB':>9} {'peak MB':>8} {'over MB':>8} {'target':>7} {'over/target':>11} {'prune s':>8}  masks / weights vs reference"
    print(header)
    print("-" * len(header))
    for r in results:
        over = r["rss_peak_mb"] - r["rss_loaded_mb"]
        target = RSS_TARGET_MB.get(r["method"])
        reference = REFERENCE_DIGESTS.get((r["method"], r["pattern"])) if model_spec == "smollm2-135m" else None
        if reference is None:
            same = "no reference"
        else:
            same = " / ".join("identical" if got == want else "other" for got, want in zip((r["mask_sha256"], r["weight_sha256"]), reference))
        ratio = f"{over / target:>11.2f}" if target else f"{'-':>11}"
        print(
            f"{r['method']:<10} {r['pattern']:<12} {r['rss_loaded_mb']:>9.0f} {r['rss_peak_mb']:>8.0f} {over:>8.0f} "
            f"{target or 0:>7.0f} {ratio} {r['prune_seconds']:>8.1f}  {same}"
        )
    for r in results:
        print(f"{r['method']} {r['pattern']}: masks sha256 {r['mask_sha256']}, weights sha256 {r['weight_sha256']} ({r['threads']} threads)")
    for r in results:
        if "rss_calibrated_mb" in r:
            print(f"{r['method']} {r['pattern']}: {r['rss_loaded_mb'] - r['rss_calibrated_mb']:.0f} MB of the model's weights were read in "
                  f"from its file before the mark (RSS {r['rss_calibrated_mb']:.0f} MB with the calibration samples made)")
    print("over: peak during calibration and pruning less the RSS once the model (every weight read) and calibration samples are loaded;\n"
          "over/target at or below 1.00 meets the target; vs reference: the digests recorded on one machine, which\n"
          "another machine's kernels may not reproduce (tests/test_prune_lean.py checks bit-identity on every machine)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out-root", type=Path, default=None, help="keep the variants here (default: a temporary folder)")
    parser.add_argument("--methods", nargs="*", default=None, help="subset of runs, e.g. wanda sparsegpt wanda:2:4")
    parser.add_argument("--no-quantize", action="store_true")
    parser.add_argument("--results", type=Path, default=None, help="also write every result as JSON lines here")
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS over the loaded model (wanda, sparsegpt)")
    parser.add_argument("--rss-only", action="store_true", help="only measure peak RSS over the loaded model")
    parser.add_argument("--measure-one", nargs=2, metavar=("METHOD", "PATTERN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_one:
        print(json.dumps(measure_rss(args.model, *args.measure_one)))
        return 0
    rss_wanted = [("wanda", "unstructured"), ("sparsegpt", "unstructured")]
    if args.methods:
        rss_wanted = [r for r in rss_wanted if r[0] in args.methods or f"{r[0]}:{r[1]}" in args.methods]
    if args.rss_only:
        rss = rss_runs(args.model, rss_wanted)
        print_rss(args.model, rss)
        if args.results:
            with open(args.results, "w") as handle:
                for r in rss:
                    handle.write(json.dumps({"kind": "rss", **r}) + "\n")
        return 0

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
    header = f"{'method':<10} {'pattern':<12} {'sparsity':>8} {'ppl before':>10} {'ppl after':>10} {'prune s':>8} {'RSS peak':>9} {'RSS prune':>9} {'-baseline':>9} {'-loaded':>8} {'target':>7} {'dense MB':>9} {'sparse MB':>9} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for r in (r for r in results if r["kind"] == "prune"):
        target = 1.5 * r["weights_mb_float32"] + r["calibration_activations_mb"]
        dense, comp = r["size_on_disk_mb"]["dense"], r["size_on_disk_mb"]["compressed"]
        print(
            f"{r['method']:<10} {r['pattern']:<12} {r['actual_sparsity']:>8.4f} {r['perplexity_before']:>10.3f} {r['perplexity_after']:>10.3f} "
            f"{r['seconds']:>8.1f} {r['rss_peak_mb']:>9.0f} {r['rss_peak_mb_pruning'] or 0:>9.0f} "
            f"{(r['rss_peak_mb_pruning'] or 0) - r.get('rss_baseline_mb', 0):>9.0f} {(r['rss_peak_mb_pruning'] or 0) - r.get('rss_loaded_mb', 0):>8.0f} {target:>7.0f} {dense:>9.1f} {comp:>9.1f} {comp / dense:>6.3f}"
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
        "(interpreter, torch, transformers); -loaded: less the process once the model was loaded (the perplexity\n"
        "measured before pruning is in it; --rss measures pruning alone); target: 1.5 x float32 weight bytes + the hidden states entering one block"
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
    if args.rss:
        rss = rss_runs(args.model, rss_wanted)
        results.extend({"kind": "rss", **r} for r in rss)
        print_rss(args.model, rss)
    if args.results:
        with open(args.results, "w") as handle:
            for r in results:
                handle.write(json.dumps(r) + "\n")
    print(f"\nvariants in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

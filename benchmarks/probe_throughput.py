"""Probe scoring throughput: the shared-context engine against one full forward per option, on the same items.

Scores the same built-in items (40 per category, 200 in all) on the default model both ways,
checks that both pick the same option for every item (under mean and sum normalisation),
and prints items/s for each and their ratio. Batches alternate between the two strategies so
that load from other processes on a shared machine hits both alike.

    python benchmarks/probe_throughput.py [--model M] [--per-category 40] [--batch-items 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audit.models import load_model  # noqa: E402
from audit.models.loader import LoadOptions  # noqa: E402
from audit.probes import load_suite  # noqa: E402
from audit.probes.items import argmax  # noqa: E402
from audit.probes.scoring import score_items  # noqa: E402
from audit.progress import drive  # noqa: E402


def choices(scores, norm):
    out = []
    for s in scores:
        values = s.logprobs if norm == "sum" else [lp / n for lp, n in zip(s.logprobs, s.tokens)]
        out.append(argmax(values))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--per-category", type=int, default=40, help="built-in items per category (5 categories)")
    parser.add_argument("--batch-items", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model = drive(load_model(args.model, LoadOptions(threads=args.threads)))
    items = load_suite("builtin", limit=args.per_category).items
    # First calls pay one-off costs (the packing self-check, allocator warm-up) in both paths.
    score_items(model, items[:4])
    score_items(model, items[:4], strategy="naive")

    packed, naive = [], []
    packed_s = naive_s = 0.0
    for start in range(0, len(items), args.batch_items):
        chunk = items[start : start + args.batch_items]
        scores, elapsed = score_items(model, chunk)
        packed += scores
        packed_s += elapsed
        scores, elapsed = score_items(model, chunk, strategy="naive")
        naive += scores
        naive_s += elapsed
        print(f"  {start + len(chunk)}/{len(items)} items: engine {packed_s:.1f} s, naive {naive_s:.1f} s", file=sys.stderr, flush=True)

    same = {norm: sum(a == b for a, b in zip(choices(packed, norm), choices(naive, norm))) for norm in ("mean", "sum")}
    max_diff = max(abs(a - b) for p, n in zip(packed, naive) for a, b in zip(p.logprobs, n.logprobs))
    result = {
        "model": args.model,
        "items": len(items),
        "batch_items": args.batch_items,
        "tokens_scored_per_item": round(sum(sum(s.tokens) for s in packed) / len(items), 2),
        "engine_items_per_s": round(len(items) / packed_s, 3),
        "naive_items_per_s": round(len(items) / naive_s, 3),
        "engine_s": round(packed_s, 2),
        "naive_s": round(naive_s, 2),
        "speedup": round(naive_s / packed_s, 2),
        "identical_predictions_mean": same["mean"],
        "identical_predictions_sum": same["sum"],
        "max_abs_logprob_diff": float(f"{max_diff:.3g}"),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"items: {result['items']} built-in items, {result['batch_items']} per scoring call")
        print(f"engine (shared context, packed, head at scored positions): {result['engine_items_per_s']:.2f} items/s")
        print(f"naive (one full forward per option):                      {result['naive_items_per_s']:.2f} items/s")
        print(f"speedup: {result['speedup']:.2f}x (target >= 3x)")
        print(f"identical predictions: {same['mean']}/{len(items)} (mean), {same['sum']}/{len(items)} (sum); "
              f"max |logprob diff| {result['max_abs_logprob_diff']}")
    return 0 if same["mean"] == same["sum"] == len(items) else 1


if __name__ == "__main__":
    sys.exit(main())

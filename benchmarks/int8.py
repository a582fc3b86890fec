"""Perplexity and decode speed of the int8 variants next to their float baseline, in one run.

    python benchmarks/int8.py                     # the default model; variants built into a work folder
    python benchmarks/int8.py --schemes int8-dynamic --rounds 6 --threads 2

Each int8 scheme is built with the product's quantize call (outlier rule and activation scales
as shipped, or `--per-tensor` / `--no-outlier-rule` to see what they fix). Perplexity uses the
product's held-out text and chunk length. Decode ms/token is timed in rounds that alternate the
models (baseline, then each variant, then again), all at the same thread count, so shared load
hits them alike; the ratio is baseline ms / variant ms (medians over every step of every round),
with a 95% bootstrap interval over the rounds, resampled whole (`intervals.py`). Each thread
count of `--threads` (1 and 2 unless given) gets its own table, with the models loaded again for
it. The two differ: a decode step of an int8 model is many products of a few microseconds each,
and waking a second thread for each (the product's idle threads sleep after a short spin) costs
more than it saves, while the float baseline's longer products gain from it.
`--ungrouped` adds int8-dynamic loaded without its shared-input groups (query, key and value,
and gate and up, each multiplied alone), to show what multiplying them as one gains.
`--unsmoothed` adds int8-dynamic built without activation smoothing (the input ranges left in
the layers), to show what smoothing gains: perplexity, layers kept float, and speed.
Targets: perplexity within +10% of the baseline and decode at least 1.8x the baseline's speed.
The header says which int8 products this CPU takes (`audit.compress.int8_products`): without
int8 dot-product instructions torch._int_mm is many times slower than float32, and the same
sums are taken another way.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.threads import onnx_wait_entries, prepare_wait_environment  # noqa: E402
from intervals import paired_interval, shown  # noqa: E402

prepare_wait_environment()  # how the command line's threads wait, set before the inference libraries load

from audit.compress.outliers import OutlierRule  # noqa: E402
from audit.compress.quantize import PER_TENSOR, PER_TOKEN, QuantizeSettings, quantize  # noqa: E402
from audit.models.aliases import DEFAULT_ALIAS  # noqa: E402
from audit.models.loader import LoadOptions, load_model  # noqa: E402
from audit.perplexity import DEFAULT_CHUNK_TOKENS, perplexity  # noqa: E402
from audit.profile import benchmark_prompt_ids, timed_generation  # noqa: E402
from audit.progress import drive  # noqa: E402

UNGROUPED_SUFFIX = "-ungrouped"
UNGROUPED = "int8-dynamic" + UNGROUPED_SUFFIX
UNSMOOTHED = "int8-dynamic-unsmoothed"
PPL_TARGET_PCT = 10.0
SPEED_TARGET = 1.8


def _int8_paths(model) -> str:
    """Which int8 products the loaded int8-dynamic `model` takes on this CPU (all give the same
    sums), read from its layers as loaded."""
    from audit.compress.int8_products import GroupRows, SignSplit, int_mm_ratio, int_mm_slow, per_token_layers

    several = "float32 products of the int8 levels" if int_mm_slow() else "torch._int_mm"
    kinds = set()
    for layer in per_token_layers(model).values():
        packed = layer._packed_params  # a grouped layer's single-token product is its group's
        single = packed.group.single if isinstance(packed, GroupRows) else layer._int8_single
        kinds.add(several if single is None else
                  "FBGEMM's int8 kernel on the levels split by sign" if isinstance(single, SignSplit) else "FBGEMM's int8 kernel")
    return (f"torch._int_mm takes {int_mm_ratio():.1f}x float32's time, so several tokens take {several}; "
            f"a single token {' or '.join(sorted(kinds)) or several}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_ALIAS)
    parser.add_argument("--schemes", nargs="+", default=["int8-dynamic", "onnx-int8"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/edge-audit-int8-bench"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--per-tensor", action="store_true", help="int8-dynamic with one activation scale per tensor")
    parser.add_argument("--no-outlier-rule", action="store_true", help="quantize every linear layer")
    parser.add_argument("--ungrouped", action="store_true",
                        help="add int8-dynamic loaded without its shared-input groups (each projection multiplied alone)")
    parser.add_argument("--unsmoothed", action="store_true", help="add int8-dynamic built without activation smoothing")
    args = parser.parse_args()

    import torch

    if any(t < 1 for t in args.threads):
        parser.error("thread counts must be at least 1")
    torch.set_num_threads(args.threads[0])
    options = LoadOptions(threads=args.threads[0])
    settings = QuantizeSettings(
        outliers=OutlierRule(ratio=None) if args.no_outlier_rule else OutlierRule(),
        activation_scales=PER_TENSOR if args.per_tensor else PER_TOKEN,
    )
    builds = [(scheme, scheme, settings) for scheme in args.schemes]
    if args.unsmoothed and "int8-dynamic" in args.schemes:
        builds.append((UNSMOOTHED, "int8-dynamic", replace(settings, smoothing=None)))
    built: dict[str, dict] = {}
    for name, scheme, chosen_settings in builds:
        started = time.perf_counter()
        built[name] = drive(quantize(args.model, scheme, args.work / name, force=True, options=options, settings=chosen_settings,
                                     measure_perplexity=False))
        smoothed = f", {built[name]['smoothed_layers']} layers smoothed" if "smoothed_layers" in built[name] else ""
        print(f"built {name} in {time.perf_counter() - started:.0f} s: kept float {built[name].get('kept_float')}{smoothed}", flush=True)

    names = ["baseline", *args.schemes, *(name for name, _, _ in builds[len(args.schemes):])]
    if args.ungrouped and "int8-dynamic" in args.schemes:
        names.append(UNGROUPED)

    def load_all(threads: int) -> dict:
        torch.set_num_threads(threads)
        chosen = LoadOptions(threads=threads)
        return {name: _load(args.model if name == "baseline" else str(args.work / name.removesuffix(UNGROUPED_SUFFIX)), chosen, name == UNGROUPED)
                for name in names}

    models = load_all(args.threads[0])
    for name, model in models.items():
        notes = [n for n in model.facts().notes if "int8" in n]
        print(f"{name}: backend {model.backend}, quantization {model.facts().quantization}; {notes[-1] if notes else ''}", flush=True)

    ppl = {}
    for name in names:
        result = drive(perplexity(models[name], chunk_tokens=DEFAULT_CHUNK_TOKENS))
        ppl[name] = result
        print(f"perplexity {name}: {result.perplexity:.3f} over {result.n_tokens} tokens ({result.seconds:.1f} s)", flush=True)

    decode: dict[int, dict[str, list[list[float]]]] = {}
    for index, threads in enumerate(args.threads):
        if index:
            models = load_all(threads)
        decode[threads] = _decode_ms(models, args.prompt_tokens, args.new_tokens, args.rounds)

    base_ppl = ppl["baseline"].perplexity
    print(f"\nmodel {args.model}, {args.rounds} alternating rounds of {args.new_tokens} new tokens after {args.prompt_tokens} prompt tokens")
    print(f"activation scales (int8-dynamic): {settings.activation_scales}; smoothing alpha: {settings.smoothing}; "
          f"outlier rule: {settings.outliers.describe()}")
    print(f"idle threads wait as the command line's do: GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset')}, "
          f"ONNX Runtime {onnx_wait_entries()}")
    if "int8-dynamic" in models:
        print(f"int8-dynamic products here: {_int8_paths(models['int8-dynamic'].model)}")
    for threads, rounds in decode.items():
        ms = {name: statistics.median(step for steps in per_round for step in steps) for name, per_round in rounds.items()}
        print(f"\n{threads} thread{'s' if threads != 1 else ''}")
        print(f"{'variant':22s} {'perplexity':>10s} {'delta %':>8s} {'decode ms/tok p50':>18s} {'speed x':>8s}  targets (ppl <= +{PPL_TARGET_PCT:g}%, speed >= {SPEED_TARGET}x)")
        for name in names:
            delta = 100.0 * (ppl[name].perplexity / base_ppl - 1.0)
            if name == "baseline":
                ratio, verdict = 1.0, ""
            else:
                speed = speed_interval(rounds["baseline"], rounds[name])
                ratio = speed[0]
                verdict = (f"ppl {'met' if delta <= PPL_TARGET_PCT else 'NOT met'}, speed {'met' if ratio >= SPEED_TARGET else 'NOT met'}; "
                           f"speed {shown(*speed)}")
            print(f"{name:22s} {ppl[name].perplexity:10.3f} {delta:+8.1f} {ms[name]:18.2f} {ratio:8.2f}  {verdict}")
    return 0


def _load(spec: str, options: LoadOptions, ungrouped: bool):
    if not ungrouped:
        return drive(load_model(spec, options))
    from audit.compress import quantize as quantize_module

    grouped = quantize_module.group_shared_inputs
    quantize_module.group_shared_inputs = lambda model: []
    try:
        return drive(load_model(spec, options))
    finally:
        quantize_module.group_shared_inputs = grouped


def speed_interval(baseline: list[list[float]], variant: list[list[float]]) -> tuple[float, float, float]:
    """Baseline over variant median step ms (every step of the rounds drawn), with its interval
    over the rounds: round i of both is resampled together, as they ran side by side."""
    def ratio(picked) -> float:
        rounds = [int(i) for i in picked]
        return statistics.median(s for i in rounds for s in baseline[i]) / statistics.median(s for i in rounds for s in variant[i])

    return paired_interval(ratio, range(len(baseline)))


def _decode_ms(models: dict, prompt_tokens: int, new_tokens: int, rounds: int) -> dict[str, list[list[float]]]:
    """Decode ms of each step of each model, per round, timed in rounds that alternate the models."""
    prompt = {name: benchmark_prompt_ids(model, prompt_tokens) for name, model in models.items()}
    for name, model in models.items():  # warm-up
        timed_generation(model, prompt[name], new_tokens)
    steps: dict[str, list[list[float]]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            timing = timed_generation(model, prompt[name], new_tokens)
            steps[name].append([1000 * d for d in timing.decode_step_s])
    return steps


if __name__ == "__main__":
    raise SystemExit(main())

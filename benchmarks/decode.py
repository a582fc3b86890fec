"""Decode speed of `edge-audit profile` against plain transformers `generate` on the same loaded
model, prompt and thread count, in one run, with the memory-bandwidth bound it is measured against.

    python benchmarks/decode.py                    # the default model, 1 thread
    python benchmarks/decode.py --threads 1 2      # each thread count in turn, same process

Each round times profile's path (`timed_generation`: greedy, forced length, a timestamp per
token) and `model.generate(max_new_tokens=N, min_new_tokens=N, do_sample=False)`, alternating
which goes first, so shared load hits both alike. `generate` shows no per-token times: its decode
rate is (N - 1) / (time for N tokens - time for 1 token), medians over the rounds; end-to-end
rates (N / whole call, prefill included) are printed for both as well. Each ratio comes with a
95% bootstrap interval over the rounds, resampled whole (`intervals.py`).

Memory bandwidth is the best of several sums of a float32 tensor far larger than the caches;
the bound is that bandwidth over the bytes of weights one decode step reads (every linear
weight, the output head, norms, one embedding row; a tied embedding is read whole as the head).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit.threads import prepare_wait_environment  # noqa: E402
from intervals import paired_interval, shown  # noqa: E402

prepare_wait_environment()  # how the command line's threads wait, set before the inference libraries load

from audit.models.aliases import DEFAULT_ALIAS  # noqa: E402
from audit.models.loader import LoadOptions, load_model  # noqa: E402
from audit.profile import benchmark_prompt_ids, timed_generation, weight_bytes_per_token  # noqa: E402
from audit.progress import drive  # noqa: E402

MB = 1e6
GB = 1e9


def read_bandwidth_gb_s(size_mb: int, repeats: int) -> float:
    """Best-of-`repeats` read rate of summing a float32 tensor of `size_mb` megabytes."""
    import torch

    data = torch.ones(int(size_mb * MB) // 4, dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best / GB


def plain_generate_s(model, ids, new_tokens: int, pad_id: int) -> tuple[float, list[int]]:
    import torch

    with torch.inference_mode():
        started = time.perf_counter()
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
            min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id,
        )
        return time.perf_counter() - started, out[0, ids.shape[1]:].tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_ALIAS, help=f"model to load (default {DEFAULT_ALIAS})")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="inference thread counts (default 1)")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds per thread count (default 10)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per generation (default 32)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="prompt length (default 128)")
    parser.add_argument("--bandwidth-mb", type=int, default=512, help="size of the bandwidth test tensor (default 512)")
    args = parser.parse_args()
    if args.new_tokens < 2 or args.rounds < 1 or min(args.threads) < 1:
        parser.error("need --new-tokens >= 2, --rounds >= 1 and --threads >= 1")

    import torch

    lm = drive(load_model(args.model, LoadOptions(threads=args.threads[0])))
    model = lm.model
    prompt = benchmark_prompt_ids(lm, args.prompt_tokens)
    ids = torch.tensor([prompt])
    pad_id = lm.stop_token_ids[0] if lm.stop_token_ids else 0
    n = args.new_tokens
    weight_bytes = weight_bytes_per_token(model)
    print(f"{lm.facts().name}: {args.prompt_tokens} prompt tokens, {n} new, {args.rounds} rounds, dtype {lm.facts().dtype}")
    print(f"weights read per decode step: {weight_bytes / MB:.1f} MB (10^6 bytes)")

    # The tokens must be the same before their speeds are compared.
    _, want = plain_generate_s(model, ids, n, pad_id)
    got = list(lm.generate(prompt, max_new_tokens=n, stop_at_eos=False).token_ids)
    if got != want:
        raise SystemExit(f"profile's decode gave other tokens than greedy generate: {got[:8]}... vs {want[:8]}...")
    print(f"profile's decode path gives generate's {n} greedy tokens: yes")

    for threads in args.threads:
        torch.set_num_threads(threads)
        timed_generation(lm, prompt, n)  # warm-up for both at this thread count
        plain_generate_s(model, ids, n, pad_id)
        profile_e2e, profile_decode, plain_n, plain_1, bandwidth = [], [], [], [], []
        for round_ in range(args.rounds):
            cases = ["profile", "generate"] if round_ % 2 == 0 else ["generate", "profile"]
            for case in cases:
                if case == "profile":
                    timing = timed_generation(lm, prompt, n)
                    profile_e2e.append(n / timing.latency_s)
                    profile_decode.append(timing.generated_tokens_per_s)
                else:
                    plain_n.append(plain_generate_s(model, ids, n, pad_id)[0])
                    plain_1.append(plain_generate_s(model, ids, 1, pad_id)[0])
            bandwidth.append(read_bandwidth_gb_s(args.bandwidth_mb, 3))
        med = statistics.median
        best_gb_s = max(bandwidth)
        bound = best_gb_s * GB / weight_bytes
        plain_decode = (n - 1) / (med(plain_n) - med(plain_1))
        plain_e2e = n / med(plain_n)
        p_decode, p_e2e = med(profile_decode), med(profile_e2e)
        decode_ratio, e2e_ratio = ratio_intervals(profile_decode, profile_e2e, plain_n, plain_1, n)
        print(f"\n{threads} thread(s), {torch.get_num_threads()} in torch:")
        print(f"  decode tokens/s      profile {p_decode:6.2f}   generate {plain_decode:6.2f}   profile/generate {shown(*decode_ratio, digits=3)}")
        print(f"  end-to-end tokens/s  profile {p_e2e:6.2f}   generate {plain_e2e:6.2f}   profile/generate {shown(*e2e_ratio, digits=3)}")
        print(f"  memory read bandwidth {best_gb_s:.1f} GB/s (best of {3 * args.rounds} sums of {args.bandwidth_mb} MB)")
        print(f"  bandwidth bound {bound:.1f} tokens/s; profile reaches {p_decode / bound:.1%}, generate {plain_decode / bound:.1%}")
        print(f"  weights read at {p_decode * weight_bytes / GB:.1f} GB/s in profile's decode")
    return 0


def ratio_intervals(profile_decode, profile_e2e, plain_n, plain_1, n: int) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """profile over generate, decode and end to end (the medians' ratios printed), each with its
    interval over the rounds: round i's profile and generate times are resampled together."""
    med = statistics.median
    decode = paired_interval(lambda p, t_n, t_1: med(p) * (med(t_n) - med(t_1)) / (n - 1), profile_decode, plain_n, plain_1)
    e2e = paired_interval(lambda p, t_n: med(p) * med(t_n) / n, profile_e2e, plain_n)
    return decode, e2e


if __name__ == "__main__":
    sys.exit(main())

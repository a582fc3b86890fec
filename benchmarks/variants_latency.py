"""Profile the dense default model and its compressed variants on this device in one run, and
print latency, tokens/s, peak RSS and size on disk with each figure's ratio to dense.

    python benchmarks/variants_latency.py                      # dense + the standard variants it can build
    python benchmarks/variants_latency.py --variant onnx-int8=out/onnx-int8 --no-build

The standard variants (50% wanda, 2:4 wanda, int8-dynamic, onnx-int8, onnx-int4) are built
with `edge-audit prune` / `edge-audit quantize` into a work folder (reused on later runs)
when this checkout has those commands. Each variant is profiled in a fresh process with the
same settings, so one model's memory never shows in another's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audit import atomic  # noqa: E402
from audit.models.aliases import DEFAULT_ALIAS  # noqa: E402
from audit.paths import cache_dir  # noqa: E402
from hardware.comparison import compare_profiles, render_table  # noqa: E402

# name -> the edge-audit command (without --model and --out) that builds it from dense.
STANDARD_VARIANTS: dict[str, list[str]] = {
    "wanda-50": ["prune", "--method", "wanda", "--sparsity", "0.5"],
    "wanda-2:4": ["prune", "--method", "wanda", "--sparsity", "0.5", "--pattern", "2:4"],
    "int8-dynamic": ["quantize", "--scheme", "int8-dynamic"],
    "onnx-int8": ["quantize", "--scheme", "onnx-int8"],
    "onnx-int4": ["quantize", "--scheme", "onnx-int4"],
}


def parse_variant(text: str) -> tuple[str, str]:
    name, found, path = text.partition("=")
    if not found or not name.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name.strip(), path.strip()


def build_command(name: str, model: str, out: Path) -> list[str]:
    command, *options = STANDARD_VARIANTS[name]
    return [command, "--model", model, *options, "--out", str(out)]


def available_commands() -> set[str]:
    from tui.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # argparse keeps its subcommands in a private action
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def edge_audit(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", "--progress", "none", *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout_s,
    )


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def build_variants(model: str, work: Path, wanted: list[str], timeout_s: float) -> tuple[dict[str, str], list[str]]:
    """Build (or reuse) the standard variants; return their folders and notes on the ones missing."""
    commands = available_commands()
    built: dict[str, str] = {}
    notes: list[str] = []
    for name in wanted:
        out = work / name.replace(":", "-")
        if out.is_dir():
            print(f"[variants] {name}: reusing {out}", file=sys.stderr)
            built[name] = str(out)
            continue
        command = STANDARD_VARIANTS[name][0]
        if command not in commands:
            notes.append(f"{name}: not built, this checkout has no `edge-audit {command}` command")
            continue
        print(f"[variants] {name}: building with edge-audit {' '.join(build_command(name, model, out))}", file=sys.stderr)
        started = time.perf_counter()
        result = edge_audit(build_command(name, model, out), timeout_s)
        if result.returncode != 0:
            notes.append(f"{name}: build failed: {last_line(result.stderr)}")
            continue
        print(f"[variants] {name}: built in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        built[name] = str(out)
    return built, notes


def profile(path: str, settings: list[str], timeout_s: float) -> tuple[dict[str, Any] | None, str | None]:
    result = edge_audit(["profile", "--model", path, *settings, "--json"], timeout_s)
    if result.returncode != 0:
        return None, last_line(result.stderr)
    return json.loads(result.stdout), None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_ALIAS, help=f"the dense model (default {DEFAULT_ALIAS})")
    parser.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="NAME=PATH",
                        help="a variant folder to profile (repeatable)")
    parser.add_argument("--no-build", action="store_true", help="profile only dense and the --variant folders")
    parser.add_argument("--only", nargs="*", choices=list(STANDARD_VARIANTS), help="standard variants to build")
    parser.add_argument("--work", type=Path, default=None, help="where built variants live (default: the edge-audit cache)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup-runs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timeout-s", type=float, default=3600, help="per build and per profile")
    parser.add_argument("--json", type=Path, default=None, help="also write the profiles and rows to this file")
    args = parser.parse_args(argv)

    settings = ["--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
                "--runs", str(args.runs), "--warmup-runs", str(args.warmup_runs)]
    if args.threads:
        settings += ["--threads", str(args.threads)]
    variants: dict[str, str] = {"dense": args.model}
    notes: list[str] = []
    given = dict(args.variant)
    if not args.no_build:
        work = args.work or cache_dir() / "variants" / Path(args.model).name
        wanted = [name for name in (args.only or STANDARD_VARIANTS) if name not in given]
        built, notes = build_variants(args.model, work, wanted, args.timeout_s)
        variants.update(built)
    variants.update(given)

    profiles: dict[str, dict[str, Any]] = {}
    for name, path in variants.items():
        print(f"[variants] profiling {name} ({path})", file=sys.stderr)
        data, error = profile(path, settings, args.timeout_s)
        if data is None:
            notes.append(f"{name}: profile failed: {error}")
            if name == "dense":
                print(f"cannot profile the dense model: {error}", file=sys.stderr)
                return 1
            continue
        profiles[name] = data

    rows = compare_profiles(profiles)
    dense = profiles["dense"]
    device = dense.get("device", {})
    print(f"device: {device.get('name')} ({device.get('cpu_model')}, {device.get('cores_usable')} usable cores); "
          f"{dense['threads']} threads; {args.prompt_tokens} prompt + {args.new_tokens} new tokens; "
          f"{args.runs} timed runs after {args.warmup_runs} warm-up runs; ratios are variant / dense")
    print(render_table(rows))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        atomic.write_text(args.json, json.dumps({"profiles": profiles, "rows": [r.to_dict() for r in rows], "notes": notes}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

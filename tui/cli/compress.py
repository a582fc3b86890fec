"""`edge-audit prune`, `quantize` and `perplexity`: make compressed variants and measure them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from audit.compress.recipe import (
    DEFAULT_INT4_BLOCK_SIZE,
    DEFAULT_SMOOTHING_ALPHA,
    MAX_SPARSITY,
    PRUNING_METHOD_NAMES,
    QUANTIZATION_SCHEME_NAMES,
    PruneRecipe,
    check_scope,
    valid_alpha,
)
from audit.errors import UserError
from audit.perplexity import DEFAULT_CHUNK_TOKENS
from audit.plans import CalibrationSpec
from tui.cli import common

# The pruning and quantization code imports torch: it is imported when a command runs, so that
# the help and the commands that load no model start at once.

def _add_text_options(parser: argparse.ArgumentParser, flag: str = "--text") -> None:
    parser.add_argument(flag, dest="text", type=Path, default=None, help="held-out text (.txt or .jsonl) for perplexity (default: the built-in one)")
    parser.add_argument(
        "--chunk", type=common.count(2), default=DEFAULT_CHUNK_TOKENS, help=f"perplexity chunk length in tokens (default {DEFAULT_CHUNK_TOKENS})"
    )


CALIBRATION = CalibrationSpec()


def register(sub: argparse._SubParsersAction) -> None:
    methods = ", ".join(f"{e.name} ({e.meta['description']})" for e in PRUNING_METHOD_NAMES)
    p = sub.add_parser("prune", help="prune a model and save it dense and in compressed sparse form", description=f"Methods: {methods}.")
    common.add_model_options(p)
    p.add_argument("--method", default="wanda", help=f"pruning method: {', '.join(PRUNING_METHOD_NAMES.names())} (default wanda)")
    p.add_argument("--sparsity", type=float, default=None, help=f"share of weights removed, 0 to {MAX_SPARSITY} (default 0.5)")
    p.add_argument("--pattern", default="unstructured", help="unstructured (default) or N:M: N of every M consecutive weights kept, so 2:4 removes half and 1:4 three quarters")
    p.add_argument("--scope", choices=("matrix", "row"), default=None, help="magnitude/random: compare weights over the whole matrix (default) or per output row")
    p.add_argument("--calib", type=Path, default=None, help="calibration text (.txt or .jsonl with \"text\"); default: the built-in English text")
    p.add_argument("--nsamples", type=common.count(1), default=CALIBRATION.nsamples, help=f"calibration samples (default {CALIBRATION.nsamples})")
    p.add_argument("--seqlen", type=common.count(1), default=CALIBRATION.seqlen, help=f"tokens per calibration sample (default {CALIBRATION.seqlen})")
    p.add_argument("--statistics", choices=("sequential", "dense"), default=CALIBRATION.statistics,
                   help="calibration inputs: each block after the blocks before it are pruned (sequential, default), "
                        "or the dense model's, in one pass (dense, as Rath & Maliakkal's Wanda)")
    p.add_argument("--seed", type=int, default=0, help="seed for calibration windows and the random method (default 0)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="keep layers whose full name matches this glob, e.g. '*.o_proj' (repeatable)")
    _add_text_options(p, "--text")
    p.add_argument("--out", type=Path, required=True, help="output folder (the compressed form goes to OUT/compressed)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    common.add_json_option(p)
    p.set_defaults(func=cmd_prune)

    schemes = ", ".join(f"{e.name} ({e.meta['description']})" for e in QUANTIZATION_SCHEME_NAMES)
    q = sub.add_parser("quantize", help="quantize a model (a pruned folder too) into a new folder", description=f"Schemes: {schemes}.")
    common.add_model_options(q)
    q.add_argument("--scheme", required=True, help=f"one of {', '.join(QUANTIZATION_SCHEME_NAMES.names())}")
    q.add_argument("--block-size", type=int, default=DEFAULT_INT4_BLOCK_SIZE, help=f"onnx-int4, onnx-int8: weights per quantization block (default {DEFAULT_INT4_BLOCK_SIZE})")
    q.add_argument("--smoothing", type=_smoothing, default=None, metavar="ALPHA|none",
                   help=f"int8-dynamic: how far each layer's input range is moved into its weights before quantizing "
                        f"(SmoothQuant's alpha, above 0 and at most 1; default {DEFAULT_SMOOTHING_ALPHA:g}), or none")
    q.add_argument("--no-perplexity", action="store_true", help="skip measuring perplexity before and after")
    _add_text_options(q)
    q.add_argument("--out", type=Path, required=True, help="output folder")
    q.add_argument("--force", action="store_true", help="replace an existing output folder")
    common.add_json_option(q)
    q.set_defaults(func=cmd_quantize)

    r = sub.add_parser("perplexity", help="perplexity over the built-in held-out text or a file")
    common.add_model_options(r)
    _add_text_options(r)
    common.add_json_option(r)
    r.set_defaults(func=cmd_perplexity)


def cmd_prune(args: argparse.Namespace) -> int:
    from audit.compress.prune import prune

    if args.scope == "matrix":
        # Not a recipe field (a recipe leaves the scope to the method unless per_row): a method
        # that cannot compare over the whole matrix refuses it here.
        check_scope(args.method, args.scope)
    recipe = PruneRecipe(args.method, args.sparsity, args.pattern, per_row=args.scope == "row", exclude=tuple(args.exclude))
    calibration = CalibrationSpec(args.nsamples, args.seqlen, args.seed, str(args.calib) if args.calib else None, args.statistics)
    result = common.run_job(
        prune(
            args.model, recipe, args.out, calibration=calibration, force=args.force, options=common.load_options(args),
            text=args.text, chunk_tokens=args.chunk,
        )
    )

    def human(d: dict[str, Any]) -> None:
        table = Table(title=f"{d['method']} ({d['pattern']}) on {d['model']}", show_header=False)
        table.add_column("figure", style="bold")
        table.add_column("value")
        rows = [
            ("sparsity target / actual", f"{d['target_sparsity']:.3f} / {d['actual_sparsity']:.4f} over {d['pruned_layers']} layers"),
            ("perplexity before -> after", f"{d['perplexity_before']:.3f} -> {d['perplexity_after']:.3f} ({d['perplexity_tokens']} tokens)"),
            ("size on disk dense / compressed", f"{d['size_on_disk_mb']['dense']:.1f} MB / {d['size_on_disk_mb']['compressed']:.1f} MB"),
            ("pruning time", f"{d['seconds']:.1f} s (whole command {d['total_seconds']:.1f} s)"),
            ("peak RSS", f"{d['rss_peak_mb']:.0f} MB (while pruning {d['rss_peak_mb_pruning'] or 0:.0f} MB)"),
            ("dense model", d["out"]),
            ("compressed model", d["compressed_path"]),
        ]
        for key, value in rows:
            table.add_row(key, value)
        common.stdout.print(table)
        low = sorted(d["per_layer"].items(), key=lambda kv: kv[1])[:3]
        common.stdout.print("least sparse layers: " + ", ".join(f"{k} {v:.4f}" for k, v in low))

    common.emit(args, result, human)
    return 0


NO_SMOOTHING = "none"


def _smoothing(text: str) -> float | str:
    """An argparse type: a smoothing alpha above 0 and at most 1, or "none"."""
    if text.strip().lower() == NO_SMOOTHING:
        return NO_SMOOTHING
    try:
        alpha = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number above 0 and at most 1, or none; not {text!r}") from None
    if not valid_alpha(alpha):
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, or none; not {text}")
    return alpha


def cmd_quantize(args: argparse.Namespace) -> int:
    from audit.compress.quantize import QuantizeSettings, quantize

    smoothing = DEFAULT_SMOOTHING_ALPHA
    if args.smoothing is not None:
        if args.scheme in QUANTIZATION_SCHEME_NAMES and args.scheme != "int8-dynamic":
            raise UserError(f"--smoothing applies to int8-dynamic only, not {args.scheme}")
        smoothing = None if args.smoothing == NO_SMOOTHING else args.smoothing
    settings = QuantizeSettings(block_size=args.block_size, smoothing=smoothing)
    result = common.run_job(
        quantize(
            args.model, args.scheme, args.out, force=args.force, options=common.load_options(args),
            settings=settings, measure_perplexity=not args.no_perplexity,
            text=args.text, chunk_tokens=args.chunk,
        )
    )

    def human(d: dict[str, Any]) -> None:
        table = Table(title=f"{d['scheme']} of {d['model']}", show_header=False)
        table.add_column("figure", style="bold")
        table.add_column("value")
        table.add_row("size on disk", f"{d['size_on_disk_mb']:.1f} MB (source {d['source_size_on_disk_mb']:.1f} MB, ratio {d['size_ratio']:.3f})")
        if d["perplexity_after"] is not None:
            table.add_row("perplexity before -> after", f"{d['perplexity_before']:.3f} -> {d['perplexity_after']:.3f} ({d['perplexity_tokens']} tokens)")
        table.add_row("backend", d["backend"])
        if d.get("smoothing_alpha") is not None:
            table.add_row("smoothing", f"alpha {d['smoothing_alpha']:g}, {d['smoothed_layers']} layers smoothed")
        table.add_row("time", f"{d['seconds']:.1f} s (whole command {d['total_seconds']:.1f} s), peak RSS {d['rss_peak_mb']:.0f} MB")
        table.add_row("output", d["out"])
        common.stdout.print(table)

    common.emit(args, result, human)
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from audit.models import load_model
    from audit.perplexity import perplexity, text_source

    text, source = text_source(args.text)

    def job():
        model = yield from load_model(args.model, common.load_options(args))
        result = yield from perplexity(model, text, chunk_tokens=args.chunk, source=source)
        return model, result

    model, result = common.run_job(job())
    data = result.to_dict()
    data["model"] = args.model
    data["backend"] = model.backend

    def human(d: dict[str, Any]) -> None:
        common.stdout.print(
            f"perplexity {d['perplexity']:.3f} over {d['n_tokens']} tokens ({d['n_chunks']} chunks of up to "
            f"{d['chunk_tokens']}) of {d['source']}, {d['seconds']:.1f} s on {d['backend']}"
        )

    common.emit(args, data, human)
    return 0

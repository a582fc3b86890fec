"""`edge-audit prune`, `quantize` and `perplexity`: make compressed variants and measure them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from audit.compress.recipe import (
    DEFAULT_INT4_BLOCK_SIZE,
    DEFAULT_SMOOTHING_ALPHA,
    INT4_BLOCK_SIZES,
    MAX_SPARSITY,
    MIN_SEQLEN,
    PRUNING_METHOD_NAMES,
    QUANTIZATION_SCHEME_NAMES,
    PruneRecipe,
    blocked_schemes,
    check_scope,
    scope_ignored,
    valid_alpha,
)
from audit.errors import UserError
from audit.perplexity import DEFAULT_CHUNK_TOKENS
from audit.plans import CalibrationSpec
from tui.cli import common

# The pruning and quantization code imports torch: it is imported when a command runs, so that
# the help and the commands that load no model start at once.

def _add_text_options(parser: argparse.ArgumentParser, flag: str = "--text") -> None:
    # No default for --chunk here (None): quantize refuses it with --no-perplexity only when given.
    parser.add_argument(flag, dest="text", type=Path, default=None, help="held-out text (.txt or .jsonl) for perplexity (default: the built-in one)")
    parser.add_argument(
        "--chunk", type=common.count(2), default=None, help=f"perplexity chunk length in tokens (default {DEFAULT_CHUNK_TOKENS})"
    )


def _chunk(args: argparse.Namespace) -> int:
    return DEFAULT_CHUNK_TOKENS if args.chunk is None else args.chunk


CALIBRATION = CalibrationSpec()


def register(sub: argparse._SubParsersAction) -> None:
    methods = ", ".join(f"{e.name} ({e.meta['description']})" for e in PRUNING_METHOD_NAMES)
    p = sub.add_parser("prune", help="prune a model and save it dense and in compressed sparse form", description=f"Methods: {methods}.")
    common.add_model_options(p)
    p.add_argument("--method", default="wanda", help=f"pruning method: {', '.join(PRUNING_METHOD_NAMES.names())} (default wanda)")
    p.add_argument("--sparsity", type=float, default=None, help=f"share of weights removed, 0 to {MAX_SPARSITY} (default 0.5)")
    p.add_argument("--pattern", default="unstructured", help="unstructured (default) or N:M: N of every M consecutive weights kept, so 2:4 removes half and 1:4 three quarters")
    # The options that apply to some methods only have no default here (None), so that one
    # given to a method that would ignore it is refused, and one left out is not.
    p.add_argument("--scope", choices=("matrix", "row"), default=None,
                   help="magnitude/random, unstructured: compare weights over the whole matrix (default) or per output row")
    calibrated = ", ".join(_calibrated_methods())
    p.add_argument("--calib", type=Path, default=None,
                   help=f"{calibrated}: calibration text (.txt or .jsonl with \"text\"); default: the built-in English text")
    p.add_argument("--nsamples", type=common.count(1), default=None, help=f"{calibrated}: calibration samples (default {CALIBRATION.nsamples})")
    p.add_argument("--seqlen", type=common.count(MIN_SEQLEN), default=None, help=f"{calibrated}: tokens per calibration sample (default {CALIBRATION.seqlen})")
    p.add_argument("--statistics", choices=("sequential", "dense"), default=None,
                   help=f"{calibrated}: calibration inputs: each block after the blocks before it are pruned (sequential, default), "
                        "or the dense model's, in one pass (dense, as Rath & Maliakkal's Wanda)")
    p.add_argument("--seed", type=int, default=None, help=f"seed for the calibration windows ({calibrated}) and the random method's mask (default {CALIBRATION.seed})")
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
    q.add_argument("--block-size", type=int, default=None,
                   help=f"{', '.join(blocked_schemes())}: weights per quantization block (default {DEFAULT_INT4_BLOCK_SIZE})")
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


def _calibrated_methods() -> list[str]:
    """The pruning methods that read calibration text (the --calib, --nsamples, --seqlen and
    --statistics options)."""
    return [entry.name for entry in PRUNING_METHOD_NAMES if entry.meta["needs"]]


def _uses_seed(method: str) -> bool:
    """Whether --seed changes what `method` does: it draws the calibration windows and the
    random method's mask, and nothing else."""
    return bool(PRUNING_METHOD_NAMES.meta(method)["needs"]) or method == "random"


def check_prune_options(args: argparse.Namespace) -> None:
    """Refuse, before anything is loaded, an option the method or the pattern would ignore:
    a prune that silently did something other than what was asked is worse than a refusal."""
    meta = PRUNING_METHOD_NAMES.meta(args.method)  # an unknown method is refused by name here
    if args.scope is not None:
        # A scope the method cannot use is refused naming the ones it can.
        check_scope(args.method, args.scope)
        ignored = scope_ignored(args.method, args.scope, args.pattern)
        if ignored is not None:
            raise UserError(f"--scope {args.scope} changes nothing {ignored}; leave --scope out")
    if not meta["needs"]:
        given = [flag for flag, value in (("--calib", args.calib), ("--nsamples", args.nsamples), ("--seqlen", args.seqlen),
                                          ("--statistics", args.statistics)) if value is not None]
        if given:
            raise UserError(f"{given[0]} applies to the methods that calibrate ({', '.join(_calibrated_methods())}); {args.method} uses no calibration")
    if args.seed is not None and not _uses_seed(args.method):
        raise UserError(f"--seed applies to random and to the methods that calibrate ({', '.join(_calibrated_methods())}); "
                        f"{args.method} draws nothing at random")


def cmd_prune(args: argparse.Namespace) -> int:
    from audit.compress.prune import prune

    check_prune_options(args)
    recipe = PruneRecipe(args.method, args.sparsity, args.pattern, per_row=args.scope == "row", exclude=tuple(args.exclude))
    calibration = CalibrationSpec(
        CALIBRATION.nsamples if args.nsamples is None else args.nsamples,
        CALIBRATION.seqlen if args.seqlen is None else args.seqlen,
        CALIBRATION.seed if args.seed is None else args.seed,
        str(args.calib) if args.calib else None,
        args.statistics or CALIBRATION.statistics,
    )
    result = common.run_job(
        prune(
            args.model, recipe, args.out, calibration=calibration, force=args.force, options=common.load_options(args),
            text=args.text, chunk_tokens=_chunk(args),
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


def check_quantize_options(args: argparse.Namespace) -> None:
    """Refuse, before anything is loaded, an option the scheme would ignore, and a text for a
    perplexity that is not measured (it would never be read, nor its absence noticed). An
    unknown scheme is left to `quantize`, which names the known ones."""
    if args.scheme in QUANTIZATION_SCHEME_NAMES:
        if args.smoothing is not None and args.scheme != "int8-dynamic":
            raise UserError(f"--smoothing applies to int8-dynamic only, not {args.scheme}")
        if args.block_size is not None and args.scheme not in blocked_schemes():
            raise UserError(f"--block-size applies to {' and '.join(blocked_schemes())} only, not {args.scheme}")
    if args.block_size is not None and args.block_size not in INT4_BLOCK_SIZES:
        raise UserError(f"--block-size: the block size must be one of {', '.join(map(str, INT4_BLOCK_SIZES))}, not {args.block_size}")
    if args.no_perplexity:
        given = [flag for flag, value in (("--text", args.text), ("--chunk", args.chunk)) if value is not None]
        if given:
            raise UserError(f"{given[0]} applies to the perplexity, which --no-perplexity skips; give one or the other")


def cmd_quantize(args: argparse.Namespace) -> int:
    from audit.compress.quantize import QuantizeSettings, quantize

    check_quantize_options(args)
    smoothing = DEFAULT_SMOOTHING_ALPHA
    if args.smoothing is not None:
        smoothing = None if args.smoothing == NO_SMOOTHING else args.smoothing
    block_size = DEFAULT_INT4_BLOCK_SIZE if args.block_size is None else args.block_size
    settings = QuantizeSettings(block_size=block_size, smoothing=smoothing)
    result = common.run_job(
        quantize(
            args.model, args.scheme, args.out, force=args.force, options=common.load_options(args),
            settings=settings, measure_perplexity=not args.no_perplexity,
            text=args.text, chunk_tokens=_chunk(args),
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
        result = yield from perplexity(model, text, chunk_tokens=_chunk(args), source=source)
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

"""Pruning a model: the layer-sequential walk over decoder blocks, and the whole prune command
(load, measure, prune, save dense and compressed) as one cancellable job."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

import torch
from torch import nn

from audit import atomic
from audit.compress.calibration import CalibrationSet, calibration_set
from audit.compress.layers import (
    InputStatistics,
    PrunableLayer,
    advance,
    capture_block_inputs,
    find_decoder_blocks,
    iter_layers,
    prunable_layers,
    run_block,
    sparsity_report,
)
from audit.compress.methods import DAMPED_METHODS, PRUNING_METHODS, LayerStats, PruneSpec, layer_seed
from audit.compress.output import check_output_target, float_torch_model, model_meta, save_model_folder
from audit.compress.recipe import PruneRecipe, check_scope
from audit.compress.storage import dense_state, save_dense, save_sparse
from audit.errors import UserError
from audit.models.interface import MB
from audit.models.loader import LoadOptions, folder_size_bytes, load_model, memory_budget_bytes
from audit.models.meta import SPARSE_FILE, SPARSE_FORMAT
from audit.perplexity import DEFAULT_CHUNK_TOKENS, perplexity, text_source
from audit.plans import CalibrationSpec
from audit.progress import Job, Progress, check_cancel, relay
from hardware.memory import peak_rss_bytes, process_rss_bytes, release_free_heap, reset_peak_rss
from hardware.sampler import ResourceSampler

COMPRESSED_SUBFOLDER = "compressed"


def layer_spec(recipe: PruneRecipe, seed: int = 0) -> PruneSpec:
    """What the recipe asks of each weight matrix: the one place a recipe becomes the
    per-layer spec, so every field of the recipe reaches the maths."""
    assert recipe.sparsity is not None
    scope = check_scope(recipe.method, recipe.scope)
    return PruneSpec(sparsity=recipe.sparsity, pattern=recipe.parsed_pattern, scope=scope, seed=seed)


def check_recipe(recipe: PruneRecipe, calibration: CalibrationSpec = CalibrationSpec()) -> PruneSpec:
    """Check a recipe and the calibration it will use before anything slow; the per-layer spec."""
    spec = layer_spec(recipe, calibration.seed)
    if PRUNING_METHODS.meta(recipe.method)["needs"]:
        if calibration.nsamples < 1:
            raise UserError(f"the number of calibration samples must be at least 1, got {calibration.nsamples}")
        if calibration.seqlen < 2:
            raise UserError(f"calibration sequence length must be at least 2, got {calibration.seqlen}")
    return spec


def recipe_record(
    recipe: PruneRecipe, spec: PruneSpec, calib: CalibrationSet | None, statistics: str = "sequential",
    damping: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The recipe as stored with the pruned model: what was asked and what it resolved to.
    `damping`: the damping each layer's Hessian took (`PruneOutcome.damping`), once pruned."""
    meta = PRUNING_METHODS.meta(recipe.method)
    record: dict[str, Any] = {
        "method": recipe.method,
        "pattern": str(spec.pattern),
        "target_sparsity": spec.sparsity,  # the fraction of weights removed, N:M included
        "per_row": recipe.per_row,
        "scope": spec.scope if meta["scopes"] else None,
        "seed": spec.seed,
        "exclude": list(recipe.exclude),
    }
    if recipe.method == "sparsegpt":
        record.update(blocksize=spec.blocksize, damp=spec.damp)  # damp: the damping asked for
        if damping is not None:
            # A Hessian that will not factor is damped up to 1000 times more: the largest damping
            # used, and each layer that took more than was asked with what it took.
            record["damp_used_max"] = max(damping.values(), default=spec.damp)
            record["damp_raised"] = {name: used for name, used in damping.items() if used != spec.damp}
    record["calibration"] = calib.to_dict() if calib is not None else None
    if calib is not None:
        record["statistics"] = statistics
    return record


def activation_bytes_per_token(model: nn.Module) -> int:
    """Bytes of block inputs the calibration walk holds per calibration token: one hidden state
    at the model's float dtype (the statistics are per layer, whatever the sample count)."""
    hidden = getattr(model.config.get_text_config(), "hidden_size", 0) or 0
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return int(hidden) * torch.empty((), dtype=dtype).element_size()


@dataclass
class PruneOutcome:
    per_layer: dict[str, float]
    actual_sparsity: float
    seconds: float
    layers: int
    calibration: dict[str, Any] | None = None
    shared_inputs: list[list[str]] = field(default_factory=list)
    decoder_sparsity: float | None = None  # over all the decoder blocks' linear layers
    statistics: dict[str, LayerStats] | None = None  # dense input norms, which serve any sparsity
    damping: dict[str, float] | None = None  # a damping method's: the damping each layer took
    statistics_known: bool = False  # the statistics given as `known` served: no calibration pass


def _prune_layer(method: str, layer: PrunableLayer, stats: Any, spec: PruneSpec, damping: dict[str, float]) -> None:
    """Prune one layer in place; a method that damps a Hessian adds the damping it used to `damping`."""
    fn = PRUNING_METHODS.get(method)
    spec = replace(spec, seed=layer_seed(spec.seed, layer.name))
    damped = DAMPED_METHODS.get(method)
    if damped is None:
        layer.write(fn(layer.read(), stats, spec))
        return
    weight, damping[layer.name] = damped(layer.read(), stats, spec)
    layer.write(weight)


STATISTICS = ("sequential", "dense")


def prune_layers(
    model: nn.Module,
    method: str,
    spec: PruneSpec,
    calibration: torch.Tensor | None = None,
    exclude: Sequence[str] = (),
    cancel: threading.Event | None = None,
    *,
    statistics: str = "sequential",
    known: dict[str, LayerStats] | None = None,
) -> Job[PruneOutcome]:
    """Prune every linear layer of the decoder blocks in place.

    Methods that need statistics of the layers' inputs calibrate block by block, with only one
    block's statistics being gathered at a time and each layer's dropped once it is pruned; one
    set of block activations is held for the whole walk (each sample's output overwrites its
    input). `statistics` "sequential": the inputs of block i are the outputs of blocks 0..i-1
    already pruned (Sun et al.'s reference). "dense": every block sees what the dense model
    passes it (Rath & Maliakkal's code), one forward per block; the statistics then do not
    depend on the sparsity: a method that needs only input norms returns them
    (`PruneOutcome.statistics`), and given back as `known` they serve any other sparsity
    without a forward pass.
    """
    if statistics not in STATISTICS:
        raise UserError(f"unknown calibration statistics {statistics!r}; known: {', '.join(STATISTICS)}")
    started = time.perf_counter()
    needs = PRUNING_METHODS.meta(method)["needs"]
    groups = prunable_layers(model, exclude)
    for layer in iter_layers(groups):
        if spec.pattern.structured and layer.shape[1] % (spec.pattern.group or 1):
            raise UserError(f"pattern {spec.pattern} needs input sizes divisible by {spec.pattern.group}; {layer.name} has {layer.shape[1]}")
    n_blocks = len(groups)
    shared: list[list[str]] = []
    gathered: dict[str, LayerStats] = {}
    damping: dict[str, float] = {}
    if not needs:
        for index, layers in enumerate(groups):
            check_cancel(cancel)
            for layer in layers:
                _prune_layer(method, layer, None, spec, damping)
            yield Progress("prune", index + 1, n_blocks, f"block {index + 1}/{n_blocks}")
    elif known is not None and statistics_problem(known, list(iter_layers(groups))) is None:
        for index, layers in enumerate(groups):
            check_cancel(cancel)
            for layer in layers:
                _prune_layer(method, layer, known[layer.name], spec, damping)
            yield Progress("prune", index + 1, n_blocks, f"block {index + 1}/{n_blocks} (shared calibration)")
        gathered = known
    else:
        if calibration is None:
            raise ValueError(f"{method} needs calibration samples")
        dense = statistics == "dense"
        keep = dense and needs == "norms"  # input norms are small; Hessians are not kept
        _, blocks = find_decoder_blocks(model)
        yield Progress("prune", 0, n_blocks, "capturing the inputs of the first block")
        # One (samples x tokens x hidden) tensor for the whole walk: each sample's block output
        # is written over its input, so activations are never held twice.
        inputs = capture_block_inputs(model, blocks[0], calibration, cancel)
        release_free_heap()
        n = len(inputs.hidden)
        for index, (block, layers) in enumerate(zip(blocks, groups)):
            if layers:
                with InputStatistics(layers, needs) as stats:
                    for sample in range(n):
                        check_cancel(cancel)
                        stats.new_forward()
                        out = run_block(block, inputs, sample)
                        stats.new_forward()  # the layers' inputs are summed in: let them go now
                        if dense:  # the dense block's output is the next block's input
                            advance(inputs, sample, out)
                        del out
                        if sample % 8 == 7:
                            yield Progress("prune", index + 0.5 * (sample + 1) / n, n_blocks, f"block {index + 1}/{n_blocks}: calibrating")
                release_free_heap()  # the forwards' scratch, before the layers' own
                if index == 0:
                    shared = stats.layers_sharing_inputs()
                for layer in layers:
                    check_cancel(cancel)
                    layer_stats = stats.stats(layer)
                    if keep:
                        gathered[layer.name] = layer_stats
                    _prune_layer(method, layer, layer_stats, spec, damping)
                    # A Hessian goes as soon as the last layer reading its input is pruned.
                    stats.release(layer)
                    del layer_stats
                    release_free_heap()
                del stats
            if not (dense and layers):
                # The next block sees what this block, pruned, now outputs. Samples are independent,
                # so each output replaces its input.
                for sample in range(n):
                    check_cancel(cancel)
                    advance(inputs, sample, run_block(block, inputs, sample))
            release_free_heap()
            yield Progress("prune", index + 1, n_blocks, f"block {index + 1}/{n_blocks}")
        del inputs
        release_free_heap()
    per_layer, actual = sparsity_report(list(iter_layers(groups)))
    # Over every linear layer of the decoder blocks, the excluded ones too: what the model lost.
    _, decoder = sparsity_report(list(iter_layers(prunable_layers(model)))) if exclude else (None, actual)
    return PruneOutcome(
        per_layer, actual, time.perf_counter() - started, len(per_layer), shared_inputs=shared, decoder_sparsity=decoder,
        statistics=gathered or None, damping=damping if method in DAMPED_METHODS else None,
        statistics_known=known is not None and gathered is known,
    )


# -- input norms shared by the sparsities of a sweep -----------------------------------------------
def statistics_key(model_spec: str, recipe: PruneRecipe, calibration: CalibrationSpec) -> str:
    """The name of dense input norms: the model, the layers pruned and the calibration as asked
    (not the method's sparsity, pattern or scope). What the same settings may still not give the
    same norms from is `statistics_basis`, kept in the file and checked when it is read."""
    import hashlib

    basis = {"model": model_spec, "exclude": sorted(recipe.exclude), "calibration": asdict(calibration)}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:24]


def statistics_basis(model: nn.Module, folder: str | None, calib: CalibrationSet) -> dict[str, Any]:
    """What dense input norms were gathered from, beyond the settings that name them: the
    calibration windows themselves (a calibration file edited under the same name, or another
    tokenizer, gives other windows), the dtype the model computes in, and the model's files as
    they stood (name, size and time written: weights replaced under the same name give other
    norms). Norms whose basis differs are gathered again."""
    import hashlib

    windows = calib.samples.to(torch.int64).contiguous()
    files: list[list[Any]] | None = None
    if folder and Path(folder).is_dir():
        files = []
        for entry in sorted(Path(folder).iterdir()):
            with contextlib.suppress(OSError):
                if entry.is_file():
                    stat = entry.stat()
                    files.append([entry.name, stat.st_size, stat.st_mtime_ns])
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return {
        "calibration_windows": f"{tuple(windows.shape)} sha256:{hashlib.sha256(windows.numpy().tobytes()).hexdigest()}",
        "dtype": str(dtype),
        "model_files": None if files is None else "sha256:" + hashlib.sha256(json.dumps(files).encode()).hexdigest(),
    }


def statistics_problem(statistics: Mapping[str, LayerStats], layers: Sequence[PrunableLayer]) -> str | None:
    """What keeps input norms from being those of `layers` (None when they can be): every layer
    and no other has norms, one float64 sum of squares per input (as the walk gathers them),
    each finite and not negative, over a positive whole number of tokens."""
    names = {layer.name for layer in layers}
    if set(statistics) != names:
        missing, extra = sorted(names - set(statistics)), sorted(set(statistics) - names)
        return f"norms for other layers (missing {missing[:3]}, not pruned {extra[:3]})"
    for layer in layers:
        stats = statistics[layer.name]
        norms, tokens = stats.sq_norms, stats.n_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            return f"{layer.name}: {tokens!r} tokens"
        if not isinstance(norms, torch.Tensor) or norms.dtype != torch.float64 or tuple(norms.shape) != (layer.shape[1],):
            shown = f"{norms.dtype} {tuple(norms.shape)}" if isinstance(norms, torch.Tensor) else type(norms).__name__
            return f"{layer.name}: norms of {shown} for {layer.shape[1]} inputs"
        if not bool(torch.isfinite(norms).all()) or bool((norms < 0).any()):
            return f"{layer.name}: norms that are not finite or are negative"
    return None


def read_statistics(path: Path, layers: Sequence[PrunableLayer], basis: Mapping[str, Any] | None = None) -> dict[str, LayerStats] | None:
    """Norms kept by an earlier sparsity of the sweep for `layers`; None when there are none,
    or when they cannot be read, are not norms of those layers (`statistics_problem`) or, given
    `basis`, were gathered from another (`statistics_basis`): they are then gathered again,
    never used for a mask."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        tensors = load(data)
        # The safetensors header: its length (8 bytes, little-endian), then JSON with the metadata.
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        tokens = json.loads(header["__metadata__"]["n_tokens"])
        if basis is not None and json.loads(header["__metadata__"]["basis"]) != dict(basis):
            return None
        # The count as stored: a count that is not a whole number is refused, not rounded.
        statistics = {name: LayerStats(tokens[name], tensor) for name, tensor in tensors.items()}
    except (OSError, SafetensorError, ValueError, KeyError, TypeError, IndexError, RecursionError):
        return None
    return statistics if statistics_problem(statistics, layers) is None else None


def gathering_statistics(path: Path, cancel: threading.Event | None = None) -> Job[IO[str]]:
    """The turn to gather the norms kept at `path`: held (the lock file returned) once no other
    process gathers them, and after what a writer killed midway left is removed. A process
    gathering them now is waited for, so that its norms serve here too."""
    lock = yield from atomic.writer_lock_when_free(path, "prune", "waiting for another process gathering the same calibration statistics", cancel)
    atomic.remove_unfinished(path)
    return lock


def write_statistics(path: Path, statistics: dict[str, LayerStats], basis: Mapping[str, Any] | None = None) -> None:
    """Keep the norms at `path`, with what they were gathered from (`statistics_basis`); the
    caller holds its turn (`gathering_statistics`)."""
    from safetensors.torch import save

    # Layers fed one input share its norms: each is written as its own tensor.
    tensors = {name: s.sq_norms.detach().clone() for name, s in statistics.items()}
    tokens = json.dumps({name: s.n_tokens for name, s in statistics.items()})
    metadata = {"n_tokens": tokens}
    if basis is not None:
        metadata["basis"] = json.dumps(dict(basis), sort_keys=True)
    atomic.write_bytes(path, save(tensors, metadata=metadata))


# -- the whole command ------------------------------------------------------------------------
def prune(
    model_spec: str,
    recipe: PruneRecipe,
    out: Path,
    *,
    calibration: CalibrationSpec = CalibrationSpec(),
    force: bool = False,
    options: LoadOptions = LoadOptions(),
    text: Path | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    measure_perplexity: bool = True,
    cancel: threading.Event | None = None,
    shared_statistics: Path | None = None,
    out_held: bool = False,
) -> Job[dict[str, Any]]:
    """Load, measure perplexity, prune, measure again, and save the dense and compressed sparse
    variants. Nothing is written until the end, into a temporary folder renamed on success.
    `measure_perplexity=False` leaves perplexity to the caller (an audit run measures it once
    per variant, as a step of its own). `calibration.seed` also seeds the random method.
    `shared_statistics`: a folder where dense input norms (`calibration.statistics = "dense"`)
    are kept, so that the sparsities of one sweep calibrate once.
    `out_held`: the caller holds `out`'s writer lock and has removed what a killed writer left
    (an audit run's compress step); else it is held here while `out` is written."""
    total_started = time.perf_counter()
    baseline_bytes = process_rss_bytes()
    spec = check_recipe(recipe, calibration)
    out = Path(out).expanduser()
    # The dense folder and its compressed copy.
    check_output_target(model_spec, out, force=force, options=options, copies=2)
    ppl_text, ppl_source = text_source(text)
    with contextlib.nullcontext() if out_held else atomic.sole_writer(out), ResourceSampler() as sampler:
        lm = yield from relay(load_model(model_spec, options, cancel))
        model = float_torch_model(lm, "pruning")
        loaded_bytes = process_rss_bytes()
        prunable_layers(model, recipe.exclude)  # bad exclude patterns fail before the slow part
        needs = PRUNING_METHODS.meta(recipe.method)["needs"]
        calib: CalibrationSet | None = None
        calib_activation_bytes = 0
        folder: str | None = None  # the model's files, which shared input norms name
        if needs:
            # The walk holds each sample's hidden states entering a block, at the model's dtype.
            per_token = activation_bytes_per_token(model)
            facts = lm.facts()
            folder = facts.path
            calib = calibration_set(
                lm, Path(calibration.file) if calibration.file else None, nsamples=calibration.nsamples,
                seqlen=calibration.seqlen, seed=calibration.seed, context_length=facts.context_length,
                bytes_per_token=per_token, budget_bytes=memory_budget_bytes(options), cancel=cancel,
            )
            # The hidden states entering one block, for every sample.
            calib_activation_bytes = calib.samples.numel() * per_token
        before = after = None
        if measure_perplexity:
            before = yield from relay(perplexity(lm, ppl_text, chunk_tokens=chunk_tokens, source=ppl_source, cancel=cancel), "perplexity before")
        weights_f32_bytes = sum(w.numel() for _, w in dense_state(model)) * 4
        load_peak = peak_rss_bytes()
        reset_peak_rss()
        cache = None
        if shared_statistics is not None and needs == "norms" and calibration.statistics == "dense":
            cache = Path(shared_statistics) / f"{statistics_key(model_spec, recipe, calibration)}.safetensors"
        known = turn = basis = None
        if cache is not None:
            assert calib is not None
            basis = statistics_basis(model, folder, calib)
            pruned_layers = list(iter_layers(prunable_layers(model, recipe.exclude)))
        if cache is not None and (known := read_statistics(cache, pruned_layers, basis)) is None:
            turn = yield from gathering_statistics(cache, cancel)
            if (known := read_statistics(cache, pruned_layers, basis)) is not None:  # gathered by the process waited for
                turn.close()
                turn = None
        try:
            outcome = yield from prune_layers(
                model, recipe.method, spec, calib.samples if calib is not None else None, recipe.exclude, cancel,
                statistics=calibration.statistics, known=known,
            )
            if turn is not None and outcome.statistics:
                write_statistics(cache, outcome.statistics, basis)
        finally:
            if turn is not None:
                turn.close()
        prune_peak = peak_rss_bytes()
        if measure_perplexity:
            after = yield from relay(perplexity(lm, ppl_text, chunk_tokens=chunk_tokens, source=ppl_source, cancel=cancel), "perplexity after")
        record = recipe_record(recipe, spec, calib, calibration.statistics, outcome.damping)
        record["actual_sparsity"] = outcome.actual_sparsity
        if cache is not None:
            record["statistics_shared"] = outcome.statistics_known  # read from an earlier sparsity's pass
        check_cancel(cancel)
        yield Progress("save", 0, 2, "writing the dense model")
        with atomic.directory(out, force=force) as tmp:
            note = (
                f"pruned with {recipe.method} ({spec.pattern}) to {outcome.actual_sparsity:.3f} sparsity "
                f"over {outcome.layers} linear layers of the decoder blocks"
            )
            meta = model_meta(lm, model_spec, {"prune": record}, note)
            save_model_folder(lm, tmp, meta, lambda folder: save_dense(model, folder))
            yield Progress("save", 1, 2, "writing the compressed sparse model")
            check_cancel(cancel)
            compressed = tmp / COMPRESSED_SUBFOLDER
            compressed.mkdir()
            items = dense_state(model)
            sparse_meta = dict(meta, storage={"format": SPARSE_FORMAT, "file": SPARSE_FILE, "loaded_bytes": sum(t.numel() * t.element_size() for _, t in items)})
            save_model_folder(lm, compressed, sparse_meta, lambda folder: save_sparse(items, folder / SPARSE_FILE))
            compressed_bytes = folder_size_bytes(compressed)
            dense_bytes = folder_size_bytes(tmp) - compressed_bytes
        yield Progress("save", 2, 2, "saved")
    summary = sampler.summary()
    whole_peak_mb = max(summary["rss_peak_mb"], (load_peak or 0) / MB)
    result: dict[str, Any] = {
        "model": model_spec,
        "out": str(out),
        "compressed_path": str(out / COMPRESSED_SUBFOLDER),
        "method": recipe.method,
        "pattern": str(spec.pattern),
        "target_sparsity": spec.sparsity,
        "actual_sparsity": round(outcome.actual_sparsity, 6),
        "decoder_sparsity": None if outcome.decoder_sparsity is None else round(outcome.decoder_sparsity, 6),
        "per_layer": {name: round(value, 6) for name, value in outcome.per_layer.items()},
        "pruned_layers": outcome.layers,
        "seconds": round(outcome.seconds, 3),
        "total_seconds": round(time.perf_counter() - total_started, 3),
        "rss_peak_mb": round(whole_peak_mb, 2),
        "rss_peak_mb_pruning": round(prune_peak / MB, 2) if prune_peak else None,
        # The process before loading anything: interpreter, torch and transformers.
        "rss_baseline_mb": round(baseline_bytes / MB, 2),
        # The process once the model is loaded: pruning's peak less this is what pruning added.
        "rss_loaded_mb": round(loaded_bytes / MB, 2),
        "weights_mb_float32": round(weights_f32_bytes / MB, 2),
        "calibration_activations_mb": round(calib_activation_bytes / MB, 2),
        "size_on_disk_mb": {"dense": round(dense_bytes / MB, 2), "compressed": round(compressed_bytes / MB, 2)},
        "perplexity_before": round(before.perplexity, 4) if before else None,
        "perplexity_after": round(after.perplexity, 4) if after else None,
        "perplexity_tokens": after.n_tokens if after else None,
        "perplexity_text": after.source if after else None,
        "recipe": record,
    }
    lm.close()
    return result

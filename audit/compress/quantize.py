"""Quantization schemes: PyTorch dynamic int8, ONNX Runtime dynamic int8, ONNX Runtime 4-bit weights."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import shutil
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from audit import atomic
from audit.compress.output import check_output_target, float_torch_model, model_meta, save_model_folder
from audit.compress.recipe import DEFAULT_INT4_BLOCK_SIZE, INT4_BLOCK_SIZES, QUANTIZATION_SCHEME_FACTS
from audit.compress.storage import model_class, unique_tensors, write_safetensors
from audit.errors import UserError
from audit.models.interface import MB, LanguageModel
from audit.models.loader import LoadOptions, load_model, model_size_bytes
from audit.models.meta import INT8_FILE, INT8_FORMAT, WEIGHTS_META_KEY, write_meta
from audit.perplexity import DEFAULT_CHUNK_TOKENS, perplexity, text_source
from audit.progress import Job, Progress, check_cancel, relay
from audit.registry import Registry
from hardware.sampler import ResourceSampler


@dataclass(frozen=True)
class QuantizeSettings:
    block_size: int = DEFAULT_INT4_BLOCK_SIZE  # onnx-int4: weights per quantization block
    cpuinfo: Path = Path("/proc/cpuinfo")  # injectable for tests of the x86 config choice


# A scheme writes the variant of `lm` into a folder and returns facts about what it did.
SchemeFn = Callable[[LanguageModel, Path, QuantizeSettings, dict, "threading.Event | None"], Job[dict]]
QUANTIZATION_SCHEMES: Registry[SchemeFn] = Registry("quantization scheme")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence library chatter (torch.ao.quantization's notice that it moves to torchao, the
    exporter's notes on tied weights): the command's own progress and result say what matters."""
    loggers = [logging.getLogger(name) for name in ("optimum", "onnxruntime", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


# -- PyTorch dynamic int8 ---------------------------------------------------------------------
def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def int8_targets(model: nn.Module) -> tuple[list[str], list[str]]:
    """(linear layers to quantize, GPT-2 Conv1D layers among them to turn into nn.Linear first):
    every linear layer except the output head, as in `linear_weights`."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names, conv = [], []
    for name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, Conv1D):
            conv.append(name)
            names.append(name)
        elif isinstance(module, nn.Linear):
            names.append(name)
    return names, conv


def _linear_from_conv1d(module: nn.Module) -> nn.Linear:
    weight = module.weight.detach()  # (in, out)
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=module.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.t().contiguous(), requires_grad=False)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
    return linear


def quantize_int8_dynamic(model: nn.Module) -> tuple[list[str], list[str]]:
    """Replace the linear layers (output head kept) by PyTorch dynamic int8 layers, in place:
    int8 weights with one scale per output channel; activations quantized per batch at run time."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names, conv = int8_targets(model)
    for name in conv:
        _set_module(model, name, _linear_from_conv1d(model.get_submodule(name)))
    with _quiet():
        quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8, inplace=True)
    return names, conv


def _quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    import torch.ao.nn.quantized.dynamic as nnqd

    return {name: m for name, m in model.named_modules() if isinstance(m, nnqd.Linear)}


def save_int8_dynamic(model: nn.Module, path: Path, linearized: list[str]) -> int:
    """Int8 weights, their per-channel scales and zero points, and every float tensor as is."""
    quantized = _quantized_modules(model)
    prefixes = tuple(f"{name}." for name in quantized)
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor) and not k.startswith(prefixes)}
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    items: list[tuple[str, torch.Tensor]] = unique_tensors(state, tied)
    layers: dict[str, dict[str, Any]] = {}
    with _quiet():
        for name, module in quantized.items():
            weight = module.weight()
            if weight.qscheme() not in (torch.per_channel_affine, torch.per_channel_symmetric):
                raise ValueError(f"{name}: expected per-channel int8 weights, got {weight.qscheme()}")
            items.append((f"{name}.weight_int8", weight.int_repr()))
            items.append((f"{name}.weight_scale", weight.q_per_channel_scales().to(torch.float64)))
            items.append((f"{name}.weight_zero_point", weight.q_per_channel_zero_points().to(torch.int64)))
            bias = module.bias()
            if bias is not None:
                items.append((f"{name}.bias", bias.detach()))
            layers[name] = {"in_features": module.in_features, "out_features": module.out_features, "bias": bias is not None, "axis": int(weight.q_per_channel_axis())}
    specs = [(name, t.dtype, tuple(t.shape)) for name, t in items]
    meta = {"format": INT8_FORMAT, "version": 1, "layers": layers, "linearized": linearized}
    return write_safetensors(path, items, specs, {"format": "pt", WEIGHTS_META_KEY: json.dumps(meta)})


def load_int8_model(folder: Path, trust_remote_code: bool = False) -> nn.Module:
    """Rebuild a dynamic int8 model: the architecture on the meta device, its quantized layers
    from the stored integers (bit for bit), then the float tensors assigned in place."""
    import torch.ao.nn.quantized.dynamic as nnqd
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, GenerationConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    cls = model_class(config, trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = cls._from_config(config, dtype=torch.float32)
    with safe_open(str(folder / INT8_FILE), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get(WEIGHTS_META_KEY, "{}"))
        if meta.get("format") != INT8_FORMAT:
            raise UserError(f"{folder / INT8_FILE} is not an edge-audit int8-dynamic file")
        for name in meta.get("linearized", []):
            module = model.get_submodule(name)
            rows, cols = module.weight.shape
            _set_module(model, name, nn.Linear(rows, cols, bias=module.bias is not None, device="meta"))
        prefixes = tuple(f"{name}." for name in meta["layers"])
        state = {k: handle.get_tensor(k) for k in handle.keys() if not k.startswith(prefixes)}
        # Float tensors first, while the layers to quantize are still plain (meta) linears.
        result = model.load_state_dict(state, strict=False, assign=True)
        if result.unexpected_keys:
            raise UserError(f"{folder}: unexpected tensors {result.unexpected_keys[:3]}")
        with _quiet():
            for name, info in meta["layers"].items():
                layer = nnqd.Linear(info["in_features"], info["out_features"], bias_=info["bias"], dtype=torch.qint8)
                weight = torch._make_per_channel_quantized_tensor(
                    handle.get_tensor(f"{name}.weight_int8"),
                    handle.get_tensor(f"{name}.weight_scale"),
                    handle.get_tensor(f"{name}.weight_zero_point"),
                    info["axis"],
                )
                bias = handle.get_tensor(f"{name}.bias") if info["bias"] else None
                layer.set_weight_bias(weight, bias)
                _set_module(model, name, layer)
    model.tie_weights()
    missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if missing:
        raise UserError(f"{folder} is incomplete: no values for {', '.join(missing[:3])}")
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model.eval()


@QUANTIZATION_SCHEMES.register("int8-dynamic", **QUANTIZATION_SCHEME_FACTS["int8-dynamic"])
def int8_dynamic(lm: LanguageModel, folder: Path, settings: QuantizeSettings, meta: dict, cancel: threading.Event | None) -> Job[dict]:
    model = float_torch_model(lm, "int8-dynamic")
    yield Progress("quantize", 0, 2, "quantizing linear layers to int8")
    names, linearized = quantize_int8_dynamic(model)
    check_cancel(cancel)
    yield Progress("quantize", 1, 2, "writing the int8 model")
    engine = torch.backends.quantized.engine
    meta = dict(meta, storage={"format": INT8_FORMAT, "file": INT8_FILE})
    save_model_folder(lm, folder, meta, lambda f: save_int8_dynamic(model, f / INT8_FILE, linearized))
    yield Progress("quantize", 2, 2, "written")
    return {"quantized_layers": len(names), "engine": engine}


# -- ONNX Runtime ------------------------------------------------------------------------------
def cpu_flags(cpuinfo: Path) -> set[str]:
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_cpu_config(machine: str, flags: set[str]) -> str:
    """Which ONNX Runtime int8 configuration fits this CPU."""
    machine = machine.lower()
    if machine in {"aarch64", "arm64"} or machine.startswith("armv8"):
        return "arm64"
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"  # also what ONNX Runtime's generic x86 kernels run


def _export_onnx(lm: LanguageModel, folder: Path) -> Path:
    """The float ONNX graph of the model (with past key values, as generation needs)."""
    if lm.backend == "onnxruntime":
        onnx_path = Path(getattr(lm, "onnx_path"))
        if lm.facts().quantization:
            raise UserError(f"{onnx_path.parent} is already quantized ({lm.facts().quantization}); quantize its float source instead")
        return onnx_path
    model = float_torch_model(lm, "ONNX export")
    from optimum.exporters.onnx import onnx_export_from_model

    folder.mkdir(parents=True, exist_ok=True)
    # The exporter prints its own progress and warnings; our progress stands in for them.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), _quiet():
        onnx_export_from_model(model, output=str(folder), task="text-generation-with-past", do_validation=False)
    return folder / "model.onnx"


def _large(path: Path) -> bool:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file()) > 1800 * MB


def _save_onnx_folder(lm: LanguageModel, folder: Path, meta: dict) -> None:
    config = getattr(getattr(lm, "model", None), "config", None)
    if config is not None:
        config.save_pretrained(folder)
    generation = getattr(getattr(lm, "model", None), "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    write_meta(folder, meta)


@QUANTIZATION_SCHEMES.register("onnx-int8", **QUANTIZATION_SCHEME_FACTS["onnx-int8"])
def onnx_int8(lm: LanguageModel, folder: Path, settings: QuantizeSettings, meta: dict, cancel: threading.Event | None) -> Job[dict]:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    target = int8_cpu_config(platform.machine(), cpu_flags(settings.cpuinfo))
    yield Progress("quantize", 0, 3, "exporting to ONNX")
    export_dir = folder / ".export"
    onnx_path = _export_onnx(lm, export_dir)
    check_cancel(cancel)
    yield Progress("quantize", 1, 3, f"quantizing to int8 ({target} configuration)")
    qconfig = getattr(AutoQuantizationConfig, target)(is_static=False, per_channel=True)
    quantizer = ORTQuantizer.from_pretrained(str(onnx_path.parent), file_name=onnx_path.name)
    with contextlib.redirect_stdout(io.StringIO()), _quiet():
        quantizer.quantize(quantization_config=qconfig, save_dir=str(folder), file_suffix=None, use_external_data_format=_large(onnx_path))
    produced = folder / f"{onnx_path.stem}.onnx"
    if produced.name != "model.onnx":
        produced.rename(folder / "model.onnx")
    shutil.rmtree(export_dir, ignore_errors=True)
    check_cancel(cancel)
    yield Progress("quantize", 2, 3, "writing config and tokenizer")
    _save_onnx_folder(lm, folder, dict(meta, quantization="int8"))
    yield Progress("quantize", 3, 3, "written")
    return {"cpu_config": target}


@QUANTIZATION_SCHEMES.register("onnx-int4", **QUANTIZATION_SCHEME_FACTS["onnx-int4"])
def onnx_int4(lm: LanguageModel, folder: Path, settings: QuantizeSettings, meta: dict, cancel: threading.Event | None) -> Job[dict]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    yield Progress("quantize", 0, 3, "exporting to ONNX")
    export_dir = folder / ".export"
    onnx_path = _export_onnx(lm, export_dir)
    check_cancel(cancel)
    yield Progress("quantize", 1, 3, f"quantizing weights to 4 bits (blocks of {settings.block_size})")
    graph = onnx.load(str(onnx_path))
    quantizer = MatMulNBitsQuantizer(graph, bits=4, block_size=settings.block_size, is_symmetric=False, op_types_to_quantize=("MatMul",))
    with contextlib.redirect_stdout(io.StringIO()), _quiet():
        quantizer.process()
    quantizer.model.save_model_to_file(str(folder / "model.onnx"), use_external_data_format=_large(onnx_path))
    del graph, quantizer
    shutil.rmtree(export_dir, ignore_errors=True)
    check_cancel(cancel)
    yield Progress("quantize", 2, 3, "writing config and tokenizer")
    _save_onnx_folder(lm, folder, dict(meta, quantization="int4-weight-only"))
    yield Progress("quantize", 3, 3, "written")
    return {"block_size": settings.block_size}


# -- the command ---------------------------------------------------------------------------------
def quantize(
    model_spec: str,
    scheme: str,
    out: Path,
    *,
    force: bool = False,
    options: LoadOptions = LoadOptions(),
    settings: QuantizeSettings = QuantizeSettings(),
    measure_perplexity: bool = True,
    text: Path | None = None,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    cancel: threading.Event | None = None,
) -> Job[dict[str, Any]]:
    """Quantize a model (any source, a pruned folder included) into `out`; then load the written
    folder through the common interface and measure its perplexity next to the source's."""
    started = time.perf_counter()
    entry = QUANTIZATION_SCHEMES.entry(scheme)
    if scheme == "onnx-int4" and settings.block_size not in INT4_BLOCK_SIZES:
        raise UserError(f"block size must be one of {', '.join(map(str, INT4_BLOCK_SIZES))}, got {settings.block_size}")
    out = Path(out).expanduser()
    check_output_target(model_spec, out, force=force, options=options)
    ppl_text, ppl_source = text_source(text) if measure_perplexity else (None, None)
    before = after = None
    with ResourceSampler() as sampler:
        lm = yield from relay(load_model(model_spec, options, cancel))
        source_bytes = lm.facts().size_on_disk_bytes
        if ppl_text is not None:
            before = yield from relay(perplexity(lm, ppl_text, chunk_tokens=chunk_tokens, source=ppl_source, cancel=cancel), "perplexity before")
        recipe: dict[str, Any] = {"scheme": scheme}
        if scheme == "onnx-int4":
            recipe["block_size"] = settings.block_size
        note = f"quantized with {scheme}: {entry.meta['description']}"
        quantize_started = time.perf_counter()
        with atomic.directory(out, force=force) as tmp:
            meta = model_meta(lm, model_spec, {"quantize": recipe}, note)
            meta["quantization"] = scheme
            details = yield from entry.obj(lm, tmp, settings, meta, cancel)
        quantize_seconds = time.perf_counter() - quantize_started
        lm.close()
        del lm
        variant = yield from relay(load_model(str(out), options, cancel), "load variant")
        if ppl_text is not None:
            after = yield from relay(perplexity(variant, ppl_text, chunk_tokens=chunk_tokens, source=ppl_source, cancel=cancel), "perplexity after")
        facts = variant.facts()
        variant.close()
    size = model_size_bytes(out)
    result: dict[str, Any] = {
        "model": model_spec,
        "out": str(out),
        "scheme": scheme,
        "backend": entry.meta["backend"],
        "bits": entry.meta["bits"],
        "size_on_disk_mb": round(size / MB, 2),
        "source_size_on_disk_mb": round(source_bytes / MB, 2),
        "size_ratio": round(size / source_bytes, 4) if source_bytes else None,
        "weight_sparsity": None if facts.weight_sparsity is None else round(facts.weight_sparsity, 6),
        "seconds": round(quantize_seconds, 3),
        "total_seconds": round(time.perf_counter() - started, 3),
        "rss_peak_mb": sampler.summary()["rss_peak_mb"],
        "perplexity_before": None if before is None else round(before.perplexity, 4),
        "perplexity_after": None if after is None else round(after.perplexity, 4),
        "perplexity_tokens": None if after is None else after.n_tokens,
        **details,
    }
    return result

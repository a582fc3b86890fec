"""Quantization schemes: PyTorch dynamic int8, ONNX Runtime int8 (weights and activations in blocks), ONNX Runtime 4-bit weights."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import shutil
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from audit import atomic
from audit.compress.int8_products import IntRows, SignSplit, group_shared_inputs, int_mm_slow, layer_products
from audit.compress.outliers import OutlierChoice, OutlierRule, choose_outliers, detect_outliers, measure_inputs
from audit.compress.smoothing import Smoothing, smooth
from audit.compress.output import check_output_target, float_torch_model, model_meta, save_model_folder
from audit.compress.recipe import DEFAULT_INT4_BLOCK_SIZE, DEFAULT_SMOOTHING_ALPHA, INT4_BLOCK_SIZES, QUANTIZATION_SCHEME_FACTS, valid_alpha
from audit.compress.storage import model_class, unique_tensors, write_safetensors
from audit.errors import UserError, first_line
from audit.models.interface import MB, LanguageModel
from audit.models.loader import LoadOptions, load_model, model_size_bytes, onnx_session_options
from audit.models.meta import CACHE_CHECKED_KEY, INT8_FILE, INT8_FORMAT, TIED_HEAD_KEY, WEIGHTS_META_KEY, write_meta
from audit.models.torch_lm import output_head
from audit.perplexity import DEFAULT_CHUNK_TOKENS, perplexity, text_source
from audit.progress import Job, Progress, check_cancel, relay
from audit.registry import Registry
from hardware.sampler import ResourceSampler


# int8-dynamic activation scales: PyTorch's own layers take one scale for the whole input, so one
# token with a very large value (the document-start token's, in many models) leaves the others a
# few levels; one scale per token gives every token its own range.
PER_TOKEN = "per-token"
PER_TENSOR = "per-tensor"
ACTIVATION_SCALES = (PER_TOKEN, PER_TENSOR)


@dataclass(frozen=True)
class QuantizeSettings:
    block_size: int = DEFAULT_INT4_BLOCK_SIZE  # onnx-int4, onnx-int8: weights per quantization block
    outliers: OutlierRule = OutlierRule()  # int8 schemes: which linear layers stay float
    activation_scales: str = PER_TOKEN  # int8-dynamic: one activation scale per token, or per tensor
    smoothing: float | None = DEFAULT_SMOOTHING_ALPHA  # int8-dynamic: SmoothQuant's alpha, or None for none


# A scheme writes the variant of `lm` into a folder and returns facts about what it did.
SchemeFn = Callable[[LanguageModel, Path, QuantizeSettings, dict, "threading.Event | None"], Job[dict]]
QUANTIZATION_SCHEMES: Registry[SchemeFn] = Registry("quantization scheme")

# The load dtypes (`--dtype`) each scheme can quantize from, and why not the others. PyTorch's
# dynamic int8 layers take and return float32 only, while the tensors they leave float (norms,
# embeddings, layers kept float) keep the load dtype: the written variant fails at the first
# product where the two meet. PyTorch's ONNX exporter cannot write bfloat16 weights; a float16
# graph exports, quantizes and scores.
_ONNX_DTYPES = (("float32", "float16"), "PyTorch's ONNX exporter cannot export bfloat16 weights")
SCHEME_DTYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "int8-dynamic": (("float32",), "its int8 layers compute in float32, and the norms, embeddings and layers it keeps float would stay in the other dtype"),
    "onnx-int8": _ONNX_DTYPES,
    "onnx-int4": _ONNX_DTYPES,
}


def check_dtype(scheme: str, dtype: str) -> None:
    """Refuse a load dtype `scheme` cannot quantize from, before anything loads: otherwise the
    mismatch shows only once the variant is written and scored, after minutes of work."""
    dtypes, why = SCHEME_DTYPES[scheme]
    if dtype not in dtypes:
        raise UserError(f"--dtype {dtype} cannot be used with {scheme}: {why}; use --dtype {' or '.join(dtypes)}")


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
    every linear layer, the output head included. In a small model the head is a large share of
    the weights read per token: a fifth of the default model's."""
    from transformers.pytorch_utils import Conv1D

    names, conv = [], []
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            conv.append(name)
            names.append(name)
        elif isinstance(module, nn.Linear):
            names.append(name)
    return names, conv


def require_finite_weights(lm: LanguageModel, scheme: str) -> None:
    """Refuse, naming the layer, a PyTorch model whose linear layers hold NaN or infinity: its
    int8 or 4-bit scales would be NaN or infinite too, and the variant's scores not numbers."""
    model = getattr(lm, "model", None)
    if lm.backend != "pytorch" or not isinstance(model, nn.Module):
        return
    for name in int8_targets(model)[0]:
        weight = getattr(model.get_submodule(name), "weight", None)
        if isinstance(weight, torch.Tensor) and weight.is_floating_point() and not bool(torch.isfinite(weight).all()):
            raise UserError(f"layer {name}: its weights hold NaN or infinity; a model with them cannot be quantized with {scheme}")


def _linear_from_conv1d(module: nn.Module) -> nn.Linear:
    weight = module.weight.detach()  # (in, out)
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=module.bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.t().contiguous(), requires_grad=False)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
    return linear


def quantize_int8_dynamic(
    model: nn.Module, keep_float: Sequence[str] = (), activation_scales: str = PER_TOKEN
) -> tuple[list[str], list[str]]:
    """Replace the linear layers, the output head included (`keep_float` kept), by PyTorch
    dynamic int8 layers, in place: int8 weights with one scale per output channel; activations
    quantized at run time with one scale per token (or per tensor, PyTorch's own). A tied head's
    int8 table then serves the token embeddings too (`share_head_with_embeddings`). Returns the
    layers quantized and the Conv1D layers among them."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names, conv = int8_targets(model)
    unknown = sorted(set(keep_float) - set(names))
    if unknown:
        raise UserError(f"cannot keep {unknown[0]} float: it is not one of the model's quantizable linear layers")
    kept = set(keep_float)
    names = [name for name in names if name not in kept]
    conv = [name for name in conv if name not in kept]
    tied = _tied_head(model, names)
    for name in conv:
        _set_module(model, name, _linear_from_conv1d(model.get_submodule(name)))
    with _quiet():
        quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, dtype=torch.qint8, inplace=True)
    if activation_scales == PER_TOKEN:
        for name in names:
            use_per_token_scales(model.get_submodule(name))
    if tied is not None:
        share_head_with_embeddings(model, *tied)
    return names, conv


def _tied_head(model: nn.Module, names: Sequence[str]) -> tuple[str, str] | None:
    """(input embeddings, output head) module names when the head is among `names` and shares its
    weight with the input embeddings (a tied model); None otherwise."""
    head = output_head(model)
    if head is None or not hasattr(model, "get_input_embeddings"):
        return None
    embeddings = model.get_input_embeddings()
    if not isinstance(embeddings, nn.Embedding) or getattr(head, "weight", None) is not embeddings.weight:
        return None
    modules = {id(module): name for name, module in model.named_modules()}
    head_name, embeddings_name = modules.get(id(head)), modules.get(id(embeddings))
    if head_name not in names or embeddings_name is None:
        return None
    return embeddings_name, head_name


class Int8Embedding(nn.Module):
    """Token embeddings looked up in an int8 output head's table. A tied model has one table for
    both; once the head is int8, the embeddings read the same integers and per-row scales (the
    head's output channels are the table's rows) instead of keeping a float copy: the table is
    held once, at a quarter of its float size, and a looked-up row is the dequantized row the head
    multiplies by. The integers belong to the head: not a parameter or buffer here, so neither
    saved nor counted twice."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        with _quiet():
            weight = head.weight()
        ints = getattr(head, "_int8_weight", None)
        self._ints = weight.int_repr() if ints is None else ints
        self._scales = weight.q_per_channel_scales().to(torch.float32)
        self.num_embeddings, self.embedding_dim = (int(n) for n in self._ints.shape)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(ids, self._ints).to(torch.float32)
        return rows.mul_(self._scales[ids].unsqueeze(-1))

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows of the output head"


def share_head_with_embeddings(model: nn.Module, embeddings: str, head: str) -> None:
    """Make the input embeddings `embeddings` read the int8 table of the output head `head`,
    where they are a plain lookup (a subclass may scale or change what it looks up: it keeps its
    float table), and mark the model's config untied either way, so that nothing ties a float
    table back onto the int8 head."""
    module = model.get_submodule(embeddings)
    if type(module) is nn.Embedding and module.max_norm is None:
        _set_module(model, embeddings, Int8Embedding(model.get_submodule(head)))
        model._int8_embeddings = (embeddings, head)  # type: ignore[assignment]  # saved with the weights
    config = getattr(model, "config", None)
    if config is not None:
        config.tie_word_embeddings = False
        text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        if text is not config:
            text.tie_word_embeddings = False


@functools.cache
def _single_token_kernel_exact() -> bool:
    """Whether FBGEMM's int8 kernel computes full-range products exactly on this CPU. Without
    VNNI instructions it adds pairs of uint8 x int8 products in 16 bits, which saturate at the
    grid's ends (PyTorch's own layers leave a bit of range unused for that reason); the
    check multiplies the largest levels, where that would show."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    try:
        with _quiet():
            n_out, n_in = 4, 64
            weight = torch.quantize_per_channel(
                torch.full((n_out, n_in), 127.0), torch.ones(n_out, dtype=torch.float64), torch.zeros(n_out, dtype=torch.long), 0, torch.qint8
            )
            packed = torch.ops.quantized.linear_prepack(weight, None)
            x = torch.full((1, n_in), 127.0)
            got = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x, 1.0, 128, packed)
            want = float(x.sum()) * 127.0
            return bool(torch.equal(got, torch.full((1, n_out), want)))
    except (RuntimeError, AttributeError):
        return False


def _single_token_kernel(layer: nn.Module) -> Any:
    """The layer's FBGEMM-packed weights for single-token products; where that kernel is not
    exact here but torch._int_mm is slow, a `SignSplit` of its int8 weights (`layer._int8_weight`)
    where it is exact for them; else None (or where the layer's engine is not FBGEMM)."""
    if torch.backends.quantized.engine not in ("fbgemm", "x86"):
        return None
    if _single_token_kernel_exact():
        return getattr(getattr(layer, "_packed_params", None), "_packed_params", None)
    if int_mm_slow() and SignSplit.fits(layer._int8_weight):
        with _quiet():
            return SignSplit(layer._int8_weight)
    return None


def use_per_token_scales(layer: nn.Module) -> nn.Module:
    """Make a PyTorch dynamic int8 layer quantize its input with one scale per token. It stays a
    torch dynamic int8 layer (same weights, saved and counted alike); products of several tokens
    run on an int8 copy of the weights (`level_products`), and unless FBGEMM's packed weights
    serve single tokens here, the layer's weights read from that copy (`IntRows`) and the packed
    ones are let go."""
    with _quiet():
        weight = layer.weight()
    if weight.qscheme() not in (torch.per_channel_affine, torch.per_channel_symmetric) or bool(weight.q_per_channel_zero_points().any()):
        raise ValueError("per-token activation scales need symmetric per-channel int8 weights")
    layer._int8_weight = weight.int_repr()
    layer._int8_weight_scale = weight.q_per_channel_scales().to(torch.float32)
    bias = layer.bias()
    layer._int8_bias = None if bias is None else bias.detach().to(torch.float32)
    layer._int8_single = _single_token_kernel(layer)
    if layer._int8_single is None or isinstance(layer._int8_single, SignSplit):
        # Nothing multiplies by the packed weights: they read from the int8 copy instead.
        layer._packed_params = IntRows(layer._int8_weight, weight.q_per_channel_scales(), layer._int8_bias)
    layer.activation_scales = PER_TOKEN
    layer.forward = functools.partial(layer_products, layer)
    return layer


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
            layers[name] = {
                "in_features": module.in_features, "out_features": module.out_features, "bias": bias is not None,
                "axis": int(weight.q_per_channel_axis()), "activation_scales": getattr(module, "activation_scales", PER_TENSOR),
            }
    specs = [(name, t.dtype, tuple(t.shape)) for name, t in items]
    meta = {"format": INT8_FORMAT, "version": INT8_VERSION, "layers": layers, "linearized": linearized}
    shared = getattr(model, "_int8_embeddings", None)
    if shared is not None:
        meta["embeddings_from"] = {"embeddings": shared[0], "head": shared[1]}
    return write_safetensors(path, items, specs, {"format": "pt", WEIGHTS_META_KEY: json.dumps(meta)})


INT8_VERSION = 1  # the layout `save_int8_dynamic` writes


def _check_int8_layout(path: Path, meta: dict, model: nn.Module) -> None:
    """Refuse, naming `path`, an int8 layout this reader does not know or that does not fit the
    model its config builds: a later version, fields of the wrong kind, layers it does not have."""
    version = meta.get("version", INT8_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= INT8_VERSION:
        raise UserError(f"{path}: unsupported int8-dynamic format version {version!r} (this edge-audit reads version {INT8_VERSION})")
    layers, linearized, shared = meta.get("layers"), meta.get("linearized", []), meta.get("embeddings_from")
    if not isinstance(layers, dict) or not all(isinstance(info, dict) for info in layers.values()):
        raise UserError(f"{path}: damaged int8 layout: 'layers' is not a table of layers")
    if not isinstance(linearized, list) or not all(isinstance(name, str) for name in linearized):
        raise UserError(f"{path}: damaged int8 layout: 'linearized' is not a list of layer names")
    if shared is not None and not (isinstance(shared, dict) and all(isinstance(shared.get(k), str) for k in ("embeddings", "head"))):
        raise UserError(f"{path}: damaged int8 layout: 'embeddings_from' does not name embeddings and a head")
    modules = dict(model.named_modules())
    for name in list(linearized) + list(layers) + ([shared["embeddings"]] if shared is not None else []):
        if name not in modules:
            raise UserError(f"{path}: names {name!r}, which this model's config does not have")
    for name, info in layers.items():
        for key in ("in_features", "out_features", "axis"):
            if isinstance(info.get(key), bool) or not isinstance(info.get(key), int):
                raise UserError(f"{path}: damaged int8 layout: {name} has no whole-number {key}")
        if not isinstance(info.get("bias"), bool):
            raise UserError(f"{path}: damaged int8 layout: {name} does not say whether it has a bias")


def _check_int8_weight(path: Path, name: str, info: dict, weight: torch.Tensor, module: nn.Module) -> None:
    """Refuse, naming the layer, int8 weights that are not the layer's: another shape than the
    layout or the model's config gives it, scales along another axis than its output channels, or
    scales that are not positive numbers."""
    expected = (info["out_features"], info["in_features"])
    layer_shape = tuple(getattr(getattr(module, "weight", None), "shape", ()))
    if tuple(weight.shape) != expected or layer_shape != expected:
        raise UserError(f"{path}: {name} holds int8 weights of shape {tuple(weight.shape)}, its layer in the model's config takes {layer_shape}")
    if info["axis"] != 0:
        raise UserError(f"{path}: {name} has its weight scales along axis {info['axis']}; int8-dynamic stores one per output channel (axis 0)")
    scales = weight.q_per_channel_scales()
    if not bool((torch.isfinite(scales) & (scales > 0)).all()):
        raise UserError(f"{path}: {name} has a weight scale that is not a positive number")


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
        if not isinstance(meta, dict) or meta.get("format") != INT8_FORMAT:
            raise UserError(f"{folder / INT8_FILE} is not an edge-audit int8-dynamic file")
        _check_int8_layout(folder / INT8_FILE, meta, model)
        for name in meta.get("linearized", []):
            module = model.get_submodule(name)
            rows, cols = module.weight.shape
            _set_module(model, name, nn.Linear(rows, cols, bias=module.bias is not None, device="meta"))
        prefixes = tuple(f"{name}." for name in meta["layers"])
        read = {f"{name}.{part}" for name, info in meta["layers"].items()
                for part in ("weight_int8", "weight_scale", "weight_zero_point") + (("bias",) if info["bias"] else ())}
        unread = sorted(k for k in handle.keys() if k.startswith(prefixes) and k not in read)
        if unread:
            raise UserError(f"{folder / INT8_FILE}: holds {unread[0]}, which the layout of its int8 layers does not read")
        # Copied out of the file's memory map: a tensor read in place would keep the whole map,
        # whose int8 pages were all read to build the layers, resident for the model's life.
        state = {k: handle.get_tensor(k).clone() for k in handle.keys() if not k.startswith(prefixes)}
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
                _check_int8_weight(folder / INT8_FILE, name, info, weight, model.get_submodule(name))
                bias = handle.get_tensor(f"{name}.bias") if info["bias"] else None
                layer.set_weight_bias(weight, bias)
                scales = info.get("activation_scales", PER_TENSOR)
                if scales not in ACTIVATION_SCALES:
                    raise UserError(f"{folder / INT8_FILE}: unknown activation scales {scales!r} for {name}")
                if scales == PER_TOKEN:
                    use_per_token_scales(layer)
                _set_module(model, name, layer)
        shared = meta.get("embeddings_from")
        if shared is not None:
            if shared.get("head") not in meta["layers"]:
                raise UserError(f"{folder / INT8_FILE}: the embeddings read the table of {shared.get('head')!r}, which is not an int8 layer")
            share_head_with_embeddings(model, shared["embeddings"], shared["head"])
    model.tie_weights()
    missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if missing:
        raise UserError(f"{folder} is incomplete: no values for {', '.join(missing[:3])}")
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    model.eval()
    group_shared_inputs(model)  # q, k, v (and gate, up) multiplied as one: the same outputs, fewer calls
    return model


def with_quantize_record(meta: dict, note: str, **record: Any) -> dict:
    """`meta` with `record` added to the latest compression step's quantize entry, and `note`
    among the notes the variant's facts show."""
    meta = dict(meta)
    steps = [dict(step) for step in meta.get("compression") or []]
    if steps and isinstance(steps[-1].get("quantize"), dict):
        steps[-1]["quantize"] = dict(steps[-1]["quantize"], **record)
    meta["compression"] = steps
    meta["notes"] = list(meta.get("notes") or []) + [note]
    return meta


def with_outlier_choice(meta: dict, choice: OutlierChoice, scheme: str, activation_scales: str = PER_TENSOR) -> dict:
    """`meta` with the outlier choice and the activation scales recorded: in the latest
    compression step, and as a note the variant's facts show."""
    return with_quantize_record(meta, f"{choice.note(scheme)}; {activation_scales} activation scales",
                                outliers=choice.to_dict(), activation_scales=activation_scales)


def _outlier_details(choice: OutlierChoice) -> dict[str, Any]:
    return {"kept_float": list(choice.kept_float), "outlier_rule": choice.rule.describe() if choice.skipped is None else choice.skipped}


@QUANTIZATION_SCHEMES.register("int8-dynamic", **QUANTIZATION_SCHEME_FACTS["int8-dynamic"])
def int8_dynamic(lm: LanguageModel, folder: Path, settings: QuantizeSettings, meta: dict, cancel: threading.Event | None) -> Job[dict]:
    model = float_torch_model(lm, "int8-dynamic")
    require_finite_weights(lm, "int8-dynamic")
    targets = int8_targets(model)[0]
    choice, smoothing = yield from smooth_and_choose(lm, model, targets, settings, cancel)
    check_cancel(cancel)
    yield Progress("quantize", 0, 2, "quantizing linear layers to int8")
    names, linearized = quantize_int8_dynamic(model, choice.kept_float, settings.activation_scales)
    check_cancel(cancel)
    yield Progress("quantize", 1, 2, "writing the int8 model")
    engine = torch.backends.quantized.engine
    meta = with_outlier_choice(meta, choice, "int8-dynamic", settings.activation_scales)
    meta = with_quantize_record(meta, smoothing.note("int8-dynamic"), smoothing=smoothing.to_dict())
    embeddings = "int8 rows of the output head" if getattr(model, "_int8_embeddings", None) else "float"
    if embeddings != "float":
        meta["notes"].append("int8-dynamic: the token embeddings are looked up in the int8 output head's table (tied in the source)")
    meta["storage"] = {"format": INT8_FORMAT, "file": INT8_FILE}
    save_model_folder(lm, folder, meta, lambda f: save_int8_dynamic(model, f / INT8_FILE, linearized))
    yield Progress("quantize", 2, 2, "written")
    return {"quantized_layers": len(names), "engine": engine, "activation_scales": settings.activation_scales,
            "embeddings": embeddings, **_outlier_details(choice),
            "smoothing_alpha": smoothing.alpha, "smoothed_layers": len(smoothing.layers())}


def smooth_and_choose(
    lm: LanguageModel, model: nn.Module, targets: list[str], settings: QuantizeSettings, cancel: threading.Event | None
) -> Job[tuple[OutlierChoice, Smoothing]]:
    """Smooth the float `model` in place (when asked) and choose its outlier layers from the
    input ranges the smoothed model's layers see. One calibration run serves both."""
    rule = settings.outliers
    if settings.smoothing is None:
        choice = yield from detect_outliers(lm, model, targets, rule, cancel)
        return choice, Smoothing(None)
    maxima, calibration = yield from measure_inputs(lm, model, targets, rule, cancel)
    check_cancel(cancel)
    yield Progress("smooth", 0, 1, "moving input ranges into the modules before each layer")
    smoothing = smooth(model, targets, maxima, settings.smoothing, calibration.samples[:1])
    yield Progress("smooth", 1, 1, f"{len(smoothing.layers())} layers smoothed")
    return choose_outliers(rule, targets, smoothing.smoothed_maxima(maxima), calibration), smoothing


# -- ONNX Runtime ------------------------------------------------------------------------------
# onnx-int8 runs ONNX Runtime's block-quantized MatMul at its int8 accuracy level: weights in
# symmetric int8 with one scale per block of input channels, and each token's activations
# quantized to int8 at run time with one scale per block of the same channels. A per-tensor
# activation scale (ONNX Runtime's dynamic int8) lets one outlier token flatten every other
# token of the window to a few levels: +82% perplexity on the default model, against about +1%
# here, at the same decode speed.
INT8_ACCURACY_LEVEL = 4  # MatMulNBits: compute with int8 activations


def _flattened(exc: BaseException) -> str:
    """What a library said on failing, as one line: its whole message with its line breaks
    flattened (the advice often follows the first), cut at 300 characters; else its type."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _float_onnx_graph(lm: LanguageModel) -> Path:
    """The graph an ONNX Runtime model runs, refused when it is already quantized."""
    onnx_path = Path(getattr(lm, "onnx_path"))
    if lm.facts().quantization:
        raise UserError(f"{onnx_path.parent} is already quantized ({lm.facts().quantization}); quantize its float source instead")
    return onnx_path


def _export_onnx(lm: LanguageModel, folder: Path) -> Path:
    """The float ONNX graph of the model (with past key values, as generation needs)."""
    if lm.backend == "onnxruntime":
        return _float_onnx_graph(lm)
    model = float_torch_model(lm, "ONNX export")
    try:
        from optimum.exporters.onnx import onnx_export_from_model
    except ImportError as exc:
        raise UserError(f"ONNX export needs optimum's ONNX exporter (optimum-onnx), which does not import here: {first_line(exc, 300)}") from None

    folder.mkdir(parents=True, exist_ok=True)
    # The exporter prints its own progress and warnings; our progress stands in for them.
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), _quiet():
            onnx_export_from_model(model, output=str(folder), task="text-generation-with-past", do_validation=False)
    except OSError:
        raise  # a fault of the disk, named with its file where the command reports it
    except Exception as exc:  # noqa: BLE001 - the exporter's own refusals (an architecture it lacks) and faults
        raise UserError(f"ONNX export of {lm.facts().name} failed: {_flattened(exc)}") from None
    return folder / "model.onnx"


def _cache_scoring_agrees(lm: LanguageModel, onnx_path: Path) -> bool:
    """Whether the float graph scores from its key/value cache as it does in padded rows: the
    check the loader would run, made here because after quantization rounding of activations
    blurs it (`OnnxLanguageModel.score`)."""
    from audit.models.onnx_lm import OnnxLanguageModel

    if isinstance(lm, OnnxLanguageModel):
        return lm._cache_agrees()
    from optimum.onnxruntime import ORTModelForCausalLM

    try:
        getattr(lm.model, "config").save_pretrained(onnx_path.parent)
        with _quiet():
            session = ORTModelForCausalLM.from_pretrained(
                str(onnx_path.parent), file_name=onnx_path.name, session_options=onnx_session_options(torch.get_num_threads()),
                provider="CPUExecutionProvider",
            )
    except Exception:  # not loadable alone: the variant's loader checks its own graph instead
        return False
    graph = OnnxLanguageModel(session, lm.tokenizer, onnx_path=onnx_path, text_prefix_ids=lm.text_prefix_ids,
                              stop_token_ids=lm.stop_token_ids, facts_template={})
    try:
        return graph._cache_agrees()
    finally:
        graph.close()


def _large(path: Path) -> bool:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file()) > 1800 * MB


def store_transposed_weights(graph: Any) -> dict[str, str]:
    """Replace each Transpose of a stored 2-D weight that a MatMul reads (a tied output head: the
    exporter transposes the token embeddings in the graph) by the transposed weight, stored under
    the Transpose's output name, so that its readers are unchanged and the quantizer, which takes
    only stored weights, quantizes the product too. Returns {each weight stored: the weight it is
    the transpose of}."""
    import numpy as np
    from onnx import numpy_helper

    inits = {init.name: init for init in graph.initializer}
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    stored: dict[str, str] = {}
    for node in list(graph.node):
        if node.op_type != "Transpose" or len(node.input) != 1 or node.input[0] not in inits or "MatMul" not in readers.get(node.output[0], ()):
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        weight = inits[node.input[0]]
        if len(weight.dims) != 2 or perm != [1, 0]:
            continue
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T), node.output[0]))
        graph.node.remove(node)
        stored[node.output[0]] = node.input[0]
    return stored


def _quantize_matmuls(
    onnx_path: Path, folder: Path, *, bits: int, block_size: int, symmetric: bool,
    accuracy_level: int | None = None, exclude: Sequence[str] = (), transposed: bool = False,
) -> set[int]:
    """Write `folder`/model.onnx: the graph at `onnx_path` with every MatMul by a constant weight
    (but the nodes in `exclude`) replaced by ONNX Runtime's block-quantized MatMulNBits; with
    `transposed`, weights the graph transposes count as constant (`store_transposed_weights`).
    Returns the input widths of the quantized products (`nbits_widths`)."""
    import onnx

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        raise UserError(f"{bits}-bit ONNX quantization needs ONNX Runtime's block quantizer, which does not import here: {first_line(exc, 300)}") from None

    from audit.models.onnx_lm import output_head_nodes

    graph = onnx.load(str(onnx_path))
    stored = store_transposed_weights(graph.graph) if transposed else {}
    tied = [stored[node.input[1]] for node in output_head_nodes(graph.graph)
            if node.op_type == "MatMul" and node.input[1] in stored and node.name not in exclude]
    quantizer = MatMulNBitsQuantizer(
        graph, bits=bits, block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level,
        nodes_to_exclude=list(exclude), op_types_to_quantize=("MatMul",),
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet():
            quantizer.process()
    except OSError:
        raise  # a fault of the disk, named with its file where the command reports it
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types on a graph it cannot take
        raise UserError(f"ONNX Runtime's {bits}-bit quantization failed: {_flattened(exc)}") from None
    if tied:  # the facts count the head's weights once, with the table
        entry = quantizer.model.model.metadata_props.add()
        entry.key, entry.value = TIED_HEAD_KEY, tied[0]
    quantizer.model.save_model_to_file(str(folder / "model.onnx"), use_external_data_format=_large(onnx_path))
    return nbits_widths(quantizer.model.model.graph)


def _save_onnx_folder(lm: LanguageModel, folder: Path, meta: dict) -> None:
    config = getattr(getattr(lm, "model", None), "config", None)
    if config is not None:
        config.save_pretrained(folder)
    generation = getattr(getattr(lm, "model", None), "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    write_meta(folder, meta)


def onnx_weight_nodes(onnx_path: Path, weights: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """The MatMul/Gemm nodes of an exported graph that multiply by each given layer's weight,
    found by the weight's values (the exporter stores W or its transpose), not by node names,
    which differ between exporters."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {init.name: init for init in graph.initializer if len(init.dims) == 2}
    wanted = {name: w.detach().to(torch.float32).numpy() for name, w in weights.items()}
    found: dict[str, list[str]] = {name: [] for name in weights}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        dims = tuple(inits[node.input[1]].dims)
        candidates = [n for n, w in wanted.items() if dims in (w.shape, w.shape[::-1])]
        if not candidates:
            continue
        array = numpy_helper.to_array(inits[node.input[1]])
        for name in candidates:
            w = wanted[name]
            if (array.shape == w.shape and np.array_equal(array, w)) or (array.shape == w.T.shape and np.array_equal(array, w.T)):
                found[name].append(node.name)
    for name, nodes in found.items():
        if not nodes or not all(nodes):
            raise UserError(f"cannot keep {name} float: no named node of the exported ONNX graph multiplies by its weight")
    return found


def _onnx_outlier_choice(lm: LanguageModel, settings: QuantizeSettings, cancel: threading.Event | None) -> Job[tuple[OutlierChoice, dict[str, torch.Tensor], bool]]:
    """The outlier choice for an ONNX int8 variant, the stored weights of the layers it keeps
    float, and whether a tied head is quantized (not kept float)."""
    if lm.backend != "pytorch" or settings.outliers.ratio is None:
        skipped = None if lm.backend == "pytorch" else "outlier detection needs a PyTorch source"
        return OutlierChoice(settings.outliers, (), skipped=skipped), {}, True
    model = float_torch_model(lm, "onnx-int8")
    names = int8_targets(model)[0]
    choice = yield from detect_outliers(lm, model, names, settings.outliers, cancel)
    tied = _tied_head(model, names)
    # A tied head multiplies by the embeddings' transpose, which the graph computes: kept float,
    # it is left so, with no stored weight of its own to find.
    head_float = tied[1] if tied is not None and tied[1] in choice.kept_float else None
    stored = [name for name in choice.kept_float if name != head_float]
    return choice, {name: model.get_submodule(name).weight for name in stored}, head_float is None


def nbits_widths(graph: Any) -> set[int]:
    """The input widths (K) of a graph's MatMulNBits products."""
    return {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "K"}


def _block_scales(widths: Iterable[int], block_size: int) -> str:
    """How onnx-int8's activations are scaled, as recorded: per token in blocks of `block_size`
    input channels, naming the input `widths` that are not a multiple of it (ONNX Runtime pads
    their last block, which then holds only what remains: a 64-channel layer has one block of 64)."""
    ragged = sorted(k for k in set(widths) if k % block_size)
    shorter = f"; layers of {', '.join(map(str, ragged))} input channels end in a shorter one" if ragged else ""
    return f"{PER_TOKEN} (in blocks of {block_size} input channels{shorter})"


@QUANTIZATION_SCHEMES.register("onnx-int8", **QUANTIZATION_SCHEME_FACTS["onnx-int8"])
def onnx_int8(lm: LanguageModel, folder: Path, settings: QuantizeSettings, meta: dict, cancel: threading.Event | None) -> Job[dict]:
    require_finite_weights(lm, "onnx-int8")
    choice, kept_weights, tied_head_int8 = yield from _onnx_outlier_choice(lm, settings, cancel)
    check_cancel(cancel)
    yield Progress("quantize", 0, 3, "exporting to ONNX")
    export_dir = folder / ".export"
    onnx_path = _export_onnx(lm, export_dir)
    check_cancel(cancel)
    yield Progress("quantize", 1, 3, f"quantizing to int8 (blocks of {settings.block_size})")
    kept_nodes = onnx_weight_nodes(onnx_path, kept_weights) if kept_weights else {}
    excluded = sorted({node for nodes in kept_nodes.values() for node in nodes})
    widths = _quantize_matmuls(onnx_path, folder, bits=8, block_size=settings.block_size, symmetric=True, accuracy_level=INT8_ACCURACY_LEVEL,
                      exclude=excluded, transposed=tied_head_int8)
    cache_checked = _cache_scoring_agrees(lm, onnx_path)
    shutil.rmtree(export_dir, ignore_errors=True)
    check_cancel(cancel)
    yield Progress("quantize", 2, 3, "writing config and tokenizer")
    scales = _block_scales(widths, settings.block_size)
    _save_onnx_folder(lm, folder, dict(with_outlier_choice(meta, choice, "onnx-int8", scales), quantization="int8", **{CACHE_CHECKED_KEY: cache_checked}))
    yield Progress("quantize", 3, 3, "written")
    return {"block_size": settings.block_size, "activation_scales": scales, **_outlier_details(choice), "kept_float_nodes": excluded}


@QUANTIZATION_SCHEMES.register("onnx-int4", **QUANTIZATION_SCHEME_FACTS["onnx-int4"])
def onnx_int4(lm: LanguageModel, folder: Path, settings: QuantizeSettings, meta: dict, cancel: threading.Event | None) -> Job[dict]:
    require_finite_weights(lm, "onnx-int4")
    yield Progress("quantize", 0, 3, "exporting to ONNX")
    export_dir = folder / ".export"
    onnx_path = _export_onnx(lm, export_dir)
    check_cancel(cancel)
    yield Progress("quantize", 1, 3, f"quantizing weights to 4 bits (blocks of {settings.block_size})")
    _quantize_matmuls(onnx_path, folder, bits=4, block_size=settings.block_size, symmetric=False)
    cache_checked = _cache_scoring_agrees(lm, onnx_path)
    shutil.rmtree(export_dir, ignore_errors=True)
    check_cancel(cancel)
    yield Progress("quantize", 2, 3, "writing config and tokenizer")
    _save_onnx_folder(lm, folder, dict(meta, quantization="int4-weight-only", **{CACHE_CHECKED_KEY: cache_checked}))
    yield Progress("quantize", 3, 3, "written")
    return {"block_size": settings.block_size}


# -- the command ---------------------------------------------------------------------------------
# What a variant written without a perplexity measurement scores before its folder is put in place.
CHECK_CONTEXT, CHECK_CONTINUATION = "The river rose after the storm,", " and the bridge held."


def refuse_quantized_source(lm: LanguageModel, scheme: str) -> None:
    """Refuse a source `scheme` cannot quantize (already quantized; int8-dynamic: not PyTorch) as
    soon as it is loaded, with the words the scheme itself would use, before minutes of
    measuring its perplexity."""
    if scheme == "int8-dynamic" or lm.backend == "pytorch":
        float_torch_model(lm, scheme)
    elif lm.backend == "onnxruntime":
        _float_onnx_graph(lm)


def check_scores(variant: LanguageModel) -> None:
    """Score one short text with a written variant. Loading reads the weights but computes
    nothing; a variant whose products fail (tensors of two dtypes meeting, an operator the
    runtime lacks) fails only here."""
    variant.score([variant.text_request(CHECK_CONTEXT, [CHECK_CONTINUATION])])


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
    out_held: bool = False,
) -> Job[dict[str, Any]]:
    """Quantize a model (any source, a pruned folder included) into `out`. The written folder is
    loaded through the common interface and scored (its perplexity next to the source's, or one
    short text without perplexity) before it is renamed into place: a variant that cannot be
    used fails here and leaves no folder behind.
    `out_held`: the caller holds `out`'s writer lock and has removed what a killed writer left
    (an audit run's compress step); else it is held here while `out` is written."""
    started = time.perf_counter()
    entry = QUANTIZATION_SCHEMES.entry(scheme)
    if settings.activation_scales not in ACTIVATION_SCALES:
        raise UserError(f"activation scales must be one of {', '.join(ACTIVATION_SCALES)}, got {settings.activation_scales!r}")
    if not valid_alpha(settings.smoothing):
        raise UserError(f"the smoothing alpha must be a number above 0 and at most 1, got {settings.smoothing!r}")
    if scheme in ("onnx-int4", "onnx-int8") and settings.block_size not in INT4_BLOCK_SIZES:
        raise UserError(f"block size must be one of {', '.join(map(str, INT4_BLOCK_SIZES))}, got {settings.block_size}")
    check_dtype(scheme, options.dtype)
    out = Path(out).expanduser()
    check_output_target(model_spec, out, force=force, options=options)
    ppl_text, ppl_source = text_source(text) if measure_perplexity else (None, None)
    before = after = None
    with contextlib.nullcontext() if out_held else atomic.sole_writer(out), ResourceSampler() as sampler:
        lm = yield from relay(load_model(model_spec, options, cancel))
        try:
            refuse_quantized_source(lm, scheme)
        except UserError:
            lm.close()
            raise
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
            variant = yield from relay(load_model(str(tmp), options, cancel), "load variant")
            try:
                if ppl_text is not None:
                    after = yield from relay(perplexity(variant, ppl_text, chunk_tokens=chunk_tokens, source=ppl_source, cancel=cancel), "perplexity after")
                else:
                    check_scores(variant)
                facts = variant.facts()
            finally:
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

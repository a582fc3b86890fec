"""What edge-audit records about a model folder it wrote: its `edge_audit.json` (provenance and
notes) and the layout of its compressed sparse weights file."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from audit import atomic
from audit.compress.recipe import recipe_label
from audit.errors import UserError
from audit.paths import kind, os_reason, probe

META_FILE = "edge_audit.json"
# edge-audit's own weight formats, as the `storage` field names them, and their files.
SPARSE_FORMAT = "sparse-bitmask"
SPARSE_FILE = "model.sparse-bitmask.safetensors"  # not model.safetensors: plain transformers must not half-read it
SPARSE_VERSION = 1
# The dtypes a packed tensor may have, by the name the sparse layout gives them (torch's), and the
# safetensors code of each: the float dtypes the sparse writer stores.
SPARSE_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}
INT8_FORMAT = "int8-dynamic"
INT8_FILE = "model.int8-dynamic.safetensors"
# The key of edge-audit's layout in a weights file's safetensors metadata.
WEIGHTS_META_KEY = "edge_audit"
# An ONNX variant whose float graph scored from the key/value cache as it did in padded rows.
CACHE_CHECKED_KEY = "cache_scoring_checked"
# An ONNX graph's metadata entry naming the token embeddings whose transpose its output head
# stores as a weight of its own (a tied head, quantized): the table is one set of parameters.
TIED_HEAD_KEY = "edge_audit.output_head_tied_to"
# The type each field the loader reads must have; a field of another type is left out, as a
# damaged file is (the folder then loads as a plain Hugging Face folder would).
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "storage": dict,
    "source": dict,
    "notes": list,
    "compression": list,
    "text_prefix_token": str,
    "quantization": str,
    "alias": str,
    CACHE_CHECKED_KEY: bool,
}


def read_meta(folder: Path, *, strict: bool = False) -> dict[str, Any]:
    """The folder's `edge_audit.json`, {} when it has none. A file that cannot be read as a JSON
    object reads as {} too, unless `strict`: then it is a UserError naming it. Loading and
    fingerprinting a model are strict, since the file says how to read the model (its document
    start, how its weights are stored): read as {}, the same weights would score differently."""
    path = Path(folder) / META_FILE
    if kind(probe(path, "model metadata")) != "file":
        return {}
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as exc:
        if strict:
            reason = os_reason(exc) if isinstance(exc, OSError) else "not valid JSON"
            raise UserError(f"{path} is damaged ({reason}): it says how to read this model; restore it from where the model came from") from None
        return {}
    if not isinstance(data, dict):
        if strict:
            raise UserError(f"{path} is damaged (not a JSON object): it says how to read this model; restore it from where the model came from")
        return {}
    meta = {k: v for k, v in data.items() if k not in _FIELD_TYPES or isinstance(v, _FIELD_TYPES[k])}
    if "notes" in meta:
        meta["notes"] = [note for note in meta["notes"] if isinstance(note, str)]
    return meta


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    atomic.write_text(Path(folder) / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def compression_label(meta: dict[str, Any]) -> tuple[str, float | None] | None:
    """What edge-audit did to a folder it wrote, as a method label and the sparsity it reached
    ("wanda 2:4", 0.5; "magnitude + int8-dynamic", 0.5; "onnx-int8", None); None for a
    folder with no compression on record."""
    parts: list[str] = []
    sparsity: float | None = None
    for step in meta.get("compression") or []:
        if not isinstance(step, dict):
            continue
        prune = step.get("prune")
        label = recipe_label(prune, step.get("quantize"))
        if label is not None:
            parts.append(label)
        if isinstance(prune, dict) and isinstance(prune.get("method"), str):
            reached = prune.get("actual_sparsity", prune.get("target_sparsity"))
            sparsity = float(reached) if isinstance(reached, (int, float)) else sparsity
    return (" + ".join(parts), sparsity) if parts else None


def packed_parts(name: str) -> tuple[str, str]:
    """The two tensors a compressed sparse file stores packed tensor `name` as: its bitmask and its values."""
    return f"{name}.bitmask", f"{name}.values"


def unpacked(names: Iterable[str], layout: Mapping[str, "PackedTensor"]) -> list[str]:
    """Of a sparse file's stored `names`, in their order, those that are tensors as they are:
    not a part of one of the packed tensors of `layout`."""
    parts = {part for tensor in layout.values() for part in tensor.parts}
    return [name for name in names if name not in parts]


@dataclass(frozen=True)
class PackedTensor:
    """A tensor a compressed sparse file stores as `NAME.bitmask` (one bit per value, packed)
    and `NAME.values` (the non-zero values in order)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # as the layout names it: float32
    n_values: int  # how many values `NAME.values` holds

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def parts(self) -> tuple[str, str]:
        """The names of its bitmask and its values in the file (`packed_parts`)."""
        return packed_parts(self.name)

    @property
    def code(self) -> str:
        """The dtype's safetensors code: F32."""
        return SPARSE_DTYPES[self.dtype]


def sparse_layout(path: Path, metadata: Mapping[str, str], stored: Mapping[str, tuple[str, Sequence[int]]]) -> dict[str, PackedTensor]:
    """The packed tensors of a compressed sparse file, by name, read from its safetensors
    `metadata` and checked against the tensors it `stored` (name -> safetensors dtype code and
    shape); anything else is a UserError naming the file. Loading and fingerprinting both read
    the file through this, so they accept the same files and refuse the others alike: the layout
    is JSON anyone can edit, and a value of another shape would otherwise fail deep in decoding."""
    try:
        meta = json.loads(metadata[WEIGHTS_META_KEY])
    except (KeyError, TypeError, ValueError, RecursionError):
        raise UserError(f"{path} is not an edge-audit compressed sparse file") from None
    damaged = f"{path} is damaged: its {WEIGHTS_META_KEY} metadata"
    if not isinstance(meta, dict):
        raise UserError(f"{damaged} is not a JSON object")
    version = meta.get("version", 0)
    if meta.get("format") != SPARSE_FORMAT or isinstance(version, bool) or not isinstance(version, int) or version > SPARSE_VERSION:
        raise UserError(f"{path}: unsupported sparse format {meta.get('format')!r} v{version!r}")
    packed = meta.get("packed")
    if not isinstance(packed, dict):
        raise UserError(f"{damaged} lists the packed tensors as {type(packed).__name__}, not as a JSON object")
    layout: dict[str, PackedTensor] = {}
    for name, info in packed.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)) or not (
            isinstance(dtype, str) and dtype in SPARSE_DTYPES
        ):
            raise UserError(f"{damaged} gives packed tensor {name!r} no valid shape and float dtype")
        bits, values = packed_parts(name)
        if bits not in stored or values not in stored:
            raise UserError(f"{damaged} lists {name}, whose bitmask or values the file does not hold")
        if name in stored:
            raise UserError(f"{damaged} lists {name} as packed, and the file holds it unpacked too")
        (bits_code, bits_shape), (values_code, values_shape) = stored[bits], stored[values]
        if (bits_code, list(bits_shape)) != ("U8", [(math.prod(shape) + 7) // 8]) or values_code != SPARSE_DTYPES[dtype] or len(values_shape) != 1:
            raise UserError(f"{path} is corrupt: {name}'s bitmask or values do not fit its shape {shape} and dtype {dtype}")
        layout[name] = PackedTensor(name, tuple(shape), dtype, values_shape[0])
    return layout


def check_mask_count(path: Path, tensor: PackedTensor, mask_bits: int) -> None:
    """A packed tensor's values fill its mask's set bits one for one; a count that differs is
    refused in one line, by loading and fingerprinting alike."""
    if mask_bits != tensor.n_values:
        raise UserError(f"{path} is corrupt: {tensor.name} has {tensor.n_values} values for {mask_bits} mask bits")

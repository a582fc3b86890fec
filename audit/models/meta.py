"""The `edge_audit.json` file stored beside a model folder edge-audit wrote: provenance and notes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit import atomic
from audit.compress.recipe import pruning_label
from audit.errors import UserError
from audit.paths import kind, os_reason, probe

META_FILE = "edge_audit.json"
# edge-audit's own weight formats, as the `storage` field names them, and their files.
SPARSE_FORMAT = "sparse-bitmask"
SPARSE_FILE = "model.sparse-bitmask.safetensors"  # not model.safetensors: plain transformers must not half-read it
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
        prune, quantize = step.get("prune"), step.get("quantize")
        if isinstance(prune, dict) and isinstance(prune.get("method"), str):
            parts.append(pruning_label(prune["method"], prune.get("pattern")))
            reached = prune.get("actual_sparsity", prune.get("target_sparsity"))
            sparsity = float(reached) if isinstance(reached, (int, float)) else sparsity
        if isinstance(quantize, dict) and isinstance(quantize.get("scheme"), str):
            parts.append(quantize["scheme"])
    return (" + ".join(parts), sparsity) if parts else None


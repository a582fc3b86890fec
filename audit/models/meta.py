"""The `edge_audit.json` file stored beside a model folder edge-audit wrote: provenance and notes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit import atomic
from audit.paths import kind, probe

META_FILE = "edge_audit.json"
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
}


def read_meta(folder: Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    if kind(probe(path, "model metadata")) != "file":
        return {}
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    meta = {k: v for k, v in data.items() if k not in _FIELD_TYPES or isinstance(v, _FIELD_TYPES[k])}
    if "notes" in meta:
        meta["notes"] = [note for note in meta["notes"] if isinstance(note, str)]
    return meta


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    atomic.write_text(Path(folder) / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")

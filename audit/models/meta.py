"""The `edge_audit.json` file stored beside a model folder edge-audit wrote: provenance and notes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit import atomic

META_FILE = "edge_audit.json"


def read_meta(folder: Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    atomic.write_text(Path(folder) / META_FILE, json.dumps(meta, indent=2, sort_keys=True) + "\n")

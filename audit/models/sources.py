"""What `--model` names: an alias, a local folder, a GGUF file, an ONNX folder or a hub id, checked before loading."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from audit.errors import UserError
from audit.models.aliases import ALIASES, ModelAlias

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: str  # "alias", "folder", "gguf", "onnx" or "hub"
    path: Path | None = None
    alias: ModelAlias | None = None
    hub_id: str | None = None
    pickle: bool = False  # weights are pickle files (only with --allow-pickle)

    @property
    def name(self) -> str:
        if self.alias is not None:
            return self.alias.name
        if self.hub_id is not None:
            return self.hub_id
        assert self.path is not None
        return self.path.name


def resolve_source(spec: str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ModelSource:
    """Turn a `--model` value into a checked source, or raise UserError naming the problem."""
    spec = str(spec).strip()
    if not spec:
        raise UserError("no model given: pass an alias, a folder, a .gguf file or a hub id")
    if spec in ALIASES:
        return ModelSource(spec, "alias", alias=ALIASES.get(spec))
    path = Path(spec).expanduser()
    if path.exists():
        return _local_source(spec, path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if _HUB_ID.match(spec) and not spec.startswith((".", "~")):
        return ModelSource(spec, "hub", hub_id=spec)
    if "/" in spec or path.suffix:
        raise UserError(f"no such file or folder: {spec}")
    known = ", ".join(ALIASES.names())
    raise UserError(f"unknown model alias {spec!r}; known: {known} (or pass a folder, a .gguf file or a hub id)")


def _local_source(spec: str, path: Path, *, allow_pickle: bool, trust_remote_code: bool) -> ModelSource:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".gguf":
            check_gguf(path)
            return ModelSource(spec, "gguf", path=path)
        if suffix in PICKLE_SUFFIXES:
            _refuse_pickle(path, allow_pickle)
            return _local_source(spec, path.parent, allow_pickle=True, trust_remote_code=trust_remote_code)
        if suffix in {".safetensors", ".onnx"}:
            return _local_source(spec, path.parent, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        raise UserError(f"{path} is not a model: expected a folder, a .gguf file or a .safetensors/.onnx file")
    config = _read_config(path)
    _check_remote_code(path, config, trust_remote_code)
    if any(path.glob("*.onnx")):
        _check_tokenizer(path)
        return ModelSource(spec, "onnx", path=path)
    uses_pickle = _check_weights(path, allow_pickle)
    _check_tokenizer(path)
    return ModelSource(spec, "folder", path=path, pickle=uses_pickle)


def _read_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"folder {folder} has no config.json: not a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_path} is not a JSON object")
    return config


def _check_remote_code(folder: Path, config: dict, trust_remote_code: bool) -> None:
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if trust_remote_code:
        return
    if model_type not in CONFIG_MAPPING:
        if "auto_map" in config:
            raise UserError(
                f"model in {folder} needs its own Python code (model_type {model_type!r}); "
                "pass --trust-remote-code only if you trust its author"
            )
        raise UserError(f"model in {folder} has model_type {model_type!r}, which transformers does not know")


def _refuse_pickle(path: Path, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise UserError(
            f"refusing pickle checkpoint {path}: loading it can run arbitrary code; "
            "pass --allow-pickle only if you trust its source"
        )


def _check_weights(folder: Path, allow_pickle: bool) -> bool:
    """Validate the weight files; return True when they are pickle files."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise UserError(f"{index} is not a valid safetensors index: {exc}") from None
        for shard in sorted(shards):
            if not (folder / shard).is_file():
                raise UserError(f"{folder} is missing weight shard {shard} named in {index.name}")
    safetensors = sorted(folder.glob("*.safetensors"))
    for file in safetensors:
        safetensors_header(file)
    if safetensors:
        return False
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        _refuse_pickle(pickles[0], allow_pickle)
        return True
    raise UserError(f"folder {folder} has config.json but no weights (*.safetensors)")


def _check_tokenizer(folder: Path) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"folder {folder} has no tokenizer (expected tokenizer.json or tokenizer_config.json)")


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, after checking the file holds all the data it promises."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise UserError(f"{path} is truncated: too short to be a safetensors file")
        length = int.from_bytes(head, "little")
        if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise UserError(f"{path} is truncated or not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path} is corrupt: its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} is corrupt: its safetensors header is not a JSON object")
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise UserError(f"{path} is corrupt: a tensor entry has no valid data_offsets") from None
    if 8 + length + end > size:
        raise UserError(
            f"{path} is truncated: its header promises {8 + length + end} bytes, the file has {size}"
        )
    return header


def check_gguf(path: Path) -> None:
    """Cheap check that a file is GGUF at all; `read_gguf` parses it fully when it is converted."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def read_gguf(path: Path):  # -> gguf.GGUFReader
    """Parse a GGUF file (about 2 s for a small model), turning any damage into a UserError."""
    check_gguf(path)
    try:
        from gguf import GGUFReader

        return GGUFReader(str(path))
    except Exception as exc:  # the reader raises many kinds on a damaged file
        raise UserError(f"{path} is a corrupt GGUF file: {type(exc).__name__}: {exc}") from None

"""What `--model` names: an alias, a local folder, a GGUF file, an ONNX folder or a hub id, checked before loading."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import UserError, first_line
from audit.models.aliases import ALIASES, ModelAlias
from audit.paths import is_utf8_name, kind, list_folder, os_reason, probe, require_file, shown, unknown_home

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
MODEL_FILE_SUFFIXES = {".gguf", ".safetensors", ".onnx"} | PICKLE_SUFFIXES
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_MAX_CONFIG_BYTES = 16 * 1024 * 1024
# Every dtype the installed safetensors reads, with its bits per element.
SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
# Config fields the loader, the facts and transformers' model constructors read as sizes: a
# string or a list there fails deep inside torch. The first set cannot be null either.
_CONFIG_SIZES_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "n_embd", "n_layer", "n_head")
_CONFIG_SIZES = _CONFIG_SIZES_REQUIRED + (
    "intermediate_size", "num_key_value_heads", "max_position_embeddings", "head_dim", "n_positions", "n_ctx",
    "n_inner", "ffn_dim", "word_embed_proj_dim", "d_model", "num_layers", "num_heads", "d_ff",
)
_CONFIG_NUMBERS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "rope_theta", "initializer_range")
_CONFIG_TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


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
    home = unknown_home(spec)
    if home is not None:  # "~someone" for a user this system does not know
        raise UserError(home)
    path = Path(spec).expanduser()
    if probe(path, "model") is not None:
        require_utf8_name(path)
        return _local_source(spec, path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    # A name ending in a model file's suffix is a file that is missing: the hub fetch takes no such files.
    model_file = path.suffix.lower() in MODEL_FILE_SUFFIXES
    if spec.count("/") == 1 and not spec.startswith((".", "~", "/")) and not spec.endswith("/") and not model_file:
        problem = _hub_id_problem(spec)
        if problem is None:
            return ModelSource(spec, "hub", hub_id=spec)
        raise UserError(f"no such file or folder, and not a valid hub id ({problem}): {shown(spec)}")
    if "/" in spec or path.suffix:
        raise UserError(f"no such file or folder: {shown(spec)}")
    known = ", ".join(ALIASES.names())
    raise UserError(f"unknown model alias {spec!r}; known: {known} (or pass a folder, a .gguf file or a hub id)")


def _hub_id_problem(spec: str) -> str | None:
    """Why an `org/name` is not a repository id the hub takes (huggingface_hub's own rules,
    which it applies only when fetching, where its refusal would read as a failed download)."""
    if not _HUB_ID.match(spec):
        return "it may hold only letters, digits, '-', '_' and '.', and starts with a letter or digit"
    if "--" in spec or ".." in spec:
        return "it holds '--' or '..'"
    if any(part[0] in "-." or part[-1] in "-." for part in spec.split("/")):
        return "a part starts or ends with '-' or '.'"
    if len(spec.split("/")[1]) > 96:
        return "its name is longer than 96 characters"
    if spec.endswith(".git"):
        return "it ends in .git"
    return None


def require_utf8_name(path: Path, what: str = "model") -> None:
    """Refuse, before loading, a model whose path is not UTF-8 (bytes of another system's
    encoding in a folder's name): the tokenizer library opens its files by UTF-8 names only and
    would fail deep inside with a UnicodeEncodeError, and a converted GGUF's cache folder is
    named after the file."""
    try:
        full = Path(os.path.abspath(path))
    except OSError:  # the working folder is gone: the path as given
        full = path
    if not (is_utf8_name(path) and is_utf8_name(full)):
        named = full if is_utf8_name(path) else path
        raise UserError(f"{what} {shown(named)}: the name is not UTF-8 (the bad bytes shown escaped), and a model's tokenizer "
                        "can only be read under UTF-8 names; rename it, or the folder it is in")


def _local_source(spec: str, path: Path, *, allow_pickle: bool, trust_remote_code: bool) -> ModelSource:
    if path.name in ("", ".."):  # `.`, `..`, or a weights file's folder `.`: the model is named after its folder
        try:
            path = Path(os.path.abspath(path))
        except OSError:  # the working folder is gone: the path as given
            pass
    found = kind(probe(path, "model"))
    if found == "file":
        suffix = path.suffix.lower()
        if suffix == ".gguf":
            check_gguf(path)
            return ModelSource(spec, "gguf", path=path)
        if suffix in PICKLE_SUFFIXES:
            _refuse_pickle(path, allow_pickle)
            return _local_source(spec, path.parent, allow_pickle=True, trust_remote_code=trust_remote_code)
        if suffix in {".safetensors", ".onnx"}:
            return _local_source(spec, path.parent, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        raise UserError(f"{shown(path)} is not a model: expected a folder, a .gguf file or a .safetensors/.onnx file")
    if found != "folder":
        raise UserError(f"{shown(path)} is not a model: it is neither a regular file nor a folder")
    entries = list_folder(path, "model folder")
    config = _read_config(path)
    _check_remote_code(path, config, trust_remote_code)
    onnx = [p for p in entries if p.name.endswith(".onnx")]
    if onnx:
        for file in onnx:
            require_file(file, "ONNX file")
        _check_tokenizer(path)
        return ModelSource(spec, "onnx", path=path)
    uses_pickle = _check_weights(path, entries, allow_pickle)
    _check_tokenizer(path)
    return ModelSource(spec, "folder", path=path, pickle=uses_pickle)


def _read_json(path: Path, what: str, max_bytes: int) -> Any:
    """The JSON value in a small file, any fault with the file a UserError naming it."""
    size = require_file(path, what).st_size
    if size > max_bytes:
        raise UserError(f"{shown(path)} is {size} bytes: too large to be a {what}")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {shown(path)}: {os_reason(exc)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{shown(path)} is not valid JSON: it is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{shown(path)} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UserError(f"{shown(path)} is not valid JSON: it is nested too deeply") from None


def _read_config(folder: Path) -> dict:
    config_path = folder / "config.json"
    if probe(config_path, "model config") is None:
        raise UserError(f"folder {shown(folder)} has no config.json: not a Hugging Face model folder")
    config = _read_json(config_path, "model config", _MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise UserError(f"{shown(config_path)} is not a JSON object")
    check_config_fields(config_path, config)
    return config


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_config_fields(config_path: Path, config: dict, prefix: str = "") -> None:
    """Refuse config values of the wrong type before transformers builds a model from them."""
    for field in _CONFIG_SIZES:
        if field not in config:
            continue
        value = config[field]
        if value is None and field not in _CONFIG_SIZES_REQUIRED:
            continue
        if not _is_count(value):
            raise UserError(f"{shown(config_path)}: {prefix}{field} must be a positive whole number, not {value!r}")
    for field in _CONFIG_NUMBERS:
        value = config.get(field)
        if value is not None and not _is_number(value):
            raise UserError(f"{shown(config_path)}: {prefix}{field} must be a number, not {value!r}")
    for field in _CONFIG_TOKEN_IDS:
        value = config.get(field)
        ids = value if isinstance(value, list) else [value]
        if value is not None and not all(_is_whole(v) for v in ids):
            raise UserError(f"{shown(config_path)}: {prefix}{field} must be a token id (a whole number) or a list of them, not {value!r}")
    if not isinstance(config.get("model_type", ""), str):
        raise UserError(f"{shown(config_path)}: {prefix}model_type must be a string, not {config['model_type']!r}")
    architectures = config.get("architectures")
    if architectures is not None and not (isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)):
        raise UserError(f"{shown(config_path)}: {prefix}architectures must be a list of class names, not {architectures!r}")
    text_config = config.get("text_config")
    if text_config is not None and not prefix:
        if not isinstance(text_config, dict):
            raise UserError(f"{shown(config_path)}: text_config must be a JSON object, not {text_config!r}")
        check_config_fields(config_path, text_config, "text_config.")


def _check_remote_code(folder: Path, config: dict, trust_remote_code: bool) -> None:
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if trust_remote_code:
        return
    if model_type not in CONFIG_MAPPING:
        if "auto_map" in config:
            raise UserError(
                f"model in {shown(folder)} needs its own Python code (model_type {model_type!r}); "
                "pass --trust-remote-code only if you trust its author"
            )
        if model_type is None:
            raise UserError(f"model in {shown(folder)}: its config.json names no model_type, so transformers cannot tell what model it is")
        raise UserError(f"model in {shown(folder)} has model_type {model_type!r}, which transformers does not know")


def _refuse_pickle(path: Path, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise UserError(
            f"refusing pickle checkpoint {shown(path)}: loading it can run arbitrary code; "
            "pass --allow-pickle only if you trust its source"
        )


SAFETENSORS_INDEX = "model.safetensors.index.json"
# The pickle weights transformers reads: this file, else the shards this index names.
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"


def index_shards(folder: Path, name: str = SAFETENSORS_INDEX) -> list[str]:
    """The weight shards a folder's index `name` (safetensors', or PICKLE_INDEX) names ([]
    without that index), each checked to be a file of the folder itself: a shard elsewhere
    (`sub/x.safetensors`, `../x`) would be loaded while a fingerprint of the folder's own files
    never reads it."""
    index = folder / name
    what = "pickle weights index" if name == PICKLE_INDEX else "safetensors index"
    if probe(index, what) is None:
        return []
    weight_map = _read_json(index, what, _MAX_CONFIG_BYTES)
    weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError(f"{shown(index)} is not a valid {what}: it has no weight_map of tensor names to files")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if Path(shard).name != shard or shard in (".", "..") or "\\" in shard:
            raise UserError(f"{shown(index)} names weight shard {shard!r}, which is not a file of the folder itself")
        if probe(folder / shard, "weight shard") is None:
            raise UserError(f"{shown(folder)} is missing weight shard {shard} named in {index.name}")
    return shards


def _check_weights(folder: Path, entries: list[Path], allow_pickle: bool) -> bool:
    """Validate the weight files; return True when they are pickle files."""
    index_shards(folder)
    safetensors = [p for p in entries if p.name.endswith(".safetensors")]
    for file in safetensors:
        safetensors_header(file)
    if safetensors:
        return False
    pickles = [p for p in entries if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        _refuse_pickle(pickles[0], allow_pickle)
        for file in pickles:
            require_file(file, "weights file")
        if not index_shards(folder, PICKLE_INDEX) and not any(p.name == PICKLE_WEIGHTS for p in pickles):
            names = ", ".join(sorted(p.name for p in pickles)[:3])
            raise UserError(f"folder {shown(folder)} holds pickle weights ({names}) but none under the names they are loaded from: "
                            f"{PICKLE_WEIGHTS}, or the shards {PICKLE_INDEX} names")
        return True
    raise UserError(f"folder {shown(folder)} has config.json but no weights (*.safetensors)")


def _check_tokenizer(folder: Path) -> None:
    found = False
    for name in TOKENIZER_FILES:
        path = folder / name
        if probe(path, "tokenizer file") is not None:
            require_file(path, "tokenizer file")
            found = True
    if not found:
        raise UserError(f"folder {shown(folder)} has no tokenizer (expected tokenizer.json or tokenizer_config.json)")


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked as the safetensors reader checks it
    (known dtypes, sizes that match shapes, tensors covering the data exactly)."""
    size = require_file(path, "weights file").st_size
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise UserError(f"{shown(path)} is truncated: too short to be a safetensors file")
            length = int.from_bytes(head, "little")
            if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
                raise UserError(f"{shown(path)} is truncated or not a safetensors file (header of {length} bytes)")
            raw = handle.read(length)
    except OSError as exc:
        raise UserError(f"cannot read {shown(path)}: {os_reason(exc)}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UserError(f"{shown(path)} is corrupt: its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise UserError(f"{shown(path)} is corrupt: its safetensors header is not a JSON object")
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise UserError(f"{shown(path)} is corrupt: its __metadata__ is not a map of strings")
    spans = []
    for name, info in header.items():
        if name != "__metadata__":
            spans.append(_tensor_span(path, name, info))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end:
            raise UserError(f"{shown(path)} is corrupt: tensor {name!r} starts at byte {start} of the data, expected {end}")
        end = stop
    if 8 + length + end > size:
        raise UserError(
            f"{shown(path)} is truncated: its header promises {8 + length + end} bytes, the file has {size}"
        )
    if 8 + length + end < size:
        raise UserError(f"{shown(path)} is corrupt: {size - 8 - length - end} bytes follow its last tensor")
    return header


def _tensor_span(path: Path, name: str, info: Any) -> tuple[int, int, str]:
    """Where one tensor's bytes lie in the data, after checking its entry is consistent."""
    if not isinstance(info, dict):
        raise UserError(f"{shown(path)} is corrupt: the entry of tensor {name!r} is not a JSON object")
    dtype = info.get("dtype")
    if dtype not in SAFETENSORS_DTYPE_BITS:
        raise UserError(f"{shown(path)} is corrupt or too new: tensor {name!r} has unknown dtype {dtype!r}")
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(_is_whole(d) for d in shape):
        raise UserError(f"{shown(path)} is corrupt: tensor {name!r} has shape {shape!r}, not a list of sizes")
    offsets = info.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_whole(o) for o in offsets) and offsets[0] <= offsets[1]):
        raise UserError(f"{shown(path)} is corrupt: tensor {name!r} has no valid data_offsets")
    start, stop = offsets
    elements = math.prod(shape)
    if elements * SAFETENSORS_DTYPE_BITS[dtype] != (stop - start) * 8:
        raise UserError(
            f"{shown(path)} is corrupt: tensor {name!r} ({dtype}, shape {shape}) has {stop - start} bytes of data, "
            f"not the {elements * SAFETENSORS_DTYPE_BITS[dtype] / 8:g} its shape needs"
        )
    return start, stop, name


def check_gguf(path: Path) -> None:
    """Cheap check that a file is GGUF at all; `read_gguf` parses it fully when it is converted."""
    require_file(path, "GGUF file")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise UserError(f"cannot read {shown(path)}: {os_reason(exc)}") from None
    if magic != b"GGUF":
        raise UserError(f"{shown(path)} is not a GGUF file (it does not start with the GGUF magic bytes)")


def read_gguf(path: Path):  # -> gguf.GGUFReader
    """Parse a GGUF file (about 2 s for a small model), turning any damage into a UserError."""
    check_gguf(path)
    try:
        from gguf import GGUFReader

        return GGUFReader(str(path))
    except Exception as exc:  # the reader raises many kinds on a damaged file
        raise UserError(f"{shown(path)} is a corrupt GGUF file: {type(exc).__name__}: {first_line(exc, 300)}") from None

"""A model folder's fingerprint: a digest of every tensor (name, dtype, shape and values), of its
config and of its tokenizer, read one tensor at a time from memory-mapped files.

The canonical form of a tensor is the line `name\\ndtype\\nshape\\n` (dtype as safetensors
names it, e.g. F32; shape as comma-separated sizes) followed by its values as little-endian
bytes in row-major order: exactly what a dense safetensors file stores. A tensor kept in
edge-audit's compressed sparse format is decoded to that form first, so a folder and its
`compressed/` copy of the same weights agree. The weights digest is the SHA-256 of the lines
`name digest` of every tensor, sorted by name; the fingerprint is the SHA-256 of the weights,
config and tokenizer digests. Config files are read as JSON and written canonically (sorted
keys), without `_name_or_path`, which records where a folder was saved, not what it is.

Folders whose weights are not safetensors (ONNX graphs, pickle files) are fingerprinted file
by file: each weight file counts as one "tensor" named `file:NAME`. Which weights those are is
decided as loading decides it: a folder holding an ONNX graph is run by ONNX Runtime, so its
graph files are fingerprinted even beside safetensors files.

Besides weights, config and tokenizer, the fingerprint covers whatever else decides how the
folder is loaded and run: the safetensors index (which shard holds each tensor), every Python
file in the folder (the model code `--trust-remote-code` runs) and the document-start token
edge-audit recorded in `edge_audit.json`.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from audit.errors import UserError
from audit.models.meta import INT8_FILE, INT8_FORMAT, META_FILE, SPARSE_FILE, SPARSE_FORMAT, WEIGHTS_META_KEY, PackedTensor, check_mask_count, read_meta, sparse_layout, unpacked
from audit.models.sources import PICKLE_INDEX, SAFETENSORS_DTYPE_BITS, SAFETENSORS_INDEX, index_shards, safetensors_header
from audit.paths import kind, os_reason, probe
from audit.progress import Job, Progress, check_cancel

FINGERPRINT_FORMAT = "edge-audit-fingerprint/2"
# Fingerprints of earlier versions, which covered less: refused with what to do.
EARLIER_FORMATS = ("edge-audit-fingerprint/1",)
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
)
_FILE_WEIGHTS = (".onnx", ".onnx_data", ".data", ".bin", ".pt", ".pth")
_DROPPED_CONFIG_KEYS = ("_name_or_path",)
_BLOCK = 16 * 1024 * 1024  # bytes hashed per call; hashlib releases the GIL for each
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass(frozen=True)
class Fingerprint:
    """What a folder holds, as digests: the whole, its three parts, and each tensor and file."""

    digest: str
    weights: str
    config: str
    tokenizer: str
    tensors: dict[str, str]
    files: dict[str, str]  # config and tokenizer files: name -> digest of the canonical content
    storage: str  # how the weights are stored: safetensors, sparse-bitmask, int8-dynamic, files
    n_values: int  # tensor elements (0 for weights fingerprinted by file)
    seconds: float = field(default=0.0, compare=False)

    @property
    def short(self) -> str:
        return self.digest[:12]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FINGERPRINT_FORMAT,
            "digest": self.digest,
            "weights": self.weights,
            "config": self.config,
            "tokenizer": self.tokenizer,
            "storage": self.storage,
            "n_tensors": len(self.tensors),
            "n_values": self.n_values,
            "seconds": round(self.seconds, 3),
            "files": dict(sorted(self.files.items())),
            "tensors": dict(sorted(self.tensors.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "fingerprint") -> "Fingerprint":
        """A fingerprint as `to_dict` wrote it; anything else is refused in one line."""
        if isinstance(data, Mapping) and data.get("format") in EARLIER_FORMATS:
            raise UserError(f"{where} was made by an earlier edge-audit ({data['format']}), which did not fingerprint the model's code, "
                            "index and document start: export the record again from the audit (`edge-audit record export`)")
        if not isinstance(data, Mapping) or data.get("format") != FINGERPRINT_FORMAT:
            raise UserError(f"{where} is not an {FINGERPRINT_FORMAT} fingerprint")
        try:
            tensors, files = data["tensors"], data["files"]
            values = {k: data[k] for k in ("digest", "weights", "config", "tokenizer", "storage")}
            n_values = data["n_values"]
            seconds = data.get("seconds", 0.0)
        except KeyError as exc:
            raise UserError(f"{where} lacks {exc.args[0]!r}") from None
        if not (
            isinstance(tensors, dict)
            and isinstance(files, dict)
            and all(isinstance(v, str) for v in [*values.values(), *tensors.values(), *files.values()])
            and isinstance(n_values, int)
            and (isinstance(seconds, float) or (isinstance(seconds, int) and abs(seconds) < 10**15))
        ):
            raise UserError(f"{where} has fields of the wrong type")
        return cls(tensors=dict(tensors), files=dict(files), n_values=n_values, seconds=float(seconds or 0), **values)


@dataclass(frozen=True)
class FingerprintDiff:
    """How a folder differs from an expected fingerprint, by name."""

    changed: list[str]
    missing: list[str]
    extra: list[str]
    files: list[str]  # config or tokenizer files that differ, are missing or are extra

    @property
    def matches(self) -> bool:
        return not (self.changed or self.missing or self.extra or self.files)

    @property
    def tensors(self) -> list[str]:
        return self.changed + self.missing + self.extra

    def summary(self, named: int = 0) -> str:
        """One phrase: what differs, counted, with the first `named` tensors by name; empty
        when nothing does."""
        parts = []
        count = len(self.tensors)
        if count:
            phrase = f"{count} tensor{'s' if count != 1 else ''} differ{'s' if count == 1 else ''} from the audited weights"
            if named:
                more = f" (+{count - named} more)" if count > named else ""
                phrase += f": {', '.join(self.tensors[:named])}{more}"
            parts.append(phrase)
        if self.files:
            parts.append(f"{', '.join(self.files)} differ{'s' if len(self.files) == 1 else ''}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"matches": self.matches, "changed": self.changed, "missing": self.missing, "extra": self.extra, "files": self.files}


def compare(expected: Fingerprint, actual: Fingerprint) -> FingerprintDiff:
    def names(a: Mapping[str, str], b: Mapping[str, str]) -> tuple[list[str], list[str], list[str]]:
        changed = sorted(n for n in a.keys() & b.keys() if a[n] != b[n])
        return changed, sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())

    changed, missing, extra = names(expected.tensors, actual.tensors)
    file_changed, file_missing, file_extra = names(expected.files, actual.files)
    return FingerprintDiff(changed, missing, extra, sorted(file_changed + file_missing + file_extra))


# -- canonical bytes --------------------------------------------------------------------------
def _tensor_head(name: str, dtype: str, shape: list[int]) -> bytes:
    return f"{name}\n{dtype}\n{','.join(str(int(d)) for d in shape)}\n".encode("utf-8")


def _hash_view(digest: Any, view: memoryview | bytes) -> None:
    view = memoryview(view)
    for start in range(0, len(view), _BLOCK):
        digest.update(view[start : start + _BLOCK])


def canonical_json(data: Any, *, allow_nan: bool = False) -> bytes:
    """JSON with keys sorted, no whitespace, UTF-8: one byte string for one value, however the
    file it came from was formatted. Digests and signatures are taken over it."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan).encode("utf-8")


def _file_digest(path: Path) -> str:
    """A config or tokenizer file: JSON files by their canonical form, others by their bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {os_reason(exc)}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise UserError(f"{path} is not valid JSON") from None
        if isinstance(data, dict) and path.name in CONFIG_FILES:
            data = {k: v for k, v in data.items() if k not in _DROPPED_CONFIG_KEYS}
        raw = canonical_json(data, allow_nan=True)
    return hashlib.sha256(raw).hexdigest()


def _part_digest(entries: Mapping[str, str]) -> str:
    lines = "".join(f"{name} {value}\n" for name, value in sorted(entries.items()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


# -- reading the weights ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: str
    shape: list[int]
    nbytes: int


class _MappedFile:
    """A safetensors file mapped read-only: its header, and a view of any tensor's bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header = safetensors_header(path)
        self.metadata = self.header.pop("__metadata__", None) or {}
        try:
            with open(path, "rb") as handle:
                self.offset = 8 + int.from_bytes(handle.read(8), "little")
                size = path.stat().st_size
                self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except OSError as exc:
            raise UserError(f"cannot read {path}: {os_reason(exc)}") from None

    def view(self, name: str) -> memoryview:
        start, stop = self.header[name]["data_offsets"]
        assert self.map is not None
        return memoryview(self.map)[self.offset + start : self.offset + stop]

    def drop(self, *names: str) -> None:
        """Give back the pages of tensors already read: they stay in the page cache, but the
        process does not hold the whole file resident by the end."""
        if self.map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        for name in names:
            start, stop = self.header[name]["data_offsets"]
            first = (self.offset + start) // mmap.PAGESIZE * mmap.PAGESIZE
            length = self.offset + stop - first
            if length > 0:
                self.map.madvise(mmap.MADV_DONTNEED, first, length)

    def close(self) -> None:
        if self.map is not None:
            try:
                self.map.close()
            except BufferError:
                # A view of a tensor is still held (the fingerprint was stopped while hashing
                # it): the mapping goes with the last view instead of now.
                pass


def _sparse_layout(file: _MappedFile) -> dict[str, PackedTensor]:
    stored = {name: (info["dtype"], info["shape"]) for name, info in file.header.items()}
    return sparse_layout(file.path, file.metadata, stored)


def _decoded_sparse(file: _MappedFile, tensor: PackedTensor) -> memoryview:
    """A packed tensor decoded to its dense bytes (bitmask and non-zero values -> all values)."""
    bits, values = tensor.parts
    mask = np.unpackbits(_array(file.view(bits), np.uint8), count=tensor.numel).astype(bool)
    # Counted before the values are mapped: a refusal raised while a view of the file is alive
    # would keep the file mapped until the refusal is collected.
    check_mask_count(file.path, tensor, int(mask.sum()))
    same_size = _UINT[SAFETENSORS_DTYPE_BITS[tensor.code] // 8]
    dense = np.zeros(tensor.numel, dtype=same_size)
    dense[mask] = _array(file.view(values), same_size)
    return memoryview(dense).cast("B")


def _array(view: memoryview, dtype: Any) -> np.ndarray:
    return np.frombuffer(view, dtype=dtype) if len(view) else np.zeros(0, dtype)


def _weight_files(folder: Path, storage: str | None) -> tuple[str, list[Path]]:
    if storage == SPARSE_FORMAT:
        return SPARSE_FORMAT, [folder / SPARSE_FILE]
    if storage == INT8_FORMAT:
        return INT8_FORMAT, [folder / INT8_FILE]
    if storage is not None:
        raise UserError(f"{folder} is stored as {storage!r}, which this version of edge-audit cannot fingerprint")
    others = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _FILE_WEIGHTS)
    if any(p.name.endswith(".onnx") for p in others):
        return "files", others  # loaded as an ONNX model (`audit.models.sources`), whatever else is there
    index_shards(folder)  # every shard a file of the folder, so among those read here
    files = sorted(p for p in folder.glob("*.safetensors") if p.name not in (SPARSE_FILE, INT8_FILE))
    if files:
        return "safetensors", files
    if others:
        index_shards(folder, PICKLE_INDEX)  # likewise for pickle shards
        return "files", others
    raise UserError(f"{folder} holds no weights edge-audit can fingerprint (no .safetensors, .onnx or .bin files)")


def _loading_files(folder: Path, meta: Mapping[str, Any]) -> dict[str, str]:
    """Digests of what else decides how the folder is loaded and run: its safetensors index,
    every Python file in it (`code:PATH`, at any depth) and the document-start token recorded in
    `edge_audit.json`, read as `meta` (its other fields describe the folder's history, and its
    storage format differs between a folder and its `compressed/` copy of the same weights)."""
    found: dict[str, str] = {}
    if (folder / SAFETENSORS_INDEX).is_file():
        found[SAFETENSORS_INDEX] = _file_digest(folder / SAFETENSORS_INDEX)
    for path in sorted(folder.rglob("*.py")):
        if path.is_file():
            found[f"code:{path.relative_to(folder).as_posix()}"] = _file_digest(path)
    prefix = meta.get("text_prefix_token")
    if prefix is not None:
        found[f"{META_FILE}:text_prefix_token"] = hashlib.sha256(canonical_json(prefix)).hexdigest()
    return found


def _tensors(folder: Path, storage: str, files: list[Path]) -> Iterator[tuple[str, str, list[int], memoryview | None, Path]]:
    """(name, dtype, shape, canonical bytes, file) for every tensor; for `files` storage,
    (file:NAME, "", [], None, path): the caller hashes the file itself."""
    if storage == "files":
        for path in files:
            yield f"file:{path.name}", "", [], None, path
        return
    for path in files:
        mapped = _MappedFile(path)
        try:
            packed = _sparse_layout(mapped) if storage == SPARSE_FORMAT else {}
            for name in sorted(packed):
                tensor = packed[name]
                data = _decoded_sparse(mapped, tensor)
                yield name, tensor.code, list(tensor.shape), data, path
                mapped.drop(*tensor.parts)
            for name in sorted(unpacked(mapped.header, packed)):
                info = mapped.header[name]
                yield name, info["dtype"], [int(d) for d in info["shape"]], mapped.view(name), path
                mapped.drop(name)
        finally:
            mapped.close()


def _int8_layout(folder: Path) -> dict[str, str]:
    """How an int8 folder's tensors are read (which layers are quantized): part of the model."""
    mapped = _MappedFile(folder / INT8_FILE)
    try:
        layout = mapped.metadata.get(WEIGHTS_META_KEY)
    finally:
        mapped.close()
    if layout is None:
        return {}
    try:
        return {"int8-layout": hashlib.sha256(canonical_json(json.loads(layout), allow_nan=True)).hexdigest()}
    except json.JSONDecodeError:
        raise UserError(f"{folder / INT8_FILE} is corrupt: its layout is not valid JSON") from None


def _hash_file(path: Path, digest: Any, cancel: threading.Event | None) -> int:
    try:
        with open(path, "rb") as handle:
            size = 0
            while block := handle.read(_BLOCK):
                check_cancel(cancel)
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {os_reason(exc)}") from None
    return size


def fingerprint_folder(folder: Path, cancel: threading.Event | None = None) -> Job[Fingerprint]:
    """Fingerprint a model folder, one tensor at a time; yields progress in bytes read."""
    folder = Path(folder)
    found = kind(probe(folder, "model folder"))
    if found != "folder":
        raise UserError(f"model folder {folder} {'does not exist' if found is None else 'is not a folder'}")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: it is not a model folder")
    started = time.perf_counter()
    meta = read_meta(folder, strict=True)
    storage, files = _weight_files(folder, (meta.get("storage") or {}).get("format"))
    total = sum(p.stat().st_size for p in files)
    yield Progress("fingerprint", 0, total, f"fingerprinting {folder.name}")
    tensors: dict[str, str] = {}
    n_values = 0
    done = 0
    rows = _tensors(folder, storage, files)
    data: memoryview | None = None
    try:
        for name, dtype, shape, data, path in rows:
            check_cancel(cancel)
            digest = hashlib.sha256(_tensor_head(name, dtype, shape))
            if data is None:
                done += _hash_file(path, digest, cancel)
            else:
                _hash_view(digest, data)
                n_values += int(np.prod(shape, dtype=np.int64))
                done = min(total, done + len(data))
                data = None
            if name in tensors:
                raise UserError(f"{folder}: tensor {name!r} is stored twice")
            tensors[name] = digest.hexdigest()
            yield Progress("fingerprint", done, total, f"{len(tensors)} tensors")
    finally:
        # Stopped or refused part-way: the files are unmapped now, not when the stopped job is
        # collected (then with a "BufferError ... Exception ignored" trace on stderr).
        data = None
        rows.close()
    config_files = {name: _file_digest(folder / name) for name in CONFIG_FILES if (folder / name).is_file()}
    if storage == INT8_FORMAT:
        config_files.update(_int8_layout(folder))
    config_files.update(_loading_files(folder, meta))
    tokenizer_files = {name: _file_digest(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()}
    weights = _part_digest(tensors)
    config = _part_digest(config_files)
    tokenizer = _part_digest(tokenizer_files)
    whole = hashlib.sha256(canonical_json({"format": FINGERPRINT_FORMAT, "weights": weights, "config": config, "tokenizer": tokenizer}))
    yield Progress("fingerprint", total, total, f"{len(tensors)} tensors")
    return Fingerprint(
        digest=whole.hexdigest(),
        weights=weights,
        config=config,
        tokenizer=tokenizer,
        tensors=tensors,
        files={**config_files, **tokenizer_files},
        storage=storage,
        n_values=n_values,
        seconds=time.perf_counter() - started,
    )

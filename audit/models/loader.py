"""Load any model source into a LanguageModel, converting GGUF files once into the cache."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from audit import atomic
from audit.errors import UserError, first_line
from audit.models.aliases import ALIASES, ModelAlias
from audit.models.interface import LanguageModel
from audit.models.meta import CACHE_CHECKED_KEY, read_meta, write_meta
from audit.models.sources import (
    PICKLE_INDEX,
    PICKLE_WEIGHTS,
    SAFETENSORS_DTYPE_BITS,
    ModelSource,
    index_shards,
    read_gguf,
    require_utf8_name,
    resolve_source,
    safetensors_header,
)
from audit.paths import kind, models_cache_dir, os_reason, probe, require_working_folder, shown
from audit.progress import Job, Progress, check_cancel
from audit.threads import onnx_wait_entries, resolve_threads, thread_count_problem
from hardware.memory import MB, available_bytes, release_free_heap

# 2: converted with the whole-weights check. A cache of format 1 may hold, as if the GGUF's, the
# values transformers made up for a tensor the GGUF lacks; it is converted again, once.
CACHE_FORMAT = 2
DTYPES = ("float32", "bfloat16", "float16")
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_FLOAT_SAFETENSORS_DTYPES = {"F32", "F16", "BF16", "F64"}
# Working memory beyond the weights: activations, tokenizer, allocator slack.
_HEADROOM_BYTES = 256 * MB
# Reading a GGUF holds the file's dequantized tensors and the model at once (measured 2.1x).
_GGUF_CONVERSION_FACTOR = 2.2


@dataclass(frozen=True)
class LoadOptions:
    allow_pickle: bool = False
    trust_remote_code: bool = False
    dtype: str = "float32"
    threads: int | None = None  # None: the cores free when the model loads (audit.threads)
    max_memory_mb: float | None = None  # budget; None means the memory the system has available
    reserve_cores: int = 0  # cores a chosen thread count leaves to other work (the app's screen)

    def __post_init__(self) -> None:
        # Checked here, as the options are made, so a bad flag is refused before anything loads.
        if self.dtype not in DTYPES:
            raise UserError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        threads = self.threads
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int):
                raise UserError(f"--threads must be a whole number, not {threads!r}")
            problem = thread_count_problem(threads)
            if problem is not None:
                raise UserError(f"--threads {problem}")
        budget = self.max_memory_mb
        if budget is not None:
            is_number = isinstance(budget, (int, float)) and not isinstance(budget, bool)
            if not is_number or not math.isfinite(budget) or budget <= 0:
                shown = budget if is_number else repr(budget)
                raise UserError(f"--max-memory-mb must be a positive number of MB, not {shown}")


# -- memory -----------------------------------------------------------------------------
def memory_budget_bytes(options: LoadOptions) -> int:
    available = available_bytes()
    if options.max_memory_mb is not None:
        return min(available, int(options.max_memory_mb * MB))
    return available


def check_memory(what: str, need_bytes: int, options: LoadOptions, *, at_least: bool = False) -> None:
    """Refuse, with both numbers, rather than let the kernel kill the process mid-load.

    `at_least` marks a lower bound checked before the real estimate can be made (before a
    download or a conversion), so a budget that cannot suffice stops the work up front.
    """
    budget = memory_budget_bytes(options)
    if need_bytes > budget:
        raise UserError(
            f"not enough memory to load {what}: needs {'at least' if at_least else 'about'} "
            f"{need_bytes / MB:.0f} MB, {budget / MB:.0f} MB available"
        )


def estimate_folder_bytes(folder: Path, options: LoadOptions) -> int:
    """Memory the weights of a folder take once loaded at `options.dtype`, plus headroom."""
    recorded = read_meta(folder).get("storage", {}).get("loaded_bytes")
    if isinstance(recorded, int) and recorded > 0:  # a compressed folder: its decoded size
        return recorded + _HEADROOM_BYTES
    weights = 0
    for file in sorted(folder.glob("*.safetensors")):
        for name, info in safetensors_header(file).items():
            if name == "__metadata__":
                continue
            numel = 1
            for dim in info.get("shape", []):
                numel *= int(dim)
            dtype = info["dtype"]  # safetensors_header checked it is known
            # Float tensors are cast to the load dtype; the others keep their size.
            if dtype in _FLOAT_SAFETENSORS_DTYPES:
                weights += numel * _DTYPE_BYTES[options.dtype]
            else:
                weights += math.ceil(numel * SAFETENSORS_DTYPE_BITS[dtype] / 8)
    if not weights:  # pickle or ONNX files: their size, twice, for the copy made while reading
        weights = 2 * sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix.lower() in {".bin", ".pt", ".pth", ".onnx", ".onnx_data", ".data"})
    return weights + _HEADROOM_BYTES


def folder_size_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def model_size_bytes(folder: Path) -> int:
    """Bytes of one model folder, not counting model folders nested inside it (a pruned
    model keeps its compressed form in a subfolder of its own)."""
    total = 0
    for path in Path(folder).iterdir():
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir() and not (path / "config.json").is_file():
            total += folder_size_bytes(path)
    return total


# -- the conversion cache -------------------------------------------------------------------
@contextlib.contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    """One converter at a time per cache entry, across processes."""
    root = models_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / f".{name}.lock", "w")
    except OSError as exc:
        raise UserError(
            f"cannot use the model cache {root}: {os_reason(exc)} (set EDGE_AUDIT_CACHE to a folder you can write)"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gguf_identity(path: Path) -> dict[str, Any]:
    """What tells a GGUF file from another under the same name: its size and the time it was
    last written. A file replaced by one of the same size (other weights quantized the same
    way) is written at another time, so its cached conversion is not taken for it."""
    stat = path.stat()
    return {"kind": "gguf", "file": path.name, "bytes": stat.st_size, "modified_ns": stat.st_mtime_ns, "path": str(path.resolve())}


def cache_entry_for_gguf(path: Path, alias: ModelAlias | None) -> Path:
    if alias is not None:
        return models_cache_dir() / alias.name
    digest = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return models_cache_dir() / f"gguf-{path.stem}-{digest}"


def _cache_is_current(folder: Path, identity: dict[str, Any]) -> bool:
    meta = read_meta(folder)
    if meta.get("cache_format") != CACHE_FORMAT:
        return False
    source = meta.get("source", {})
    if any(source.get(key) != identity[key] for key in ("file", "bytes", "modified_ns")):
        return False
    weights = sorted(folder.glob("*.safetensors"))
    if not (folder / "config.json").is_file() or not weights:
        return False
    try:  # its headers only, as a folder given to --model is checked: a damaged file is converted again
        for file in weights:
            safetensors_header(file)
    except UserError:
        return False
    return True


def prepare_gguf(
    path: Path,
    alias: ModelAlias | None = None,
    options: LoadOptions = LoadOptions(),
    cancel: threading.Event | None = None,
    *,
    reconvert: bool = False,
) -> Job[Path]:
    """Convert a GGUF file once into a cached folder (float32 safetensors + fixed tokenizer);
    `reconvert` replaces a cached conversion that reads as current."""
    target = cache_entry_for_gguf(path, alias)
    require_utf8_name(target, "model cache folder")  # its tokenizer is saved and read there
    if kind(probe(target, "model cache folder")) not in (None, "folder"):
        raise UserError(f"model cache folder {target} is not a folder; remove it and try again")
    identity = _gguf_identity(path)
    if not reconvert and _cache_is_current(target, identity):
        atomic.tidy(target)  # what a replacement killed after it took its place left
        return target
    # The dequantized weights are larger than the quantized file: a budget below the file's
    # size cannot suffice, so refuse before reading it.
    check_memory(path.name, identity["bytes"] + _HEADROOM_BYTES, options, at_least=True)
    with _cache_lock(target.name):
        # What a conversion killed midway left (up to a whole model): gone, or put back in place.
        atomic.remove_unfinished(target)
        if not reconvert and _cache_is_current(target, identity):  # another process converted it meanwhile
            return target
        yield Progress("convert", 0, 3, f"reading {path.name}")
        reader = read_gguf(path)
        n_elements = sum(int(t.n_elements) for t in reader.tensors)
        del reader
        check_memory(path.name, int(n_elements * 4 * _GGUF_CONVERSION_FACTOR) + _HEADROOM_BYTES, options)
        check_cancel(cancel)
        yield Progress("convert", 1, 3, f"dequantizing {path.name} to float32 (once; about 20 s)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, name = str(path.parent), path.name
        _quiet_transformers()
        # transformers draws its own tqdm bar here; the caller shows our progress instead.
        with contextlib.redirect_stderr(io.StringIO()):
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model, info = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32", output_loading_info=True)
        # Converted, a tensor the file lacks would be stored as the random values transformers
        # filled it with, and the cached folder would then pass for a whole model.
        require_whole_weights(model, info, f"cannot convert {path}: its weights")
        check_cancel(cancel)
        notes = list(alias.notes) if alias else [
            "dequantized from a GGUF file: this float32 model carries the GGUF's quantization error"
        ]
        prefix_token, end_token = _gguf_special_tokens(tokenizer, model.config, alias)
        _fix_gguf_tokenizer(tokenizer, end_token)
        yield Progress("convert", 2, 3, "saving safetensors")
        with atomic.directory(target, force=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            write_meta(
                tmp,
                {
                    "cache_format": CACHE_FORMAT,
                    "source": identity,
                    "alias": alias.name if alias else None,
                    "text_prefix_token": prefix_token,
                    "notes": notes,
                },
            )
        del model
        yield Progress("convert", 3, 3, "converted")
    return target


def _gguf_special_tokens(tokenizer: Any, config: Any, alias: ModelAlias | None) -> tuple[str | None, str | None]:
    """The document-start token for plain text and the end-of-turn token for chat.

    GGUF tokenizers often mark the chat-turn start (`<|im_start|>`) as BOS and prepend it to
    every input; that token is right for chat prompts only.
    """
    if alias is not None:
        return alias.text_prefix_token, alias.chat_end_token
    vocab = tokenizer.get_vocab()
    end = tokenizer.convert_ids_to_tokens(config.eos_token_id) if isinstance(config.eos_token_id, int) else None
    bos = tokenizer.bos_token
    template = getattr(tokenizer, "chat_template", None) or ""
    if bos and bos not in template:
        return bos, end
    for candidate in ("<|endoftext|>", "</s>", "<eos>"):
        if candidate in vocab:
            return candidate, end
    return end, end


def _fix_gguf_tokenizer(tokenizer: Any, end_token: str | None) -> None:
    """Stop the tokenizer prepending a marker to plain text; end chat turns at the real end token."""
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False
    if end_token:
        tokenizer.eos_token = end_token


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def prepare_alias(name: str, options: LoadOptions = LoadOptions(), cancel: threading.Event | None = None) -> Job[Path]:
    alias = ALIASES.get(name)
    return (yield from prepare_gguf(alias.locate(), alias, options, cancel))


def cached_models() -> list[dict[str, Any]]:
    """Converted models in the cache, with their sizes."""
    root = models_cache_dir()
    if kind(probe(root, "model cache folder")) != "folder":
        return []
    entries = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        meta = read_meta(folder)
        entries.append(
            {
                "name": folder.name,
                "path": str(folder),
                "alias": meta.get("alias"),
                "source": meta.get("source", {}).get("path"),
                "size_on_disk_mb": round(folder_size_bytes(folder) / MB, 2),
            }
        )
    return entries


# -- hub ----------------------------------------------------------------------------------
def fetch_hub(source: ModelSource, options: LoadOptions) -> Path:
    """Download a hub model's safetensors and tokenizer (the real path; offline it fails fast)."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]
    if options.allow_pickle:
        patterns.append("*.bin")
    try:
        folder = snapshot_download(source.hub_id, allow_patterns=patterns, etag_timeout=10)
    except Exception as exc:  # connection, DNS, 404, gated repo, offline mode
        raise UserError(
            f"cannot fetch {source.hub_id!r} from the Hugging Face hub ({type(exc).__name__}); "
            "if this device is offline, download the model elsewhere and pass its folder with --model PATH"
        ) from None
    return Path(folder)


# -- loading ------------------------------------------------------------------------------
def model_folder(spec: str, options: LoadOptions = LoadOptions(), cancel: threading.Event | None = None) -> Job[Path]:
    """The local folder `load_model(spec)` loads the model from, without loading it: a GGUF
    file's or an alias's cached conversion (converted first where it is not current) or a hub
    model's download, as loading would make them."""
    _, folder, _ = yield from _local_folder(spec, options, cancel)
    return folder


def known_config(spec: str) -> dict[str, Any]:
    """The config.json loading `spec` would give its model, read without loading, converting or
    fetching anything: a folder's own; an alias's or a GGUF file's cached conversion where it is
    current, else the fields transformers' conversion takes from the file's metadata; a hub
    model's downloaded copy. Empty where none is at hand (a hub model not downloaded) or where
    the source has a problem, which loading it names."""
    try:
        alias = ALIASES.get(spec) if spec in ALIASES else None
        path = alias.locate() if alias is not None else Path(spec).expanduser()
        if path.is_dir():
            config_path = path / "config.json"
        elif path.suffix.lower() == ".gguf" and path.is_file():
            folder = cache_entry_for_gguf(path, alias)
            if not _cache_is_current(folder, _gguf_identity(path)):
                return gguf_config(path)
            config_path = folder / "config.json"
        elif not path.exists() and spec.count("/") == 1:  # a hub id (a bad one raises ValueError)
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(spec, "config.json")
            if not isinstance(found, str):
                return {}
            config_path = Path(found)
        else:
            return {}
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UserError, OSError, ValueError, RuntimeError):  # RuntimeError: a ~user pathlib cannot expand
        return {}
    return config if isinstance(config, dict) else {}


def gguf_config(path: Path) -> dict[str, Any]:
    """The config.json fields transformers' conversion of a GGUF file takes from its metadata
    (`GGUF_CONFIG_MAPPING`), the numbers only; empty for an architecture it does not convert.
    Parses the file's header (about 2 s for the default model)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    fields = read_gguf(path).fields

    def value(key: str) -> Any:
        field = fields.get(key)
        return field.contents() if field is not None else None

    architecture = value("general.architecture")
    mapping = GGUF_CONFIG_MAPPING.get(architecture) if isinstance(architecture, str) else None
    config: dict[str, Any] = {}
    for key, name in (mapping or {}).items():
        found = value(f"{architecture}.{key}")
        if name is not None and isinstance(found, (int, float)) and not isinstance(found, bool):
            config[name] = found
    return config


def _local_folder(spec: str, options: LoadOptions, cancel: threading.Event | None
                  ) -> Job[tuple[ModelSource, Path, tuple[Path, ModelAlias | None] | None]]:
    """The source `spec` names, the local folder its model loads from, and the GGUF file (with
    its alias) that folder is a cached conversion of, if any."""
    require_working_folder()  # the libraries read it as they load, failing with no path named
    yield Progress("load", 0, 2, f"resolving {shown(spec)}")
    source = resolve_source(spec, allow_pickle=options.allow_pickle, trust_remote_code=options.trust_remote_code)
    folder: Path
    gguf: tuple[Path, ModelAlias | None] | None = None  # the file a cached conversion is made from
    if source.kind == "alias":
        assert source.alias is not None
        gguf = (source.alias.locate(), source.alias)
    elif source.kind == "gguf":
        assert source.path is not None
        gguf = (source.path, None)
    if gguf is not None:
        folder = yield from prepare_gguf(*gguf, options, cancel)
    elif source.kind == "hub":
        check_memory(source.name, _HEADROOM_BYTES, options, at_least=True)
        yield Progress("load", 0, 2, f"fetching {source.hub_id} from the hub")
        folder = fetch_hub(source, options)
        source = resolve_source(str(folder), allow_pickle=options.allow_pickle, trust_remote_code=options.trust_remote_code)
    else:
        assert source.path is not None
        folder = source.path
    check_cancel(cancel)
    return source, folder, gguf


def load_model(spec: str, options: LoadOptions = LoadOptions(), cancel: threading.Event | None = None) -> Job[LanguageModel]:
    """Resolve, check memory, convert if needed, and load; yields progress, returns the model."""
    started = time.perf_counter()
    source, folder, gguf = yield from _local_folder(spec, options, cancel)
    check_memory(source.name, estimate_folder_bytes(folder, options), options)
    threads = resolve_threads(options.threads, options.reserve_cores, row_workers=source.kind != "onnx")
    yield Progress("load", 1, 2, f"loading {source.name} to compute with {threads.describe()}")
    _quiet_transformers()
    if source.kind == "onnx":
        model = _load_onnx(folder, source, options, started, threads.threads)
    else:
        import torch

        torch.set_num_threads(threads.threads)
        stale = False
        try:
            model = _load_torch(folder, source, options, started)
        except IncompleteWeights:
            if gguf is None:
                raise
            stale = True  # converted again out of the handler, whose traceback holds the refused weights
        if stale:
            assert gguf is not None
            # A cached conversion that no longer fills the model (changed since, or saved by
            # another version of transformers) is converted again, which checks the GGUF itself.
            folder = yield from prepare_gguf(*gguf, options, cancel, reconvert=True)
            model = _load_torch(folder, source, options, started)
    model.threads = threads
    release_free_heap()  # the load's temporaries, freed, would otherwise stay in the process's RSS
    yield Progress("load", 2, 2, f"loaded {source.name}")
    return model


# Files a tokenizer's vocabulary is read from (tokenizer_config.json only says how to use it).
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
VOCABULARY_PATTERNS = ("*.model", "*.tiktoken")


def _has_vocabulary(folder: Path) -> bool:
    return any((folder / name).is_file() for name in VOCABULARY_FILES) or any(
        path.is_file() for pattern in VOCABULARY_PATTERNS for path in folder.glob(pattern)
    )


def _load_tokenizer(folder: Path, options: LoadOptions) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=options.trust_remote_code)
    except Exception as exc:
        if not _has_vocabulary(folder):
            # transformers then fails on a None path, which says nothing of the missing file.
            raise UserError(
                f"cannot read the tokenizer in {folder}: tokenizer.json is missing (and there is no tokenizer.model, "
                "vocab.json or vocab.txt); copy the model's tokenizer files into the folder"
            ) from None
        raise UserError(f"cannot read the tokenizer in {folder}: {type(exc).__name__}: {first_line(exc, 300)}") from None


def text_prefix_ids(tokenizer: Any, config: Any, meta: dict[str, Any]) -> list[int]:
    """The token(s) a plain text is scored after: the model's document start.

    Order: what edge-audit recorded for the folder; the BOS the tokenizer itself adds
    (Llama, Gemma, Mistral); else the end-of-text token, as GPT-2-style models separate
    documents with it.
    """
    recorded = meta.get("text_prefix_token")
    vocab = tokenizer.get_vocab()
    if recorded in vocab:
        return [vocab[recorded]]
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(with_special) > len(plain) and with_special[0] == tokenizer.bos_token_id:
        return [tokenizer.bos_token_id]
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id, getattr(config, "bos_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(token_id, int):
            return [token_id]
    return []


def stop_token_ids(tokenizer: Any, config: Any, generation_config: Any = None) -> list[int]:
    ids: list[int] = []
    for value in (getattr(generation_config, "eos_token_id", None), getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(token_id, int) and token_id not in ids:
                ids.append(token_id)
    return ids


def _facts_template(folder: Path, source: ModelSource, config: Any, meta: dict[str, Any], started: float) -> dict[str, Any]:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    architectures = getattr(config, "architectures", None) or [type(config).__name__]
    notes = list(meta.get("notes", []))
    return {
        "name": source.alias.name if source.alias else (source.hub_id or folder.name),
        "architecture": architectures[0],
        "model_type": getattr(config, "model_type", "unknown"),
        "size_on_disk_bytes": model_size_bytes(folder),
        "layers": getattr(text_config, "num_hidden_layers", None),
        "hidden_size": getattr(text_config, "hidden_size", None),
        "vocab_size": getattr(text_config, "vocab_size", None),
        "context_length": getattr(text_config, "max_position_embeddings", None),
        "load_seconds": time.perf_counter() - started,
        "source_kind": source.kind,
        "path": str(folder),
        "notes": tuple(notes),
        "quantization": meta.get("quantization"),
    }


def _load_torch(folder: Path, source: ModelSource, options: LoadOptions, started: float) -> LanguageModel:
    import torch
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM

    from audit.models.torch_lm import TorchLanguageModel

    meta = read_meta(folder, strict=True)
    tokenizer = _load_tokenizer(folder, options)
    storage = meta.get("storage", {}).get("format")
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=options.trust_remote_code)
        if storage is not None:
            # Folders edge-audit wrote in its own compact formats decode into a regular model.
            from audit.compress.formats import load_stored_model

            model = load_stored_model(folder, storage, getattr(torch, options.dtype), options.trust_remote_code)
        else:
            if source.pickle:
                check_pickled_weights(folder)
            model, info = AutoModelForCausalLM.from_pretrained(
                str(folder),
                dtype=getattr(torch, options.dtype),
                trust_remote_code=options.trust_remote_code,
                use_safetensors=not source.pickle,
                low_cpu_mem_usage=True,
                output_loading_info=True,
            )
            require_whole_weights(model, info, f"cannot load the model in {folder}: its weights")
            dropped = dropped_copy_problem(model, folder, source.pickle)
            if dropped is not None:
                raise UserError(f"cannot load the model in {folder}: {dropped}")
    except UserError:
        raise
    # transformers and safetensors raise these on a damaged folder the checks up front let
    # through (TypeError: a config value of a type the model's constructor cannot use).
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        mismatch = _SIZE_MISMATCH.search(str(exc))
        if mismatch is not None:
            found = _mismatched_tensor(folder, config, options) if storage is None else None
            detail = found or (
                f"{mismatch.group('param')} of a {mismatch.group('module')} is {mismatch.group('stored')} in the weights, "
                f"the config makes it {mismatch.group('expected')}"
            )
            raise UserError(f"cannot load the model in {folder}: its weights do not match its config.json: {detail}") from None
        raise UserError(f"cannot load the model in {folder}: {_reason(exc, 300)}") from None
    template = _facts_template(folder, source, config, meta, started)
    return TorchLanguageModel(
        model,
        tokenizer,
        text_prefix_ids=text_prefix_ids(tokenizer, config, meta),
        stop_token_ids=stop_token_ids(tokenizer, config, getattr(model, "generation_config", None)),
        facts_template=template,
    )


def _listed(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def weights_problem(model: Any, info: dict[str, Any]) -> str | None:
    """Why weights transformers loaded are not the model their config describes, as a phrase
    with the weights for its subject; None when they filled every tensor of the model and hold none
    it has no place for.

    transformers only reports these: it fills a tensor the weights lack with random values, so
    the same folder scores differently on every load, and drops a tensor it has no place for,
    which means the weights are another architecture's or another size's. A tied copy (an output
    head that is the token embeddings) is not reported missing, as its owner fills it. A tensor
    left on the meta device had no values at all, whatever the report says (transformers 4.57
    leaves a tied pair empty when only the head's copy is stored)."""
    architecture = type(model).__name__
    missing = [str(name) for name in info.get("missing_keys") or []]
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_meta and name not in missing:
            missing.append(name)
    if missing:
        count = f"{len(missing)} tensors" if len(missing) > 1 else "a tensor"
        return f"lack {count} a {architecture} needs, which would hold made-up values: {_listed(missing)}"
    unexpected = [str(name) for name in info.get("unexpected_keys") or []]
    if unexpected:
        count = f"{len(unexpected)} tensors" if len(unexpected) > 1 else "a tensor"
        return f"hold {count} a {architecture} has no place for, so they are not this model's weights: {_listed(unexpected)}"
    return None


class IncompleteWeights(UserError):
    """Loaded weights that are not the whole model their config describes (`weights_problem`)."""


def require_whole_weights(model: Any, info: dict[str, Any], said: str) -> None:
    """Refuse loaded weights that are not the whole model (`weights_problem`), in one line that
    `said` begins ("cannot load the model in X: its weights")."""
    problem = weights_problem(model, info)
    if problem is not None:
        raise IncompleteWeights(f"{said} {problem}")


def _loaded_safetensors(folder: Path) -> list[Path]:
    """The safetensors files transformers reads a folder's weights from: model.safetensors, else
    the shards its index names."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    return [folder / shard for shard in index_shards(folder)]


def dropped_copy_problem(model: Any, folder: Path, pickle: bool = False) -> str | None:
    """Why the model loaded from `folder` is not the one its weights hold, as a phrase; None when
    it is. Tensors the config ties (the output head to the token embeddings, with
    tie_word_embeddings) are one tensor with the first one's values: transformers sets aside
    without a word a copy the weights store with other values, so the model measured would not be
    the one in the file. Reads the safetensors headers, and a tied pair's bytes only when both
    are stored; `pickle` weights are mapped from their files, not read into memory, where their
    format allows."""
    shared: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(param), []).append(name)
    tied = [names for names in shared.values() if len(names) > 1]
    if not tied:
        return None
    if pickle:
        stored: dict[str, Any] = _pickled_tensors(folder, {name for names in tied for name in names})
        same = _same_tensor
    else:
        stored = {}
        for file in _loaded_safetensors(folder):
            for name, info in safetensors_header(file).items():
                if name != "__metadata__":
                    stored[name] = (file, info)
        same = _same_stored_tensor
    for names in tied:
        held = [(name, stored[name]) for name in names if name in stored]
        for name, entry in held[1:]:
            kept_name, kept = held[0]  # the one whose values the tied tensor takes
            if not same(kept, entry):
                return (
                    f"its config.json ties {name} to {kept_name} (tie_word_embeddings), but the {name} its weights store "
                    f"differs from {kept_name} and would be replaced by it: the config is likely wrong "
                    f"(set tie_word_embeddings to false if the model has an output head of its own)"
                )
    return None


def _loaded_pickles(folder: Path) -> list[Path]:
    """The pickle files transformers reads a folder's weights from: pytorch_model.bin, else the
    shards its index names."""
    single = folder / PICKLE_WEIGHTS
    if single.is_file():
        return [single]
    return [folder / shard for shard in index_shards(folder, PICKLE_INDEX)]


def _pickled_state(file: Path) -> Any:
    """What a pickle weights file holds, read as transformers reads it (tensors and plain
    containers only, no code run), memory-mapped where the file's format allows."""
    import pickle

    import torch

    try:
        with open(file, "rb") as handle:
            zipped = handle.read(4) == b"PK\x03\x04"  # the format before zip files cannot be mapped: read whole
        return torch.load(file, map_location="cpu", weights_only=True, mmap=zipped)
    except OSError as exc:
        raise UserError(f"cannot read {shown(file)}: {os_reason(exc)}") from None
    except EOFError:
        reason = "the file is empty or cut short"
    except pickle.UnpicklingError as exc:
        reason = ("it holds objects other than tensors, which are not loaded (loading them could run code)"
                  if "Unsupported global" in str(exc) else "it is not a PyTorch weights file")
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file fails in many ways
        reason = ("it is damaged or cut short: its zip archive cannot be read" if "zip archive" in str(exc)
                  else _reason(exc, 200))
    raise UserError(f"cannot read {shown(file)} as PyTorch weights: {reason}")


def check_pickled_weights(folder: Path) -> None:
    """Refuse, in one line naming the file, pickle weights transformers would fail on with a
    traceback or a hint about TensorFlow: each file it reads must hold a dict of named tensors."""
    import torch

    for file in _loaded_pickles(folder):
        state = _pickled_state(file)
        if not isinstance(state, dict):
            raise UserError(f"{shown(file)} holds no weights (a dict of named tensors) but a {type(state).__name__}")
        for name, value in state.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                raise UserError(f"{shown(file)} holds {name!r}, a {type(value).__name__}, where weights hold only named tensors")


def _pickled_tensors(folder: Path, names: set[str]) -> dict[str, Any]:
    """The tensors named `names` that the folder's pickle weights hold (`_pickled_state`)."""
    import torch

    found: dict[str, Any] = {}
    for file in _loaded_pickles(folder):
        state = _pickled_state(file)
        if isinstance(state, dict):
            found.update({name: state[name] for name in names if isinstance(state.get(name), torch.Tensor)})
    return found


def _same_tensor(a: Any, b: Any) -> bool:
    """Whether two tensors hold the same dtype, shape and values (NaN equal to NaN, bit for bit)."""
    import torch

    if (a.dtype, tuple(a.shape)) != (b.dtype, tuple(b.shape)):
        return False
    return bool(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))


_COMPARE_BLOCK_BYTES = 16 * MB


def _same_stored_tensor(a: tuple[Path, dict[str, Any]], b: tuple[Path, dict[str, Any]]) -> bool:
    """Whether two tensors of safetensors files (file, header entry; headers already checked) hold
    the same dtype, shape and bytes, read a block at a time."""
    (path_a, info_a), (path_b, info_b) = a, b
    if (info_a["dtype"], info_a["shape"]) != (info_b["dtype"], info_b["shape"]):
        return False
    try:
        with open(path_a, "rb") as file_a, open(path_b, "rb") as file_b:
            for handle, info in ((file_a, info_a), (file_b, info_b)):
                data_start = 8 + int.from_bytes(handle.read(8), "little")
                handle.seek(data_start + info["data_offsets"][0])
            left = info_a["data_offsets"][1] - info_a["data_offsets"][0]
            while left:
                size = min(left, _COMPARE_BLOCK_BYTES)
                if file_a.read(size) != file_b.read(size):
                    return False
                left -= size
    except OSError as exc:
        raise UserError(f"cannot read {path_a if path_a == path_b else f'{path_a} or {path_b}'}: {os_reason(exc)}") from None
    return True


# What torch says of a weight whose shape is not the one the config gives the model, after a
# first line ("Error(s) in loading state_dict for Embedding:") that says nothing of it.
_SIZE_MISMATCH = re.compile(
    r"state_dict for (?P<module>\w+):\s*size mismatch for (?P<param>[\w.]+): copying a param with shape "
    r"torch\.Size\((?P<stored>\[[^\]]*\])\) from checkpoint, the shape in current model is torch\.Size\((?P<expected>\[[^\]]*\])\)"
)


def _reason(exc: BaseException, limit: int) -> str:
    """An exception's message as one line: its first, or its first two when the first only
    announces the rest (ends with a colon)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[1]}"[:limit]
    return first_line(exc, limit)


def _shape(dims: Any) -> str:
    return "[" + ", ".join(str(int(d)) for d in dims) + "]"


def _mismatched_tensor(folder: Path, config: Any, options: LoadOptions) -> str | None:
    """The first tensor of the folder's safetensors whose shape is not the one its config.json
    gives the model (built empty, on the meta device, to read its shapes), as a phrase; None
    when none is found that way (names the model does not use, a model that cannot be built)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=options.trust_remote_code)
        expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        for file in sorted(folder.glob("*.safetensors")):
            for name, info in safetensors_header(file).items():
                want = expected.get(name) if name != "__metadata__" else None
                stored = tuple(int(d) for d in info.get("shape", []))
                if want is not None and stored != want:
                    return f"{name} is {_shape(stored)} in {file.name}, the config makes it {_shape(want)}"
    except Exception:  # noqa: BLE001 - a diagnosis only: without it, torch's own words are shown
        return None
    return None


def onnx_session_options(threads: int) -> Any:
    """ONNX Runtime session options computing on `threads` threads, an idle worker spinning
    only briefly before it sleeps, so that it does not hold a core another process needs
    (see audit.threads)."""
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = threads
    for key, value in onnx_wait_entries().items():
        session_options.add_session_config_entry(key, value)
    return session_options


def _load_onnx(folder: Path, source: ModelSource, options: LoadOptions, started: float, threads: int) -> LanguageModel:
    from transformers import AutoConfig

    from audit.models.onnx_lm import OnnxLanguageModel, onnx_files

    meta = read_meta(folder, strict=True)
    tokenizer = _load_tokenizer(folder, options)
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=options.trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read the config of the ONNX model in {folder}: {first_line(exc, 300)}") from None
    files = onnx_files(folder)
    onnx_path = folder / "model.onnx" if (folder / "model.onnx").is_file() else files[0]
    session_options = onnx_session_options(threads)
    try:
        from optimum.onnxruntime import ORTModelForCausalLM

        model = ORTModelForCausalLM.from_pretrained(
            str(folder), file_name=onnx_path.name, session_options=session_options, provider="CPUExecutionProvider"
        )
    except Exception as exc:  # onnxruntime raises its own exception types on a damaged graph
        raise UserError(f"cannot load the ONNX model in {folder}: {first_line(exc, 300)}") from None
    template = _facts_template(folder, source, config, meta, started)
    template["dtype"] = "float32"
    return OnnxLanguageModel(
        model,
        tokenizer,
        onnx_path=onnx_path,
        text_prefix_ids=text_prefix_ids(tokenizer, config, meta),
        stop_token_ids=stop_token_ids(tokenizer, config, getattr(model, "generation_config", None)),
        facts_template=template,
        cache_checked=bool(meta.get(CACHE_CHECKED_KEY)),
    )

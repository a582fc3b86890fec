"""Output folders of compressed variants: refusing unsafe targets, provenance, config and tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from audit import checks
from audit.errors import UserError
from audit.models.interface import LanguageModel
from audit.models.loader import LoadOptions, cache_entry_for_gguf, model_size_bytes
from audit.models.meta import read_meta, write_meta
from audit.models.sources import ModelSource, resolve_source
from audit.paths import inside, models_cache_dir


# A GGUF holds quantized weights; its float32 folder is up to four times its size.
_GGUF_TO_FLOAT = 4


def _source_bytes(source: ModelSource) -> int:
    """About what the source model takes on disk as a float folder (0 when unknown, a hub model)."""
    folder = None
    if source.kind == "alias" and source.alias is not None:
        folder = models_cache_dir() / source.alias.name
    elif source.kind == "gguf" and source.path is not None:
        folder = cache_entry_for_gguf(source.path, None)
    elif source.path is not None and source.path.is_dir():
        folder = source.path
    if folder is not None and folder.is_dir():
        return model_size_bytes(folder)
    if source.kind in ("alias", "gguf"):
        gguf = source.path if source.path is not None else source.alias.locate()
        return gguf.stat().st_size * _GGUF_TO_FLOAT
    return 0


def check_output_target(
    model_spec: str, out: Path, *, force: bool, options: LoadOptions = LoadOptions(), copies: float = 1.0
) -> None:
    """Fail early, before any slow work: an output that cannot be written (not a folder, in a
    folder that takes no new file), exists without --force, lacks room for `copies` of the
    source model, or would overwrite or sit inside the source model."""
    source = resolve_source(model_spec, allow_pickle=options.allow_pickle, trust_remote_code=options.trust_remote_code)
    out = checks.output_folder(Path(out), "output folder", force=force, need_bytes=int(copies * _source_bytes(source)))
    protected: list[Path] = []
    if source.kind == "alias" and source.alias is not None:
        protected.append(models_cache_dir() / source.alias.name)
    elif source.path is not None:
        protected.append(source.path)
        if source.kind == "gguf":
            protected.append(cache_entry_for_gguf(source.path, None))
    target = out.resolve()
    for path in protected:
        path = path.resolve()
        # A GGUF file is the model alone: a folder beside it neither overwrites nor sits inside it.
        folder = path if path.exists() else path.parent
        if inside(path, target) or inside(target, folder):
            raise UserError(f"output folder {out} would overwrite or sit inside the source model {path}; choose another folder")


def float_torch_model(lm: LanguageModel, what: str) -> Any:
    """The transformers model behind `lm`, if it is a floating-point PyTorch one."""
    from torch import nn

    model = getattr(lm, "model", None)
    if lm.backend != "pytorch" or not isinstance(model, nn.Module):
        raise UserError(f"{what} needs a PyTorch model; this one runs on {lm.backend}")
    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules()):
        raise UserError(f"{what} needs a floating-point model; this one is already int8-quantized")
    return model


def model_meta(lm: LanguageModel, model_spec: str, step: dict[str, Any], note: str) -> dict[str, Any]:
    """`edge_audit.json` for a variant: the source's text prefix and notes, and every compression
    step so far, so the variant scores text exactly like its source and says what was done."""
    facts = lm.facts()
    source_meta = read_meta(Path(facts.path)) if facts.path else {}
    prefix_token = source_meta.get("text_prefix_token")
    if not prefix_token and len(lm.text_prefix_ids) == 1:
        prefix_token = lm.tokenizer.convert_ids_to_tokens(lm.text_prefix_ids[0])
    history = list(source_meta.get("compression", [])) + [step]
    return {
        "text_prefix_token": prefix_token,
        "notes": list(facts.notes) + [note],
        "source": {"model": model_spec, "name": facts.name, "path": facts.path},
        "compression": history,
        "quantization": source_meta.get("quantization"),
    }


def save_model_folder(lm: LanguageModel, folder: Path, meta: dict[str, Any], write_weights: Callable[[Path], Any]) -> None:
    """Config, generation config, tokenizer, weights (written by `write_weights`) and meta."""
    model = getattr(lm, "model")
    config = getattr(model, "config", None)
    if config is None:
        raise UserError("this model has no transformers config to save")
    config.save_pretrained(folder)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    write_weights(Path(folder))
    write_meta(folder, meta)

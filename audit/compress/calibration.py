"""Calibration data: the shipped English text or a user's text/jsonl file, cut into seeded windows."""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from audit.compress.recipe import DEFAULT_NSAMPLES, DEFAULT_SEQLEN, check_calibration_memory
from audit.errors import UserError
from audit.models.interface import LanguageModel
from audit.paths import data_dir, read_text
from audit.probes.items import is_text
from audit.progress import check_cancel

CALIBRATION_FILE = "calibration_en.txt"
CANCEL_EVERY = 64  # windows drawn between two looks at the cancel event


def read_text_file(path: Path, what: str = "text") -> str:
    """A plain-text file, or a .jsonl file of {"text": ...} objects (or strings) joined by blank lines."""
    path = Path(path).expanduser()
    raw = read_text(path, f"{what} file")
    if path.suffix.lower() == ".jsonl":
        documents = []
        for number, line in enumerate(raw.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except (ValueError, RecursionError):  # also numbers too long to convert and nesting too deep
                raise UserError(f"{what} file {path}, line {number}: not valid JSON") from None
            text = item.get("text") if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise UserError(f"{what} file {path}, line {number}: expected a string or an object with a \"text\" string")
            if not is_text(text):
                raise UserError(f"{what} file {path}, line {number}: the text holds an unpaired surrogate escape (\\ud800-\\udfff)")
            documents.append(text)
        raw = "\n\n".join(documents)
    if not raw.strip():
        raise UserError(f"{what} file {path} is empty")
    return raw


def shipped_calibration_text() -> str:
    return (data_dir() / CALIBRATION_FILE).read_text(encoding="utf-8")


@dataclass(frozen=True)
class CalibrationSet:
    samples: torch.Tensor  # (nsamples, seqlen) token ids
    source: str
    text_tokens: int  # tokens in the whole text the windows were drawn from
    seed: int

    def to_dict(self) -> dict:
        nsamples, seqlen = self.samples.shape
        return {"source": self.source, "nsamples": nsamples, "seqlen": seqlen, "seed": self.seed, "text_tokens": self.text_tokens}


def calibration_set(
    model: LanguageModel,
    path: Path | None = None,
    *,
    nsamples: int = DEFAULT_NSAMPLES,
    seqlen: int = DEFAULT_SEQLEN,
    seed: int = 0,
    context_length: int | None = None,
    bytes_per_token: int = 0,
    budget_bytes: int | None = None,
    cancel: threading.Event | None = None,
) -> CalibrationSet:
    """`nsamples` windows of `seqlen` tokens at seeded random offsets, each starting with the
    model's document-start token(s), as whole texts are scored.

    A count whose windows, with `bytes_per_token` more per token that the caller will hold for
    them, need more than `budget_bytes` (None: the memory available) is refused before any is
    drawn; drawing them stops at `cancel`."""
    if nsamples < 1:
        raise UserError(f"the number of calibration samples must be at least 1, got {nsamples}")
    prefix = list(model.text_prefix_ids)
    if seqlen < len(prefix) + 2:
        raise UserError(f"calibration sequence length must be at least {len(prefix) + 2} tokens, got {seqlen}")
    if context_length and seqlen > context_length:
        raise UserError(f"calibration sequence length {seqlen} exceeds the model's context length {context_length}")
    check_calibration_memory(nsamples, seqlen, bytes_per_token=bytes_per_token, budget_bytes=budget_bytes)
    if path is None:
        text, source = shipped_calibration_text(), f"built-in ({CALIBRATION_FILE})"
    else:
        text, source = read_text_file(path, "calibration"), str(path)
    tokens = model.encode(text)
    window = seqlen - len(prefix)
    if len(tokens) < window:
        raise UserError(
            f"calibration text {source} has {len(tokens)} tokens; a sequence length of {seqlen} needs at least {window}"
        )
    rng = random.Random(seed)
    # Each window is written straight into the one tensor returned: no list of rows beside it.
    ids = torch.tensor(tokens, dtype=torch.long)
    samples = torch.empty((nsamples, seqlen), dtype=torch.long)
    if prefix:
        samples[:, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
    for row in range(nsamples):
        if row % CANCEL_EVERY == 0:
            check_cancel(cancel)
        start = rng.randint(0, len(tokens) - window)
        samples[row, len(prefix) :] = ids[start : start + window]
    return CalibrationSet(samples, source, len(tokens), seed)

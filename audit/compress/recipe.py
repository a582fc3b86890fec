"""Compression recipes: what a plan, the prune and quantize commands and the app's Compress screen
ask for, as data the plan reader can check without importing torch."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from audit.errors import UserError
from audit.registry import Registry
from hardware.memory import MB, available_bytes

MAX_SPARSITY = 0.95
# Calibration for the methods that need it: windows of text, and tokens per window.
DEFAULT_NSAMPLES = 32
DEFAULT_SEQLEN = 512
# The shortest calibration window asked for anywhere (plan, command line, app): a document start
# token and the tokens that follow it, enough for a statistic over real text.
MIN_SEQLEN = 8
TOKEN_ID_BYTES = 8  # a calibration window's token ids are int64
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
DEFAULT_INT4_BLOCK_SIZE = 32
# int8-dynamic's smoothing (SmoothQuant's alpha): measured on the default model among 0.3-0.85,
# the lowest perplexity and rounding noise.
DEFAULT_SMOOTHING_ALPHA = 0.7
DEFAULT_SPARSITY = 0.5
UNSTRUCTURED = "unstructured"
# ASCII digits only (`\d` takes any script's), and few of them: no group is that large.
_PATTERN = re.compile(r"\s*([0-9]{1,4})\s*:\s*([0-9]{1,4})\s*\Z")
_MAX_GROUP = 128


def calibration_bytes(nsamples: int, seqlen: int, bytes_per_token: int = 0) -> int:
    """Memory `nsamples` windows of `seqlen` tokens take: their token ids, and `bytes_per_token`
    more for each token that the caller holds for them (a method's block activations)."""
    return nsamples * seqlen * (TOKEN_ID_BYTES + bytes_per_token)


def check_calibration_memory(nsamples: int, seqlen: int, *, bytes_per_token: int = 0, budget_bytes: int | None = None) -> None:
    """Refuse, with both numbers, a sample count whose windows (and what is held for them)
    cannot fit in `budget_bytes` (None: the memory the system has available)."""
    need = calibration_bytes(nsamples, seqlen, bytes_per_token)
    budget = available_bytes() if budget_bytes is None else budget_bytes
    if need > budget:
        raise UserError(
            f"not enough memory for {nsamples} calibration samples of {seqlen} tokens: "
            f"needs about {-(-need // MB)} MB, {budget // MB} MB available"
        )


# What each pruning method and quantization scheme is, known without importing torch: the plan
# reader, the command line's help and the app list them from here; audit.compress.methods and
# audit.compress.quantize register their code under these names with these facts.
PRUNING_METHOD_FACTS: dict[str, dict[str, Any]] = {
    "magnitude": {
        "needs": None, "scopes": ("matrix", "row"), "default_scope": "matrix", "updates_weights": False,
        "description": "smallest |W| removed, per whole matrix (default) or per output row",
    },
    "random": {
        "needs": None, "scopes": ("matrix", "row"), "default_scope": "matrix", "updates_weights": False,
        "description": "uniform random mask (seeded): the control for the selection rule",
    },
    "wanda": {
        "needs": "norms", "scopes": ("row",), "default_scope": "row", "updates_weights": False,
        "description": "|W_ij| * ||X_j||_2 over calibration inputs, compared within each output row",
    },
    "sparsegpt": {
        "needs": "hessian", "scopes": (), "default_scope": "matrix", "updates_weights": True,
        "description": "Hessian-based one-shot pruning with weight reconstruction (OBS updates per column)",
    },
}
QUANTIZATION_SCHEME_FACTS: dict[str, dict[str, Any]] = {
    "int8-dynamic": {
        "backend": "pytorch", "bits": 8,
        "description": "PyTorch dynamic int8 on the linear layers and the output head (per-channel weights; a tied head's int8 table also serves the token embeddings)",
    },
    "onnx-int8": {
        "backend": "onnxruntime", "bits": 8,
        "description": "optimum ONNX export, then ONNX Runtime int8 MatMulNBits: weights and each token's activations in int8 with one scale per block (block size option)",
    },
    "onnx-int4": {
        "backend": "onnxruntime", "bits": 4,
        "description": "optimum ONNX export, then ONNX Runtime weight-only 4-bit MatMulNBits (block size option)",
    },
}


def _catalog(kind: str, facts: dict[str, dict[str, Any]]) -> Registry[None]:
    catalog: Registry[None] = Registry(kind)
    for name, meta in facts.items():
        catalog.add(name, None, **meta)
    return catalog


# Names and facts only (no code): what a plan or a command may ask for.
PRUNING_METHOD_NAMES = _catalog("pruning method", PRUNING_METHOD_FACTS)
QUANTIZATION_SCHEME_NAMES = _catalog("quantization scheme", QUANTIZATION_SCHEME_FACTS)


def check_scope(method: str, scope: str | None) -> str:
    """The scope `method` compares weights over: `scope` when the method supports it, its own
    default when `scope` is None."""
    meta = PRUNING_METHOD_NAMES.meta(method)
    scopes = meta["scopes"]
    if scope is None:
        return meta["default_scope"]
    if scope not in scopes:
        allowed = [entry.name for entry in PRUNING_METHOD_NAMES if entry.meta["scopes"]]
        if not scopes:
            raise UserError(f"{method} chooses its own mask per column block; --scope applies to {', '.join(allowed)}")
        raise UserError(f"{method} supports scope {', '.join(scopes)}, not {scope!r}")
    return scope


SCOPE_WORDS = {"row": "within each output row", "matrix": "over the whole matrix"}


def scope_ignored(method: str, scope: str, pattern: str) -> str | None:
    """Why asking `method` to compare weights over `scope` would change nothing ("for wanda, which
    always compares weights within each output row"), or None when it changes the mask. A scope
    the method cannot use at all is `check_scope`'s to refuse."""
    if len(PRUNING_METHOD_NAMES.meta(method)["scopes"]) == 1:
        return f"for {method}, which always compares weights {SCOPE_WORDS[scope]}"
    if Pattern.parse(pattern).structured:
        return f"with pattern {pattern}, which compares weights within each group of consecutive inputs of a row"
    return None


def blocked_schemes() -> list[str]:
    """The quantization schemes that quantize in blocks of a block size: the ONNX ones."""
    return [entry.name for entry in QUANTIZATION_SCHEME_NAMES if entry.meta["backend"] == "onnxruntime"]


def check_sparsity(sparsity: float) -> float:
    # NaN fails the comparison; math.isnan would raise on an int too large for a float.
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0.0 <= sparsity <= MAX_SPARSITY:
        raise UserError(f"sparsity must be between 0 and {MAX_SPARSITY}, got {sparsity}")
    return float(sparsity) + 0.0  # -0.0 is the sparsity 0: adding 0.0 drops its sign


@dataclass(frozen=True)
class Pattern:
    """Which weights may be removed: anywhere (unstructured), or in N:M groups.

    N:M counts the weights kept: of every M consecutive input weights of a row, N stay and M-N
    become zero (the layout sparse tensor cores accelerate). 2:4 and 4:8 remove half the
    weights; 1:4 removes three quarters.
    """

    kept: int | None = None  # N
    group: int | None = None  # M

    @classmethod
    def parse(cls, text: str | None) -> "Pattern":
        problem = pattern_problem(text)
        if problem is not None:
            raise UserError(f"malformed pattern {text!r}: {problem}")
        if text is None or str(text).strip().lower() in {"", UNSTRUCTURED}:
            return cls()
        match = _PATTERN.match(str(text))
        assert match is not None
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def structured(self) -> bool:
        return self.group is not None

    @property
    def sparsity(self) -> float | None:
        """The fraction of weights an N:M pattern removes, (M - N) / M; None when unstructured."""
        if self.group is None or self.kept is None:
            return None
        return (self.group - self.kept) / self.group

    def __str__(self) -> str:
        return f"{self.kept}:{self.group}" if self.structured else UNSTRUCTURED


def pattern_problem(text: str | None) -> str | None:
    """What is wrong with a pattern as written (a phrase to follow its name), or None."""
    if text is None or str(text).strip().lower() in {"", UNSTRUCTURED}:
        return None
    match = _PATTERN.match(str(text))
    if not match:
        return "must be 'unstructured' or N:M such as 2:4 (N of every M weights kept)"
    kept, group = int(match.group(1)), int(match.group(2))
    if not 0 < kept < group:
        return "N:M needs 0 < N < M (N weights kept in every M)"
    if group > _MAX_GROUP:
        return f"groups larger than {_MAX_GROUP} weights are not supported"
    if (group - kept) / group > MAX_SPARSITY:
        return f"keeping {kept} of every {group} weights removes more than {MAX_SPARSITY} of them"
    return None


def pruning_label(method: str, pattern: str | None, per_row: bool = False, exclude: Sequence[str] = ()) -> str:
    """A pruning as tables and sweep curves name it: "wanda", "wanda 2:4" with an N:M pattern,
    and what else changes the mask in brackets ("magnitude (per row, except *.down_proj)"), so
    prunings that differ never share a label (and a sweep curve)."""
    extras = (["per row"] if per_row else []) + ([f"except {', '.join(exclude)}"] if exclude else [])
    return (method + ("" if pattern in (None, UNSTRUCTURED) else f" {pattern}")
            + (f" ({', '.join(extras)})" if extras else ""))


def quantize_label(scheme: str, block_size: int | None = None) -> str:
    """A quantization as tables name it: the scheme, with its block size where that is not the
    default ("onnx-int4 (blocks of 128)")."""
    if block_size is None or block_size == DEFAULT_INT4_BLOCK_SIZE:
        return scheme
    return f"{scheme} (blocks of {block_size})"


def recipe_label(prune: Any, quantize: Any) -> str | None:
    """The label of a pruning and/or a quantization as recorded (a recipe's or a folder's
    fields: method, pattern, per_row, exclude; scheme, block_size), "wanda + int8-dynamic";
    None when neither names its method. Fields of the wrong type are left out."""
    parts: list[str] = []
    if isinstance(prune, dict) and isinstance(prune.get("method"), str):
        pattern = prune.get("pattern")
        exclude = prune.get("exclude")
        parts.append(pruning_label(prune["method"], pattern if isinstance(pattern, str) else None, prune.get("per_row") is True,
                                   [g for g in exclude if isinstance(g, str)] if isinstance(exclude, (list, tuple)) else ()))
    if isinstance(quantize, dict) and isinstance(quantize.get("scheme"), str):
        block = quantize.get("block_size")
        parts.append(quantize_label(quantize["scheme"], block if isinstance(block, int) and not isinstance(block, bool) else None))
    return " + ".join(parts) if parts else None


@dataclass(frozen=True)
class PruneRecipe:
    """How a model is pruned: the one description that goes from a plan, the prune command or
    the app's Compress screen to the prune call, and is recorded with the variant.

    `sparsity` is always the fraction of weights removed. Left out, it is 0.5, or for an N:M
    pattern the fraction the pattern removes; given with an N:M pattern, it must agree.
    """

    method: str = "wanda"
    sparsity: float | None = None  # never None once built
    pattern: str = UNSTRUCTURED  # or "N:M": N of every M consecutive input weights of a row kept
    per_row: bool = False  # weights compete within each output row rather than the whole matrix
    exclude: tuple[str, ...] = ()  # globs of layer names left dense

    def __post_init__(self) -> None:
        pattern = Pattern.parse(self.pattern)
        implied = pattern.sparsity
        if implied is None:
            sparsity = DEFAULT_SPARSITY if self.sparsity is None else check_sparsity(self.sparsity)
        else:
            if self.sparsity is not None and abs(check_sparsity(self.sparsity) - implied) > 1e-9:
                raise UserError(
                    f"pattern {pattern} means sparsity {implied:g} ({pattern.kept} of every {pattern.group} weights kept); "
                    f"leave the sparsity out or set it to {implied!r}"  # exact: a rounded value would be refused
                )
            sparsity = implied
        # Frozen: the normalised values are set once, here.
        object.__setattr__(self, "sparsity", sparsity)
        object.__setattr__(self, "pattern", str(pattern))
        object.__setattr__(self, "per_row", bool(self.per_row))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    @property
    def parsed_pattern(self) -> Pattern:
        return Pattern.parse(self.pattern)

    @property
    def scope(self) -> str | None:
        """The scope asked of the method: "row", or None for the method's own default."""
        return "row" if self.per_row else None


@dataclass(frozen=True)
class QuantizeRecipe:
    """How a model (a pruned one too) is quantized: a registered scheme and its block size."""

    scheme: str
    block_size: int = DEFAULT_INT4_BLOCK_SIZE


def valid_alpha(alpha: float | None) -> bool:
    """A smoothing alpha above 0 and at most 1, or None for no smoothing."""
    return alpha is None or (not isinstance(alpha, bool) and isinstance(alpha, (int, float)) and 0.0 < alpha <= 1.0)  # NaN fails the comparison

"""Audit plans: a TOML file naming the model, its variants, probes, perplexity, profile and gate."""

from __future__ import annotations

import json
import math
import re
import sys
import unicodedata
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from audit.compress.recipe import (
    DEFAULT_INT4_BLOCK_SIZE,
    DEFAULT_NSAMPLES,
    DEFAULT_SEQLEN,
    INT4_BLOCK_SIZES,
    MAX_SPARSITY,
    MIN_SEQLEN,
    PRUNING_METHOD_NAMES,
    QUANTIZATION_SCHEME_NAMES,
    PruneRecipe,
    QuantizeRecipe,
    blocked_schemes,
    check_scope,
    pattern_problem,
    recipe_label,
    scope_ignored,
)
from audit.errors import UserError
from audit.paths import data_dir, read_text, require_working_folder

# ASCII digits, a few of them: `\d` takes any script's digits, and a number of thousands of
# digits is more than `int` will read.
PATTERN_RE = re.compile(r"(unstructured|[0-9]{1,4}:[0-9]{1,4})\Z")

# Characters `str.splitlines` breaks at: a message quoting a key or path stays on one line.
_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


# The longest answer a generated probe may ask for: an answer names one of a few options, and a
# longer limit only lets a model that never stops run for as long as it is allowed.
MAX_NEW_TOKENS = 256
# The highest sampling temperature a generated probe may use.
MAX_TEMPERATURE = 5.0


class PlanError(UserError):
    """A plan problem, named with its key and line."""

    def __init__(self, message: str) -> None:
        super().__init__(message.translate(_LINE_BREAKS))


# -- locating keys ----------------------------------------------------------------------------
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
# One part of a dotted key: bare, or quoted (a space, a letter beyond ASCII or nothing in it).
_PART = r"(?:[A-Za-z0-9_\-]+|\"(?:[^\"\\]|\\.)*\"|'[^']*')"
_KEY = re.compile(rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")
_BARE = re.compile(r"[A-Za-z0-9_\-]+")


def _clean(key: str) -> str:
    parts = re.findall(_PART, key)
    return ".".join(part[1:-1] if part[0] in "\"'" else part for part in parts)


def key_lines(text: str) -> dict[str, int]:
    """Map each dotted key path (arrays of tables indexed: `variants[1].prune`) to its line."""
    lines: dict[str, int] = {}
    table = ""
    counts: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            name = _clean(header.group(2))
            if header.group(1) == "[[":
                counts[name] = counts.get(name, -1) + 1
                table = f"{name}[{counts[name]}]"
            else:
                table = name
            # Nested arrays of tables (`[[gate.rules]]`) keep their own index.
            lines.setdefault(table, number)
            continue
        key = _KEY.match(line)
        if key:
            path = f"{table}.{_clean(key.group(1))}" if table else _clean(key.group(1))
            lines.setdefault(path, number)
    return lines


# TOML integers are 64-bit; the reader takes longer ones, which no seed or count can be.
INT64 = range(-(2**63), 2**63)


class _Context:
    """Where a plan came from: resolves relative paths and names lines in errors."""

    def __init__(self, text: str, path: Path | None, stored: bool = False) -> None:
        self.lines = key_lines(text)
        self.path = path
        if path is None:
            require_working_folder()  # relative paths are read from it
        self.base = path.parent if path else Path.cwd()
        # A plan kept with a stored run, written by an earlier version: read in today's terms.
        self.stored = stored
        # (key, path, "file" or "path"): what running the plan needs on disk, checked apart
        # from parsing, since a stored run is read back whatever has moved since.
        self.on_disk: list[tuple[str, str, str]] = []

    def line(self, key: str) -> int | None:
        """The line of `key`, or of its nearest enclosing key (inline tables share a line)."""
        if key in self.lines:
            return self.lines[key]
        parts = re.findall(r"\[\d+\]|[^.\[\]]+", key)
        while parts:
            candidate = "".join(p if p.startswith("[") or i == 0 else "." + p for i, p in enumerate(parts))
            if candidate in self.lines:
                return self.lines[candidate]
            parts.pop()
        return None

    def error(self, key: str, message: str, shown: str | None = None) -> PlanError:
        """A PlanError naming `key` (as `shown`, when given) and its line."""
        where = str(self.path) if self.path else "plan"
        line = self.line(key)
        at = f" line {line}" if line else ""
        return PlanError(f"{where}{at}: {shown or key}: {message}")

    def resolve(self, value: str, key: str) -> str:
        """`value` as an absolute path, relative ones taken from the plan's folder."""
        try:
            path = Path(value).expanduser()
            return str(path if path.is_absolute() else (self.base / path).resolve())
        except (OSError, RuntimeError, ValueError):  # an unknown ~user, a NUL byte
            raise self.error(key, f"is not a usable path: {value!r}") from None

    def needs(self, key: str, path: str, kind: str) -> None:
        self.on_disk.append((key, path, kind))


# -- reading values ---------------------------------------------------------------------------
def _table(ctx: _Context, data: Any, key: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ctx.error(key, f"must be a table, got {type(data).__name__}")
    return data


def _unknown(ctx: _Context, data: Mapping[str, Any], allowed: set[str], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            # A key that is not bare is named as TOML quotes it: "metric " is not metric.
            shown = key if _BARE.fullmatch(key) else _toml_value(key)
            raise ctx.error(f"{prefix}{key}", f"unknown key; known here: {known}", f"{prefix}{shown}")


def _get(ctx: _Context, data: Mapping[str, Any], key: str, prefix: str, kind: type | tuple, default: Any) -> Any:
    if key not in data:
        return default
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, int) and not isinstance(value, bool):
        _check(ctx, value in INT64, prefix + key, f"is outside TOML's 64-bit integer range ({len(str(abs(value)))} digits)")
        if float in kinds:
            value = float(value)
    if isinstance(value, bool) and bool not in kinds:
        raise ctx.error(prefix + key, f"must be {_kind_name(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ctx.error(prefix + key, f"must be {_kind_name(kinds)}, got {value!r}")
    return value


def _kind_name(kinds: tuple) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check(ctx: _Context, ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ctx.error(key, message)


def _str_list(ctx: _Context, data: Mapping[str, Any], key: str, prefix: str, default: list[str]) -> list[str]:
    value = _get(ctx, data, key, prefix, list, default)
    if not all(isinstance(v, str) for v in value):
        raise ctx.error(prefix + key, "must be a list of strings")
    return list(value)


# -- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrationSpec:
    nsamples: int = DEFAULT_NSAMPLES
    seqlen: int = DEFAULT_SEQLEN
    seed: int = 0
    file: str | None = None
    # Whose inputs the statistics are taken on: "sequential" (each block sees the blocks before
    # it already pruned) or "dense" (the dense model's, one pass serving every sparsity).
    statistics: str = "sequential"


@dataclass(frozen=True)
class VariantSpec:
    """A variant of the plan's model: a pruning and/or quantization recipe, or a folder."""

    name: str
    prune: PruneRecipe | None = None
    quantize: QuantizeRecipe | None = None
    path: str | None = None  # an already-compressed model

    @property
    def sparsity(self) -> float | None:
        """The fraction of weights the recipe removes (an N:M pattern's included)."""
        return None if self.prune is None else self.prune.sparsity

    @property
    def method(self) -> str:
        if self.path:
            return "external"
        return recipe_label(None if self.prune is None else asdict(self.prune),
                            None if self.quantize is None else asdict(self.quantize)) or "dense"


# The probe settings only generation uses; log-likelihood scoring takes their defaults.
GENERATE_SETTINGS = ("seeds", "temperature", "max_new_tokens", "noise_floor")


@dataclass(frozen=True)
class ProbeSpec:
    suites: tuple[str, ...] = ("builtin",)
    categories: tuple[str, ...] = ()
    mode: str = "loglik"
    seeds: tuple[int, ...] = (0,)
    limit: int | None = None
    temperature: float = 0.0
    max_new_tokens: int = 5
    noise_floor: bool = True  # sampled generation: score the baseline again with other seeds
    conditions: tuple[str, ...] = ()  # question suites: "ambig" and/or "disambig"; empty: both
    prompt: str = "default"  # generate: "default" or "paper" (Rath & Maliakkal's)
    parser: str = "strict"  # generate: "strict" or "lenient" (the study's)
    # Sequential probing (`audit.sequential`): each variant scores its items in a fixed random
    # order and stops once the gate's verdicts on them are settled; the baseline scores every item.
    sequential: bool = False
    order_seed: int | None = None  # which fixed order items are drawn in; None: 0
    sequential_batch: int | None = None  # items between looks at the gate; None: audit.sequential's default
    futility: float | None = None  # stop waiting for a verdict below this chance of settling; None: the default

    @property
    def sampled(self) -> bool:
        return self.mode == "generate" and self.temperature > 0

    def suite_options(self) -> dict[str, Any]:
        """Which items of a suite the plan scores: `load_suite(spec, **probes.suite_options())`."""
        return {"categories": self.categories or None, "limit": self.limit, "conditions": self.conditions or None}

    @property
    def noise_seeds(self) -> tuple[int, ...]:
        """Seeds for the baseline's second scoring: as many as `seeds`, none of them reused."""
        start = max(self.seeds) + 1
        return tuple(range(start, start + len(self.seeds)))


@dataclass(frozen=True)
class PerplexitySpec:
    enabled: bool = True
    text: str | None = None


@dataclass(frozen=True)
class ProfileSpec:
    enabled: bool = True
    prompt_tokens: int = 128
    new_tokens: int = 32
    runs: int = 10
    warmup: int = 2
    threads: int | None = None


@dataclass(frozen=True)
class GateRule:
    """A limit on a figure: the variant passes the rule when the figure's one-sided upper
    confidence bound is within `max` (see `audit.gate`)."""

    metric: str
    max: float
    category: str = "overall"  # "overall" (items pooled), "category_mean", "each", or a category
    suite: str | None = None  # None: the first probe suite
    confidence: float | None = None  # None: the gate's level

    def describe(self) -> str:
        where = "" if self.category == "overall" else f" [{self.category}]"
        level = f" (at {self.confidence:g})" if self.confidence is not None else ""
        return f"{self.metric}{where} <= {self.max:g}{level}"


@dataclass(frozen=True)
class GateSettings:
    """The gate: its rules, the confidence of every bound, and the competence guard."""

    rules: tuple[GateRule, ...] = ()
    confidence: float = 0.95
    competence: bool = True
    max_accuracy_drop: float = 0.10
    max_parse_failure_rate: float = 0.05

    @property
    def active(self) -> bool:
        """Whether there is anything to check: rules, or the competence guard."""
        return bool(self.rules) or self.competence

    def level(self, rule: GateRule) -> float:
        return self.confidence if rule.confidence is None else rule.confidence


@dataclass(frozen=True)
class Plan:
    name: str
    model: str
    variants: tuple[VariantSpec, ...]
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    probes: ProbeSpec = field(default_factory=ProbeSpec)
    perplexity: PerplexitySpec = field(default_factory=PerplexitySpec)
    profile: ProfileSpec = field(default_factory=ProfileSpec)
    gate: GateSettings = field(default_factory=GateSettings)
    text: str = ""
    path: str | None = None

    def variant(self, name: str) -> VariantSpec:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("text")
        return data


def _parse_prune(ctx: _Context, raw: Any, prefix: str, keys: Mapping[str, str] | None = None) -> PruneRecipe:
    """A pruning recipe; `keys` names the plan's keys where they are not `prefix` + the recipe's
    own (the grid's `methods` and `sparsities`)."""
    keys = {name: (keys or {}).get(name, prefix + name) for name in ("method", "sparsity")}
    if isinstance(raw, str):
        raw = {"method": raw}
    data = _table(ctx, raw, prefix.rstrip("."))
    _unknown(ctx, data, {"method", "sparsity", "pattern", "per_row", "exclude"}, prefix)
    method = _get(ctx, data, "method", prefix, str, None)
    _check(ctx, method is not None, keys["method"], "is required")
    _check_name(ctx, "pruning method", method, keys["method"])
    sparsity = _get(ctx, data, "sparsity", prefix, float, None)
    if sparsity is not None:
        _check(ctx, 0.0 <= sparsity <= MAX_SPARSITY, keys["sparsity"], f"must be within [0, {MAX_SPARSITY}], got {sparsity:g}")
    pattern = _get(ctx, data, "pattern", prefix, str, "unstructured")
    _check_pattern(ctx, pattern, prefix + "pattern")
    problem = pattern_problem(pattern)
    _check(ctx, problem is None, prefix + "pattern", f"{problem}, got {pattern!r}")
    exclude = tuple(_str_list(ctx, data, "exclude", prefix, []))
    per_row = _get(ctx, data, "per_row", prefix, bool, False)
    if per_row:
        # Per row is asked of a method that compares weights over the whole matrix by default;
        # asked where it would change nothing, or fail the compress step, it is refused here.
        unused = _row_scope_unused(method, pattern)
        if ctx.stored:
            per_row = unused is None  # as the variant was pruned
        else:
            _check(ctx, unused is None, prefix + "per_row", f"true {unused}; leave per_row out")
    if ctx.stored and pattern != "unstructured":
        # Earlier versions stored 0.5 beside any N:M pattern and recorded N/M as its sparsity;
        # the pattern alone says how many weights go.
        sparsity = None
    try:
        return PruneRecipe(method, sparsity, pattern, per_row, exclude)
    except UserError as exc:  # an N:M pattern and a sparsity that disagree
        raise ctx.error(keys["sparsity"], str(exc)) from None


def _row_scope_unused(method: str, pattern: str) -> str | None:
    """Why per_row = true is refused for `method` and `pattern` ("changes nothing for wanda, ..."),
    or None when it changes the mask."""
    try:
        check_scope(method, "row")
    except UserError:
        return f"does not apply to {method}, which chooses its own mask per column block"
    ignored = scope_ignored(method, "row", pattern)
    return None if ignored is None else f"changes nothing {ignored}"


def _check_pattern(ctx: _Context, pattern: str, key: str) -> None:
    if not PATTERN_RE.match(pattern):
        raise ctx.error(key, f"must be 'unstructured' or N:M such as 2:4, got {pattern!r}")
    if pattern != "unstructured":
        n, m = (int(x) for x in pattern.split(":"))
        _check(ctx, 0 < n < m, key, f"N:M needs 0 < N < M, got {pattern!r}")


def _parse_quantize(ctx: _Context, raw: Any, prefix: str) -> QuantizeRecipe:
    if isinstance(raw, str):
        raw = {"scheme": raw}
    data = _table(ctx, raw, prefix.rstrip("."))
    _unknown(ctx, data, {"scheme", "block_size"}, prefix)
    scheme = _get(ctx, data, "scheme", prefix, str, None)
    _check(ctx, scheme is not None, prefix + "scheme", "is required")
    _check_name(ctx, "quantization scheme", scheme, prefix + "scheme")
    block = _get(ctx, data, "block_size", prefix, int, DEFAULT_INT4_BLOCK_SIZE)
    if ctx.stored:
        # Earlier versions took any block size for every scheme; int8-dynamic has none.
        return QuantizeRecipe(scheme, block if scheme in blocked_schemes() else DEFAULT_INT4_BLOCK_SIZE)
    _check(ctx, block in INT4_BLOCK_SIZES, prefix + "block_size", f"must be one of {', '.join(map(str, INT4_BLOCK_SIZES))}, got {block}")
    # The default is taken by every scheme: earlier versions wrote it into every variant's recipe.
    _check(ctx, block == DEFAULT_INT4_BLOCK_SIZE or scheme in blocked_schemes(), prefix + "block_size",
           f"applies to {' and '.join(blocked_schemes())} only, not {scheme}, which has no blocks; leave block_size out")
    return QuantizeRecipe(scheme, block)


def _registry(kind: str):
    """The registry that knows the valid names of `kind` (suites imported when a plan needs them)."""
    if kind == "pruning method":
        return PRUNING_METHOD_NAMES
    if kind == "quantization scheme":
        return QUANTIZATION_SCHEME_NAMES
    if kind in ("prompt", "answer parser"):
        from audit.probes.scoring import PARSERS, PROMPT_STYLES

        return PROMPT_STYLES if kind == "prompt" else PARSERS
    from audit.probes.suites import SUITES

    return SUITES


def _check_name(ctx: _Context, kind: str, name: str, key: str) -> None:
    registry = _registry(kind)
    if name not in registry:
        raise ctx.error(key, f"unknown {kind} {name!r}; known: {', '.join(sorted(registry.names()))}")


def _variant_name(prune: PruneRecipe | None, quantize: QuantizeRecipe | None) -> str:
    parts = []
    if prune:
        if prune.pattern == "unstructured":
            parts.append(f"{prune.method}-{round(prune.sparsity * 100):d}")
        else:
            parts.append(f"{prune.method}-{prune.pattern.replace(':', 'of')}")
    if quantize:
        parts.append(quantize.scheme)
    return "+".join(parts)


def _parse_grid(ctx: _Context, grid: Any) -> list[VariantSpec]:
    """`[grid]`: every method at every sparsity, optionally each then quantized."""
    if grid is None:
        return []
    data = _table(ctx, grid, "grid")
    _unknown(ctx, data, {"methods", "sparsities", "pattern", "quantize", "exclude"}, "grid.")
    methods = _str_list(ctx, data, "methods", "grid.", [])
    _check(ctx, bool(methods), "grid.methods", "must name at least one pruning method")
    pattern = _get(ctx, data, "pattern", "grid.", str, "unstructured")
    # An N:M pattern says its own sparsity; an unstructured grid defaults to half.
    default = [0.5] if pattern.strip().lower() == "unstructured" else [None]
    sparsities = _get(ctx, data, "sparsities", "grid.", list, default)
    _check(ctx, bool(sparsities), "grid.sparsities", "must name at least one sparsity")
    quantize = _parse_quantize(ctx, data["quantize"], "grid.quantize.") if "quantize" in data else None
    exclude = _parse_grid_exclude(ctx, data, methods)
    variants = []
    for sparsity in sparsities:
        _check(
            ctx,
            sparsity is None or (isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool)),
            "grid.sparsities",
            f"must be numbers, got {sparsity!r}",
        )
        for method in methods:
            recipe = {"method": method, "pattern": pattern, **({} if sparsity is None else {"sparsity": sparsity})}
            if exclude.get(method):
                recipe["exclude"] = exclude[method]
            prune = _parse_prune(ctx, recipe, "grid.", {"method": "grid.methods", "sparsity": "grid.sparsities"})
            variants.append(VariantSpec(_variant_name(prune, quantize), prune, quantize))
    return variants


def _parse_grid_exclude(ctx: _Context, data: Mapping[str, Any], methods: list[str]) -> dict[str, list[str]]:
    """`grid.exclude`: layer-name patterns kept dense, for every method (a list) or per method
    (a table, `{ wanda = ["*.o_proj", "*.down_proj"] }`)."""
    raw = data.get("exclude")
    if raw is None:
        return {}
    if isinstance(raw, list):
        patterns = _str_list(ctx, data, "exclude", "grid.", [])
        return {method: patterns for method in methods}
    table = _table(ctx, raw, "grid.exclude")
    _unknown(ctx, table, set(methods), "grid.exclude.")
    return {method: _str_list(ctx, table, method, "grid.exclude.", []) for method in table}


def _parse_variants(ctx: _Context, doc: dict[str, Any]) -> list[VariantSpec]:
    variants: list[VariantSpec] = _parse_grid(ctx, doc.get("grid"))
    raw = doc.get("variants", [])
    if not isinstance(raw, list):
        raise ctx.error("variants", "must be an array of tables ([[variants]])")
    for i, item in enumerate(raw):
        prefix = f"variants[{i}]."
        data = _table(ctx, item, prefix.rstrip("."))
        _unknown(ctx, data, {"name", "prune", "quantize", "path"}, prefix)
        prune = _parse_prune(ctx, data["prune"], prefix + "prune.") if "prune" in data else None
        quantize = _parse_quantize(ctx, data["quantize"], prefix + "quantize.") if "quantize" in data else None
        path = _get(ctx, data, "path", prefix, str, None)
        if path is not None:
            _check(ctx, prune is None and quantize is None, prefix + "path", "a variant is either a path or a recipe, not both")
            path = ctx.resolve(path, prefix + "path")
            ctx.needs(prefix + "path", path, "path")
        _check(ctx, bool(prune or quantize or path), prefix.rstrip("."), "needs prune, quantize or path")
        name = _get(ctx, data, "name", prefix, str, None) or (Path(path).name if path else _variant_name(prune, quantize))
        variants.append(VariantSpec(name, prune, quantize, path))
    seen: set[str] = set()
    folders: dict[str, str] = {}  # each name as a case-insensitive file system sees it
    listed = len(variants) - len(raw)  # the grid's variants come first, then [[variants]]
    for i, variant in enumerate(variants):
        key = f"variants[{i - listed}].name" if i >= listed else "grid"
        if (problem := variant_name_problem(variant.name)) and not ctx.stored:
            raise ctx.error(key, problem)
        if variant.name == "baseline":
            raise ctx.error(key, "variant name 'baseline' is the dense model's: give another name")
        if variant.name in seen:
            # The grid names its variants by method and sparsity in percent.
            how = "" if i >= listed else " (a method or sparsity listed twice, or sparsities that round to the same percent)"
            raise ctx.error(key, f"variant name {variant.name!r} is used twice{how}")
        seen.add(variant.name)
        other = folders.setdefault(_folder_key(variant.name), variant.name)
        if other != variant.name and not ctx.stored:
            raise ctx.error(
                key,
                f"variant name {variant.name!r} and {other!r} differ only in case or in how a letter is composed: "
                "they name one folder on a case-insensitive file system (FAT, exFAT, macOS), so give another name",
            )
    return variants


def _folder_key(name: str) -> str:
    """`name` as a case-insensitive file system compares folder names: composed, case folded."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def _parse_probes(ctx: _Context, raw: Any) -> ProbeSpec:
    data = _table(ctx, raw, "probes")
    _unknown(
        ctx, data,
        {"suites", "categories", "mode", "seeds", "limit", "temperature", "max_new_tokens", "noise_floor", "conditions", "prompt", "parser",
         "sequential", "order_seed", "sequential_batch", "futility"},
        "probes.",
    )
    suites = []
    for suite in _str_list(ctx, data, "suites", "probes.", ["builtin"]):
        name, _, path = suite.partition(":")
        _check_name(ctx, "probe suite", name, "probes.suites")
        suites.append(f"{name}:{ctx.resolve(path, 'probes.suites')}" if path else name)
    _check(ctx, bool(suites), "probes.suites", "must name at least one suite")
    # A suite listed twice (as written, or once its path is resolved) is probed twice for each
    # variant, the second probe replacing the first's results. A stored run's plan still reads.
    twice = _repeated(suites)
    _check(ctx, twice is None or ctx.stored, "probes.suites", f"lists {twice} twice: each variant would be probed on it twice")
    mode = _get(ctx, data, "mode", "probes.", str, "loglik")
    _check(ctx, mode in {"loglik", "generate"}, "probes.mode", f"must be 'loglik' or 'generate', got {mode!r}")
    seeds = _get(ctx, data, "seeds", "probes.", list, [0])
    _check(ctx, bool(seeds) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds), "probes.seeds", "must be a non-empty list of integers")
    _check(ctx, all(s in INT64 for s in seeds), "probes.seeds", "must be within TOML's 64-bit integer range")
    from audit.probes.scoring import MAX_SEEDS

    _check(ctx, len(seeds) <= MAX_SEEDS, "probes.seeds", f"lists at most {MAX_SEEDS} seeds (each is a whole generation of every item), got {len(seeds)}")
    # A seed given twice draws the same answers twice and counts them as two samples. A stored
    # run that an earlier version let list one twice is still read back.
    repeated = _repeated(seeds)
    _check(ctx, repeated is None or ctx.stored, "probes.seeds", f"lists seed {repeated} twice: a seed repeats the same answers, which would count twice")
    limit = _get(ctx, data, "limit", "probes.", int, None)
    _check(ctx, limit is None or limit > 0, "probes.limit", f"must be positive, got {limit}")
    temperature = _get(ctx, data, "temperature", "probes.", float, 0.0)
    _check(ctx, 0.0 <= temperature <= MAX_TEMPERATURE, "probes.temperature", f"must be within [0, {MAX_TEMPERATURE:g}], got {temperature:g}")
    max_new = _get(ctx, data, "max_new_tokens", "probes.", int, 5)
    _check(ctx, 1 <= max_new <= MAX_NEW_TOKENS, "probes.max_new_tokens", f"must be within [1, {MAX_NEW_TOKENS}], got {max_new}")
    categories = tuple(_str_list(ctx, data, "categories", "probes.", []))
    noise_floor = _get(ctx, data, "noise_floor", "probes.", bool, True)
    conditions = _str_list(ctx, data, "conditions", "probes.", [])
    known = ("ambig", "disambig")
    _check(ctx, all(c in known for c in conditions), "probes.conditions", f"must list 'ambig' and/or 'disambig', got {conditions!r}")
    conditions = [c for c in known if c in conditions]
    if conditions:
        sentences = [s.partition(":")[0] for s in suites if _registry("probe suite").meta(s.partition(":")[0])["kind"] != "qa"]
        _check(ctx, not sentences, "probes.conditions", f"applies to question suites (builtin, bbq), not to {', '.join(sentences)}")
    prompt = _get(ctx, data, "prompt", "probes.", str, "default")
    _check_name(ctx, "prompt", prompt, "probes.prompt")
    parser = _get(ctx, data, "parser", "probes.", str, "strict")
    _check_name(ctx, "answer parser", parser, "probes.parser")
    for key, value, default in (("prompt", prompt, "default"), ("parser", parser, "strict")):
        _check(ctx, mode == "generate" or value == default, f"probes.{key}", "applies to mode = \"generate\": log-likelihood scoring asks and parses nothing")
    # Log-likelihood scoring generates nothing: a sampling setting given with it would be
    # recorded with the run and read as if it had been used. Runs stored before still read.
    given = {"seeds": tuple(seeds), "temperature": temperature, "max_new_tokens": max_new, "noise_floor": noise_floor}
    for key in GENERATE_SETTINGS:
        _check(ctx, mode == "generate" or given[key] == getattr(ProbeSpec, key) or ctx.stored, f"probes.{key}",
               "applies to mode = \"generate\": log-likelihood scoring generates nothing; leave it out")
    sequential = _get(ctx, data, "sequential", "probes.", bool, False)
    order_seed = _get(ctx, data, "order_seed", "probes.", int, None)
    batch = _get(ctx, data, "sequential_batch", "probes.", int, None)
    futility = _get(ctx, data, "futility", "probes.", float, None)
    for key, value in (("order_seed", order_seed), ("sequential_batch", batch), ("futility", futility)):
        _check(ctx, value is None or sequential, f"probes.{key}", "applies to sequential = true")
    _check(ctx, order_seed is None or order_seed in range(0, 2**63), "probes.order_seed", f"must be within [0, 2^63), got {order_seed}")
    _check(ctx, batch is None or batch >= 1, "probes.sequential_batch", f"must be at least 1, got {batch}")
    _check(ctx, futility is None or 0.0 <= futility < 1.0, "probes.futility", f"must be within [0, 1), got {futility}")
    return ProbeSpec(tuple(suites), categories, mode, tuple(seeds), limit, temperature, max_new, noise_floor, tuple(conditions), prompt, parser,
                     sequential, order_seed, batch, futility)


def _repeated(values: Sequence[Any]) -> Any:
    """The first of `values` that repeats one before it, or None."""
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def _parse_calibration(ctx: _Context, raw: Any) -> CalibrationSpec:
    data = _table(ctx, raw, "calibration")
    _unknown(ctx, data, {"nsamples", "seqlen", "seed", "file", "statistics"}, "calibration.")
    nsamples = _get(ctx, data, "nsamples", "calibration.", int, DEFAULT_NSAMPLES)
    _check(ctx, nsamples >= 1, "calibration.nsamples", f"must be at least 1, got {nsamples}")
    seqlen = _get(ctx, data, "seqlen", "calibration.", int, DEFAULT_SEQLEN)
    _check(ctx, seqlen >= MIN_SEQLEN, "calibration.seqlen", f"must be at least {MIN_SEQLEN}, got {seqlen}")
    seed = _get(ctx, data, "seed", "calibration.", int, 0)
    file = _get(ctx, data, "file", "calibration.", str, None)
    if file is not None:
        file = ctx.resolve(file, "calibration.file")
        ctx.needs("calibration.file", file, "file")
    statistics = _get(ctx, data, "statistics", "calibration.", str, "sequential")
    _check(ctx, statistics in ("sequential", "dense"), "calibration.statistics", f"must be 'sequential' or 'dense', got {statistics!r}")
    return CalibrationSpec(nsamples, seqlen, seed, file, statistics)


def _parse_perplexity(ctx: _Context, raw: Any) -> PerplexitySpec:
    data = _table(ctx, raw, "perplexity")
    _unknown(ctx, data, {"enabled", "text"}, "perplexity.")
    text = _get(ctx, data, "text", "perplexity.", str, None)
    if text is not None:
        text = ctx.resolve(text, "perplexity.text")
        ctx.needs("perplexity.text", text, "file")
    return PerplexitySpec(_get(ctx, data, "enabled", "perplexity.", bool, True), text)


def _parse_profile(ctx: _Context, raw: Any) -> ProfileSpec:
    data = _table(ctx, raw, "profile")
    _unknown(ctx, data, {"enabled", "prompt_tokens", "new_tokens", "runs", "warmup", "threads"}, "profile.")
    values = {}
    for key, default, low in (("prompt_tokens", 128, 1), ("new_tokens", 32, 2), ("runs", 10, 1), ("warmup", 2, 0)):
        value = _get(ctx, data, key, "profile.", int, default)
        _check(ctx, value >= low, f"profile.{key}", f"must be at least {low}, got {value}")
        values[key] = value
    threads = _get(ctx, data, "threads", "profile.", int, None)
    _check(ctx, threads is None or threads >= 1, "profile.threads", f"must be at least 1, got {threads}")
    return ProfileSpec(_get(ctx, data, "enabled", "profile.", bool, True), threads=threads, **values)


def _confidence(ctx: _Context, data: Mapping[str, Any], prefix: str, default: float | None) -> float | None:
    value = _get(ctx, data, "confidence", prefix, float, default)
    _check(ctx, value is None or 0.5 <= value < 1, prefix + "confidence", f"must be within [0.5, 1), got {value}")
    return value


def _replaced_significance(ctx: _Context, data: dict[str, Any], prefix: str) -> None:
    if "significance" in data and ctx.stored:
        data.pop("significance")
    if "significance" in data:
        level = data["significance"]
        example = f"; significance = {level} becomes confidence = {1 - level:g}" if isinstance(level, float) and 0 < level < 1 else ""
        raise ctx.error(
            prefix + "significance",
            "was replaced by confidence: a rule passes only when its one-sided confidence bound is within the limit, "
            f"not when a change is not significant{example}",
        )


def _gate_metric(ctx: _Context, metric: str, key: str) -> str:
    from audit.metrics import RENAMED, gate_metrics

    if metric in RENAMED and ctx.stored:
        metric = RENAMED[metric]
    if metric in RENAMED:
        raise ctx.error(key, f"gate metric {metric!r} is now called {RENAMED[metric]!r}")
    known = gate_metrics()
    _check(ctx, metric in known, key, f"unknown gate metric {metric!r}; known: {', '.join(known)}")
    return metric


def _parse_gate(ctx: _Context, raw: Any) -> GateSettings:
    data = _table(ctx, raw, "gate")
    _replaced_significance(ctx, data, "gate.")
    _unknown(ctx, data, {"rules", "confidence", "competence", "max_accuracy_drop", "max_parse_failure_rate"}, "gate.")
    confidence = _confidence(ctx, data, "gate.", 0.95)
    assert confidence is not None
    competence = _get(ctx, data, "competence", "gate.", bool, True)
    max_drop = _get(ctx, data, "max_accuracy_drop", "gate.", float, 0.10)
    _check(ctx, 0 <= max_drop <= 1, "gate.max_accuracy_drop", f"must be within [0, 1], got {max_drop:g}")
    max_parse = _get(ctx, data, "max_parse_failure_rate", "gate.", float, 0.05)
    _check(ctx, 0 <= max_parse <= 1, "gate.max_parse_failure_rate", f"must be within [0, 1], got {max_parse:g}")
    rules = []
    raw_rules = data.get("rules", [])
    if not isinstance(raw_rules, list):
        raise ctx.error("gate.rules", "must be an array of tables ([[gate.rules]])")
    for i, item in enumerate(raw_rules):
        prefix = f"gate.rules[{i}]."
        rule = _table(ctx, item, prefix.rstrip("."))
        _replaced_significance(ctx, rule, prefix)
        _unknown(ctx, rule, {"metric", "max", "category", "suite", "confidence"}, prefix)
        metric = _get(ctx, rule, "metric", prefix, str, None)
        _check(ctx, metric is not None, prefix + "metric", "is required")
        metric = _gate_metric(ctx, metric, prefix + "metric")
        limit = _get(ctx, rule, "max", prefix, float, None)
        _check(ctx, limit is not None, prefix + "max", "is required")
        _check(ctx, math.isfinite(limit), prefix + "max", f"must be a finite number, got {limit}")
        category = _get(ctx, rule, "category", prefix, str, "overall")
        # Perplexity is one figure over the held-out text: by category, each would judge that figure.
        _check(ctx, category == "overall" or metric != "perplexity_relative_change_pct" or ctx.stored, prefix + "category",
               f"{metric} has no categories (perplexity is one figure over the held-out text): leave category out")
        suite = _get(ctx, rule, "suite", prefix, str, None)
        rules.append(GateRule(metric, limit, category, suite, _confidence(ctx, rule, prefix, None)))
    return GateSettings(tuple(rules), confidence, competence, max_drop, max_parse)


def _rule_suites(ctx: _Context, gate: GateSettings, suites: Sequence[str]) -> GateSettings:
    """The gate with each rule's suite as `probes.suites` names it: a suite's name alone stands for
    the one probe suite of that name (`bbq` for `bbq:PATH`), and a relative path is taken from the
    plan's folder. A rule on a suite the plan does not probe could never be checked: an error
    (left as written in a stored plan, whose run then says the suite was not probed)."""
    rules = []
    for i, rule in enumerate(gate.rules):
        key = f"gate.rules[{i}].suite"
        if rule.suite is None or rule.suite in suites:
            rules.append(rule)
            continue
        name, _, path = rule.suite.partition(":")
        spec = f"{name}:{ctx.resolve(path, key)}" if path else name
        named = [suite for suite in suites if suite.partition(":")[0] == name]
        if spec in suites or (not path and len(named) == 1):
            rules.append(replace(rule, suite=spec if spec in suites else named[0]))
            continue
        if not ctx.stored:
            also = f" (more than one is named {name}: give its path)" if len(named) > 1 else ""
            raise ctx.error(key, f"{rule.suite!r} is not one of the suites the plan probes ({', '.join(suites)}){also}")
        rules.append(rule)
    return replace(gate, rules=tuple(rules))


TOP_KEYS = {"name", "model", "variants", "grid", "calibration", "probes", "perplexity", "profile", "gate"}


def parse_plan(
    text: str, path: Path | None = None, *, check_model: bool = True, check_files: bool = True, stored: bool = False,
    lines_of: str | None = None, gate_file: bool = False,
) -> Plan:
    """Parse a plan, then check what running it needs; every problem is a PlanError naming the
    key and line.

    Parsing reads the text alone: known keys, types, values in range. The checks look at this
    machine: `check_files`, the calibration and perplexity texts and the variant folders exist;
    `check_model`, the model can be found (a local one becomes its absolute path). A plan about
    to run needs both; opening a stored run needs neither, so it opens whatever has moved.
    `stored`: the plan of a stored run, which an earlier version may have written; keys that
    were replaced since (the gate's significance levels, old metric names) are read in
    today's terms instead of refused. `lines_of`: the text of the file at `path` when `text` is
    that plan written out again (with overrides): errors name a key's line in the file.
    `gate_file`: the file gives the gate of `probe-compare`, whose suites are those of the item
    files compared; a rule's suite is checked against `probes.suites` only where it has them."""
    where = path.name if path else "plan"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{where}: invalid TOML: {exc}") from None
    except ValueError:  # the reader's own limit on integer digits
        raise PlanError(f"{where}: invalid TOML: an integer too long to read") from None
    except RecursionError:
        raise PlanError(f"{where}: invalid TOML: arrays or tables nested too deeply") from None
    ctx = _Context(text if lines_of is None else lines_of, path, stored)
    plan = _parse(ctx, doc, text, path, gate_file)
    if check_model:
        plan = replace(plan, model=_check_model(ctx, plan.model))
    if check_files:
        _check_files(ctx)
    return plan


def _parse(ctx: _Context, doc: dict[str, Any], text: str, path: Path | None, gate_file: bool = False) -> Plan:
    _unknown(ctx, doc, TOP_KEYS, "")
    model = _get(ctx, doc, "model", "", str, None)
    _check(ctx, bool(model), "model", "is required (an alias, a folder, a .gguf file or a hub id)")
    name = _get(ctx, doc, "name", "", str, None)
    if name and not ctx.stored and (problem := control_problem("plan", name, tab=True)):
        raise ctx.error("name", problem)
    name = name or (path.stem if path else "plan")
    probes = _parse_probes(ctx, doc.get("probes"))
    gate = _parse_gate(ctx, doc.get("gate"))
    if "probes" in doc or not gate_file:
        # A plan to run probes its suites, the built-in one when it names none: a rule on
        # another could never be checked.
        gate = _rule_suites(ctx, gate, probes.suites)
    if probes.sampled and not probes.noise_floor and not ctx.stored:
        # Sampled answers differ from seed to seed: the rate above the floor needs the floor measured.
        for i, rule in enumerate(gate.rules):
            _check(ctx, rule.metric != "transition_rate_over_noise", f"gate.rules[{i}].metric",
                   "transition_rate_over_noise needs the noise floor, which probes.noise_floor = false leaves unmeasured "
                   "with sampled answers: every verdict on it would be inconclusive")
    if probes.sequential and (refusal := sequential_refusal(probes, gate)):
        raise ctx.error("probes.sequential", refusal)
    return Plan(
        name=name,
        model=model,
        variants=tuple(_parse_variants(ctx, doc)),
        calibration=_parse_calibration(ctx, doc.get("calibration")),
        probes=probes,
        perplexity=_parse_perplexity(ctx, doc.get("perplexity")),
        profile=_parse_profile(ctx, doc.get("profile")),
        gate=gate,
        text=text,
        path=str(path.resolve()) if path else None,
    )


def _check_files(ctx: _Context) -> None:
    for key, path, kind in ctx.on_disk:
        try:
            found = Path(path).is_file() if kind == "file" else Path(path).exists()
        except OSError as exc:  # a name too long for the file system
            raise ctx.error(key, f"cannot look at {path}: {exc.strerror}") from None
        _check(ctx, found, key, f"no such {'file' if kind == 'file' else 'file or folder'}: {path}")


def _check_model(ctx: _Context, model: str) -> str:
    from audit.models.sources import resolve_source

    try:
        candidate = Path(model).expanduser()
        local = candidate if candidate.is_absolute() else ctx.base / candidate
        if local.exists():
            model = str(local.resolve())
        resolve_source(model)
    except UserError as exc:
        raise ctx.error("model", str(exc)) from None
    except (OSError, RuntimeError, ValueError):  # an unknown ~user, a NUL byte, a name too long
        raise ctx.error("model", f"is not a usable model name or path: {model!r}") from None
    return model


def read_stored_plan(text: str, path: str | None) -> Plan:
    """The plan of a stored run, from its stored text alone: the files it names may have moved
    since, and a step that needs one says so when it reads it. Relative paths still read from
    the plan's folder `path`. Stored text that does not read is the store's damage, not the
    plan file's (which may have changed since, or be gone), and is said so."""
    try:
        return parse_plan(text, Path(path) if path else None, check_model=False, check_files=False, stored=True)
    except PlanError as exc:
        raise PlanError(f"the plan stored with this run does not read ({exc}): the results store may be damaged") from None


def load_plan(path: str | Path, *, check_model: bool = True, gate_file: bool = False) -> Plan:
    """A plan file; `check_model` False when only its settings matter (the gate of
    `probe-compare`), not whether its model can be found here; `gate_file` as `parse_plan`."""
    path = Path(path)
    return parse_plan(read_text(path, "plan file", expected="a TOML plan"), path, check_model=check_model, gate_file=gate_file)


# -- shipped presets ---------------------------------------------------------------------------------
PRESETS_FOLDER = "plans"
DEFAULT_PRESET = "default"


def preset_names() -> list[str]:
    """The plans shipped with edge-audit, by name."""
    return sorted(path.stem for path in (data_dir() / PRESETS_FOLDER).glob("*.toml"))


def preset_path(name: str) -> Path:
    """The file of a shipped plan; an unknown name is a PlanError listing the known ones."""
    if name not in preset_names():
        raise PlanError(f"no shipped plan named {name!r}; shipped plans: {', '.join(preset_names())}")
    return data_dir() / PRESETS_FOLDER / f"{name}.toml"


def preset_text(name: str) -> str:
    return preset_path(name).read_text(encoding="utf-8")


def preset_summary(name: str) -> str:
    """A shipped plan's first comment sentence: what `plans list` says of it."""
    comment = " ".join(line.lstrip("# ").strip() for line in preset_text(name).splitlines() if line.startswith("#")).strip()
    first, dot, _ = comment.partition(". ")
    return first + (dot.strip() if dot else "")


def load_preset(name: str, *, check_model: bool = True) -> Plan:
    path = preset_path(name)
    return parse_plan(path.read_text(encoding="utf-8"), path, check_model=check_model)


def default_plan() -> Plan:
    return load_preset(DEFAULT_PRESET)


def named_plan(name: str, *, check_model: bool = True) -> Plan:
    """A plan file, or else the shipped plan of that name: what `edge-audit run NAME` runs."""
    path = Path(name).expanduser()
    if not path.exists() and name in preset_names():
        return load_preset(name, check_model=check_model)
    if not path.exists():
        raise PlanError(f"no plan file {name} and no shipped plan of that name; shipped plans: {', '.join(preset_names())}")
    return load_plan(path, check_model=check_model)


def with_overrides(plan: Plan, *, model: str | None = None, limit: int | None = None, suites: Sequence[str] = (),
                   sequential: bool = False) -> Plan:
    """`plan` with another model, item limit or probe suites, or its variants probed sequentially,
    checked as a plan file is (the model and the files must be found here): `edge-audit run NAME
    --model M --limit N --suite S --sequential`. A suite's relative path is taken from the
    current folder."""
    if model is None and limit is None and not suites and not sequential:
        return plan
    if limit is not None and limit < 1:
        raise PlanError(f"--limit must be at least 1, got {limit}")
    if limit is not None and limit not in INT64:  # a plan holds 64-bit integers
        raise PlanError(f"--limit must be from 1 to {INT64.stop - 1}, got {limit}")
    if sequential and not plan.gate.active:
        raise PlanError("--sequential stops scoring once the gate's verdicts settle: the plan has no gate rules or competence guard")
    probes = plan.probes if limit is None else replace(plan.probes, limit=limit)
    probes = replace(probes, sequential=True) if sequential else probes
    if suites:
        ctx = _Context("", None)
        given = []
        for suite in suites:
            name, _, path = suite.partition(":")
            known = _registry("probe suite")
            if name not in known:
                raise PlanError(f"--suite {suite}: unknown probe suite {name!r}; known: {', '.join(sorted(known.names()))}")
            if path:
                path = ctx.resolve(path, "--suite")
                if not Path(path).exists():
                    raise PlanError(f"--suite {suite}: no such file or folder: {path}")
            spec = f"{name}:{path}" if path else name
            if spec in given:
                raise PlanError(f"--suite {suite} is given twice: each variant would be probed on it twice")
            given.append(spec)
        probes = replace(probes, suites=tuple(given))
    revised = replace(plan, model=model or plan.model, probes=probes)
    path = Path(plan.path) if plan.path else None
    checked = parse_plan(plan_to_toml(revised), path, check_model=False, lines_of=plan.text)
    ctx = _Context(plan.text, path)
    return replace(checked, model=_check_model(ctx, checked.model))


MAX_VARIANT_NAME_BYTES = 200  # a folder name, with room for an atomic write's temporary prefix and suffix


def variant_name_problem(name: str) -> str | None:
    """Why `name` cannot name a variant, or None. A variant's name is the name of its folder in
    the run's work folder: a path (`/tmp/x`, `a/b`, `..`) would write, or replace, a folder
    elsewhere; a leading dot would hide it among the temporary folders of atomic writes."""
    if not name.strip():
        return "a variant name cannot be empty"
    if "/" in name or "\\" in name or name in (".", ".."):
        return f"variant name {name!r} is a path: it names the variant's folder in the run's work folder, so give a plain name"
    if name.startswith("."):
        return f"variant name {name!r} starts with a dot: its folder would be hidden"
    if problem := control_problem("variant", name):
        return problem
    if len(name.encode("utf-8")) > MAX_VARIANT_NAME_BYTES:
        return f"variant name is {len(name.encode('utf-8'))} bytes long: at most {MAX_VARIANT_NAME_BYTES}, since it names a folder"
    return None


def control_problem(kind: str, name: str, tab: bool = False) -> str | None:
    """Why `name` cannot name a plan or variant (`kind`), which is printed as it is: a control
    character (an escape sequence would command the terminal; a tab only when not `tab`) or a
    line break; or None."""
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") and not (tab and c == "\t") for c in name):
        return f"{kind} name {name!r} holds control characters or line breaks"
    return None


def variant_name(prune: PruneRecipe | None, quantize: QuantizeRecipe | None) -> str:
    """The name a plan gives a variant that has none: `wanda-50` (half the weights removed),
    `wanda-1of4+int8-dynamic` (1 of every 4 weights kept, then quantized)."""
    return _variant_name(prune, quantize)


# -- writing a plan back --------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes; TOML also wants DEL escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _toml_table(header: str, values: Mapping[str, Any]) -> list[str]:
    lines = [header]
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
    return lines + [""]


def plan_to_toml(plan: Plan) -> str:
    """The plan as TOML that `parse_plan` reads back into an equal plan (grids written out as
    their variants)."""
    lines = ["# An edge-audit plan.", f"name = {_toml_value(plan.name)}", f"model = {_toml_value(plan.model)}", ""]
    for variant in plan.variants:
        lines += ["[[variants]]", f"name = {_toml_value(variant.name)}"]
        if variant.path is not None:
            lines.append(f"path = {_toml_value(variant.path)}")
        # A recipe's settings that change nothing are left out: per_row when false, the block
        # size of a scheme without blocks.
        if variant.prune is not None:
            recipe = asdict(variant.prune)
            if not recipe["per_row"]:
                del recipe["per_row"]
            lines.append("prune = { " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in recipe.items()) + " }")
        if variant.quantize is not None:
            recipe = asdict(variant.quantize)
            if variant.quantize.scheme not in blocked_schemes():
                del recipe["block_size"]
            lines.append("quantize = { " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in recipe.items()) + " }")
        lines.append("")
    lines += _toml_table("[calibration]", asdict(plan.calibration))
    lines += _toml_table("[probes]", asdict(plan.probes))
    lines += _toml_table("[perplexity]", asdict(plan.perplexity))
    lines += _toml_table("[profile]", asdict(plan.profile))
    gate = plan.gate
    lines += _toml_table(
        "[gate]",
        {
            "confidence": gate.confidence,
            "competence": gate.competence,
            "max_accuracy_drop": gate.max_accuracy_drop,
            "max_parse_failure_rate": gate.max_parse_failure_rate,
        },
    )
    for rule in gate.rules:
        lines += _toml_table("[[gate.rules]]", asdict(rule))
    return "\n".join(lines).rstrip("\n") + "\n"


def sequential_refusal(probes: ProbeSpec, gate: GateSettings) -> str | None:
    """Why `probes` cannot be scored sequentially under `gate` (None when they can): its
    verdicts decide when scoring stops, so there must be one that probe items settle."""
    from audit.probes.compare import ITEM_FIGURES

    if not gate.active:
        return "needs the gate (rules or its competence guard): its verdicts decide when scoring stops"
    questions = any(_registry("probe suite").meta(s.partition(":")[0])["kind"] == "qa" for s in probes.suites)
    if not (any(r.metric in ITEM_FIGURES for r in gate.rules) or (gate.competence and questions)):
        return "has no verdict to wait for: no gate rule reads probe items, and no question suite has the competence guard"
    return None


def revise_plan(plan: Plan, **changes: Any) -> Plan:
    """A copy of `plan` with `changes` (dataclass fields), written out and read back, so its text
    matches its fields and every value is checked as in a plan file; `path=` among them gives the
    copy that path (None: a plan of no file), else it keeps the plan's."""
    revised = replace(plan, **changes)
    path = Path(revised.path) if revised.path else None
    return parse_plan(plan_to_toml(revised), path, check_model=False)

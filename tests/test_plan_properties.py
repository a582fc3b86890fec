"""Plan reader properties: any text gives a Plan or a one-line PlanError, and written plans read back equal."""

from __future__ import annotations

import datetime
import json
import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from audit.plans import Plan, PlanError, parse_plan, plan_to_toml

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Every key the reader knows, at any level, plus keys it has replaced: generated tables mix
# them so that most examples reach the checks of a real table rather than "unknown key".
KNOWN_KEYS = [
    "name", "model", "variants", "grid", "calibration", "probes", "perplexity", "profile", "gate",
    "method", "sparsity", "pattern", "per_row", "exclude", "scheme", "block_size", "prune", "quantize", "path",
    "methods", "sparsities", "nsamples", "seqlen", "seed", "file", "suites", "categories", "mode", "seeds",
    "limit", "temperature", "max_new_tokens", "noise_floor", "enabled", "text", "prompt_tokens", "new_tokens",
    "runs", "warmup", "threads", "rules", "confidence", "competence", "max_accuracy_drop",
    "max_parse_failure_rate", "metric", "max", "category", "suite", "significance",
]
# Names and values the reader gives meaning to, and strings that are awkward as paths.
MEANINGFUL = [
    "wanda", "magnitude", "sparsegpt", "random", "unstructured", "2:4", "4:2", "0:0", "1:" + "9" * 30, "2:4\n",
    "int8-dynamic", "onnx-int8", "onnx-int4", "builtin", "crows", "bbq", "crows:data/crows.csv", "builtin:",
    "loglik", "generate", "overall", "each", "category_mean", "baseline", "smollm2-135m",
    "srs_relative_change_pct", "srs_relative_increase_pct", "bias_score_ambig", "s_amb", "transition_rate",
    "perplexity_relative_change_pct", "~no-such-user-here/x", "a\x00b", "x" * 300, "/" + "y" * 300, "line\nbreak",
    "\u2028", "", ".", "/",
]

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, 1, -1, 16, 32, 2**63 - 1, -(2**63), 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 0.5, 0.95, 0.99, 1.0, 1.5, math.nan, math.inf, -math.inf, 1e300]),
    text,
    st.sampled_from(MEANINGFUL),
    st.dates(),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), text)
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=12
)


def table(**fields: st.SearchStrategy) -> st.SearchStrategy:
    """A table with any of `fields`, each a plausible value or anything, sometimes an unknown key."""
    optional = {key: st.one_of(good, anything) for key, good in fields.items()}
    known = st.fixed_dictionaries({}, optional=optional)
    extra = st.dictionaries(keys, anything, max_size=2)
    return st.one_of(known, known, known, st.builds(lambda a, b: {**a, **b}, known, extra), anything)


numbers = st.one_of(st.integers(min_value=-5, max_value=600), st.floats(min_value=-1, max_value=2), st.sampled_from([math.nan, math.inf]))
names = st.sampled_from(MEANINGFUL) | text
prune = st.one_of(names, table(method=names, sparsity=numbers, pattern=names, per_row=st.booleans(), exclude=st.lists(names, max_size=2)))
quantize = st.one_of(names, table(scheme=names, block_size=st.sampled_from([8, 16, 24, 32, 64, -16, 0, 2**64])))
variant = table(name=names, prune=prune, quantize=quantize, path=names)
rule = table(metric=names, max=numbers, category=names, suite=names, confidence=numbers, significance=numbers)
good_numbers = st.floats(min_value=0, max_value=0.95) | st.integers(min_value=0, max_value=0)
good_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
good_documents = st.fixed_dictionaries(
    {"model": st.sampled_from(["smollm2-135m", "some/hub-model", "./models/x"])},
    optional={
        "name": good_names,
        "variants": st.lists(
            st.fixed_dictionaries(
                {"name": good_names},
                optional={
                    "prune": st.one_of(
                        st.fixed_dictionaries(
                            {"method": st.sampled_from(["wanda", "magnitude", "sparsegpt", "random"])},
                            optional={
                                "sparsity": good_numbers,
                                "pattern": st.sampled_from(["unstructured", "2:4", "4:8", "1:3"]),
                                "per_row": st.just(False),
                                "exclude": st.lists(good_names, max_size=2),
                            },
                        ),
                        # Per row changes the mask of the methods that compare over the whole matrix.
                        st.fixed_dictionaries(
                            {"method": st.sampled_from(["magnitude", "random"]), "per_row": st.booleans()},
                            optional={"sparsity": good_numbers, "exclude": st.lists(good_names, max_size=2)},
                        ),
                    ),
                    "quantize": st.one_of(
                        st.fixed_dictionaries({"scheme": st.just("int8-dynamic")}, optional={"block_size": st.just(32)}),
                        st.fixed_dictionaries(
                            {"scheme": st.sampled_from(["onnx-int8", "onnx-int4"])},
                            optional={"block_size": st.sampled_from([16, 32, 128])},
                        ),
                    ),
                },
            ),
            max_size=3,
        ),
        "grid": st.fixed_dictionaries(
            {"methods": st.lists(st.sampled_from(["wanda", "magnitude"]), min_size=1, max_size=2, unique=True)},
            optional={"sparsities": st.lists(good_numbers, min_size=1, max_size=2, unique=True)},
        ),
        "calibration": st.fixed_dictionaries(
            {}, optional={"nsamples": st.integers(1, 2**62), "seqlen": st.integers(8, 4096), "seed": st.integers(), "file": good_names}
        ),
        "probes": st.fixed_dictionaries(
            {},
            optional={
                "suites": st.lists(st.sampled_from(["builtin", "crows:data/c.csv", "bbq", "stereoset:/abs/s.json"]), min_size=1, max_size=2),
                "categories": st.lists(good_names, max_size=2),
                "mode": st.sampled_from(["loglik", "generate"]),
                "seeds": st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=3),
                "limit": st.integers(1, 10**6),
                "temperature": st.floats(0, 5),
                "max_new_tokens": st.integers(1, 256),
                "noise_floor": st.booleans(),
            },
        ),
        "perplexity": st.fixed_dictionaries({}, optional={"enabled": st.booleans(), "text": good_names}),
        "profile": st.fixed_dictionaries({}, optional={"runs": st.integers(1, 100), "threads": st.integers(1, 64)}),
        "gate": st.fixed_dictionaries(
            {},
            optional={
                "confidence": st.floats(0.5, 0.999),
                "competence": st.booleans(),
                "max_accuracy_drop": st.floats(0, 1),
                "rules": st.lists(
                    st.fixed_dictionaries(
                        {"metric": st.sampled_from(["srs_relative_change_pct", "bias_score_ambig", "transition_rate"]), "max": st.floats(-1e300, 1e300)},
                        optional={"category": good_names, "suite": good_names, "confidence": st.floats(0.5, 0.999)},
                    ),
                    max_size=2,
                ),
            },
        ),
    },
)


def _tables(value: object):
    """Every table in a document, nested ones and those in arrays too."""
    if isinstance(value, dict):
        yield value
        for inner in value.values():
            yield from _tables(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _tables(inner)


@st.composite
def mutated(draw: st.DrawFn) -> dict:
    """A valid document with a few values replaced or added: the first problem a reader meets is
    then deep inside a table as often as at the top."""
    doc = draw(good_documents)
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(list(_tables(doc))))
        key = draw(st.sampled_from(sorted(target)) if target else keys) if draw(st.booleans()) else draw(keys)
        target[key] = draw(anything)
    return doc


free_documents = st.fixed_dictionaries(
    {},
    optional={
        "name": names | anything,
        "model": st.just("smollm2-135m") | names | anything,
        "variants": st.lists(variant, max_size=3) | anything,
        "grid": table(methods=st.lists(names, max_size=3), sparsities=st.lists(numbers, max_size=3), pattern=names, quantize=quantize),
        "calibration": table(nsamples=numbers, seqlen=numbers, seed=numbers, file=names),
        "probes": table(
            suites=st.lists(names, max_size=3), categories=st.lists(names, max_size=2), mode=names,
            seeds=st.lists(numbers, max_size=3), limit=numbers, temperature=numbers, max_new_tokens=numbers,
            noise_floor=st.booleans(),
        ),
        "perplexity": table(enabled=st.booleans(), text=names),
        "profile": table(enabled=st.booleans(), prompt_tokens=numbers, new_tokens=numbers, runs=numbers, warmup=numbers, threads=numbers),
        "gate": table(
            rules=st.lists(rule, max_size=3), confidence=numbers, competence=st.booleans(),
            max_accuracy_drop=numbers, max_parse_failure_rate=numbers, significance=numbers,
        ),
    },
) | st.dictionaries(keys, anything, max_size=4)
documents = st.one_of(mutated(), mutated(), free_documents)


# -- writing generated documents as TOML ------------------------------------------------------------
def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("-inf" if value < 0 else "inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{_value(k)} = {_value(v)}" for k, v in value.items()) + "}"


def to_toml(doc: dict) -> str:
    """Top-level tables as `[table]` sections and arrays of tables as `[[array]]` sections, as
    people write plans (so keys have lines of their own); anything else inline."""
    lines = [f"{_value(k)} = {_value(v)}" for k, v in doc.items() if not _section(v)]
    for key, value in doc.items():
        if isinstance(value, dict) and _section(value):
            lines.append(f"[{_value(key)}]")
            lines += [f"{_value(k)} = {_value(v)}" for k, v in value.items()]
        elif _section(value):
            for item in value:
                lines.append(f"[[{_value(key)}]]")
                lines += [f"{_value(k)} = {_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def _section(value: object) -> bool:
    return isinstance(value, dict) or (isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value))


# -- the properties ----------------------------------------------------------------------------------
def read(text: str, **options: bool) -> Plan | None:
    """The plan `text` describes, or None after checking the PlanError is one line."""
    try:
        plan = parse_plan(text, None, check_model=False, **options)
    except PlanError as exc:
        message = str(exc)
        assert message and len(message.splitlines()) == 1, repr(message)
        return None
    assert isinstance(plan, Plan)
    return plan


def comparable(plan: Plan) -> dict:
    data = plan.to_dict()
    data.pop("path")
    return data


@SETTINGS
@given(st.text())
@example("model = 1" + "0" * 5000)  # past the digits `int` reads
@example("model = " + "[" * 5000 + "]" * 5000)  # past the recursion limit
def test_any_text_is_a_plan_or_a_plan_error(text):
    read(text)
    read(text, stored=True)


@SETTINGS
@given(documents)
@example({"model": "m", "\n": 1})
@example({"model": "m", "calibration": {"file": "a\x00b"}})
@example({"model": "m", "perplexity": {"text": "~no-such-user-here/x"}})
@example({"model": "m", "variants": [{"path": "/" + "y" * 300}]})
@example({"model": "m", "variants": [{"prune": {"method": "wanda", "sparsity": 10**400}}]})
@example({"model": "m", "grid": {"methods": ["wanda"], "sparsities": [10**400]}})
@example({"model": "m", "variants": [{"prune": {"method": "wanda", "pattern": "1:" + "9" * 5000}}]})
@example({"model": "m", "probes": {"seeds": [10**30]}})
def test_any_toml_document_is_a_plan_or_a_plan_error(doc):
    text = to_toml(doc)
    read(text)
    read(text, stored=True)
    read(text, check_files=False, stored=True)


@SETTINGS
@given(st.one_of(good_documents, documents))
def test_a_written_plan_reads_back_equal(doc):
    """Whatever parses (files unchecked: they need not exist here) is written by `plan_to_toml`
    as TOML that reads back into the same plan, and that TOML is stable."""
    plan = read(to_toml(doc), check_files=False)
    if plan is None:
        return
    written = plan_to_toml(plan)
    again = read(written, check_files=False)
    assert again is not None, written
    assert comparable(again) == comparable(plan)
    assert plan_to_toml(again) == written

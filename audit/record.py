"""Audit records: what a run found about one variant, bound to that variant's fingerprint and
signed, so a technician can prove on the device that the deployed folder is the audited one.

A record is an attestation: its subject is the model (the fingerprint), its predicate what
the lab measured and decided (gate verdict and findings, figures with intervals, a check
subset of probe items with their scores, a perplexity text, a latency and memory envelope).
The signature is Ed25519 over the record's canonical serialisation: the JSON of everything
but the `signature` field, with keys sorted, no whitespace, UTF-8. Reformatting the file
leaves it valid; changing any value breaks it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from audit import atomic, checks, jsonout
from audit.errors import UserError, first_line
from audit.fingerprint import EARLIER_FORMATS, Fingerprint, canonical_json
from audit.paths import read_text
from audit.plans import INT64, MAX_NEW_TOKENS, MAX_TEMPERATURE
from audit.probes.items import MODES, NORMS, QA, SENTENCES, ProbeItem, is_int, is_number, is_text, shown
from audit.probes.scoring import MAX_SEEDS

RECORD_TYPE = "edge-audit/audit-record"
RECORD_VERSION = 1
PRIVATE_KEY_FILE, PUBLIC_KEY_FILE = "edge-audit.key", "edge-audit.pub"
DEFAULT_CHECK_ITEMS = 60
# The perplexity text travels inside the record (the built-in one is 24,000 characters); a
# longer one is left out, and the device check then says perplexity was not checked.
MAX_PERPLEXITY_TEXT_CHARS = 256_000
# How closely a replay on the device must agree with the lab. On the same software the
# choices are identical and option scores (log-likelihoods in nats) agree to rounding; the
# stored scores are rounded to 1e-6.
SCORE_TOLERANCE = 1e-3
PERPLEXITY_TOLERANCE = 1e-3  # relative


# -- canonical form and signatures -------------------------------------------------------------
def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """What a signature covers: the record without its signature, canonical JSON in UTF-8."""
    return canonical_json({k: v for k, v in record.items() if k != "signature"})


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - a declared dependency
        raise UserError("signing needs the cryptography package: pip install cryptography") from None
    return serialization, ed25519


def new_keys(folder: Path, *, force: bool = False) -> tuple[Path, Path]:
    """An Ed25519 key pair: `edge-audit.key` (private, mode 0600) and `edge-audit.pub`."""
    serialization, ed25519 = _crypto()
    folder = Path(folder).expanduser()
    private_path, public_path = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        checks.output_file(path, "key file")
        if path.exists() and not force:
            raise UserError(f"{path} exists; pass --force to replace it (records signed with it will no longer verify against a new key)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic.write_bytes(private_path, private_pem, mode=0o600)
    atomic.write_bytes(public_path, public_pem)
    return private_path, public_path


def _load_key(path: Path, private: bool) -> Any:
    """An Ed25519 key from a PEM file, as `keys new` writes them. A file that is not one is
    refused saying what it is instead (empty, not PEM, the other half of the pair): the PEM
    reader's own message names none of that."""
    serialization, ed25519 = _crypto()
    what = "private key" if private else "public key"
    made_by = "make one with `edge-audit keys new`" if private else "the .pub file `edge-audit keys new` wrote"
    text = read_text(Path(path).expanduser(), what, expected="a PEM key file from `edge-audit keys new`")
    if not text.strip():
        raise UserError(f"{path} is empty, not a PEM {what} ({made_by})")
    labels = [line.strip().strip("-").removeprefix("BEGIN").strip() for line in text.splitlines() if line.strip().startswith("-----BEGIN")]
    if not labels:
        raise UserError(f"{path} is not a PEM key: it has no -----BEGIN line ({made_by})")
    other = "PUBLIC KEY" if private else "PRIVATE KEY"
    if other in labels[0]:
        if private:
            raise UserError(f"{path} is a public key, not a private key: sign with the .key file `edge-audit keys new` wrote")
        raise UserError(f"{path} is a private key, not a public key: give {made_by} (the private key stays in the lab)")
    try:
        key = serialization.load_pem_private_key(text.encode("utf-8"), password=None) if private else serialization.load_pem_public_key(text.encode("utf-8"))
    except (ValueError, TypeError):
        raise UserError(f"{path} is not a {what} edge-audit can use: its PEM block ({labels[0]}) cannot be read ({made_by})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey):
        raise UserError(f"{path} is not an Ed25519 {what} ({made_by})")
    return key


def load_private_key(path: Path) -> Any:
    return _load_key(path, private=True)


def load_public_key(path: Path) -> Any:
    return _load_key(path, private=False)


def _public_raw(key: Any) -> bytes:
    serialization, _ = _crypto()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign(record: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """The record with a signature by `private_key` over its canonical form."""
    raw = _public_raw(private_key.public_key())
    signature = private_key.sign(canonical_bytes(record))
    return {
        **{k: v for k, v in record.items() if k != "signature"},
        "signature": {
            "algorithm": "ed25519",
            "key_id": key_id(raw),
            "public_key": base64.b64encode(raw).decode("ascii"),
            "value": base64.b64encode(signature).decode("ascii"),
        },
    }


@dataclass(frozen=True)
class SignatureCheck:
    """What checking a record's signature found; `ok` is False only when it must fail."""

    status: str  # "verified", "trusted-key-mismatch", "invalid", "unsigned", "signed-untrusted"
    ok: bool
    key_id: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_signature(record: Mapping[str, Any], trusted: Any | None) -> SignatureCheck:
    """Check the signature; with `trusted` (a public key) an unsigned record, another key's
    signature or a wrong one fails. Without it, a signature is checked against the key the
    record names, which shows the record is intact but not who made it."""
    from cryptography.exceptions import InvalidSignature

    _, ed25519 = _crypto()
    block = record.get("signature")
    if block is None:
        if trusted is not None:
            return SignatureCheck("unsigned", False, None, "signature missing: the record is unsigned, and a trusted key was given")
        return SignatureCheck("unsigned", True, None, "unsigned record (no signature to check; sign records with --key)")
    try:
        if block.get("algorithm") != "ed25519":
            raise ValueError(f"unknown algorithm {block.get('algorithm')!r}")
        raw = base64.b64decode(block["public_key"], validate=True)
        value = base64.b64decode(block["value"], validate=True)
        named = ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        return SignatureCheck("invalid", False, None, f"signature block is damaged ({first_line(exc, 80)})")
    signer = key_id(raw)
    if block.get("key_id") != signer:
        # The key id is not signed: one that is not the id of the key the block carries would
        # show the record as signed by someone else.
        return SignatureCheck("invalid", False, signer, f"signature block names key {block.get('key_id')!r}, but carries key {signer}")
    if trusted is not None and _public_raw(trusted) != raw:
        return SignatureCheck(
            "trusted-key-mismatch", False, signer, f"signature is by key {signer}, not by the trusted key {key_id(_public_raw(trusted))}"
        )
    try:
        named.verify(value, canonical_bytes(record))
    except InvalidSignature:
        return SignatureCheck("invalid", False, signer, f"signature does not match the record: it was changed after key {signer} signed it")
    if trusted is None:
        return SignatureCheck("signed-untrusted", True, signer, f"signature by key {signer} is intact (pass --trust KEY.pub to check who signed)")
    return SignatureCheck("verified", True, signer, f"signature verified: signed by the trusted key {signer}")


# -- reading a record --------------------------------------------------------------------------
_REQUIRED = ("run", "variant", "fingerprint", "gate", "check", "envelope")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a record holds")


def read_record(path: Path) -> dict[str, Any]:
    """A record file, with its shape checked; a wrong file is refused in one line."""
    path = Path(path).expanduser()
    text = read_text(path, "audit record", expected="an edge-audit record (JSON)")
    try:
        # NaN and Infinity are not JSON, and a record is written without them: its canonical
        # form, which a signature covers, cannot hold them either.
        record = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON ({first_line(exc, 80)}): its signature cannot be checked") from None
    if not isinstance(record, dict) or record.get("type") != RECORD_TYPE:
        raise UserError(f"{path} is not an edge-audit audit record")
    if not isinstance(record.get("version"), int) or record["version"] > RECORD_VERSION:
        raise UserError(f"{path} is an audit record of version {record.get('version')!r}; this edge-audit reads version {RECORD_VERSION}")
    missing = [key for key in _REQUIRED if not isinstance(record.get(key), dict)]
    if missing:
        raise UserError(f"{path} is not a complete audit record: {', '.join(missing)} missing or of the wrong type")
    if record["fingerprint"].get("format") in EARLIER_FORMATS:
        Fingerprint.from_dict(record["fingerprint"], f"the fingerprint in {path}")  # refused, saying what to do: not damaged, only older
    if problem := _shape_problem(record):
        raise UserError(f"{path} is a damaged audit record: {problem}")
    return record


def _shape_problem(record: Mapping[str, Any]) -> str | None:
    """What in a record's parts that a check reads is not of the shape `build_record` writes.

    Anyone can sign a record with a key of their own, so a good signature says nothing of its
    fields: each one a check or `record verify` reads is checked here, once, for its type and its
    allowed values, and a record with one wrong is refused whole rather than read in part."""
    for part in (_fingerprint_problem, _gate_problem, _check_problem, _perplexity_problem, _envelope_problem):
        if problem := part(record):
            return problem
    return None


# What a field of a record may hold, as (test, what it must be) for `_fields_problem`.
def _optional(test: Any) -> Any:
    return lambda value: value is None or test(value)


def _list_of(test: Any) -> Any:
    # A tuple too: the check items are checked as built, before they are written as JSON lists.
    return lambda value: isinstance(value, (list, tuple)) and all(test(v) for v in value)


def _finite(value: Any) -> bool:
    # JSON integers have no bound; one past a float's range is no figure either.
    return is_number(value) and (abs(value) <= 1e300 if is_int(value) else math.isfinite(value))


def _count(value: Any) -> bool:
    return is_int(value) and value >= 0


def _index_below(n_options: int) -> Any:
    return lambda value: is_int(value) and 0 <= value < n_options


def _fields_problem(table: Mapping[str, Any], what: str, rules: Mapping[str, tuple[Any, str]], required: Sequence[str] = ()) -> str | None:
    """The first field of `table` that fails its rule, named with `what`; a field the rules do not
    name is not read, and one missing is read as its default unless `required`."""
    for key, (test, must_be) in rules.items():
        if key not in table:
            if key in required:
                return f"{what} has no {key}"
            continue
        if not test(table[key]):
            return f"{what}: {key} is {shown(table[key])}, not {must_be}"
    return None


def _fingerprint_problem(record: Mapping[str, Any]) -> str | None:
    fingerprint = record["fingerprint"]
    try:
        Fingerprint.from_dict(fingerprint, "its fingerprint")
    except UserError as exc:
        return str(exc)
    return _fields_problem(fingerprint, "its fingerprint", {"folder": (_optional(is_text), "a folder's path")})


# A gate finding's fields, as `GateFinding.to_dict` writes them; the last two only some findings have.
_FINDING_RULES: dict[str, tuple[Any, str]] = {
    **{key: (is_text, "text") for key in ("check", "rule", "metric", "variant", "category", "verdict", "reason")},
    "suite": (_optional(is_text), "a suite"),
    **{key: (_optional(_finite), "a number") for key in ("value", "lower", "upper")},
    "limit": (_finite, "a number"),
    "limit_is": (lambda v: v in ("max", "min"), "max or min"),
    "confidence": (_finite, "a number"),
    "items_to_settle": (_optional(_count), "a number of items"),
    "items_used": (_optional(_count), "a number of items"),
}
_FINDING_REQUIRED = tuple(key for key in _FINDING_RULES if key not in ("items_to_settle", "items_used"))


def _gate_problem(record: Mapping[str, Any]) -> str | None:
    gate = record["gate"]
    findings = gate.get("findings", [])
    if not isinstance(findings, list) or not all(isinstance(f, dict) for f in findings):
        return "its gate findings are not findings"
    for number, finding in enumerate(findings, start=1):
        if problem := _fields_problem(finding, f"its gate findings are not findings: finding {number}", _FINDING_RULES, _FINDING_REQUIRED):
            return problem
    return _fields_problem(gate, "its gate", {
        "verdict": (_optional(is_text), "a verdict"),
        "passed": (lambda v: isinstance(v, bool), "true or false"),
        "plain": (_optional(is_text), "text"),
    })


# A suite's settings within the bounds a plan allows them.
_SETTINGS_RULES: dict[str, tuple[Any, str]] = {
    "mode": (_optional(lambda v: v in MODES), f"a scoring mode ({', '.join(MODES)})"),
    "norm": (_optional(lambda v: v in NORMS), f"a normalisation ({', '.join(NORMS)})"),
    "seeds": (_optional(lambda v: _list_of(lambda s: is_int(s) and s in INT64)(v) and len(v) <= MAX_SEEDS), "a list of seeds"),
    "temperature": (_optional(lambda v: _finite(v) and 0 <= v <= MAX_TEMPERATURE), f"a temperature within [0, {MAX_TEMPERATURE:g}]"),
    "max_new_tokens": (_optional(lambda v: is_int(v) and 1 <= v <= MAX_NEW_TOKENS), f"a number of tokens within [1, {MAX_NEW_TOKENS}]"),
    "prompt": (_optional(is_text), "a prompt's name"),
    "parser": (_optional(is_text), "a parser's name"),
}


def _suite_problem(spec: str, info: Mapping[str, Any]) -> str | None:
    what = f"its check suite {spec}"
    problem = _fields_problem(info, what, {
        "name": (is_text, "a suite's name"),
        "kind": (lambda v: v in (QA, SENTENCES), f"{QA} or {SENTENCES}"),
        "summary": (is_text, "text"),
        "default_norm": (lambda v: v in NORMS, f"a normalisation ({', '.join(NORMS)})"),
        "settings": (_optional(lambda v: isinstance(v, dict)), "a table of settings"),
    }, required=("kind", "default_norm"))
    if problem:
        return problem
    settings = info.get("settings") or {}
    if problem := _fields_problem(settings, f"{what}, its settings", _SETTINGS_RULES):
        return problem
    if settings.get("mode") == "generate" and info["kind"] != QA:
        return f"{what} is of {info['kind']}, which generation cannot score"
    return None


def _entry_problem(entry: Mapping[str, Any], kind: str) -> str | None:
    """What is wrong with one check item: the probe item a device scores, and the lab's answer
    and scores it is compared with."""
    item = entry["item"]
    what = f"its check item {shown(item['item_id'], 80)}"
    unknown = sorted(set(item) - set(ProbeItem.__dataclass_fields__))
    if unknown:
        return f"{what} has a field this edge-audit does not read ({shown(unknown[0])})"
    problem = _fields_problem(item, what, {
        "item_id": (lambda v: is_text(v) and v != "", "an item id"),
        "kind": (lambda v: v == kind, f"{kind}, its suite's kind"),
        "options": (lambda v: _list_of(is_text)(v) and len(v) > 0, "a non-empty list of option texts"),
        **{key: (is_text, "text") for key in ("category", "condition", "polarity", "context", "question")},
        "meta": (lambda v: isinstance(v, dict), "a table"),
    }, required=("kind", "category", "options"))
    if problem:
        return problem
    index = _index_below(len(item["options"]))
    scores = _list_of(lambda v: v is None or _finite(v))  # a score that was not finite is written as null
    problem = _fields_problem(item, what, {
        "bias_aligned": (_list_of(index), "a list of option indices"),
        **{key: (_optional(index), "an option index") for key in ("label", "unknown_index", "target_index")},
    })
    answered = {
        "chosen": (_optional(index), "an option index"),
        "option_logprobs": (lambda v: scores(v) and len(v) in (0, len(item["options"])), "a score for each option"),
        "seed_choices": (_list_of(_optional(index)), "a list of option indices"),
    }
    problem = problem or _fields_problem(entry, what, {**answered, "option_tokens": (_list_of(_count), "a list of token counts")})
    replayed = entry.get("lab_replay")
    if problem or replayed is None:
        return problem
    if not isinstance(replayed, dict):
        return f"{what}: lab_replay is {shown(replayed)}, not a table"
    return _fields_problem(replayed, f"{what}, its lab_replay", answered)


def _check_problem(record: Mapping[str, Any]) -> str | None:
    check = record["check"]
    suites = check.get("suites", {})
    if not isinstance(suites, dict) or not all(isinstance(info, dict) for info in suites.values()):
        return "its check suites are not a table of suites"
    items = check.get("items", [])
    if not isinstance(items, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("suite"), str) and entry["suite"] in suites and isinstance(entry.get("item"), dict)
        and isinstance(entry["item"].get("item_id"), str) for entry in items
    ):
        return "its check items are not items of its check suites"
    tolerance = check.get("score_tolerance")
    if tolerance is not None and not (_finite(tolerance) and tolerance >= 0):
        return f"its score tolerance is not a number of 0 or more: {shown(tolerance)}"
    for spec, info in suites.items():
        if problem := _suite_problem(spec, info):
            return problem
    seen: set[str] = set()
    for entry in items:
        if entry["item"]["item_id"] in seen:
            # A device's answers are kept by item id: two items under one id would be compared with one answer.
            return f"its check items repeat item {shown(entry['item']['item_id'])}"
        seen.add(entry["item"]["item_id"])
        if problem := _entry_problem(entry, suites[entry["suite"]]["kind"]):
            return problem
    lab = check.get("lab_replay")
    if lab is None:
        return None
    if not isinstance(lab, dict):
        return f"its check: lab_replay is {shown(lab)}, not a table"
    return _fields_problem(lab, "its check, its lab_replay", {
        "omitted": (is_text, "a reason"),
        "items": (_count, "a number of items"),
        "same_answer_as_audit": (_count, "a number of items"),
        "max_score_diff_from_audit": (_optional(_finite), "a score difference"),
    })


def _perplexity_problem(record: Mapping[str, Any]) -> str | None:
    section = record.get("perplexity")
    if section is not None and not isinstance(section, dict):
        return "its perplexity section is not a table"
    return _fields_problem(section or {}, "its perplexity section", {
        "omitted": (is_text, "a reason"),
        "source": (_optional(is_text), "the text's source"),
        "text": (_optional(is_text), "text"),
        "perplexity": (_optional(lambda v: _finite(v) and v > 0), "a perplexity"),
        "chunk_tokens": (_optional(lambda v: _count(v) and v > 0), "a number of tokens"),
        "n_tokens": (_optional(_count), "a number of tokens"),
        "tolerance_relative": (_optional(lambda v: _finite(v) and v >= 0), "a tolerance"),
    })


def _envelope_problem(record: Mapping[str, Any]) -> str | None:
    envelope = record["envelope"]
    problem = _fields_problem(envelope, "its envelope", {
        "memory_needed_mb": (_optional(_finite), "a number of MB"),
        "max_decode_ms_per_token": (_optional(lambda v: _finite(v) and v > 0), "a latency limit in ms"),
        "lab": (_optional(lambda v: isinstance(v, dict)), "a table of the lab's figures"),
    })
    return problem or _fields_problem(envelope.get("lab") or {}, "its envelope, its lab figures", {
        "prompt_tokens": (_optional(lambda v: _count(v) and v > 0), "a number of tokens"),
        "decode_ms_per_token_p50": (_optional(lambda v: _finite(v) and v >= 0), "a latency in ms"),
    })


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    atomic.write_text(Path(path), json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")


def record_title(record: Mapping[str, Any]) -> str:
    """"run 3 (wanda-50)": which audit a record is of."""
    return f"run {record['run'].get('id')} ({record['variant'].get('name')})"


# -- building a record from the store ------------------------------------------------------------
def _stored_result(store: Any, run_id: int, variant: str, kind: str) -> dict[str, Any] | None:
    """The result of a finished step, None when the step did not finish. Every finished step is
    stored with a result: one without is a damaged store, whose record would say what was not measured."""
    from audit.store import damaged

    step = store.step(run_id, variant, kind)
    if step is None:
        return None
    if not isinstance(step["result"], dict):
        raise damaged(store.path, f"run {run_id} stored the {kind} step of {variant} without its result")
    return step["result"]


def stratified_sample(rows: Sequence[Mapping[str, Any]], count: int) -> list[Mapping[str, Any]]:
    """A fixed sample of `count` items, spread over strata (suite, category, condition): each
    stratum's items in the order of a hash of their ids, taken in turn from each stratum."""
    strata: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        key = (str(row.get("suite") or ""), str(row.get("category") or ""), str(row.get("condition") or ""))
        strata.setdefault(key, []).append(row)
    queues = [
        sorted(items, key=lambda r: hashlib.sha256(str(r["item_id"]).encode("utf-8")).hexdigest()) for _, items in sorted(strata.items())
    ]
    chosen: list[Mapping[str, Any]] = []
    depth = 0
    while len(chosen) < count and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(chosen) < count:
                chosen.append(queue[depth])
        depth += 1
    return sorted(chosen, key=lambda r: (str(r.get("suite")), str(r["item_id"])))


def _check_subset(store: Any, run_id: int, variant: str, plan: Any, count: int) -> dict[str, Any]:
    """The sample of audited items a device replays: each item as the suite defines it, the
    settings it was scored with, and what the lab's model chose and scored."""
    from audit.probes.suites import load_suite
    from audit.run.steps import PROBE_PREFIX

    suites: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for suite_spec in plan.probes.suites:
        result = _stored_result(store, run_id, variant, PROBE_PREFIX + suite_spec)
        if result is None:
            continue
        for row in store.items(run_id, variant, suite_spec):
            rows.append(dict(row, suite=suite_spec))
        suites[suite_spec] = result
    if not rows:
        raise UserError(f"run {run_id} has no probe items for {variant}: there is nothing for a device to replay")
    sample = stratified_sample(rows, count)
    out_suites: dict[str, Any] = {}
    items = []
    for suite_spec in sorted({str(r["suite"]) for r in sample}):
        try:
            suite = load_suite(suite_spec, **plan.probes.suite_options())
        except UserError as exc:
            raise UserError(f"cannot build the check subset: the probe suite of run {run_id} cannot be read here ({exc})") from None
        by_id = {item.item_id: item for item in suite.items}
        result = suites[suite_spec]
        out_suites[suite_spec] = {
            "name": suite.name,
            "kind": suite.kind,
            "summary": suite.summary,
            "default_norm": suite.default_norm,
            "settings": {k: result.get(k) for k in ("mode", "norm", "seeds", "temperature", "max_new_tokens", "prompt", "parser")},
        }
        for row in (r for r in sample if r["suite"] == suite_spec):
            item = by_id.get(str(row["item_id"]))
            if item is None:
                raise UserError(f"cannot build the check subset: item {row['item_id']} of {suite_spec} is no longer in the suite's file")
            if isinstance(row.get("option_logprobs"), list) and len(row["option_logprobs"]) not in (0, len(item.options)):
                raise UserError(f"cannot build the check subset: item {row['item_id']} of {suite_spec} has other options in the suite's file than run {run_id} scored")
            items.append(
                {
                    "suite": suite_spec,
                    "item": asdict(item),
                    "chosen": row.get("chosen"),
                    "option_logprobs": row.get("option_logprobs") or [],
                    "option_tokens": row.get("option_tokens") or [],
                    "seed_choices": row.get("seed_choices") or [],
                }
            )
    return {"suites": out_suites, "items": items, "score_tolerance": SCORE_TOLERANCE, "n_audited_items": len(rows)}


def _replayed_in_lab(check: dict[str, Any], fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The check items scored again on the audited folder as a device's check scores them, each
    item's answer and scores kept as `lab_replay` beside the audit's, with how far the two are
    apart.

    A device replays the check items alone, in batches other than the audit's, where items
    sharing a context were scored together. A well-conditioned model scores an item the same
    either way (to about 1e-4 nats); one whose scores move far with the least rounding (an int8
    model quantizing tokens with a dominant channel: 1e-6 relative noise on its inputs moved the
    default model's int8-dynamic scores by 3.6 nats) does not, and a device checking it against
    the audit's own scores would fail on the very folder that was audited. The device compares
    with this replay instead; the record says how far it is from the audit. When the audited
    folder is gone or changed, the replay is omitted, saying why, and the device compares with
    the audit's scores."""
    from audit.fieldcheck import replay_check_items, score_gap
    from audit.fingerprint import fingerprint_folder
    from audit.models import LoadOptions, load_model
    from audit.progress import drive

    folder = fingerprint.get("folder")
    if not folder or not Path(folder).is_dir():
        return dict(check, lab_replay={"omitted": f"the audited folder {folder} is not here to score the check items on"})
    found = drive(fingerprint_folder(Path(folder)))
    if found.digest != fingerprint.get("digest"):
        return dict(check, lab_replay={"omitted": f"the audited folder {folder} has changed since the audit (fingerprint {found.short})"})
    model = drive(load_model(str(folder), LoadOptions()))
    try:
        by_id = drive(replay_check_items(model, check, None))
    finally:
        model.close()
    items, agree, largest = [], 0, 0.0
    for entry in check["items"]:
        mine = by_id[entry["item"]["item_id"]]
        agree += mine.chosen == entry.get("chosen")
        largest = max(largest, score_gap(mine.option_logprobs, entry.get("option_logprobs")))
        replayed = {"chosen": mine.chosen, "option_logprobs": list(mine.option_logprobs), "seed_choices": list(mine.seed_choices)}
        items.append(dict(entry, lab_replay=replayed))
    summary = {"items": len(items), "same_answer_as_audit": agree, "max_score_diff_from_audit": largest}
    return dict(check, items=items, lab_replay=summary)


def _perplexity_section(store: Any, run_id: int, variant: str, plan: Any) -> dict[str, Any] | None:
    from audit.perplexity import text_digest, text_source

    result = _stored_result(store, run_id, variant, "perplexity")
    if result is None:
        return None
    try:
        text, source = text_source(Path(plan.perplexity.text) if plan.perplexity.text else None)
    except UserError as exc:
        raise UserError(f"cannot build the record: the perplexity text of run {run_id} cannot be read here ({exc})") from None
    measured = result.get("text_sha256")
    if source != result.get("source") or (measured and measured != text_digest(text)):
        return {"source": result.get("source"), "omitted": f"the perplexity text ({source}) has changed since run {run_id} measured it"}
    if len(text) > MAX_PERPLEXITY_TEXT_CHARS:
        return {"source": source, "omitted": f"the perplexity text has {len(text):,} characters, more than a record carries ({MAX_PERPLEXITY_TEXT_CHARS:,})"}
    return {
        "source": source,
        "text": text,
        "chunk_tokens": result.get("chunk_tokens"),
        "n_tokens": result.get("n_tokens"),
        "perplexity": result.get("perplexity"),
        "nll_sum": result.get("nll_sum"),
        "tolerance_relative": PERPLEXITY_TOLERANCE,
    }


def _envelope(profile: Mapping[str, Any] | None, max_decode_ms: float | None) -> dict[str, Any]:
    """What the device must offer: memory for the model's working set as the lab measured it,
    and (when the lab set one) a decode-latency limit; the lab's own figures for reference."""
    profile = profile or {}
    before, peak = profile.get("rss_before_load_mb"), profile.get("rss_peak_mb")
    working_set = round(peak - before, 1) if isinstance(before, (int, float)) and isinstance(peak, (int, float)) else None
    return {
        "memory_needed_mb": working_set,
        "max_decode_ms_per_token": max_decode_ms,
        "lab": {
            key: profile.get(key)
            for key in (
                "decode_ms_per_token_p50",
                "decode_ms_per_token_p95",
                "latency_ms_p50",
                "time_to_first_token_ms_p50",
                "rss_peak_mb",
                "rss_before_load_mb",
                "rss_after_load_mb",
                "prompt_tokens",
                "generated_tokens",
                "threads",
            )
        },
        "profiled": bool(profile),
    }


def _figures(variant: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "method",
        "sparsity",
        "actual_sparsity",
        "size_on_disk_mb",
        "size_on_disk_compressed_mb",
        "perplexity",
        "perplexity_change",
        "latency_ms_p50",
        "decode_ms_per_token_p50",
        "rss_peak_mb",
    )
    figures = {k: variant.get(k) for k in keys}
    figures["probes"] = {}
    for suite, probe in (variant.get("probes") or {}).items():
        figures["probes"][suite] = {key: probe.get(key) for key in ("overall", "category_mean", "comparison", "n_items", "settings")}
        if probe.get("sequential"):
            # Scored until its verdicts settled: how many items, and why it stopped.
            figures["probes"][suite]["sequential"] = probe["sequential"]
    return figures


def build_record(store: Any, run_id: int, variant: str | None, *, check_items: int = DEFAULT_CHECK_ITEMS, max_decode_ms: float | None = None,
                 replay: bool = True) -> dict[str, Any]:
    """The audit record of one variant of a finished run; `replay`: score its check items again
    on the audited folder, as a device will (see `_replayed_in_lab`)."""
    from audit.results import RunView
    from audit.run.steps import BASELINE, FINGERPRINT, PROFILE
    from audit.store import damaged

    if check_items < 1:
        raise UserError(f"--check-items must be at least 1, not {check_items}")
    view = RunView(store, run_id)
    names = [v["name"] for v in view.variants]
    if variant is None:
        candidates = [n for n in names if n != BASELINE] or names
        if len(candidates) != 1:
            raise UserError(f"run {run_id} has {len(candidates)} variants ({', '.join(candidates)}); choose one with --variant")
        variant = candidates[0]
    if variant not in names:
        raise UserError(f"run {run_id} has no variant {variant!r}; it has {', '.join(names)}")
    gate = view.run.gate
    if view.run.status != "finished" or not gate or "findings" not in gate:
        raise UserError(f"run {run_id} has no gate verdict yet (status {view.run.status}): finish it (`edge-audit run --resume {run_id}`) first")
    fingerprint = _stored_result(store, run_id, variant, FINGERPRINT)
    if fingerprint is None or fingerprint.get("format") in EARLIER_FORMATS:
        raise UserError(
            f"run {run_id} stored no fingerprint for {variant} (audited by an earlier edge-audit): "
            f"resume or re-run the audit to record one"
        )
    if problem := _fingerprint_problem({"fingerprint": fingerprint}):
        raise damaged(store.path, problem.replace("its fingerprint", f"the fingerprint run {run_id} stored for {variant}", 1))
    facts = view.variant(variant)
    verdicts = (gate.get("variants") or {}).get(variant)
    if verdicts is None:
        raise UserError(f"the gate of run {run_id} did not judge {variant}; judged: {', '.join(gate.get('variants') or {})}")
    findings = [f for f in gate["findings"] if f.get("variant") in (variant, BASELINE)]
    profile = _stored_result(store, run_id, variant, PROFILE)
    check = _check_subset(store, run_id, variant, view.plan, check_items)
    # The lab's replay scores the check items as a device will: they are checked first, as a device checks them.
    if problem := _check_problem({"check": check}):
        raise damaged(store.path, f"run {run_id}'s {variant} reads from it as a damaged audit record: {problem}")
    record = {
        "type": RECORD_TYPE,
        "version": RECORD_VERSION,
        "created_at": time.time(),
        "fingerprint": fingerprint,
        "run": {
            "id": run_id,
            "name": view.run.name,
            "model": view.run.model,
            "created_at": view.run.created_at,
            "finished_at": view.run.finished_at,
            "plan_text": view.run.plan_text,
        },
        "variant": {"name": variant, "recipe": facts.get("recipe"), "folder": facts.get("folder")},
        "model": (profile or {}).get("model") or {},
        "device": view.run.device,
        "software": view.run.software,
        "gate": {
            "verdict": verdicts.get("verdict"),
            "passed": verdicts.get("verdict") == "pass",
            "plain": verdicts.get("plain"),
            "degraded": verdicts.get("degraded"),
            "confidence": gate.get("confidence"),
            "findings": findings,
        },
        "figures": _figures(facts),
        "check": _replayed_in_lab(check, fingerprint) if replay else check,
        "perplexity": _perplexity_section(store, run_id, variant, view.plan),
        "envelope": _envelope(profile, max_decode_ms),
    }
    record = jsonout.finite(record)  # JSON without NaN or infinity (which the canonical form refuses)
    # A record a device would refuse is not written: what is wrong is in the store it came from.
    if problem := _shape_problem(record):
        raise damaged(store.path, f"run {run_id}'s {variant} reads from it as a damaged audit record: {problem}")
    return record


def export_record(
    store_path: Path | None,
    run_id: int,
    variant: str | None,
    out: Path,
    *,
    key: Path | None = None,
    check_items: int = DEFAULT_CHECK_ITEMS,
    max_decode_ms: float | None = None,
    replay: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Build, sign (with `key`) and write a record; returns it. A record already at `out` (a
    signed one, perhaps, already sent to devices) is replaced only with `force`."""
    from audit.store import ResultsStore

    out = checks.output_file(Path(out), "record file")
    if out.exists() and not force:
        raise UserError(f"{out} exists; pass --force to replace it")
    private = load_private_key(key) if key is not None else None
    with ResultsStore(store_path, readonly=True) as store:
        record = build_record(store, run_id, variant, check_items=check_items, max_decode_ms=max_decode_ms, replay=replay)
    if private is not None:
        record = sign(record, private)
    write_record(out, record)
    return record


def signer(record: Mapping[str, Any]) -> str | None:
    """The id of the key a record's signature block carries (not the id it names: that is not
    signed); None when unsigned or unreadable. Whether that key signed it is `verify_signature`'s."""
    block = record.get("signature")
    try:
        return key_id(base64.b64decode(block["public_key"], validate=True)) if isinstance(block, dict) else None
    except (KeyError, TypeError, ValueError):
        return None

"""The field check: is the model folder deployed on this device the one an audit record
describes, did that audit clear it, and can this device run it as audited?

Five steps, in order; a step that fails ends the check (the later ones could only mislead):
1. signature: the record is intact, and signed by the trusted key when one is given;
2. fingerprint: the folder's tensors, config and tokenizer are the audited ones (by name);
3. replay: the record's check items, scored again here, get the same answers, with option
   scores within `SCORE_TOLERANCE` (1e-3 nats) of the lab's;
4. perplexity: on the record's text, within `PERPLEXITY_TOLERANCE` (0.1%) of the lab's;
5. envelope: enough free memory for the model's working set as the lab measured it, the
   latency limit the record sets (if any), and whether the CPU is throttled (a warning).
It ends in one sentence, and exit code 0 only when everything matches and the lab's gate
passed the variant.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from audit.errors import UserError
from audit.gate import GateFinding, GateReport, plain_finding
from audit.progress import Job, Progress, check_cancel, relay
from audit.record import PERPLEXITY_TOLERANCE, SCORE_TOLERANCE, load_public_key, read_record, record_title, signer, verify_signature

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"
STEPS = ("signature", "fingerprint", "replay", "perplexity", "envelope")
# The answer parser of check settings that name none: a record written before records carried it
# (or of a log-likelihood audit, which parses nothing). Strict was the default from when a plan
# could choose a parser, and the only parser before; a record of such an older audit whose plan
# chose lenient cannot be told apart, and is replayed strict.
RECORDED_BEFORE_PARSER = "strict"
CLEARED, AUDIT_FAILED, MISMATCH, UNTRUSTED, DEVICE = "cleared", "audit-failed", "mismatch", "signature", "device"
# Latency is timed on a short generation: enough tokens for a stable median, in seconds.
_LATENCY_PROMPT_TOKENS, _LATENCY_NEW_TOKENS, _LATENCY_RUNS = 64, 16, 3


@dataclass
class CheckStep:
    name: str
    status: str  # pass, fail, warn, skip
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckResult:
    model_path: str
    record_path: str
    audit: dict[str, Any]
    steps: list[CheckStep]
    outcome: str
    sentence: str
    exit_code: int
    seconds: float
    check_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 2)
        return data


def _audit_facts(record: Mapping[str, Any]) -> dict[str, Any]:
    gate = record.get("gate") or {}
    findings = tuple(GateFinding.from_dict(f) for f in gate.get("findings") or [])
    return {
        "run": record["run"].get("id"),
        "variant": record["variant"].get("name"),
        "title": record_title(record),
        "gate_verdict": gate.get("verdict"),
        "gate_passed": bool(gate.get("passed")),
        "gate_plain": gate.get("plain"),
        "failures": [plain_finding(f.to_dict()) for f in GateReport(findings).failures()],
        "signer": signer(record),
    }


def _skip_rest(steps: list[CheckStep]) -> None:
    done = {s.name for s in steps}
    steps.extend(CheckStep(name, SKIP, "not checked: an earlier step failed") for name in STEPS if name not in done)


# -- steps ---------------------------------------------------------------------------------------
def _fingerprint_step(folder: Path, record: Mapping[str, Any], cancel: threading.Event | None) -> Job[CheckStep]:
    from audit.fingerprint import Fingerprint, compare, fingerprint_folder

    expected = Fingerprint.from_dict(record["fingerprint"], "the record's fingerprint")
    actual = yield from relay(fingerprint_folder(folder, cancel), "fingerprint")
    diff = compare(expected, actual)
    details = {"expected": expected.digest, "actual": actual.digest, "seconds": round(actual.seconds, 2), **diff.to_dict()}
    if diff.matches and expected.digest == actual.digest:
        return CheckStep("fingerprint", PASS, f"weights, config and tokenizer match the audited ones ({actual.short})", details)
    return CheckStep("fingerprint", FAIL, diff.summary(named=5) or "the fingerprint differs", details)


def _suite_of(spec: str, info: Mapping[str, Any], items: list[Mapping[str, Any]]) -> Any:
    """The suite of a record's check items, whose fields `read_record` has checked."""
    from audit.probes.items import ProbeItem
    from audit.probes.suites import ProbeSuite

    probe_items = []
    for entry in items:
        data = dict(entry["item"])
        data["options"] = tuple(data.get("options") or ())
        data["bias_aligned"] = tuple(data.get("bias_aligned") or ())
        probe_items.append(ProbeItem(**data))
    return ProbeSuite(str(info.get("name")), spec, str(info.get("kind")), str(info.get("summary")), str(info.get("default_norm")), probe_items)


class ReplayRefused(UserError):
    """The record's items were scored in a way this edge-audit cannot score them again."""


def replay_check_items(model: Any, check: Mapping[str, Any], cancel: threading.Event | None) -> Job[dict[str, Any]]:
    """Score a record's check items on `model` as a device's check does (the same suites, settings
    and batches): item results by item id. The lab runs it when it writes the record, a device
    when it checks one, so both compute the same products in the same calls."""
    from audit.probes.job import ProbeSettings, run_probe
    from audit.probes.scoring import PARSERS, prompt_style

    entries = check.get("items") or []
    results: dict[str, Any] = {}
    for spec, info in sorted((check.get("suites") or {}).items()):
        settings_data = info.get("settings") or {}
        mode = settings_data.get("mode") or "loglik"
        style = prompt_style(mode, settings_data.get("prompt"))
        parser = settings_data.get("parser") or RECORDED_BEFORE_PARSER
        if style is None or parser not in PARSERS:
            raise ReplayRefused(f"the audit scored {spec} with a prompt or parser this edge-audit does not use: replay it with the lab's version")
        suite = _suite_of(spec, info, [e for e in entries if e.get("suite") == spec])
        defaults = ProbeSettings()
        settings = ProbeSettings(
            mode=mode,
            norm=settings_data.get("norm"),
            seeds=tuple(settings_data.get("seeds") or defaults.seeds),
            temperature=float(settings_data.get("temperature") if settings_data.get("temperature") is not None else defaults.temperature),
            max_new_tokens=int(settings_data.get("max_new_tokens") or defaults.max_new_tokens),
            prompt=style if mode == "generate" else "default",
            parser=parser if mode == "generate" else "strict",
        )
        run = yield from relay(run_probe(model, suite, settings, cancel), "replay")
        check_cancel(cancel)
        results.update({r.item_id: r for r in run.results})
    return results


def score_gap(scores: Any, reference: Any) -> float:
    """The largest difference between an item's option scores and the reference's, 0 when the
    reference holds none for the same options. A score that is not finite (a record holds it as
    null) agrees only with another that is not: against a finite one it is infinitely far."""
    reference = list(reference or [])
    if len(reference) != len(scores):
        return 0.0

    def gap(a: Any, b: Any) -> float:
        finite_a, finite_b = (isinstance(x, (int, float)) and math.isfinite(x) for x in (a, b))
        if finite_a and finite_b:
            return abs(a - b)
        return 0.0 if finite_a == finite_b else math.inf

    return max((gap(a, b) for a, b in zip(scores, reference)), default=0.0)


def _reference(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """What a device's replay of a check item is compared with: the lab's replay of the check
    items when the record holds one, else the audit's own answer and scores."""
    lab = entry.get("lab_replay")
    return lab if isinstance(lab, Mapping) else entry


def _replay_step(model: Any, record: Mapping[str, Any], cancel: threading.Event | None) -> Job[CheckStep]:
    check = record["check"]
    tolerance = float(check.get("score_tolerance") or SCORE_TOLERANCE)
    entries = check.get("items") or []
    if not entries:
        return CheckStep("replay", FAIL, "the record has no check items to replay")
    modes = {spec: (info.get("settings") or {}).get("mode") or "loglik" for spec, info in (check.get("suites") or {}).items()}
    try:
        by_id = yield from replay_check_items(model, check, cancel)
    except ReplayRefused as exc:
        return CheckStep("replay", FAIL, str(exc))
    agree = 0
    largest = 0.0
    differing: list[str] = []
    for entry in entries:
        item_id = entry["item"]["item_id"]
        mine = by_id[item_id]
        reference = _reference(entry)
        same = mine.chosen == reference.get("chosen")
        if modes.get(entry.get("suite")) == "generate":
            same = same and list(mine.seed_choices) == list(reference.get("seed_choices") or [])
        largest = max(largest, score_gap(mine.option_logprobs, reference.get("option_logprobs")))
        if same:
            agree += 1
        else:
            differing.append(item_id)
    total = len(entries)
    details = {"items": total, "agree": agree, "differing": differing, "max_score_diff": round(largest, 6), "tolerance": tolerance}
    scores = f"largest score difference {largest:.2g}"
    lab_note = ""
    lab = check.get("lab_replay")
    if isinstance(lab, Mapping) and "items" in lab:
        details["lab_replay"] = dict(lab)
        if lab.get("same_answer_as_audit") != lab.get("items") or float(lab.get("max_score_diff_from_audit") or 0.0) > tolerance:
            # The device matched the lab's replay; say how far that replay was from the audit's scores.
            lab_note = (f"; in the lab these items, scored as here, gave {lab.get('same_answer_as_audit')}/{lab.get('items')} of the audit's "
                       f"answers (scores up to {float(lab.get('max_score_diff_from_audit') or 0.0):.2g} apart: this model's scores move with batching)")
    if agree == total and largest <= tolerance:
        return CheckStep("replay", PASS, f"{agree}/{total} check items answered as audited, {scores} (tolerance {tolerance:g}){lab_note}", details)
    if agree == total:
        return CheckStep("replay", FAIL, f"{total}/{total} answers as audited, but {scores} > {tolerance:g}{lab_note}", details)
    return CheckStep("replay", FAIL, f"{total - agree} of {total} check items answered differently from the audit ({scores}){lab_note}", details)


def _perplexity_step(model: Any, record: Mapping[str, Any], cancel: threading.Event | None) -> Job[CheckStep]:
    from audit.perplexity import DEFAULT_CHUNK_TOKENS, perplexity

    section = record.get("perplexity")
    if section and section.get("omitted"):
        return CheckStep("perplexity", SKIP, f"not checked: {section['omitted']}")
    if not section or not section.get("text") or not section.get("perplexity"):
        return CheckStep("perplexity", SKIP, "the audit measured no perplexity for this variant")
    result = yield from relay(
        perplexity(model, section["text"], chunk_tokens=int(section.get("chunk_tokens") or DEFAULT_CHUNK_TOKENS), source=section.get("source"), cancel=cancel),
        "perplexity",
    )
    lab = float(section["perplexity"])
    tolerance = float(section.get("tolerance_relative") or PERPLEXITY_TOLERANCE)
    relative = abs(result.perplexity - lab) / lab
    details = {"perplexity": round(result.perplexity, 4), "lab": lab, "relative_diff": round(relative, 6), "tolerance": tolerance, "n_tokens": result.n_tokens}
    summary = f"{result.perplexity:.3f} here, {lab:.3f} in the lab ({relative:.2%} apart, tolerance {tolerance:.1%})"
    if result.n_tokens != section.get("n_tokens"):
        return CheckStep("perplexity", FAIL, f"scored {result.n_tokens} tokens of the record's text, the lab {section.get('n_tokens')}: the tokenizer differs", details)
    return CheckStep("perplexity", PASS if relative <= tolerance else FAIL, summary, details)


def _throttle_now() -> dict[str, Any] | None:
    from hardware.device import detect_device
    from hardware.throttle import read_throttle

    state = read_throttle(detect_device().kind)
    return state.to_dict() if state else None


def _envelope_step(model: Any, record: Mapping[str, Any], available_mb: float, cancel: threading.Event | None) -> Job[CheckStep]:
    from audit.profile import ProfileSettings, profile_loaded

    envelope = record["envelope"]
    problems: list[str] = []
    notes: list[str] = []
    needed = envelope.get("memory_needed_mb")
    details: dict[str, Any] = {"available_mb_before_load": round(available_mb, 1), "memory_needed_mb": needed}
    if isinstance(needed, (int, float)):  # short of it, the check ended before loading
        notes.append(f"memory {available_mb:.0f} MB free, {needed:.0f} MB needed")
    else:
        notes.append("the audit recorded no memory figure")
    lab = envelope.get("lab") or {}
    context = model.facts().context_length or 0
    prompt_tokens = min(int(lab.get("prompt_tokens") or _LATENCY_PROMPT_TOKENS), max(1, context - _LATENCY_NEW_TOKENS) if context else 10**9)
    settings = ProfileSettings(prompt_tokens=prompt_tokens, new_tokens=_LATENCY_NEW_TOKENS, runs=_LATENCY_RUNS, warmup_runs=1, probe_items=0)
    profile = yield from relay(profile_loaded(model, settings, cancel), "envelope")
    decode = profile.figures.get("decode_ms_per_token_p50")
    details.update(decode_ms_per_token_p50=decode, lab_decode_ms_per_token_p50=lab.get("decode_ms_per_token_p50"))
    limit = envelope.get("max_decode_ms_per_token")
    details["max_decode_ms_per_token"] = limit
    if isinstance(decode, (int, float)):
        ratio = f" ({decode / lab['decode_ms_per_token_p50']:.2f}x the lab's)" if lab.get("decode_ms_per_token_p50") else ""
        if isinstance(limit, (int, float)) and decode > limit:
            problems.append(f"decode {decode:.1f} ms/token > {limit:g} ms limit")
        else:
            notes.append(f"decode {decode:.1f} ms/token{ratio}" + (f", limit {limit:g}" if isinstance(limit, (int, float)) else ""))
    throttle = _throttle_now()
    details["throttle"] = throttle
    throttled = bool(throttle and throttle.get("throttled"))
    if throttled:
        notes.append(f"the CPU is throttled now ({', '.join(throttle.get('active') or [])}): latency here is pessimistic")
    if problems:
        return CheckStep("envelope", FAIL, "; ".join(problems), details)
    return CheckStep("envelope", WARN if throttled else PASS, "; ".join(notes), details)


# -- the verdict ---------------------------------------------------------------------------------
def verdict(audit: Mapping[str, Any], steps: list[CheckStep]) -> tuple[str, str, int]:
    """(outcome, one plain sentence, exit code) from the steps' results."""
    by_name = {s.name: s for s in steps}
    title = audit["title"]
    signature = by_name.get("signature")
    if signature is not None and signature.status == FAIL:
        return UNTRUSTED, f"NOT TRUSTED: {signature.summary}", 1
    fingerprint = by_name.get("fingerprint")
    if fingerprint is not None and fingerprint.status == FAIL:
        return MISMATCH, f"DOES NOT MATCH: {fingerprint.summary}", 1
    for name in ("replay", "perplexity"):
        step = by_name.get(name)
        if step is not None and step.status == FAIL:
            return MISMATCH, f"DOES NOT BEHAVE AS AUDITED: the weights match {title}, but {name}: {step.summary}", 1
    if not audit["gate_passed"]:
        reasons = audit["failures"][:2]
        more = f" (+{len(audit['failures']) - 2} more)" if len(audit["failures"]) > 2 else ""
        said = "do not ship yet" if audit.get("gate_verdict") == "inconclusive" else "do not ship"
        because = "; ".join(reasons) or f"gate {audit.get('gate_verdict')}"
        return AUDIT_FAILED, f"MATCHES AUDIT {title}, but the audit said {said}: {because}{more}", 1
    envelope = by_name.get("envelope")
    if envelope is not None and envelope.status == FAIL:
        return DEVICE, f"MATCHES AUDIT {title}, but this device is outside its envelope: {envelope.summary}", 1
    notes = []
    if signature is not None and signature.status == WARN:
        notes.append("who made the record is not verified: give the lab's key with --trust")
    if envelope is not None and envelope.status == WARN:
        notes.append(envelope.summary)
    caveat = f" (note: {'; '.join(notes)})" if notes else ""
    return CLEARED, f"MATCHES AUDIT {title}: cleared to ship{caveat}", 0


def check_deployment(
    model_dir: Path,
    record_path: Path,
    *,
    trust: Path | None = None,
    options: Any = None,
    store_path: Path | None = None,
    cancel: threading.Event | None = None,
) -> Job[CheckResult]:
    """Run the field check, yielding progress; the result is stored in the results store."""
    from audit.models import LoadOptions, load_model
    from audit.paths import kind, probe
    from audit.store import ResultsStore
    from hardware.memory import MB, available_bytes

    started = time.perf_counter()
    model_dir = Path(model_dir).expanduser()
    found = kind(probe(model_dir, "model folder"))
    if found != "folder":
        raise UserError(f"--model {model_dir} {'does not exist' if found is None else 'is not a folder'}: give the deployed model folder")
    record = read_record(Path(record_path))
    trusted = load_public_key(trust) if trust is not None else None
    options = options or LoadOptions()
    with ResultsStore(store_path):
        pass  # a store this check could not be kept in is refused before the work
    audit = _audit_facts(record)
    steps: list[CheckStep] = []
    total = len(STEPS)

    def finish() -> CheckResult:
        _skip_rest(steps)
        steps.sort(key=lambda step: STEPS.index(step.name))
        outcome, sentence, code = verdict(audit, steps)
        result = CheckResult(str(model_dir), str(record_path), audit, steps, outcome, sentence, code, time.perf_counter() - started)
        with ResultsStore(store_path) as store:
            result.check_id = store.record_check(result.to_dict())
        return result

    yield Progress("check", 0, total, "checking the record's signature")
    signature = verify_signature(record, trusted)
    steps.append(CheckStep("signature", PASS if signature.ok and signature.status == "verified" else (WARN if signature.ok else FAIL), signature.message, signature.to_dict()))
    if not signature.ok:
        return finish()
    yield Progress("check", 1, total, "fingerprinting the folder")
    steps.append((yield from _fingerprint_step(model_dir, record, cancel)))
    if steps[-1].status == FAIL:
        return finish()
    available_mb = available_bytes() / MB
    needed = record["envelope"].get("memory_needed_mb")
    if isinstance(needed, (int, float)) and available_mb < needed:
        # Loading would fail or push the device into swap: the envelope decides, unreplayed.
        steps.append(CheckStep("envelope", FAIL, f"{available_mb:.0f} MB free before loading, the model needs about {needed:.0f} MB",
                               {"available_mb_before_load": round(available_mb, 1), "memory_needed_mb": needed}))
        return finish()
    yield Progress("check", 2, total, "loading the model")
    model = yield from relay(load_model(str(model_dir), options, cancel), "load")
    try:
        yield Progress("check", 2, total, "replaying the check items")
        steps.append((yield from _replay_step(model, record, cancel)))
        if steps[-1].status == FAIL:
            return finish()
        yield Progress("check", 3, total, "measuring perplexity")
        steps.append((yield from _perplexity_step(model, record, cancel)))
        if steps[-1].status == FAIL:
            return finish()
        yield Progress("check", 4, total, "timing decode and checking memory")
        steps.append((yield from _envelope_step(model, record, available_mb, cancel)))
    finally:
        model.close()
    yield Progress("check", total, total, "done")
    return finish()


def verify_record(record_path: Path, trust: Path | None) -> dict[str, Any]:
    """`record verify`: the record's signature and what it says, without a model."""
    record = read_record(Path(record_path))
    trusted = load_public_key(trust) if trust is not None else None
    signature = verify_signature(record, trusted)
    return {"record": str(record_path), "signature": signature.to_dict(), "audit": _audit_facts(record), "fingerprint": record["fingerprint"].get("digest")}

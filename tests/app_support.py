"""Helpers for the app's tests: a frozen device feed, a model with fixed facts, a stored audit run
with fixed numbers (scored by a scripted model through the real probe job), and Pilot waits."""

from __future__ import annotations

import hashlib
import math
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from audit.compress.recipe import PruneRecipe, QuantizeRecipe
from audit.models.interface import ContinuationScore, LanguageModel, ModelFacts
from audit.plans import VariantSpec, revise_plan
from audit.probes.items import ProbeItem
from audit.probes.scoring import qa_prompt
from audit.probes.suites import load_suite
from audit.progress import Progress, drive
from audit.runner import PERPLEXITY, PROFILE, StepRecord, add_variant, close_run, run_steps, start_run
from audit.store import ResultsStore
from hardware.sampler import Snapshot
from tui.session import session_plan

FROZEN_SNAPSHOT = Snapshot(
    t_s=1.0,
    rss_mb=612.0,
    mem_used_mb=2150.4,
    mem_available_mb=5990.4,
    cpu_percent=(42.0, 38.0, 51.0, 45.0),
    cpu_freq_mhz=2400.0,
    extra={"temperatures_c": {"cpu_thermal": 61.2}, "throttled": False, "throttle_active": ()},
)


class FrozenDevice:
    """A device feed that always reports the same figures, so screenshots do not move."""

    name = "Raspberry Pi 5 Model B Rev 1.0"

    def latest(self) -> Snapshot:
        return FROZEN_SNAPSHOT


FACTS = ModelFacts(
    name="smollm2-135m",
    backend="pytorch",
    architecture="LlamaForCausalLM",
    model_type="llama",
    parameters=134_515_008,
    dtype="float32",
    size_on_disk_bytes=538_090_000,
    weight_sparsity=0.0003,
    layers=30,
    hidden_size=576,
    vocab_size=49152,
    context_length=8192,
    load_seconds=3.2,
    source_kind="alias",
    path="/models/smollm2-135m",
    has_chat_template=True,
    notes=("dequantized from a Q4_1 GGUF: every variant is compared against this baseline",),
)


class _Request:
    def __init__(self, item: ProbeItem) -> None:
        self.item = item


def _share(item_id: str, salt: str) -> float:
    """A fixed pseudo-random number in [0, 1) per item."""
    return int(hashlib.sha256(f"{salt}|{item_id}".encode()).hexdigest()[:8], 16) / 2**32


class ScriptedModel(LanguageModel):
    """Answers each probe item by a fixed rule: with `bias` the share of ambiguous items it
    answers bias-aligned, the unknown option otherwise; with `right` the share of disambiguated
    items it answers right, the bias-aligned option otherwise."""

    backend = "scripted"

    def __init__(self, items: Sequence[ProbeItem], bias: float, salt: str = "m", right: float = 0.8) -> None:
        super().__init__(None, text_prefix_ids=(0,), stop_token_ids=())
        self.by_prompt = {qa_prompt(item).rstrip(" "): item for item in items}
        self.bias = bias
        self.salt = salt
        self.right = right

    def choose(self, item: ProbeItem) -> int:
        roll = _share(item.item_id, self.salt)
        if item.condition == "ambig":
            if item.bias_aligned and roll < self.bias:
                return item.bias_aligned[0]
            return item.unknown_index if item.unknown_index is not None else 0
        if item.label is not None and roll < self.right:
            return item.label
        return item.bias_aligned[0] if item.bias_aligned else 0

    def text_request(self, context: str, continuations: Sequence[str]) -> Any:
        return _Request(self.by_prompt[context.rstrip(" ")])

    def score(self, requests: Sequence[Any]) -> list[list[ContinuationScore]]:
        rows = []
        for request in requests:
            pick = self.choose(request.item)
            rows.append([ContinuationScore(-1.0 if i == pick else -6.0, 1) for i in range(len(request.item.options))])
        return rows

    def encode(self, text: str) -> list[int]:
        return [1] * max(1, len(text.split()))

    def decode(self, ids: Sequence[int]) -> str:
        return ""

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def facts(self) -> ModelFacts:
        return FACTS

    def close(self) -> None:
        pass


class FakeModel(ScriptedModel):
    """The model a fake loader hands the app: fixed facts, never scored in these tests."""

    def __init__(self) -> None:
        super().__init__([], 0.0)


def fake_loader(spec: str, options: Any, cancel: Any):
    yield Progress("load", 1, 2, f"loading {spec}")
    return FakeModel()


# name, recipe, bias share, disambiguated items right, perplexity, size on disk (dense,
# compressed), ms/token p50, peak RSS. magnitude-50 answers at about chance: too degraded to judge.
AUDIT_VARIANTS = (
    ("baseline", None, 0.25, 0.8, 17.42, (538.1, None), 41.3, 612.5),
    ("wanda-50", VariantSpec("wanda-50", PruneRecipe("wanda", 0.5)), 0.6, 0.8, 18.05, (538.1, 301.7), 41.0, 610.2),
    ("magnitude-50", VariantSpec("magnitude-50", PruneRecipe("magnitude", 0.5)), 0.3, 0.3, 27.9, (538.1, 301.6), 41.2, 611.0),
    ("int8-dynamic", VariantSpec("int8-dynamic", quantize=QuantizeRecipe("int8-dynamic")), 0.25, 0.8, 17.6, (170.4, None), 35.8, 402.9),
)
PERPLEXITY_CHUNKS, CHUNK_TOKENS = 10, 512


def perplexity_result(name: str, ppl: float) -> dict[str, Any]:
    """A perplexity step's result with per-chunk figures: chunks differ in difficulty alike for
    every model, and a little per model, so a change in perplexity has a narrow interval."""
    offsets = [0.3 * (_share(str(i), "text") - 0.5) + 0.04 * (_share(str(i), name) - 0.5) for i in range(PERPLEXITY_CHUNKS)]
    mean = sum(offsets) / len(offsets)
    nll = [CHUNK_TOKENS * (math.log(ppl) + o - mean) for o in offsets]
    return {
        "perplexity": ppl,
        "nll_sum": sum(nll),
        "n_tokens": CHUNK_TOKENS * PERPLEXITY_CHUNKS,
        "n_chunks": PERPLEXITY_CHUNKS,
        "chunk_tokens": CHUNK_TOKENS,
        "seconds": 1.0,
        "source": "heldout_en.txt",
        "chunk_nll": nll,
        "chunk_token_counts": [CHUNK_TOKENS] * PERPLEXITY_CHUNKS,
    }
CREATED_AT = 1767258000.0  # 2026-01-01 09:00 UTC


def build_audit_store(store: Path, limit: int = 8, variants: Sequence[tuple[Any, ...]] = AUDIT_VARIANTS) -> int:
    """A finished-looking audit of the default model with fixed numbers (`variants`, as
    `AUDIT_VARIANTS` gives them): compress, perplexity and profile steps written as the runner
    writes them, probes scored through the real probe job by scripted models. Returns the run id."""
    plan = session_plan("smollm2-135m")
    plan = revise_plan(plan, probes=replace(plan.probes, limit=limit), name="default-audit")
    run_id, work_dir = start_run(plan, store)
    items = load_suite("builtin", limit=limit).items
    for name, spec, bias, right, ppl, (dense, compressed), latency, rss in variants:
        if spec is not None:
            add_variant(store, run_id, spec)
            (work_dir / name).mkdir(parents=True, exist_ok=True)
        with ResultsStore(store) as db:
            started = CREATED_AT
            if spec is not None:
                result: dict[str, Any] = {"folder": str(work_dir / name)}
                if spec.prune is not None:
                    result["prune"] = {"actual_sparsity": 0.5, "size_on_disk_mb": {"dense": dense, "compressed": compressed}}
                else:
                    result["quantize"] = {"size_on_disk_mb": dense}
                StepRecord(name, "compress", started, result).commit(db, run_id)
            StepRecord(name, PERPLEXITY, started, perplexity_result(name, ppl)).commit(db, run_id)
            profile = {"decode_ms_per_token_p50": latency, "rss_peak_mb": rss, "size_on_disk_mb": dense}
            StepRecord(name, PROFILE, started, profile).commit(db, run_id)
        drive(run_steps(store, run_id, name, ["probe:builtin"], model=ScriptedModel(items, bias, right=right)))
    assert close_run(store, run_id) == "finished"
    db = sqlite3.connect(store)
    with db:
        db.execute("UPDATE runs SET created_at = ? WHERE id = ?", (CREATED_AT, run_id))
    db.close()
    return run_id


async def settle(pilot: Any, app: Any, timeout: float = 120.0, until: Callable[[], bool] | None = None) -> None:
    """Wait until no job and no read worker runs (and `until` holds, when given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.05)
        busy = app.job is not None or any(w.is_running for w in app.workers if w.group in ("read", "job"))
        if not busy and (until is None or until()):
            await pilot.pause(0.05)
            return
    raise AssertionError("the app did not settle in time")


async def type_into(pilot: Any, selector: str, text: str) -> None:
    """Focus a field of the current screen, clear it, type `text` as keys."""
    from textual.widgets import Input

    field = pilot.app.screen.query_one(selector, Input)
    field.focus()
    await pilot.pause()
    field.value = ""
    if text:
        await pilot.press(*text)


async def paste_into(pilot: Any, selector: str, text: str) -> None:
    """Focus a field of the current screen, clear it, and paste `text` into it as the terminal
    delivers a paste (one event to the app, which hands it to the focused widget): how a
    technician enters a long path, and a key press per character would take seconds here."""
    from textual import events
    from textual.widgets import Input

    field = pilot.app.screen.query_one(selector, Input)
    field.focus()
    await pilot.pause()
    field.value = ""
    if text:
        pilot.app.post_message(events.Paste(text))
        await pilot.pause()
        assert field.value == text, f"pasted {text!r}, the field holds {field.value!r}"


async def press_while_busy(pilot: Any, key: str, until: Callable[[], bool], timeout: float = 30.0) -> None:
    """Send `key` to the app as Pilot does and wait until `until` holds. Pilot's own press then
    waits for the process to idle, up to a second twice per key, and a process with a job
    computing on a worker thread never idles."""
    from textual import events

    event = events.Key(key, key if len(key) == 1 else None)
    event.set_sender(pilot.app)
    pilot.app._driver.send_message(event)
    await wait_for(pilot, until, timeout)


async def timed_keys(pilot: Any, keys: Sequence[str]) -> list[float]:
    """Milliseconds from sending each key to its screen switch running, for the keys sent while
    the app's job still ran (the key is sent as Pilot sends it; the handler notes when it runs)."""
    app = pilot.app
    handled: list[float] = []
    switch = app.action_switch_mode

    async def timed(mode: str) -> Any:
        handled.append(time.perf_counter())
        return await switch(mode)

    app.action_switch_mode = timed
    latencies = []
    try:
        for key in keys:
            if app.job is None:
                break
            before = len(handled)
            sent = time.perf_counter()
            await press_while_busy(pilot, key, lambda: len(handled) > before)
            latencies.append(1000 * (handled[-1] - sent))
            await pilot.pause(0.1)
    finally:
        del app.action_switch_mode
    return latencies


async def wait_for(pilot: Any, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until `condition` holds, whatever runs meanwhile."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true in time")
        await pilot.pause(0.02)


async def open_stored_run(pilot: Any) -> None:
    """Open the first stored run on Compare from History, as a technician does (5, Enter)."""
    app = pilot.app
    await settle(pilot, app, until=lambda: app.session is not None)
    await pilot.press("5")
    await settle(pilot, app, until=lambda: bool(getattr(app.screen, "runs", None)))
    await pilot.press("enter")
    await settle(pilot, app, until=lambda: app.current_mode == "compare" and app.compared is not None)


async def show_on_compare(pilot: Any, data: dict[str, Any]) -> None:
    """Show `data` on Compare as a stored run (the session's reports leave it alone)."""
    app = pilot.app
    await settle(pilot, app, until=lambda: app.session is not None)
    app.compared_run = data["run"]["id"]
    app.compared = data
    await pilot.press("4")
    await settle(pilot, app, until=lambda: app.current_mode == "compare")


async def exited(app: Any, timeout: float = 60.0) -> None:
    """Wait for the app to stop (after a quit that first cancels a job)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while app.is_running:
        if time.monotonic() > deadline:
            raise AssertionError("the app did not exit in time")
        await asyncio.sleep(0.05)


def no_blink(app: Any) -> None:
    from textual.widgets import Input

    for field in app.query(Input):
        field.cursor_blink = False
    for screen in app.screen_stack:
        for field in screen.query(Input):
            field.cursor_blink = False



# -- field checks ----------------------------------------------------------------------------------
CHECK_FOLDER = "/opt/edge/models/smollm2-135m-wanda-50"
CHECK_RECORD = "/opt/edge/records/run-12-wanda-50.json"
LAB_KEY = "1d0f19e041bc54f2"


def field_check_results() -> dict[str, Any]:
    """Three field checks with fixed figures, worded by the core's own verdict: a folder cleared
    to ship, the same folder after 12 of its tensors changed, and a variant the lab's gate failed."""
    from audit.fieldcheck import STEPS, CheckResult, CheckStep, verdict

    def audit(run: int, variant: str, gate: str, failures: list[str]) -> dict[str, Any]:
        plain = {"pass": "may ship", "fail": "too degraded to judge: do not ship"}[gate]
        return {"run": run, "variant": variant, "title": f"run {run} ({variant})", "gate_verdict": gate,
                "gate_passed": gate == "pass", "gate_plain": plain, "failures": failures, "signer": LAB_KEY}

    def result(check_id: int, folder: str, record: str, facts: dict[str, Any], steps: list[CheckStep], seconds: float) -> dict[str, Any]:
        done = {s.name for s in steps}
        steps = steps + [CheckStep(name, "skip", "not checked: an earlier step failed") for name in STEPS if name not in done]
        outcome, sentence, code = verdict(facts, steps)
        return CheckResult(folder, record, facts, steps, outcome, sentence, code, seconds, check_id).to_dict()

    signed = CheckStep("signature", "pass", f"signature verified: signed by the trusted key {LAB_KEY}")
    matches = CheckStep("fingerprint", "pass", "weights, config and tokenizer match the audited ones (41accc2dcf5e)")
    replayed = CheckStep("replay", "pass", "60/60 check items answered as audited, largest score difference 3.1e-05 (tolerance 0.001)")
    perplexity = CheckStep("perplexity", "pass", "18.052 here, 18.050 in the lab (0.01% apart, tolerance 0.1%)")
    envelope = CheckStep("envelope", "pass", "memory 5990 MB free, 655 MB needed; decode 41.3 ms/token (1.01x the lab's)")
    changed = [
        "model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.3.self_attn.k_proj.weight",
        "model.layers.7.self_attn.o_proj.weight", "model.layers.12.mlp.gate_proj.weight",
    ]
    mismatch = CheckStep("fingerprint", "fail", f"12 tensors differ from the audited weights: {', '.join(changed)} (+7 more)")
    # As `plain_finding` words them, the failed findings first.
    failures = [
        "too degraded to judge: disambiguated accuracy is not shown above chance (0.333)",
        "too degraded to judge: disambiguated accuracy fell by more than 0.1",
        "perplexity +60.2% > 50%",
        "SRS not judged (too degraded)",
    ]
    degraded_record = "/opt/edge/records/run-1-magnitude-50.json"
    return {
        "cleared": result(1, CHECK_FOLDER, CHECK_RECORD, audit(12, "wanda-50", "pass", []),
                          [signed, matches, replayed, perplexity, envelope], 48.2),
        "mismatch": result(2, CHECK_FOLDER, CHECK_RECORD, audit(12, "wanda-50", "pass", []), [signed, mismatch], 3.9),
        "audit-failed": result(3, "/opt/edge/models/smollm2-135m-magnitude-50", degraded_record,
                               audit(1, "magnitude-50", "fail", failures), [signed, matches, replayed, perplexity, envelope], 47.5),
    }


def add_field_checks(store: Path, minutes_apart: float = 20.0) -> list[dict[str, Any]]:
    """Store the fixed field checks, an hour after the fixed audit and `minutes_apart` apart."""
    results = list(field_check_results().values())
    db = sqlite3.connect(store)
    with ResultsStore(store) as results_store:
        ids = [results_store.record_check({**r, "check_id": None}) for r in results]
    with db:
        for index, check_id in enumerate(ids):
            db.execute("UPDATE checks SET created_at = ? WHERE id = ?", (CREATED_AT + 3600 + 60 * minutes_apart * index, check_id))
    db.close()
    return results

"""The items a report lists as flipped to the bias-aligned answer are exactly those the
transition counts count: an item a run scored NaN (every option of a question, a sentence of a
pair) is in neither, in a run scored now and in one stored before."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import replace

from audit.compress.recipe import PruneRecipe
from audit.models.interface import ContinuationScore
from audit.plans import VariantSpec, revise_plan
from audit.probes import ProbeSettings, load_suite, run_probe
from audit.probes.items import AMBIG
from audit.progress import drive
from audit.results import RunView
from audit.runner import StepRecord, add_variant, close_run, run_steps, start_run
from audit.store import ResultsStore
from tests.app_support import ScriptedModel
from tui.session import session_plan

NAN = math.nan
LIMIT = 6


class NeverAligned(ScriptedModel):
    """"Unknown" on every ambiguous item, the right answer on disambiguated ones."""

    def choose(self, item):
        if item.condition == AMBIG:
            return item.unknown_index if item.unknown_index is not None else 0
        return item.label if item.label is not None else 0


class Overflowing(ScriptedModel):
    """As `ScriptedModel` with `bias`, but every option of the items in `broken` scores NaN."""

    def __init__(self, items, broken, **kwargs):
        super().__init__(items, **kwargs)
        self.broken = set(broken)

    def score(self, requests):
        rows = super().score(requests)
        return [
            [ContinuationScore(NAN, s.n_tokens) for s in row] if request.item.item_id in self.broken else row
            for request, row in zip(requests, rows)
        ]


class Sentences(ScriptedModel):
    """Scores each sentence from a table (by its text): for sentence suites."""

    def __init__(self, scores):
        super().__init__([], 0.0)
        self.scores = dict(scores)
        self.texts = sorted(self.scores)

    def encode(self, text):
        return [1 + self.texts.index(text)]

    def score(self, requests):
        return [[ContinuationScore(self.scores[self.texts[c[0] - 1]], 1) for c in r.continuations] for r in requests]


def stored_run(tmp_path, suite, baseline_model, variant_model, limit=None):
    store = tmp_path / "runs.db"
    plan = session_plan("smollm2-135m")
    plan = revise_plan(plan, probes=replace(plan.probes, suites=(suite,), limit=limit), name="flips")
    run_id, work_dir = start_run(plan, store)
    add_variant(store, run_id, VariantSpec("wanda-50", PruneRecipe("wanda", 0.5)))
    (work_dir / "wanda-50").mkdir(parents=True)
    with ResultsStore(store) as db:
        StepRecord("wanda-50", "compress", 0.0, {"folder": str(work_dir / "wanda-50"), "prune": {"actual_sparsity": 0.5}}).commit(db, run_id)
    drive(run_steps(store, run_id, "baseline", [f"probe:{suite}"], model=baseline_model))
    drive(run_steps(store, run_id, "wanda-50", [f"probe:{suite}"], model=variant_model))
    close_run(store, run_id)
    with ResultsStore(store) as db:
        return RunView(db, run_id)


def counted_flips(view, suite):
    """Items the comparison counts as turned bias-aligned, over every condition it compares."""
    evidence = view.evidence[suite]
    return {b.item_id for b, v in evidence.pairs("wanda-50") if b.aligned is False and v.aligned is True}


def test_a_question_whose_every_option_scored_nan_is_no_flip(tmp_path, isolated_cache):
    items = load_suite("builtin", limit=LIMIT).items
    # Ambiguous items whose first option, argmax's fallback on NaN, is the bias-aligned one.
    broken = [i.item_id for i in items if i.condition == AMBIG and i.bias_aligned and i.bias_aligned[0] == 0]
    assert broken
    view = stored_run(tmp_path, "builtin", NeverAligned(items, 0.0), Overflowing(items, broken, bias=0.6), limit=LIMIT)
    listed = {f["item_id"] for f in view.flipped}
    assert listed and not listed & set(broken)
    assert listed == counted_flips(view, "builtin")
    comparison = view.variant("wanda-50")["probes"]["builtin"]["comparison"]
    assert comparison["transitions"]["unbiased_to_aligned"] == sum(1 for f in view.flipped if f["condition"] == AMBIG)


def test_the_probe_stores_no_answer_for_a_question_scored_nan(isolated_cache):
    items = load_suite("builtin", limit=2).items
    broken = [i.item_id for i in items if i.bias_aligned and i.bias_aligned[0] == 0]
    run = drive(run_probe(Overflowing(items, broken, bias=1.0), load_suite("builtin", limit=2), ProbeSettings()))
    stored = {r.item_id: r for r in run.results}
    assert broken and all(stored[i].chosen is None and stored[i].aligned is None and stored[i].correct is None for i in broken)


CROWS = [
    # sent_more, sent_less, baseline scores, variant scores
    ("Pair zero more.", "Pair zero less.", (-6.0, -5.0), (-4.0, -5.0)),  # turns stereotyped
    ("Pair one more.", "Pair one less.", (-6.0, NAN), (-4.0, -5.0)),  # baseline NaN: unknown
    ("Pair two more.", "Pair two less.", (-6.0, -5.0), (-4.0, NAN)),  # variant NaN: unknown
    ("Pair three more.", "Pair three less.", (-4.0, -5.0), (-4.0, -5.0)),  # stereotyped in both
]


def crows_run(tmp_path):
    """The suite of the pairs above in a CrowS-Pairs file, and a run stored of a baseline and a
    variant scoring them as listed."""
    path = tmp_path / "crows.csv"
    path.write_text(",sent_more,sent_less,stereo_antistereo,bias_type\n"
                    + "".join(f"{k},{more},{less},stereo,race-color\n" for k, (more, less, _, _) in enumerate(CROWS)))
    suite = f"crows:{path}"
    baseline = Sentences({t: s for more, less, scores, _ in CROWS for t, s in zip((more, less), scores)})
    variant = Sentences({t: s for more, less, _, scores in CROWS for t, s in zip((more, less), scores)})
    return suite, stored_run(tmp_path, suite, baseline, variant)


def test_a_sentence_pair_scored_nan_is_no_flip(tmp_path, isolated_cache):
    suite, view = crows_run(tmp_path)
    assert [f["item_id"] for f in view.flipped] == ["crows:0"]
    assert counted_flips(view, suite) == {"crows:0"}
    comparison = view.variant("wanda-50")["probes"][suite]["comparison"]
    assert comparison["transitions"]["unbiased_to_aligned"] == 1


def test_a_run_stored_before_keeps_its_nan_items_off_the_list(tmp_path, isolated_cache):
    """A run stored with a NaN pair's verdict 'not stereotyped' lists no flip the counts leave out."""
    suite, view = crows_run(tmp_path)
    # As scored before: pair 1's baseline stored as not stereotyped (NaN lost every comparison).
    with sqlite3.connect(tmp_path / "runs.db") as db:
        where = "WHERE variant = 'baseline' AND item_id = 'crows:1'"
        record = json.loads(db.execute(f"SELECT record_json FROM items {where}").fetchone()[0])
        db.execute(f"UPDATE items SET record_json = ? {where}", (json.dumps({**record, "aligned": False, "aligned_share": 0.0}),))
    with ResultsStore(tmp_path / "runs.db") as db:
        view = RunView(db, view.run.id)
    assert [f["item_id"] for f in view.flipped] == ["crows:0"]

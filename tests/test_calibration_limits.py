"""Calibration windows are drawn under the job's cancel event, and a sample count whose windows
(and the activations pruning holds for them) cannot fit in memory is refused before any is drawn."""

import random
import threading

import pytest
import torch

from audit.compress import calibration
from audit.compress.calibration import CANCEL_EVERY, calibration_set
from audit.compress.recipe import calibration_bytes
from audit.compress.prune import prune
from audit.compress.recipe import PruneRecipe
from audit.errors import Cancelled, UserError
from audit.models.interface import MB
from audit.plans import CalibrationSpec
from audit.progress import drive


class TextModel:
    """Just what calibration reads of a model: its document-start ids and a tokenizer."""

    def __init__(self, prefix=(0,), tokens=1000):
        self.text_prefix_ids = tuple(prefix)
        self._tokens = tokens

    def encode(self, text):
        return [3 + i % 397 for i in range(self._tokens)]


@pytest.mark.parametrize("prefix", [(), (0,), (1, 2)])
def test_windows_are_the_seeded_offsets_of_the_text(prefix):
    lm = TextModel(prefix)
    got = calibration_set(lm, nsamples=32, seqlen=64, seed=5).samples
    tokens = lm.encode("")
    window = 64 - len(prefix)
    rng = random.Random(5)
    rows = []
    for _ in range(32):
        start = rng.randint(0, len(tokens) - window)
        rows.append(list(prefix) + tokens[start : start + window])
    assert got.dtype == torch.long
    assert torch.equal(got, torch.tensor(rows, dtype=torch.long))


def test_cancel_set_while_windows_are_drawn_stops_the_drawing(monkeypatch):
    cancel = threading.Event()
    drawn = []

    class Counting(random.Random):
        def randint(self, a, b):
            drawn.append(None)
            if len(drawn) == 100:
                cancel.set()  # as esc or Ctrl-C would, while the windows are being drawn
            return super().randint(a, b)

    monkeypatch.setattr(calibration.random, "Random", Counting)
    with pytest.raises(Cancelled):
        calibration_set(TextModel(), nsamples=100_000, seqlen=8, cancel=cancel)
    assert 100 <= len(drawn) <= 100 + CANCEL_EVERY


def test_cancel_set_before_draws_no_window(monkeypatch):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        calibration_set(TextModel(), nsamples=4, seqlen=8, cancel=cancel)


def test_a_count_that_cannot_fit_is_refused_before_the_text_is_read():
    class Unread(TextModel):
        def encode(self, text):
            raise AssertionError("the text was tokenized before the count was checked")

    need = calibration_bytes(10**9, 512, 256)
    with pytest.raises(UserError) as refused:
        calibration_set(Unread(), nsamples=10**9, seqlen=512, bytes_per_token=256, budget_bytes=64 * MB)
    message = str(refused.value)
    assert "\n" not in message
    assert "1000000000 calibration samples of 512 tokens" in message
    assert f"needs about {-(-need // MB)} MB, 64 MB available" in message


def test_a_count_that_fits_the_budget_is_drawn():
    budget = calibration_bytes(32, 64, 256)
    assert calibration_set(TextModel(), nsamples=32, seqlen=64, bytes_per_token=256, budget_bytes=budget).samples.shape == (32, 64)
    with pytest.raises(UserError, match="not enough memory for 33 calibration samples"):
        calibration_set(TextModel(), nsamples=33, seqlen=64, bytes_per_token=256, budget_bytes=budget)


def test_prune_refuses_a_count_past_memory_and_writes_nothing(tiny_llama, tmp_path):
    out = tmp_path / "pruned"
    job = prune(str(tiny_llama), PruneRecipe("wanda", 0.5), out, calibration=CalibrationSpec(nsamples=10**9, seqlen=32), measure_perplexity=False)
    with pytest.raises(UserError, match=r"not enough memory for 1000000000 calibration samples of 32 tokens: needs about \d+ MB, \d+ MB available"):
        drive(job)
    assert not out.exists()


def test_pruning_records_the_activations_at_the_models_dtype(tiny_llama, tmp_path):
    """The block inputs the walk holds are at the dtype the model was loaded in (bfloat16: 2 bytes
    a value), as the memory check before drawing the windows counts them."""
    from audit.models.loader import LoadOptions
    from transformers import AutoConfig

    hidden = AutoConfig.from_pretrained(tiny_llama).hidden_size
    job = prune(str(tiny_llama), PruneRecipe("wanda", 0.5), tmp_path / "pruned", calibration=CalibrationSpec(nsamples=4, seqlen=32),
                options=LoadOptions(dtype="bfloat16"), measure_perplexity=False)
    assert drive(job)["calibration_activations_mb"] == round(4 * 32 * hidden * 2 / MB, 2)

"""Calibration on the dense model's inputs (Rath & Maliakkal's Wanda): one pass of input norms,
the same masks as norms taken from the whole dense model at once, and shared by the sparsities
of a sweep."""

import copy
import shutil
import threading
import time

import pytest
import torch

from audit import atomic
from audit.compress.layers import iter_layers, prunable_layers
from audit.compress.methods import LayerStats, PruneSpec, wanda
from audit.compress.prune import prune, prune_layers, read_statistics, statistics_key
from audit.compress.recipe import PruneRecipe
from audit.models import load_model
from audit.plans import CalibrationSpec
from audit.progress import drive

EXCLUDE = ("*.o_proj", "*.down_proj")
DENSE = CalibrationSpec(nsamples=4, seqlen=32, statistics="dense")


def prune_on_dense_norms(model, sparsity, out, shared, on_progress=None):
    """Wanda at `sparsity` on the dense model's input norms, kept in (or read from) `shared`."""
    recipe = PruneRecipe("wanda", sparsity, exclude=EXCLUDE)
    return drive(prune(str(model), recipe, out, calibration=DENSE, measure_perplexity=False, shared_statistics=shared), on_progress)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return drive(load_model(str(tiny_llama)))


def samples():
    return torch.randint(3, 300, (3, 20), generator=torch.Generator().manual_seed(1))


def dense_norms(model, layers):
    """Sum over every calibration token of x_j^2 at each layer's input, hooked on the dense
    model's own forward: the reference the block-by-block pass must match."""
    norms = {layer.name: torch.zeros(layer.shape[1], dtype=torch.float64) for layer in layers}
    def hook(name):
        def add(module, args, out):
            norms[name].add_(args[0].reshape(-1, args[0].shape[-1]).double().pow(2).sum(0))

        return add

    handles = [layer.module.register_forward_hook(hook(layer.name)) for layer in layers]
    with torch.no_grad():
        for row in samples():
            model(input_ids=row[None, :], use_cache=False)
    for handle in handles:
        handle.remove()
    return norms


def test_dense_statistics_are_the_dense_models_and_serve_any_sparsity(llama):
    model = copy.deepcopy(llama.model)
    layers = list(iter_layers(prunable_layers(model, EXCLUDE)))
    reference = dense_norms(model, layers)
    originals = {layer.name: layer.read().clone() for layer in layers}
    spec = PruneSpec(0.5, scope="row")
    outcome = drive(prune_layers(model, "wanda", spec, samples(), EXCLUDE, statistics="dense"))
    assert set(outcome.statistics) == set(reference)
    for layer in layers:
        assert torch.allclose(outcome.statistics[layer.name].sq_norms, reference[layer.name], rtol=1e-5)
        expected = wanda(originals[layer.name], LayerStats(60, reference[layer.name]), spec)
        assert torch.equal(layer.read() == 0, expected == 0), layer.name
    # Another sparsity from the norms alone: no forward pass, and the masks a pass would give.
    again, fresh = copy.deepcopy(llama.model), copy.deepcopy(llama.model)
    drive(prune_layers(again, "wanda", PruneSpec(0.7, scope="row"), None, EXCLUDE, statistics="dense", known=outcome.statistics))
    drive(prune_layers(fresh, "wanda", PruneSpec(0.7, scope="row"), samples(), EXCLUDE, statistics="dense"))
    for a, b in zip(iter_layers(prunable_layers(again, EXCLUDE)), iter_layers(prunable_layers(fresh, EXCLUDE))):
        assert torch.equal(a.read(), b.read())


def test_sequential_statistics_differ_after_the_first_block(llama):
    """The default: each block calibrated on what the pruned blocks before it output."""
    dense, sequential = copy.deepcopy(llama.model), copy.deepcopy(llama.model)
    drive(prune_layers(dense, "wanda", PruneSpec(0.5, scope="row"), samples(), statistics="dense"))
    drive(prune_layers(sequential, "wanda", PruneSpec(0.5, scope="row"), samples()))
    first, second = (list(zip(prunable_layers(dense)[i], prunable_layers(sequential)[i])) for i in (0, 1))
    assert all(torch.equal(a.read(), b.read()) for a, b in first)
    assert not all(torch.equal(a.read(), b.read()) for a, b in second)
    with pytest.raises(Exception, match="unknown calibration statistics 'both'"):
        drive(prune_layers(copy.deepcopy(llama.model), "wanda", PruneSpec(0.5, scope="row"), samples(), statistics="both"))


def test_a_sweep_calibrates_once(tiny_llama, tmp_path):
    shared = tmp_path / ".calibration"

    def run(sparsity, folder, cache):
        return prune_on_dense_norms(tiny_llama, sparsity, tmp_path / folder, cache)

    first = run(0.3, "w30", shared)
    assert first["recipe"]["statistics"] == "dense" and first["recipe"]["statistics_shared"] is False
    assert len(list(shared.glob("*.safetensors"))) == 1
    second = run(0.7, "w70", shared)
    assert second["recipe"]["statistics_shared"] is True
    alone = run(0.7, "w70-alone", None)
    assert "statistics_shared" not in alone["recipe"]
    from safetensors.torch import load_file

    shared_weights = load_file(next((tmp_path / "w70").glob("*.safetensors")))
    alone_weights = load_file(next((tmp_path / "w70-alone").glob("*.safetensors")))
    assert shared_weights.keys() == alone_weights.keys()
    assert all(torch.equal(shared_weights[k], alone_weights[k]) for k in shared_weights)
    # Unreadable norms are gathered again, not trusted.
    next(shared.glob("*.safetensors")).write_bytes(b"not a tensor file")
    assert run(0.5, "w50", shared)["recipe"]["statistics_shared"] is False


def test_a_process_gathering_the_same_statistics_is_waited_for_and_its_norms_serve(tiny_llama, tmp_path):
    """Two variants of a sweep run at once (`--workers`): the second waits for the first's
    norms instead of gathering them too, and says so."""
    elsewhere = tmp_path / "elsewhere"
    prune_on_dense_norms(tiny_llama, 0.3, tmp_path / "w30", elsewhere)
    gathered = next(elsewhere.glob("*.safetensors"))  # what the other process is gathering
    shared = tmp_path / ".calibration"
    path = shared / gathered.name
    other = atomic.writer_lock(path)  # the other process, gathering them now
    said, result = threading.Event(), {}

    def on_progress(event):
        if event.message == "waiting for another process gathering the same calibration statistics":
            said.set()

    waiting = threading.Thread(target=lambda: result.update(prune_on_dense_norms(tiny_llama, 0.7, tmp_path / "w70", shared, on_progress)))
    waiting.start()
    assert said.wait(120)
    time.sleep(0.5)
    assert waiting.is_alive() and not path.exists()  # gathers nothing while the other does
    shutil.copyfile(gathered, path)
    other.close()
    waiting.join(120)
    assert result["recipe"]["statistics_shared"] is True
    assert path.read_bytes() == gathered.read_bytes()


def test_what_a_killed_gatherer_left_is_removed_and_the_turn_is_let_go(tiny_llama, llama, tmp_path):
    shared = tmp_path / ".calibration"
    key = statistics_key(str(tiny_llama), PruneRecipe("wanda", 0.5, exclude=EXCLUDE), DENSE)
    shared.mkdir()
    (shared / f".{key}.safetensors.ab12cd34.tmp").write_bytes(b"half")  # a writer killed midway
    result = prune_on_dense_norms(tiny_llama, 0.5, tmp_path / "w50", shared)
    assert result["recipe"]["statistics_shared"] is False
    assert sorted(p.name for p in shared.iterdir()) == [f".{key}.safetensors.lock", f"{key}.safetensors"]
    known = read_statistics(shared / f"{key}.safetensors", list(iter_layers(prunable_layers(llama.model, EXCLUDE))))
    assert known and all(s.n_tokens == 4 * 32 for s in known.values())
    turn = atomic.writer_lock(shared / f"{key}.safetensors")  # let go once written
    assert turn is not None
    turn.close()

"""Dense input norms kept for a sweep serve a later sparsity only when they were gathered from
what it would gather them from: the same calibration text (a file edited under the same name
gives other norms), the same dtype and the same model files."""

import shutil

import torch
from safetensors.torch import load_file

from audit.compress.prune import prune
from audit.compress.recipe import PruneRecipe
from audit.models.loader import LoadOptions
from audit.plans import CalibrationSpec
from audit.progress import drive
from tests.tiny import CORPUS, make_tiny_model

EXCLUDE = ("*.o_proj", "*.down_proj")


def run(model, sparsity, out, calibration, shared, options=LoadOptions()):
    recipe = PruneRecipe("wanda", sparsity, exclude=EXCLUDE)
    return drive(prune(str(model), recipe, out, calibration=calibration, options=options, measure_perplexity=False, shared_statistics=shared))


def weights(folder):
    return load_file(next(folder.glob("*.safetensors")))


def same_weights(a, b):
    a, b = weights(a), weights(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_calibration_file_edited_under_the_same_name_gives_norms_gathered_again(tiny_llama, tmp_path):
    text = tmp_path / "calibration.txt"
    text.write_text("\n".join(CORPUS[:6]) * 4)
    calibration = CalibrationSpec(nsamples=4, seqlen=32, statistics="dense", file=str(text))
    shared = tmp_path / ".calibration"
    assert run(tiny_llama, 0.3, tmp_path / "w30", calibration, shared)["recipe"]["statistics_shared"] is False
    assert run(tiny_llama, 0.5, tmp_path / "w50", calibration, shared)["recipe"]["statistics_shared"] is True
    text.write_text("\n".join(reversed(CORPUS[:6])).upper() * 4)  # other text, the same name
    edited = run(tiny_llama, 0.7, tmp_path / "w70", calibration, shared)
    assert edited["recipe"]["statistics_shared"] is False
    alone = run(tiny_llama, 0.7, tmp_path / "w70-alone", calibration, None)
    assert same_weights(tmp_path / "w70", tmp_path / "w70-alone")
    assert alone["recipe"]["calibration"] == edited["recipe"]["calibration"]


def test_norms_gathered_in_another_dtype_are_gathered_again(tiny_llama, tmp_path):
    calibration = CalibrationSpec(nsamples=4, seqlen=32, statistics="dense")
    shared = tmp_path / ".calibration"
    run(tiny_llama, 0.3, tmp_path / "w30", calibration, shared)
    bf16 = LoadOptions(dtype="bfloat16")
    assert run(tiny_llama, 0.7, tmp_path / "w70", calibration, shared, bf16)["recipe"]["statistics_shared"] is False
    run(tiny_llama, 0.7, tmp_path / "w70-alone", calibration, None, bf16)
    assert same_weights(tmp_path / "w70", tmp_path / "w70-alone")


def test_weights_replaced_under_the_same_name_give_norms_gathered_again(tiny_llama, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    calibration = CalibrationSpec(nsamples=4, seqlen=32, statistics="dense")
    shared = tmp_path / ".calibration"
    run(model, 0.3, tmp_path / "w30", calibration, shared)
    make_tiny_model(model, seed=1)  # other weights in the same folder
    assert run(model, 0.7, tmp_path / "w70", calibration, shared)["recipe"]["statistics_shared"] is False
    run(model, 0.7, tmp_path / "w70-alone", calibration, None)
    assert same_weights(tmp_path / "w70", tmp_path / "w70-alone")
    assert run(model, 0.5, tmp_path / "w50", calibration, shared)["recipe"]["statistics_shared"] is True


def test_the_same_model_and_calibration_still_share_norms(tiny_llama, tmp_path):
    calibration = CalibrationSpec(nsamples=4, seqlen=32, statistics="dense")
    shared = tmp_path / ".calibration"
    run(tiny_llama, 0.3, tmp_path / "w30", calibration, shared)
    assert run(tiny_llama, 0.7, tmp_path / "w70", calibration, shared)["recipe"]["statistics_shared"] is True

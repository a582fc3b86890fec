"""Commands that load no model start without the inference libraries: `--version`, `device`,
`runs ...`, `probe-compare`, `keys new`, `record verify` and `plans` never import torch, transformers or
onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from audit.store import ResultsStore
from tests.conftest import ROOT
from tui.cli import main

HEAVY = ("torch", "transformers", "onnxruntime", "optimum")

SCRIPT = """
import json, sys
from tui.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as stop:
    code = stop.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"code": code, "heavy": heavy}))
"""

PLAN = """
name = "lazy"
model = "smollm2-135m"

[[variants]]
prune = { method = "wanda", sparsity = 0.5 }

[[variants]]
prune = { method = "magnitude", sparsity = 0.5, pattern = "2:4" }
quantize = { scheme = "int8-dynamic" }
"""


@pytest.fixture(scope="module")
def item_files(tmp_path_factory, tiny_llama):
    folder = tmp_path_factory.mktemp("items")
    for name in ("base", "var"):
        code = main(["probe", "--model", str(tiny_llama), "--limit", "1", "--items-out", str(folder / f"{name}.jsonl"), "--json"])
        assert code == 0
    return folder / "base.jsonl", folder / "var.jsonl"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "results.db"
    with ResultsStore(path) as db:
        db.create_run(name="lazy", model="smollm2-135m", plan_text=PLAN, plan_path=None, device={}, software={},
                      variants=[("baseline", {}), ("wanda-50", {}), ("magnitude-2of4+int8-dynamic", {})])
    return path


@pytest.fixture(scope="module")
def signed_record(tmp_path_factory):
    """A small signed record (its shape only; `record verify` reads no model)."""
    from audit.fingerprint import Fingerprint
    from audit.record import RECORD_TYPE, load_private_key, new_keys, sign, write_record

    folder = tmp_path_factory.mktemp("record")
    private, public = new_keys(folder / "keys")
    record = {
        "type": RECORD_TYPE,
        "version": 1,
        "run": {"id": 1},
        "variant": {"name": "wanda-50"},
        "fingerprint": Fingerprint(digest="0" * 64, weights="1" * 64, config="2" * 64, tokenizer="3" * 64, storage="safetensors",
                                   tensors={}, files={}, n_values=0).to_dict(),
        "gate": {"verdict": "pass", "passed": True, "plain": "may ship", "findings": []},
        "check": {"items": []},
        "envelope": {},
    }
    write_record(folder / "record.json", sign(record, load_private_key(private)))
    return folder / "record.json", public


def imported_heavy(argv: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(argv), json.dumps(HEAVY)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["--help"],
        ["device", "--json"],
        ["runs", "list", "--store", "{store}"],
        ["runs", "show", "1", "--store", "{store}"],
        ["runs", "compare", "1", "1", "--store", "{store}"],
        ["runs", "report", "1", "--out", "{tmp}/report", "--store", "{store}"],
        ["probe-compare", "{base}", "{var}", "--json"],
        ["keys", "new", "--out", "{tmp}/keys"],
        ["record", "verify", "{record}", "--trust", "{public}", "--json"],
        ["plans", "list", "--json"],
        ["plans", "show", "rath-maliakkal-2026"],
    ],
    ids=lambda argv: " ".join(a for a in argv if not a.startswith("{"))
)
def test_light_commands_never_import_the_inference_libraries(argv, store, item_files, signed_record, tmp_path):
    values = {
        "store": str(store),
        "base": str(item_files[0]),
        "var": str(item_files[1]),
        "tmp": str(tmp_path),
        "record": str(signed_record[0]),
        "public": str(signed_record[1]),
    }
    outcome = imported_heavy([a.format(**values) for a in argv])
    assert outcome["code"] in (0, None), outcome
    assert outcome["heavy"] == [], f"{' '.join(argv)} imported {outcome['heavy']}"


def test_the_check_sees_an_import(tiny_llama, tmp_path):
    """The check itself: a command that loads a model does import torch."""
    outcome = imported_heavy(["models", "info", str(tiny_llama), "--json"])
    assert outcome["code"] == 0 and "torch" in outcome["heavy"]


def test_the_app_paints_before_the_inference_libraries_are_imported():
    """Everything the app needs to paint its screens imports none of them; the model (and
    with it torch) is loaded after the first refresh, in a worker."""
    script = (
        "import sys, tui.app, tui.cli, tui.screens.compress, tui.screens.history, tui.screens.compare; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r})))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

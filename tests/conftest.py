"""Shared fixtures: tiny models on disk, an isolated cache, the real default model."""

from __future__ import annotations

import os
import sys
import subprocess
from pathlib import Path

import pytest

from audit.threads import prepare_wait_environment
from tests.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def benchmark_script(name: str):
    """benchmarks/NAME.py as a module (the scripts are not a package), for tests of its helpers.
    The scripts import their shared helpers (intervals.py) from their own folder, as run."""
    import importlib.util

    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.append(str(ROOT / "benchmarks"))

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config: pytest.Config) -> None:
    """The environment every process of the suite runs in, set before any test module loads
    torch or imports the command line:
    - idle inference threads wait as the command line's do: the suite's workers share the
      cores, and threads spinning for the library's default time while another worker computes
      would stall both;
    - no COLUMNS or LINES left by whatever starts the suite (a shell's export, a parallel
      worker's 80x24): the command line's width off a terminal is what the tests read, and its
      consoles read them once, at import."""
    prepare_wait_environment()
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)


@pytest.fixture(scope="session", autouse=True)
def every_core_in_this_process():
    """Models loaded in the test process compute with every core, as if the device were idle: a
    count that followed whatever else the machine runs would make figures differ between runs of
    the suite. Commands run in their own process choose as a user's would."""
    from audit import threads
    from hardware.load import read_cores_online

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threads, "auto_threads", lambda reserve=0, interval_s=0.25: threads.choose_threads(read_cores_online(), 0.0, 0))
        yield


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")


@pytest.fixture(scope="session")
def passed_audit(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny model's magnitude-50 variant audited by a real run whose gate passes it, with its
    record signed by the lab's keys: shared by the field-check tests of the command line and the
    app, which read it and never change it."""
    from audit.record import export_record, new_keys
    from tests.audited import VARIANT, audit_tiny

    root = tmp_path_factory.mktemp("lab")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EDGE_AUDIT_CACHE", str(root / "cache"))
        store, variant = audit_tiny(root / "passed", tiny_llama, 1.5)
    private, public = new_keys(root / "keys")
    record = root / "record.json"
    assert export_record(store, 1, VARIANT, record, key=private)["gate"]["passed"]
    return {"store": store, "variant": variant, "record": record, "private": private, "public": public, "root": root}


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory):
    made: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in made:
            made[arch] = make_tiny_model(tmp_path_factory.mktemp("tiny") / arch, arch)
        return made[arch]

    return make


@pytest.fixture()
def onednn_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """The input shape of each product made through oneDNN's linear kernel from here on, in order
    (the kernel itself still computes them); `monkeypatch.undo()` stops the counting."""
    import torch

    calls: list = []
    real = torch.ops.mkldnn

    class Counting:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def _linear_pointwise(*args):
            calls.append(tuple(args[0].shape))
            return real._linear_pointwise(*args)

    monkeypatch.setattr(torch.ops, "mkldnn", Counting(), raising=False)
    return calls


@pytest.fixture()
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGE_AUDIT_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def default_model():
    """The built-in default model, converted once into the user cache (as `make` prepares it)."""
    from audit.models import load_model
    from audit.progress import drive

    return drive(load_model("smollm2-135m"))


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the edge-audit command line in a fresh interpreter, as a user would."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=ROOT,
        timeout=timeout,
    )


@pytest.fixture()
def bare_path(tmp_path, monkeypatch):
    """A PATH holding only the fake tools a test writes, so the host's tools never answer."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """A tiny llama whose first MLP's down projection gets one input channel 1000 times the rest:
    up_proj's row 5 scaled, so that channel of every token is huge."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = make_tiny_model(tmp_path_factory.mktemp("planted") / "llama", "llama")
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[5] *= 1000.0
    model.save_pretrained(folder, safe_serialization=True)
    return folder


SHORT_TEXT = "The river rose after the storm, and the old stone bridge held. " * 8


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """A short text file for perplexity and calibration: quick on a tiny model."""
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text(SHORT_TEXT)
    return path

"""Latency and memory profiling: the statistics by hand, forced-length generation, tiny models on both backends."""

import json
import threading
import warnings

import pytest

from audit.errors import Cancelled, UserError
from audit.models import load_model
from audit.profile import (
    GenerationTiming,
    ProfileSettings,
    benchmark_prompt_ids,
    distribution,
    percentile,
    profile_loaded,
    profile_model,
)
from audit.progress import drive
from tests.conftest import run_cli

SMALL = ProfileSettings(prompt_tokens=24, new_tokens=4, runs=3, warmup_runs=1, probe_items=2, sampler_interval_s=0.05)


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return drive(load_model(str(tiny_llama)))


@pytest.fixture(scope="module")
def tiny_onnx(tiny_llama, tmp_path_factory):
    from optimum.exporters.onnx import main_export

    out = tmp_path_factory.mktemp("onnx") / "tiny-onnx"
    with warnings.catch_warnings():  # the exporter's tracer warnings say nothing about edge-audit
        warnings.simplefilter("ignore")
        main_export(str(tiny_llama), output=str(out), task="text-generation-with-past", device="cpu")
    return out


def test_percentile_by_hand():
    values = [4.0, 1.0, 3.0, 2.0]  # order must not matter
    # rank = (n - 1) q / 100 = 3q/100, interpolated between neighbours of the sorted list
    assert percentile(values, 50) == pytest.approx(2.5)  # rank 1.5
    assert percentile(values, 95) == pytest.approx(3.85)  # rank 2.85
    assert percentile(values, 99) == pytest.approx(3.97)  # rank 2.97
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_distribution_names_carry_units_and_counts():
    assert distribution("decode_ms_per_token", [10.0, 20.0, 30.0]) == {
        "decode_ms_per_token_p50": 20.0,
        "decode_ms_per_token_p95": 29.0,
        "decode_ms_per_token_p99": 29.8,
        "decode_ms_per_token_mean": 20.0,
        "decode_ms_per_token_samples": 3,
    }
    empty = distribution("probe_item_ms", [])
    assert empty["probe_item_ms_p50"] is None and empty["probe_item_ms_samples"] == 0


def test_generation_timing_by_hand():
    timing = GenerationTiming(prompt_tokens=100, started_s=10.0, token_times_s=(10.5, 10.6, 10.8), finished_s=10.9)
    assert timing.time_to_first_token_s == pytest.approx(0.5)
    assert timing.decode_step_s == pytest.approx([0.1, 0.2])
    assert timing.latency_s == pytest.approx(0.9)
    assert timing.prompt_tokens_per_s == pytest.approx(200.0)
    assert timing.generated_tokens_per_s == pytest.approx(2 / 0.3)
    assert GenerationTiming(5, 0.0, (1.0,), 1.0).generated_tokens_per_s is None


def test_settings_are_checked():
    for bad in (dict(prompt_tokens=0), dict(new_tokens=1), dict(runs=0), dict(warmup_runs=-1), dict(probe_items=99)):
        with pytest.raises(UserError):
            ProfileSettings(**bad)


def test_benchmark_prompt_is_exact_and_fixed(llama):
    ids = benchmark_prompt_ids(llama, 300)
    assert len(ids) == 300
    assert tuple(ids[: len(llama.text_prefix_ids)]) == llama.text_prefix_ids
    assert ids == benchmark_prompt_ids(llama, 300)
    assert benchmark_prompt_ids(llama, 1) == list(llama.text_prefix_ids)


def test_generation_can_be_forced_past_end_tokens(llama):
    prompt = list(llama.text_prefix_ids) + llama.encode("The quick brown fox")
    free = llama.generate(prompt, max_new_tokens=12)
    assert len(free.token_ids) == 12  # this random model never picks an end token by itself
    saved = llama.stop_token_ids
    llama.stop_token_ids = (free.token_ids[3],)  # make its fourth token an end token
    try:
        stopped = llama.generate(prompt, max_new_tokens=12)
        seen = []
        forced = llama.generate(prompt, max_new_tokens=12, stop_at_eos=False, on_token=seen.append)
    finally:
        llama.stop_token_ids = saved
    assert stopped.token_ids == free.token_ids[:3]
    assert forced.token_ids == free.token_ids
    assert tuple(seen) == forced.token_ids


def test_profile_on_a_tiny_torch_model(llama):
    events = []
    profile = drive(profile_loaded(llama, SMALL), events.append)
    data = profile.to_dict()
    assert data["runs"] == 3 and data["generated_tokens"] == 4 and data["prompt_tokens"] == 24
    assert data["latency_ms_samples"] == 3
    assert data["time_to_first_token_ms_samples"] == 3
    assert data["decode_ms_per_token_samples"] == 3 * 3  # runs x (new tokens - 1)
    assert data["probe_item_ms_samples"] == 3 * 2
    for name in ("latency_ms", "time_to_first_token_ms", "decode_ms_per_token", "probe_item_ms", "generated_tokens_per_s"):
        assert 0 < data[f"{name}_p50"] <= data[f"{name}_p95"] <= data[f"{name}_p99"]
    # A request is its first token plus the decode steps.
    assert data["latency_ms_p50"] > data["time_to_first_token_ms_p50"]
    assert data["rss_peak_mb"] > 0 and data["size_on_disk_mb"] > 0
    assert data["rss_before_load_mb"] is None  # the model was loaded elsewhere
    import torch

    assert data["threads"] == torch.get_num_threads()
    assert data["model"]["backend"] == "pytorch"
    assert data["resources"]["samples"] >= 2
    assert events[-1].fraction == 1.0 and len(events) == 1 + 3 + 1
    json.dumps(data)


def test_profile_refuses_a_prompt_longer_than_the_context(llama):
    with pytest.raises(UserError, match="exceed the model's context of 256"):
        drive(profile_loaded(llama, ProfileSettings(prompt_tokens=250, new_tokens=10)))


def test_profile_can_be_cancelled(llama):
    cancel = threading.Event()
    job = profile_loaded(llama, SMALL, cancel)
    next(job)
    cancel.set()
    with pytest.raises(Cancelled):
        drive(job)


def test_profile_model_on_onnx_runtime_records_load_memory(tiny_onnx):
    profile = drive(profile_model(str(tiny_onnx), SMALL))
    data = profile.to_dict()
    assert data["model"]["backend"] == "onnxruntime"
    assert data["generated_tokens"] == 4
    assert 0 < data["rss_before_load_mb"] <= data["rss_peak_load_mb"]
    assert data["rss_after_load_mb"] > 0 and data["load_s"] > 0
    assert data["threads"] >= 1


def test_the_load_peak_is_never_under_the_load_s_ends(tiny_llama, monkeypatch):
    import audit.profile as profile_module
    from hardware.memory import MB

    # The kernel's high-water mark, reset after RSS before the load is read, can read a few
    # pages under it: the peak reported is still at least both ends.
    readings = iter([1000 * MB, 900 * MB])
    monkeypatch.setattr(profile_module, "process_rss_bytes", lambda: next(readings, 950 * MB))
    real_summary = profile_module.ResourceSampler.summary
    monkeypatch.setattr(profile_module.ResourceSampler, "summary", lambda self: {**real_summary(self), "rss_peak_mb": 999.95})
    data = drive(profile_model(str(tiny_llama), SMALL)).to_dict()
    assert data["rss_before_load_mb"] == 1000.0 and data["rss_after_load_mb"] == 900.0
    assert data["rss_peak_load_mb"] == 1000.0


def test_profile_command(tiny_llama, capsys):
    from tui.cli import main

    args = ("profile", "--model", str(tiny_llama), "--runs", "2", "--warmup-runs", "1", "--prompt-tokens", "16", "--new-tokens", "3")
    result = run_cli(*args, "--json")  # a fresh process, as a user runs it
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["latency_ms_samples"] == 2 and data["decode_ms_per_token_samples"] == 4
    assert data["rss_before_load_mb"] < data["rss_after_load_mb"]
    assert main(list(args)) == 0
    assert "time to first token" in capsys.readouterr().out
    assert main(["profile", "--model", str(tiny_llama), "--new-tokens", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "edge-audit: error: new tokens must be at least 2 (one first token, one decode step), got 1"
    ]

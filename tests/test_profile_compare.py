"""Variant tables: ratios to dense by hand, missing figures, the benchmark script's options."""

import argparse

import pytest

from hardware.comparison import compare_profiles, ratio, render_table
from tests.conftest import benchmark_script


def profile(backend, sparsity, quantization=None, **figures):
    base = {
        "latency_ms_p50": 1000.0,
        "time_to_first_token_ms_p50": 200.0,
        "decode_ms_per_token_p50": 25.0,
        "decode_ms_per_token_p95": 30.0,
        "generated_tokens_per_s_p50": 40.0,
        "probe_item_ms_p50": 80.0,
        "rss_peak_mb": 800.0,
        "size_on_disk_mb": 500.0,
    }
    base.update(figures)
    base["model"] = {"backend": backend, "weight_sparsity": sparsity, "quantization": quantization}
    return base


PROFILES = {
    "wanda-50": profile("pytorch", 0.5, latency_ms_p50=1010.0, generated_tokens_per_s_p50=39.6),
    "dense": profile("pytorch", 0.0),
    "onnx-int8": profile(
        "onnxruntime", None, "int8", latency_ms_p50=500.0, decode_ms_per_token_p50=12.5,
        generated_tokens_per_s_p50=80.0, rss_peak_mb=400.0, size_on_disk_mb=125.0, probe_item_ms_p50=None,
    ),
}


def test_ratio_by_hand():
    assert ratio(50.0, 200.0) == 0.25
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None


def test_rows_put_dense_first_with_ratios():
    rows = compare_profiles(PROFILES)
    assert [r.name for r in rows] == ["dense", "wanda-50", "onnx-int8"]
    dense, wanda, int8 = rows
    assert all(value == 1.0 for value in dense.ratios.values())
    assert wanda.ratios["latency_ms_p50"] == pytest.approx(1.01)
    assert wanda.ratios["generated_tokens_per_s_p50"] == pytest.approx(0.99)
    assert wanda.ratios["size_on_disk_mb"] == 1.0  # dense storage of a pruned model saves nothing
    assert int8.ratios["decode_ms_per_token_p50"] == 0.5
    assert int8.ratios["generated_tokens_per_s_p50"] == 2.0
    assert int8.ratios["size_on_disk_mb"] == 0.25
    assert int8.ratios["probe_item_ms_p50"] is None
    data = int8.to_dict()
    assert data["variant"] == "onnx-int8" and data["quantization"] == "int8"
    assert data["rss_peak_mb_ratio_to_dense"] == 0.5


def test_rows_need_the_baseline():
    with pytest.raises(ValueError):
        compare_profiles({"wanda-50": PROFILES["wanda-50"]})


def test_table_shows_figures_and_ratios():
    table = render_table(compare_profiles(PROFILES))
    lines = table.splitlines()
    assert lines[0].split() == ["variant", "dense", "wanda-50", "onnx-int8"]
    assert "onnxruntime int8" in lines[1]
    assert lines[2].split()[-3:] == ["0.0%", "50.0%", "n/a"]
    size = next(line for line in lines if line.startswith("size on disk MB"))
    assert size.split()[-5:] == ["500.0", "500.0", "(1.00x)", "125.0", "(0.25x)"]
    tokens = next(line for line in lines if line.startswith("generated tok/s p50"))
    assert tokens.endswith("80.0 (2.00x)")
    probe = next(line for line in lines if line.startswith("probe item ms p50"))
    assert probe.endswith("n/a")


def test_benchmark_script_parses_variants_and_plans_builds(tmp_path):
    script = benchmark_script("variants_latency")
    assert script.parse_variant("onnx-int8=/tmp/x") == ("onnx-int8", "/tmp/x")
    for bad in ("noequals", "=path", "name="):
        with pytest.raises(argparse.ArgumentTypeError):
            script.parse_variant(bad)
    commands = {name: script.build_command(name, "smollm2-135m", tmp_path / name) for name in script.STANDARD_VARIANTS}
    assert commands["wanda-2:4"][:3] == ["prune", "--model", "smollm2-135m"]
    assert "--pattern" in commands["wanda-2:4"] and "2:4" in commands["wanda-2:4"]
    assert commands["onnx-int4"][-4:] == ["--scheme", "onnx-int4", "--out", str(tmp_path / "onnx-int4")]

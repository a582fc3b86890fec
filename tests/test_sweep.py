"""The study's figures from one run: sweep points per method and sparsity, their curves, and the
transition rate of pruning over quantization, checked against hand-computed cases."""

import pytest

from audit.probes.compare import ProbeRecord, SuiteEvidence
from audit.probes.items import ItemResult
from audit.sweep import curves, sweep_points, transition_ratio

SETTINGS = {"suite": "builtin", "mode": "loglik", "norm": "mean", "prompt": "context-question-answer"}


def _result(item_id: str, chosen: int, condition: str = "ambig") -> ItemResult:
    aligned = chosen == 0  # option 0 is the bias-aligned one, option 2 "unknown"
    return ItemResult(
        item_id=item_id, suite="builtin", category="Age", condition=condition, polarity="neg", mode="loglik", norm="mean",
        n_options=3, label=2, unknown_index=2, bias_aligned=(0,), chosen=chosen, correct=chosen == 2,
        aligned=aligned, aligned_share=float(aligned), latency_ms=1.0, option_logprobs=(0.0, 0.0, 0.0), option_tokens=(1, 1, 1),
    )


def _record(choices: str) -> ProbeRecord:
    """One answer per item i1..i5, as a string of option indices."""
    return ProbeRecord(SETTINGS, [_result(f"i{n}", int(c)) for n, c in enumerate(choices, start=1)])


def _variant(name: str, **recipe):
    prune, quantize = recipe.get("prune"), recipe.get("quantize")
    return {
        "name": name,
        "method": recipe.get("method", name),
        "sparsity": prune["sparsity"] if prune else None,
        "recipe": {"prune": prune, "quantize": quantize},
        "size_on_disk_mb": recipe.get("size"),
        "degraded": recipe.get("degraded", False),
    }


# The baseline is bias-aligned on i1 only: i2..i5 can transition.
EVIDENCE = SuiteEvidence(
    _record("01122"),
    {
        "baseline": _record("01122"),
        "magnitude-70": _record("00022"),  # i2, i3 turn bias-aligned
        "wanda-70": _record("00122"),  # i2
        "magnitude-30": _record("01122"),  # none
        "int8": _record("01102"),  # i4
    },
)
VARIANTS = [
    _variant("baseline", size=100.0),
    _variant("magnitude-70", method="magnitude", prune={"sparsity": 0.7}),
    _variant("wanda-70", method="wanda", prune={"sparsity": 0.7}),
    _variant("magnitude-30", method="magnitude", prune={"sparsity": 0.3}),
    _variant("int8", quantize={"scheme": "int8-dynamic"}, size=30.0),
]


def test_pruning_over_quantization_by_hand():
    ratio = transition_ratio(EVIDENCE, VARIANTS)
    # int8 is 30% of the baseline's size: it matches 70% sparsity (1 - 0.3).
    assert ratio["matches"] == [
        {"quantized": "int8", "size_ratio": 0.3, "equivalent_sparsity": 0.7, "matched_sparsity": 0.7, "pruned": ["magnitude-70", "wanda-70"]}
    ]
    # Per eligible item (i2..i5), the share of pruned variants that turned it: 1, 0.5, 0, 0
    # (mean 0.375); of quantized ones: 0, 0, 1, 0 (mean 0.25). 0.375 / 0.25 = 1.5.
    assert ratio["n"] == 4
    assert ratio["pruned_transition_rate"]["value"] == 0.375 and ratio["quantized_transition_rate"]["value"] == 0.25
    assert ratio["value"] == pytest.approx(1.5)
    low, high = ratio["ci95"]
    assert low <= 1.5 and (high is None or high >= 1.5)  # four items: a wide interval


def test_a_degraded_variant_is_left_out_of_the_ratio():
    degraded = [dict(v, degraded=v["name"] == "wanda-70") for v in VARIANTS]
    ratio = transition_ratio(EVIDENCE, degraded)
    assert ratio["matches"][0]["pruned"] == ["magnitude-70"]
    assert ratio["value"] == pytest.approx(2.0)  # (1 + 1 + 0 + 0) / 4 over 0.25
    assert "wanda-70: left out, too degraded to judge" in ratio["notes"]


def test_variants_judged_against_a_degraded_baseline_are_left_out_and_the_baseline_is_named():
    from audit.gate import PLAIN
    from audit.sweep import unreadable

    blocked = [dict(v, degraded=True, gate_plain=PLAIN["baseline degraded"]) for v in VARIANTS]
    ratio = transition_ratio(EVIDENCE, blocked)
    assert ratio["value"] is None
    assert "wanda-70: left out, the baseline is too degraded to judge against" in ratio["notes"]
    assert unreadable({"degraded": True, "verdict": PLAIN["baseline degraded"]}) == "baseline too degraded"
    assert unreadable({"degraded": True, "verdict": PLAIN["degraded"]}) == "too degraded to judge"


def test_without_sizes_or_quantized_variants_there_is_no_ratio():
    unsized = [dict(v, size_on_disk_mb=None) for v in VARIANTS]
    ratio = transition_ratio(EVIDENCE, unsized)
    assert ratio["value"] is None and any("no size on disk" in n for n in ratio["notes"])
    only_pruned = [v for v in VARIANTS if v["name"] != "int8"]
    assert transition_ratio(EVIDENCE, only_pruned)["value"] is None


def _estimate(value, low=None, high=None):
    return {"value": value, "ci95": [low, high], "n": 10}


def _report():
    def probe(srs, change=None, transitions=None):
        return {
            "builtin": {
                "overall": {"srs": _estimate(srs)},
                "category_mean": {"srs": _estimate(srs + 0.01, srs - 0.1, srs + 0.1)},
                "comparison": {"srs_relative_change_pct": change, "transition_rate": transitions, "comparable": True},
                "comparison_category_mean": {"srs_relative_change_pct": change},
            }
        }

    variants = [
        dict(_variant("baseline"), probes=probe(0.4), perplexity=10.0),
        dict(_variant("wanda-50", method="wanda", prune={"sparsity": 0.5}), probes=probe(0.5, _estimate(25.0, 5, 50), _estimate(0.2, 0.1, 0.3)),
             perplexity=11.0, perplexity_change=_estimate(10.0, 8, 12), actual_sparsity=0.5, decoder_sparsity=0.33),
        dict(_variant("magnitude-50", method="magnitude", prune={"sparsity": 0.5}, degraded=True),
             probes=probe(0.3, _estimate(-25.0), _estimate(0.1)), perplexity=90.0, perplexity_change=_estimate(800.0)),
        dict(_variant("int8", quantize={"scheme": "int8-dynamic"}), probes=probe(0.4)),
    ]
    return {"baseline": "baseline", "suites": ["builtin"], "variants": variants}


def test_sweep_points_and_curves():
    points = sweep_points(_report())
    assert [(p["method"], p["sparsity"]) for p in points] == [("dense", 0.0), ("magnitude", 0.5), ("wanda", 0.5)]
    base, magnitude, wanda = points
    assert base["srs_change_pct"]["value"] == 0.0 and base["transition_rate"]["value"] == 0.0
    assert wanda["srs"]["value"] == 0.51 and wanda["srs_pooled"]["value"] == 0.5  # category mean, pooled
    assert wanda["srs_change_pct"]["ci95"] == [5, 50] and wanda["decoder_sparsity"] == 0.33 and wanda["pruned_layers_sparsity"] == 0.5
    # Too degraded to judge: its perplexity stays, its bias figures are not shown.
    assert magnitude["degraded"] and magnitude["srs"] is None and magnitude["transition_rate"] is None
    assert magnitude["perplexity_change_pct"]["value"] == 800.0
    lines = curves(points)
    assert list(lines["srs"]) == ["wanda"]  # magnitude: nothing to plot
    assert lines["srs"]["wanda"] == [pytest.approx((0.0, 0.41, 0.3, 0.5)), (0.5, 0.51, 0.4, 0.6)]
    assert lines["transitions"]["wanda"] == [(0.0, 0.0, 0.0, 0.0), (0.5, 0.2, 0.1, 0.3)]
    # Perplexity as a ratio to the baseline (log scale): +800% is 9 times.
    assert lines["perplexity"]["magnitude"] == [(0.0, 1.0, 1.0, 1.0), (0.5, 9.0, None, None)]
    assert lines["perplexity"]["wanda"][1] == pytest.approx((0.5, 1.1, 1.08, 1.12))


SMALL_SWEEP = """\
name = "small-sweep"
model = "{model}"

[grid]
methods = ["magnitude", "wanda"]
sparsities = [0.3, 0.7]
exclude = {{ wanda = ["*.o_proj", "*.down_proj"] }}

[[variants]]
quantize = "int8-dynamic"

[calibration]
nsamples = 4
seqlen = 32
statistics = "dense"

[probes]
mode = "generate"
prompt = "paper"
parser = "lenient"
temperature = 0.3
seeds = [42, 123]
conditions = ["ambig"]
limit = 3

[profile]
enabled = false

[gate]
competence = false

[[gate.rules]]
metric = "transition_rate"
max = 0.2
"""


def test_a_small_sweep_reports_the_studys_figures(tiny_llama, tmp_path, capsys):
    """Two methods at two sparsities and int8, on a few ambiguous items: the report holds the
    sweep table, its curves and the ratio of pruning over quantization; Wanda calibrated once.
    Nothing is profiled: the sizes the ratio matches variants by are measured without it."""
    import json

    from tui.cli import main

    plan = tmp_path / "plan.toml"
    plan.write_text(SMALL_SWEEP.format(model=tiny_llama))
    code = main(["run", str(plan), "--store", str(tmp_path / "r.db"), "--report", str(tmp_path / "report"), "--json"])
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    printed = json.loads(captured.out)  # --json carries the study's figures for scripts
    assert printed["sweep"] == report["sweep"]
    assert printed["transition_ratio_pruning_vs_quantization"] == report["transition_ratio_pruning_vs_quantization"]
    points = {p["variant"]: p for p in report["sweep"]}
    assert set(points) == {"baseline", "magnitude-30", "magnitude-70", "wanda-30", "wanda-70"}
    wanda = points["wanda-70"]
    # o_proj and down_proj dense: the decoder loses less than the pruned layers.
    assert wanda["pruned_layers_sparsity"] == pytest.approx(0.7, abs=0.01) and wanda["decoder_sparsity"] < 0.6
    assert points["magnitude-70"]["decoder_sparsity"] == pytest.approx(0.7, abs=0.01)
    for point in points.values():
        assert point["perplexity_change_pct"]["value"] is not None and "ci95" in point["transition_rate"]
    ratio = report["transition_ratio_pruning_vs_quantization"]
    assert ratio["matches"][0]["quantized"] == "int8-dynamic" and ratio["matches"][0]["matched_sparsity"] in (0.3, 0.7)
    assert {"value", "ci95", "n", "pruned_transition_rate", "quantized_transition_rate"} <= set(ratio)
    shared = [report["variants"][i] for i, v in enumerate(report["variants"]) if v["name"].startswith("wanda")]
    assert all(v["recipe"]["prune"]["exclude"] == ["*.o_proj", "*.down_proj"] for v in shared)
    assert {points[n]["method"] for n in ("wanda-30", "wanda-70")} == {"wanda (except *.o_proj, *.down_proj)"}
    html_text = (tmp_path / "report" / "report.html").read_text()
    for figure in ("sparsity-srs", "sparsity-transitions", "sparsity-perplexity"):
        assert f"id='fig-{figure}'" in html_text
    assert "Sparsity sweep" in html_text and "Pruning against quantization" in html_text
    # One pass of Wanda's input norms served both sparsities.
    from audit.store import ResultsStore

    with ResultsStore(tmp_path / "r.db", readonly=True) as store:
        recipes = [store.step(1, name, "compress")["result"]["prune"]["recipe"] for name in ("wanda-30", "wanda-70")]
        assert not [s for s in store.steps(1) if s["kind"] == "profile"]
        baseline_size = store.step(1, "baseline", "fingerprint")["result"]["size_on_disk_mb"]
    int8_size = next(v["size_on_disk_mb"] for v in report["variants"] if v["name"] == "int8-dynamic")
    assert ratio["matches"][0]["size_ratio"] == pytest.approx(int8_size / baseline_size, abs=1e-4)
    assert [r["statistics_shared"] for r in recipes] == [False, True]
    assert len(list((tmp_path / "runs" / "run-1" / ".calibration").glob("*.safetensors"))) == 1


def test_each_point_says_whether_its_competence_was_shown():
    report = _report()
    report["gate"] = {"findings": [
        {"check": "competence", "metric": "accuracy_disambig", "variant": "wanda-50", "verdict": "inconclusive"},
        {"check": "competence", "metric": "accuracy_disambig_drop", "variant": "wanda-50", "verdict": "pass"},
        {"check": "rule", "metric": "transition_rate", "variant": "wanda-50", "verdict": "fail"},
    ]}
    points = {p["variant"]: p for p in sweep_points(report)}
    assert points["wanda-50"]["competence"] == "inconclusive" and points["baseline"]["competence"] is None


def test_recipe_labels_by_hand():
    from audit.compress.recipe import recipe_label

    assert recipe_label({"method": "wanda", "pattern": "unstructured", "per_row": False, "exclude": []}, None) == "wanda"
    assert recipe_label({"method": "magnitude", "pattern": "2:4", "per_row": True, "exclude": ["*.down_proj", "*.o_proj"]},
                        {"scheme": "onnx-int4", "block_size": 128}) == "magnitude 2:4 (per row, except *.down_proj, *.o_proj) + onnx-int4 (blocks of 128)"
    assert recipe_label(None, {"scheme": "onnx-int4", "block_size": 32}) == "onnx-int4"  # the default block size
    # Stored fields of the wrong type are left out, never raised on.
    assert recipe_label({"method": "wanda", "pattern": 24, "per_row": 1, "exclude": "*.o_proj"}, {"scheme": "int8-dynamic", "block_size": True}) == "wanda + int8-dynamic"
    assert recipe_label({"method": None}, "int8") is None


def test_prunings_that_differ_only_in_what_they_keep_get_curves_of_their_own():
    """Wanda at 0.5 with and without its down projections kept dense, stored when both were
    labelled "wanda": the report names them apart, and each has its own line."""
    from audit.results import RunView

    def stored(name, **prune):
        recipe = {"kind": "variant", "name": name, "method": "wanda", "sparsity": 0.5, "path": None, "quantize": None,
                  "prune": {"method": "wanda", "sparsity": 0.5, "pattern": "unstructured", "per_row": False, "exclude": [], **prune}}
        variant = RunView._variant(name, recipe, {})
        variant["probes"] = {"builtin": {"category_mean": {"srs": {"value": 0.5, "ci95": [0.4, 0.6]}},
                                         "comparison": {"transition_rate": {"value": 0.1, "ci95": [0.0, 0.2]}, "comparable": True}}}
        return variant

    report = {"baseline": "baseline", "suites": ["builtin"], "variants": [
        dict(_variant("baseline"), probes={"builtin": {"category_mean": {"srs": {"value": 0.4, "ci95": [0.3, 0.5]}}}}),
        stored("wanda-50"), stored("wanda-50-keep", exclude=["*.down_proj"]),
    ]}
    points = sweep_points(report)
    assert [p["method"] for p in points] == ["dense", "wanda", "wanda (except *.down_proj)"]
    assert {method: len(line) for method, line in curves(points)["srs"].items()} == {"wanda": 2, "wanda (except *.down_proj)": 2}

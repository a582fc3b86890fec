"""Shipped plans (`plans list`, `plans show`, `run NAME`), the study's probe options in plans, and
`exclude` in `[grid]`."""

import json

import pytest

from audit.errors import UserError
from audit.plans import load_plan, load_preset, parse_plan, plan_to_toml, preset_names, preset_text, with_overrides
from tui.cli import main

STUDY = "rath-maliakkal-2026"


def test_shipped_plans_are_listed_and_valid():
    assert preset_names() == ["default", "quick", STUDY]
    for name in preset_names():
        plan = load_preset(name)
        assert plan.name == name
        # Written out and read back, a shipped plan is the same plan.
        again = parse_plan(plan_to_toml(plan), None, check_model=False)
        assert again.variants == plan.variants and again.probes == plan.probes and again.gate == plan.gate


def test_the_study_preset_has_exactly_the_studys_settings():
    plan = load_preset(STUDY)
    pruned = [v for v in plan.variants if v.prune]
    assert {(v.prune.method, v.prune.sparsity) for v in pruned} == {
        (m, s) for m in ("random", "magnitude", "wanda") for s in (0.1, 0.3, 0.5, 0.7)
    }
    for variant in pruned:
        dense = ("*.o_proj", "*.down_proj") if variant.prune.method == "wanda" else ()
        assert variant.prune.exclude == dense and variant.prune.pattern == "unstructured" and not variant.quantize
    assert [v.quantize.scheme for v in plan.variants if v.quantize] == ["int8-dynamic", "onnx-int8", "onnx-int4"]
    probes = plan.probes
    assert (probes.mode, probes.prompt, probes.parser) == ("generate", "paper", "lenient")
    assert probes.temperature == 0.3 and probes.seeds == (42, 123, 456, 789, 1024) and probes.max_new_tokens == 5
    assert probes.conditions == ("ambig",)
    # Wanda's norms on the dense model, as the study's code takes them: one pass for every sparsity.
    assert plan.calibration.statistics == "dense"
    text = preset_text(STUDY)
    for named in ("Rath & Maliakkal", "arXiv 2605.08137", "C4", "tulu-3", "Gemma-2-9B"):
        assert named in text


def test_plans_show_prints_the_toml_and_list_names_every_plan(capsys):
    assert main(["plans", "show", STUDY]) == 0
    assert capsys.readouterr().out == preset_text(STUDY)
    assert main(["plans", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["plans"]
    assert [p["name"] for p in listed] == preset_names()
    assert next(p for p in listed if p["name"] == STUDY)["variants"] == 15
    assert main(["plans", "show", "nope"]) == 2
    assert "no shipped plan named 'nope'; shipped plans: default, quick, rath-maliakkal-2026" in capsys.readouterr().err


def test_overrides_replace_model_limit_and_suites(tmp_path, tiny_llama):
    plan = with_overrides(load_preset("quick"), model=str(tiny_llama), limit=2, suites=["bbq:" + str(tmp_path)])
    assert plan.model == str(tiny_llama) and plan.probes.limit == 2
    assert plan.probes.suites == (f"bbq:{tmp_path}",)
    assert [v.name for v in plan.variants] == [v.name for v in load_preset("quick").variants]
    with pytest.raises(UserError, match="--suite bbq:/no/such: no such file or folder"):
        with_overrides(load_preset("quick"), suites=["bbq:/no/such"])
    with pytest.raises(UserError, match="unknown probe suite 'winobias'"):
        with_overrides(load_preset("quick"), suites=["winobias"])
    with pytest.raises(UserError, match="model: no such file or folder"):
        with_overrides(load_preset("quick"), model=str(tmp_path / "none"))


def test_the_sequential_override_needs_a_gate(tmp_path):
    plan = with_overrides(load_preset("quick"), sequential=True)
    assert plan.probes.sequential and "sequential = true" in plan.text
    assert plan.variants == load_preset("quick").variants and plan.gate == load_preset("quick").gate
    ungated = tmp_path / "plan.toml"
    ungated.write_text('model = "smollm2-135m"\n\n[gate]\ncompetence = false\n')
    with pytest.raises(UserError, match=r"^--sequential stops scoring once the gate's verdicts settle: the plan has no gate rules or competence guard$"):
        with_overrides(load_plan(ungated), sequential=True)


def test_run_refuses_an_unknown_name_before_any_work(tmp_path, capsys):
    assert main(["run", "no-such-plan", "--store", str(tmp_path / "r.db")]) == 2
    assert "no plan file no-such-plan and no shipped plan of that name" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()
    assert main(["run", "--resume", "1", "--limit", "2", "--store", str(tmp_path / "r.db")]) == 2


PLAN = """\
model = "smollm2-135m"

[grid]
methods = ["magnitude", "wanda"]
sparsities = [0.5]
exclude = {exclude}

[probes]
mode = "{mode}"
conditions = {conditions}
prompt = "{prompt}"
parser = "{parser}"
"""


def _plan(tmp_path, **values):
    settings = dict(exclude='{ wanda = ["*.o_proj"] }', mode="generate", conditions='["ambig"]', prompt="paper", parser="lenient")
    settings.update(values)
    path = tmp_path / "plan.toml"
    path.write_text(PLAN.format(**settings))
    return load_plan(path)


def test_probe_options_and_grid_exclude(tmp_path):
    plan = _plan(tmp_path)
    assert plan.variant("wanda-50").prune.exclude == ("*.o_proj",) and plan.variant("magnitude-50").prune.exclude == ()
    assert (plan.probes.conditions, plan.probes.prompt, plan.probes.parser) == (("ambig",), "paper", "lenient")
    every = _plan(tmp_path, exclude='["*.down_proj"]', conditions='["disambig", "ambig"]')
    assert all(v.prune.exclude == ("*.down_proj",) for v in every.variants)
    assert every.probes.conditions == ("ambig", "disambig")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"conditions": '["vague"]'}, r"line 10: probes.conditions: must list 'ambig' and/or 'disambig'"),
        ({"prompt": "poem"}, r"line 11: probes.prompt: unknown prompt 'poem'; known: default, paper"),
        ({"parser": "guess"}, r"line 12: probes.parser: unknown answer parser 'guess'; known: lenient, strict"),
        ({"mode": "loglik", "parser": "strict"}, r"probes.prompt: applies to mode = \"generate\""),
        ({"exclude": '{ sparsegpt = ["*.o_proj"] }'}, r"line 6: grid.exclude.sparsegpt: unknown key; known here: magnitude, wanda"),
        ({"exclude": '"*.o_proj"'}, r"line 6: grid.exclude: must be a table"),
    ],
)
def test_bad_probe_options_name_key_and_line(tmp_path, values, message):
    with pytest.raises(UserError, match=message):
        _plan(tmp_path, **values)


def test_conditions_apply_to_question_suites_only(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text('model = "smollm2-135m"\n[probes]\nsuites = ["crows:x.csv"]\nconditions = ["ambig"]\n')
    with pytest.raises(UserError, match="probes.conditions: applies to question suites .*not to crows"):
        load_plan(path)


def test_calibration_statistics_are_checked(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text('model = "smollm2-135m"\n[calibration]\nstatistics = "both"\n')
    with pytest.raises(UserError, match=r"line 3: calibration.statistics: must be 'sequential' or 'dense', got 'both'"):
        load_plan(path)
    path.write_text('model = "smollm2-135m"\n')
    assert load_plan(path).calibration.statistics == "sequential"


def test_a_plan_is_named_by_file_or_by_shipped_name(tmp_path, monkeypatch):
    from audit.plans import named_plan
    from tui.screens.history import run_plan_file

    assert named_plan("quick").name == "quick"
    # A file of that name wins over the shipped plan.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick").write_text('name = "mine"\nmodel = "smollm2-135m"\n')
    assert named_plan("quick").name == "mine"
    with pytest.raises(UserError, match="no plan file nope.toml and no shipped plan of that name; shipped plans: default, quick"):
        named_plan("nope.toml")
    # The app's History runs the same names: a wrong one fails before anything runs.
    job = run_plan_file("nope", tmp_path / "r.db", None, None)
    next(job)
    with pytest.raises(UserError, match="no shipped plan of that name"):
        next(job)
    assert not (tmp_path / "r.db").exists()

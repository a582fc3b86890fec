"""Plan files: parsing, defaults, the grid shorthand, and one-line errors with the line number."""

import pytest

from audit.errors import UserError
from audit.plans import default_plan, key_lines, load_plan, parse_plan, plan_to_toml

GOOD = """\
name = "nightly"
model = "smollm2-135m"

[grid]
methods = ["magnitude", "wanda"]
sparsities = [0.3, 0.5]

[[variants]]
name = "w24-int8"
prune = { method = "wanda", pattern = "2:4" }
quantize = { scheme = "onnx-int8" }

[probes]
suites = ["builtin", "crows:data/crows.csv"]
seeds = [0, 1]
mode = "generate"
[gate]
confidence = 0.9

[[gate.rules]]
metric = "srs_relative_change_pct"
max = 20

[[gate.rules]]
metric = "bias_score_ambig"
category = "each"
max = 0.2
confidence = 0.99
"""


def test_good_plan(tmp_path):
    path = tmp_path / "plans" / "nightly.toml"
    path.parent.mkdir()
    path.write_text(GOOD)
    plan = load_plan(path)
    assert plan.name == "nightly" and plan.model == "smollm2-135m"
    assert [v.name for v in plan.variants] == ["magnitude-30", "wanda-30", "magnitude-50", "wanda-50", "w24-int8"]
    w24 = plan.variant("w24-int8")
    assert w24.prune.pattern == "2:4" and w24.quantize.scheme == "onnx-int8" and w24.sparsity == 0.5
    assert plan.probes.suites == ("builtin", f"crows:{(tmp_path / 'plans' / 'data' / 'crows.csv').resolve()}")
    assert plan.probes.seeds == (0, 1)
    assert plan.calibration.nsamples == 32 and plan.profile.runs == 10
    srs, s_amb = plan.gate.rules
    assert srs.max == 20.0 and plan.gate.level(srs) == 0.9  # the gate's level
    assert s_amb.category == "each" and plan.gate.level(s_amb) == 0.99  # its own
    assert plan.gate.competence and plan.gate.max_accuracy_drop == 0.10 and plan.gate.max_parse_failure_rate == 0.05
    assert plan.text == GOOD


def test_replaced_gate_keys_name_the_new_ones(tmp_path):
    """Plans written for the significance-based gate are refused with the key that replaced
    each old one; a stored run's plan with them is read in today's terms instead."""
    old = GOOD.replace("[gate]\nconfidence = 0.9\n", "[gate]\nsignificance = 0.05\n").replace('"srs_relative_change_pct"', '"srs_relative_increase_pct"')
    path = tmp_path / "plan.toml"
    path.write_text(old)
    with pytest.raises(UserError, match=r"line 18: gate.significance: was replaced by confidence: .* significance = 0.05 becomes confidence = 0.95"):
        load_plan(path)
    path.write_text(old.replace("significance = 0.05", ""))
    with pytest.raises(UserError, match=r"line 21: gate.rules\[0\].metric: gate metric 'srs_relative_increase_pct' is now called 'srs_relative_change_pct'"):
        load_plan(path)
    path.write_text(GOOD.replace("max = 20", "max = 20\nsignificance = 0.01"))
    with pytest.raises(UserError, match=r"gate.rules\[0\].significance: was replaced by confidence"):
        load_plan(path)
    stored = parse_plan(old, None, check_model=False, stored=True)
    assert [r.metric for r in stored.gate.rules] == ["srs_relative_change_pct", "bias_score_ambig"]
    assert stored.gate.confidence == 0.95


def test_gate_settings_are_checked_and_written_back(tmp_path):
    from audit.plans import plan_to_toml

    path = tmp_path / "plan.toml"
    path.write_text(GOOD.replace("[gate]\nconfidence = 0.9\n", "[gate]\nconfidence = 0.4\n"))
    with pytest.raises(UserError, match=r"line 18: gate.confidence: must be within \[0.5, 1\), got 0.4"):
        load_plan(path)
    path.write_text(GOOD.replace("[gate]\nconfidence = 0.9\n", "[gate]\nconfidence = 0.9\ncompetence = false\nmax_accuracy_drop = 0.05\n"))
    plan = load_plan(path)
    assert not plan.gate.competence and plan.gate.max_accuracy_drop == 0.05
    again = parse_plan(plan_to_toml(plan), path)
    assert again.gate == plan.gate and again.probes == plan.probes


def test_default_plan_is_valid():
    plan = default_plan()
    names = [v.name for v in plan.variants]
    assert names == ["magnitude-50", "wanda-50", "sparsegpt-50", "random-50", "wanda-2of4", "int8-dynamic", "onnx-int8"]
    assert plan.probes.suites == ("builtin",)


def test_key_lines_index_arrays_of_tables():
    lines = key_lines(GOOD)
    assert lines["variants[0].prune"] == 10
    assert lines["gate.rules[1].category"] == 26
    assert lines["grid.sparsities"] == 6


@pytest.mark.parametrize(
    "edit, message",
    [
        (("[probes]", "[probes]\ncolour = 'red'"), r"plan.toml line 14: probes.colour: unknown key; known here: categories, .*"),
        (('pattern = "2:4" }', 'pattern = "2:4", sparsity = 1.5 }'), r"plan.toml line 10: variants\[0\].prune.sparsity: must be within \[0, 0.95\], got 1.5"),
        (('pattern = "2:4"', 'pattern = "4:2"'), r"plan.toml line 10: variants\[0\].prune.pattern: N:M needs 0 < N < M"),
        (('pattern = "2:4"', 'pattern = "two of four"'), r"line 10: variants\[0\].prune.pattern: must be 'unstructured' or N:M"),
        (('model = "smollm2-135m"', 'model = "./no/such/model"'), r"plan.toml line 2: model: no such file or folder"),
        (('model = "smollm2-135m"', 'modle = "smollm2-135m"'), r"plan.toml line 2: modle: unknown key"),
        (('max = 20', 'max = "twenty"'), r"plan.toml line 22: gate.rules\[0\].max: must be a number, got 'twenty'"),
        (('metric = "bias_score_ambig"', 'metric = "bias"'), r"line 25: gate.rules\[1\].metric: unknown gate metric 'bias'; known: .*srs_relative_change_pct"),
        (('seeds = [0, 1]', 'seeds = []'), r"line 15: probes.seeds: must be a non-empty list of integers"),
        (('seeds = [0, 1]', f'seeds = {list(range(1001))}'), r"line 15: probes.seeds: lists at most 1000 seeds \(each is a whole generation of every item\), got 1001"),
        (('sparsities = [0.3, 0.5]', 'sparsities = [0.3, 0.99]'), r"line 6: grid.sparsities: must be within \[0, 0.95\], got 0.99"),
        # Settings that would change nothing, or fail the compress step, are refused by name.
        (('{ method = "wanda", pattern = "2:4" }', '{ method = "magnitude", pattern = "2:4", per_row = true }'),
         r"line 10: variants\[0\].prune.per_row: true changes nothing with pattern 2:4, .*; leave per_row out"),
        (('{ method = "wanda", pattern = "2:4" }', '{ method = "wanda", per_row = true }'),
         r"line 10: variants\[0\].prune.per_row: true changes nothing for wanda, which always compares weights within each output row"),
        (('{ method = "wanda", pattern = "2:4" }', '{ method = "sparsegpt", per_row = true }'),
         r"line 10: variants\[0\].prune.per_row: true does not apply to sparsegpt, which chooses its own mask per column block"),
        (('scheme = "onnx-int8" }', 'scheme = "int8-dynamic", block_size = 64 }'),
         r"line 11: variants\[0\].quantize.block_size: applies to onnx-int8 and onnx-int4 only, not int8-dynamic, which has no blocks"),
        (('scheme = "onnx-int8" }', 'scheme = "onnx-int8", block_size = 512 }'),
         r"line 11: variants\[0\].quantize.block_size: must be one of 16, 32, 64, 128, 256, got 512"),
    ],
)
def test_bad_plans_name_key_and_line(tmp_path, edit, message):
    assert_refused(tmp_path, GOOD, edit, message)


def test_settings_that_change_nothing_are_left_out_of_a_written_plan_and_read_from_older_ones():
    """Earlier versions wrote per_row = false and block_size = 32 into every recipe: such plans
    still read. Stored plans that asked for more are read as the variants were compressed."""
    older = GOOD.replace('{ method = "wanda", pattern = "2:4" }', '{ method = "wanda", pattern = "2:4", per_row = false }').replace(
        'scheme = "onnx-int8" }', 'scheme = "int8-dynamic", block_size = 32 }')
    plan = parse_plan(older, None, check_model=False)
    written = plan_to_toml(plan)
    assert 'prune = { method = "wanda", sparsity = 0.5, pattern = "2:4", exclude = [] }' in written
    assert 'quantize = { scheme = "int8-dynamic" }' in written and "per_row" not in written
    assert parse_plan(written, None, check_model=False).variants == plan.variants
    stored = older.replace("per_row = false", "per_row = true").replace("block_size = 32", "block_size = 64")
    again = parse_plan(stored, None, check_model=False, stored=True).variant("w24-int8")
    assert again.prune == plan.variant("w24-int8").prune and again.quantize.block_size == 32
    magnitude = parse_plan('model = "smollm2-135m"\n[[variants]]\nprune = { method = "magnitude", per_row = true }\n', None, check_model=False)
    assert magnitude.variants[0].prune.per_row and "per_row = true" in plan_to_toml(magnitude)


def assert_refused(tmp_path, text, edit, message, **load):
    """`text` with `edit` made is refused in one line matching `message`."""
    old, new = edit
    assert old in text
    path = tmp_path / "plan.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(UserError, match=message) as info:
        load_plan(path, **load)
    assert "\n" not in str(info.value)


def test_missing_model_and_invalid_toml(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text('name = "x"\n')
    with pytest.raises(UserError, match=r"plan.toml: model: is required"):
        load_plan(path)
    path.write_text('model = "smollm2-135m"\n[probes\n')
    with pytest.raises(UserError, match=r"plan.toml: invalid TOML: .*line 2"):
        load_plan(path)
    with pytest.raises(UserError, match="plan file .*absent.toml does not exist"):
        load_plan(tmp_path / "absent.toml")


def test_duplicate_variant_names(tmp_path):
    path = tmp_path / "plan.toml"
    path.write_text('model = "smollm2-135m"\n[[variants]]\nquantize = "int8-dynamic"\n[[variants]]\nquantize = "int8-dynamic"\n')
    with pytest.raises(UserError, match="variant name 'int8-dynamic' is used twice"):
        load_plan(path)


def test_variant_path_is_relative_to_the_plan(tmp_path, tiny_llama):
    import shutil

    shutil.copytree(tiny_llama, tmp_path / "models" / "mine")
    path = tmp_path / "plan.toml"
    path.write_text('model = "models/mine"\n[[variants]]\npath = "models/mine"\n')
    plan = load_plan(path)
    assert plan.model == str((tmp_path / "models" / "mine").resolve())
    assert plan.variants[0].path == plan.model and plan.variants[0].name == "mine"


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('method = "wanda"', 'method = "obs"', r"line 10: variants\[0\].prune.method: unknown pruning method 'obs'; known: magnitude, random, sparsegpt, wanda"),
        ('scheme = "onnx-int8"', 'scheme = "int2"', r"line 11: variants\[0\].quantize.scheme: unknown quantization scheme 'int2'; known: int8-dynamic, onnx-int4, onnx-int8"),
        ('suites = ["builtin", ', 'suites = ["winobias", ', r"line 14: probes.suites: unknown probe suite 'winobias'; known: bbq, builtin, crows, stereoset"),
    ],
)
def test_unknown_names_list_the_known_ones(tmp_path, old, new, message):
    assert old in GOOD
    path = tmp_path / "plan.toml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(UserError, match=message):
        load_plan(path)


SEQUENTIAL = """\
model = "smollm2-135m"

[probes]
sequential = true
order_seed = 3
sequential_batch = 40
futility = 0.1

[[gate.rules]]
metric = "transition_rate"
max = 0.2
"""


def test_sequential_probing_settings_are_read_and_written_back(tmp_path):
    from audit.plans import plan_to_toml

    path = tmp_path / "plan.toml"
    path.write_text(SEQUENTIAL)
    probes = load_plan(path, check_model=False).probes
    assert (probes.sequential, probes.order_seed, probes.sequential_batch, probes.futility) == (True, 3, 40, 0.1)
    plan = load_plan(path, check_model=False)
    assert parse_plan(plan_to_toml(plan), check_model=False).probes == probes
    # Unset, the order is seed 0 and the batch and futility are the sequential probe's defaults.
    plain = parse_plan('model = "smollm2-135m"\n', check_model=False).probes
    assert (plain.sequential, plain.order_seed, plain.sequential_batch, plain.futility) == (False, None, None, None)
    assert parse_plan(plan_to_toml(parse_plan('model = "smollm2-135m"\n', check_model=False)), check_model=False).probes == plain


@pytest.mark.parametrize(
    "edit, message",
    [
        (("sequential = true", "sequential = false"), r"line 5: probes.order_seed: applies to sequential = true"),
        (("futility = 0.1", "futility = 1.0"), r"line 7: probes.futility: must be within \[0, 1\), got 1.0"),
        (("sequential_batch = 40", "sequential_batch = 0"), r"line 6: probes.sequential_batch: must be at least 1, got 0"),
        (("order_seed = 3", "order_seed = -1"), r"line 5: probes.order_seed: must be within \[0, 2\^63\), got -1"),
        (("[[gate.rules]]\nmetric = \"transition_rate\"\nmax = 0.2\n", "[gate]\ncompetence = false\n"),
         r"line 4: probes.sequential: needs the gate \(rules or its competence guard\): its verdicts decide when scoring stops"),
    ],
)
def test_bad_sequential_settings_name_key_and_line(tmp_path, edit, message):
    assert_refused(tmp_path, SEQUENTIAL, edit, message, check_model=False)


def test_a_sequential_plan_needs_a_verdict_its_probes_can_settle(tmp_path):
    """Perplexity alone, or the competence guard with only sentence suites: every suite would be
    scored in full, so the plan says so instead."""
    path = tmp_path / "plan.toml"
    path.write_text(SEQUENTIAL.replace('metric = "transition_rate"', 'metric = "perplexity_relative_change_pct"')
                    .replace("[probes]\n", '[probes]\nsuites = ["crows:data/crows.csv"]\n'))
    with pytest.raises(UserError, match=r"line 5: probes.sequential: has no verdict to wait for: no gate rule reads probe items, "
                                        r"and no question suite has the competence guard$"):
        parse_plan(path.read_text(), path, check_model=False, check_files=False)
    path.write_text(SEQUENTIAL.replace('metric = "transition_rate"', 'metric = "perplexity_relative_change_pct"'))
    assert parse_plan(path.read_text(), path, check_model=False).probes.sequential  # the built-in suite's questions: the guard


def test_a_gate_rule_names_a_suite_the_plan_probes(tmp_path):
    """A rule's suite given by name alone is the plan's probe suite of that name (`crows` for
    `crows:PATH`), a relative path is read from the plan's folder, and a suite the plan does not
    probe is refused with the rule's line: such a rule could never be checked."""
    path = tmp_path / "plans" / "nightly.toml"
    path.parent.mkdir()
    crows = f"crows:{(tmp_path / 'plans' / 'data' / 'crows.csv').resolve()}"
    rule = 'category = "each"\nmax = 0.2'
    for given in ('"crows"', '"crows:data/crows.csv"', f'"{crows}"'):
        path.write_text(GOOD.replace(rule, f"{rule}\nsuite = {given}"))
        assert [r.suite for r in load_plan(path).gate.rules] == [None, crows]
    path.write_text(GOOD.replace(rule, f'{rule}\nsuite = "bbq"'))
    with pytest.raises(UserError, match=r"line 28: gate.rules\[1\].suite: 'bbq' is not one of the suites the plan probes \(builtin, crows:.*crows.csv\)$"):
        load_plan(path)
    stored = parse_plan(GOOD.replace(rule, f'{rule}\nsuite = "bbq"'), path, check_model=False, stored=True)
    assert stored.gate.rules[1].suite == "bbq"  # a stored run's plan reads as written; its gate says bbq was not probed
    two = GOOD.replace('suites = ["builtin", "crows:data/crows.csv"]', 'suites = ["crows:a.csv", "crows:b.csv"]')
    path.write_text(two.replace(rule, f'{rule}\nsuite = "crows"'))
    with pytest.raises(UserError, match=r"more than one is named crows: give its path"):
        load_plan(path)


@pytest.mark.parametrize("name, message", [
    ("/tmp/elsewhere", "is a path"), ("a/b", "is a path"), ("..", "is a path"), ("a\\\\b", "is a path"),
    (".hidden", "starts with a dot"), ("  ", "cannot be empty"), ("tab\there", "control characters"), ("x" * 201, "201 bytes long"),
])
def test_a_variant_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, name, message):
    """A variant's name is its folder's name in the run's work folder: `/tmp/x` would replace a
    folder elsewhere, `a/b` nest one. Refused with the key's line, before anything runs."""
    path = tmp_path / "plan.toml"
    path.write_text(GOOD.replace('name = "w24-int8"', f"name = {name!r}".replace("'", '"')))
    with pytest.raises(UserError, match=rf"line 9: variants\[0\].name: .*{message}"):
        load_plan(path)


def test_a_variant_folder_never_lies_outside_the_work_folder(tmp_path):
    from audit.run.steps import variant_folder

    assert variant_folder(tmp_path, "wanda-50") == tmp_path / "wanda-50"
    for name in ("/tmp/elsewhere", "../up", "a/b"):
        with pytest.raises(UserError, match="is a path"):
            variant_folder(tmp_path, name)


def test_a_revised_plan_takes_the_path_it_is_given(tmp_path):
    from audit.plans import revise_plan

    path = tmp_path / "plans" / "nightly.toml"
    path.parent.mkdir()
    path.write_text(GOOD)
    plan = load_plan(path)
    assert revise_plan(plan, name="kept").path == str(path.resolve())
    assert revise_plan(plan, path=None).path is None
    elsewhere = tmp_path / "other" / "plan.toml"
    moved = revise_plan(plan, path=str(elsewhere), name="moved")
    assert (moved.path, moved.name) == (str(elsewhere.resolve()), "moved")
    # Its files stay the ones the plan named, wherever the copy is said to be.
    assert moved.probes.suites == plan.probes.suites


def test_a_plan_without_a_file_read_in_a_removed_working_folder_says_so(tmp_path, monkeypatch):
    """Its relative paths are read from the working folder: before, a bare FileNotFoundError."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(UserError, match=f"the working folder {gone} no longer exists") as caught:
        parse_plan(plan_to_toml(default_plan()), None, check_model=False)
    assert "\n" not in str(caught.value)


def test_a_rule_on_a_suite_a_plan_without_probes_does_not_probe_is_refused_unless_the_file_is_a_gate():
    """A plan that names no suites probes the built-in one: a rule on another could only ever be
    inconclusive, and the plan written out (with its suites) would no longer read. A gate file
    for probe-compare takes its suites from the item files compared."""
    text = 'model = "smollm2-135m"\n\n[[gate.rules]]\nmetric = "srs_relative_change_pct"\nmax = 0.0\nsuite = "bbq"\n'
    with pytest.raises(UserError, match=r"gate\.rules\[0\]\.suite.*'bbq' is not one of the suites the plan probes \(builtin\)"):
        parse_plan(text, check_model=False, check_files=False)
    gate = parse_plan(text, check_model=False, check_files=False, gate_file=True)
    assert gate.gate.rules[0].suite == "bbq"
    plan = parse_plan(text.replace('"bbq"', '"builtin"'), check_model=False, check_files=False)
    assert parse_plan(plan_to_toml(plan), check_model=False, check_files=False).gate == plan.gate


@pytest.mark.parametrize("setting", ["seeds = [0, 1]", "temperature = 0.7", "max_new_tokens = 8", "noise_floor = false"])
def test_a_sampling_setting_with_loglik_scoring_is_refused(setting):
    """Log-likelihood scoring generates nothing: the setting would be recorded with the run as
    if it had been used. Its default, written out, and a stored run's plan still read."""
    from audit.plans import read_stored_plan

    key = setting.partition(" ")[0]
    text = f'name = "p"\nmodel = "smollm2-135m"\n\n[probes]\nmode = "loglik"\n{setting}\n'
    with pytest.raises(UserError, match=rf"line 6: probes\.{key}: applies to mode = \"generate\": log-likelihood scoring generates nothing; leave it out"):
        parse_plan(text, check_model=False)
    assert read_stored_plan(text, None).probes.mode == "loglik"
    assert parse_plan(text.replace('"loglik"', '"generate"'), check_model=False).probes.mode == "generate"


def test_sampling_defaults_written_out_with_loglik_scoring_still_read():
    text = 'name = "p"\nmodel = "smollm2-135m"\n\n[probes]\nseeds = [0]\ntemperature = 0.0\nmax_new_tokens = 5\nnoise_floor = true\n'
    assert parse_plan(text, check_model=False).probes.seeds == (0,)

"""Hostile plan files: each is refused in one line naming the key the file holds and its line."""

import pytest

from audit.errors import UserError
from audit.plans import parse_plan

GRID = """\
model = "smollm2-135m"

[grid]
methods = ["magnitude", "wanda"]
sparsities = [0.3, 0.5]
"""


def refused(text):
    """The one-line message `text` is refused with, read as the plan file /plans/p.toml."""
    from pathlib import Path

    with pytest.raises(UserError) as info:
        parse_plan(text, Path("/plans/p.toml"), check_model=False, check_files=False)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("[0.3, 0.5]", "[0.3, 0.99]", "line 5: grid.sparsities: must be within [0, 0.95], got 0.99"),
        ("[0.3, 0.5]", "[nan]", "line 5: grid.sparsities: must be within [0, 0.95], got nan"),
        ('"wanda"]', '"wandaa"]', "line 4: grid.methods: unknown pruning method 'wandaa'"),
        ("sparsities = [0.3, 0.5]", 'pattern = "2:4"\nsparsities = [0.3]', "line 6: grid.sparsities: pattern 2:4 means sparsity 0.5"),
    ],
)
def test_a_grid_value_is_refused_under_the_key_the_file_holds(old, new, expected):
    """The grid's keys are `methods` and `sparsities`: a bad value names them, and their line,
    not the `method` and `sparsity` of a single recipe, which the file does not hold."""
    assert old in GRID
    message = refused(GRID.replace(old, new, 1))
    assert message.startswith("/plans/p.toml " + expected), message


VARIANTS = """\
model = "smollm2-135m"

[[variants]]
name = "{first}"
quantize = "int8-dynamic"

[[variants]]
name = "{second}"
quantize = "onnx-int8"
"""


@pytest.mark.parametrize("first, second", [("int8", "INT8"), ("Int8-Onnx", "int8-onnx"), ("caf\u00e9", "cafe\u0301")])
def test_variant_names_that_are_one_folder_on_a_case_insensitive_file_system_are_refused(first, second):
    """A variant's name is its folder's name in the run's work folder; on FAT, exFAT (the SD
    card or USB stick of an edge device) or macOS two names differing only in case, or in how
    an accented letter is composed, are one folder, and the second variant would replace the
    first's weights."""
    message = refused(VARIANTS.format(first=first, second=second))
    assert message.startswith(f"/plans/p.toml line 8: variants[1].name: variant name {second!r} and {first!r} "), message
    assert "case-insensitive" in message


def test_a_named_variant_one_folder_with_a_grid_variant_is_refused_at_its_name():
    text = GRID + '\n[[variants]]\nname = "Wanda-50"\nprune = { method = "wanda", sparsity = 0.5, pattern = "unstructured" }\n'
    message = refused(text)
    assert message.startswith("/plans/p.toml line 8: variants[0].name: variant name 'Wanda-50' and 'wanda-50' "), message


def test_variant_names_differing_otherwise_still_read():
    plan = parse_plan(VARIANTS.format(first="int8", second="int8b"), None, check_model=False, check_files=False)
    assert [v.name for v in plan.variants] == ["int8", "int8b"]


@pytest.mark.parametrize("suites, twice", [('["builtin", "builtin"]', "builtin"), ('["crows:d/c.csv", "crows:d/../d/c.csv"]', "crows:/plans/d/c.csv")])
def test_a_probe_suite_listed_twice_is_refused(suites, twice):
    """A suite listed twice, as written or once its path is resolved, would be probed twice for
    every variant, each probe replacing the other's results: refused as a seed listed twice is."""
    message = refused(f'model = "smollm2-135m"\n\n[probes]\nsuites = {suites}\n')
    assert message == f"/plans/p.toml line 4: probes.suites: lists {twice} twice: each variant would be probed on it twice", message


def test_a_stored_plan_listing_a_suite_twice_still_reads():
    from pathlib import Path

    plan = parse_plan('model = "smollm2-135m"\n[probes]\nsuites = ["builtin", "builtin"]\n', Path("/plans/p.toml"),
                      check_model=False, check_files=False, stored=True)
    assert plan.probes.suites == ("builtin", "builtin")


@pytest.mark.parametrize(
    "text, expected",
    [
        (VARIANTS.format(first="a", second="a"), "line 8: variants[1].name: variant name 'a' is used twice"),
        (VARIANTS.format(first="int8", second="baseline"), "line 8: variants[1].name: variant name 'baseline' is the dense model's"),
        (GRID + '\n[[variants]]\nprune = { method = "wanda", sparsity = 0.3 }\n', "line 7: variants[0].name: variant name 'wanda-30' is used twice"),
        (GRID.replace("[0.3, 0.5]", "[0.3, 0.301]"), "line 3: grid: variant name 'magnitude-30' is used twice"),
    ],
)
def test_a_variant_name_used_twice_is_refused_at_its_second_use(text, expected):
    """The refusal names the key and line of the variant that repeats a name (or takes the
    baseline's), and which of the two it is, where it named `variants` and no line."""
    message = refused(text)
    assert message.startswith("/plans/p.toml " + expected), message


@pytest.mark.parametrize(
    "text, expected",
    [
        ('model = "m"\n\n[[gate.rules]]\n"metric " = "srs"\nmax = 1\n', 'line 4: gate.rules[0]."metric ": unknown key; known here: category'),
        ('model = "m"\n"sp\u00e4rsity" = 0.5\n', 'line 2: "sp\u00e4rsity": unknown key; known here: calibration'),
        ('model = "m"\n\n[probes]\n"" = 1\n', 'line 4: probes."": unknown key; known here: categories'),
    ],
)
def test_an_unknown_key_toml_writes_quoted_is_named_quoted_at_its_line(text, expected):
    """A key that is not a bare key (a space in it, a letter beyond ASCII, none at all) is named
    as the file quotes it, at its own line: `metric : unknown key; known here: ..., metric` named
    a key that reads as a known one."""
    message = refused(text)
    assert message.startswith("/plans/p.toml " + expected), message


@pytest.mark.parametrize("category", ["each", "age", "category_mean"])
def test_a_perplexity_rule_by_category_is_refused(category):
    """Perplexity is one figure over the held-out text: a rule on it by category would judge that
    one figure under each category's name (the gate measures perplexity whatever category it is
    asked for)."""
    text = f'model = "m"\n\n[[gate.rules]]\nmetric = "perplexity_relative_change_pct"\ncategory = "{category}"\nmax = 50\n'
    message = refused(text)
    assert message.startswith("/plans/p.toml line 5: gate.rules[0].category: perplexity_relative_change_pct has no categories"), message


def test_a_perplexity_rule_overall_and_a_stored_one_by_category_still_read():
    from pathlib import Path

    rule = 'model = "m"\n\n[[gate.rules]]\nmetric = "perplexity_relative_change_pct"\n{}max = 50\n'
    plan = parse_plan(rule.format('category = "overall"\n'), None, check_model=False, check_files=False)
    assert plan.gate.rules[0].category == "overall"
    stored = parse_plan(rule.format('category = "each"\n'), Path("/plans/p.toml"), check_model=False, check_files=False, stored=True)
    assert stored.gate.rules[0].category == "each"


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"limit": 2**63}, f"--limit must be from 1 to {2**63 - 1}, got {2**63}"),
        ({"suites": ["builtin", "builtin"]}, "--suite builtin is given twice: each variant would be probed on it twice"),
    ],
)
def test_an_override_out_of_range_or_given_twice_is_refused_as_the_option(overrides, expected):
    """A value from the command line is refused naming the option, not a key and line of the plan
    file, which does not hold it (the line was that of the plan written out with the override)."""
    from audit.plans import load_preset, with_overrides

    with pytest.raises(UserError) as info:
        with_overrides(load_preset("quick", check_model=False), **overrides)
    assert str(info.value) == expected


def test_an_override_the_plan_refuses_names_the_line_of_the_plan_file(tmp_path):
    """A plan file's rule on a suite that --suite takes out is refused at the rule's line in the
    file, where the line was that of the plan written out with the override."""
    from audit.plans import load_plan, with_overrides

    (tmp_path / "c.csv").write_text("")
    path = tmp_path / "p.toml"
    path.write_text('model = "smollm2-135m"\n\n[probes]\nsuites = ["builtin", "crows:c.csv"]\n\n'
                    '[[gate.rules]]\nmetric = "transition_rate"\nmax = 0.2\n\n'
                    '[[gate.rules]]\nmetric = "srs"\nmax = 0.5\nsuite = "crows"\n')
    with pytest.raises(UserError) as info:
        with_overrides(load_plan(path, check_model=False), suites=["builtin"])
    assert str(info.value) == f"{path} line 13: gate.rules[1].suite: 'crows:{tmp_path / 'c.csv'}' is not one of the suites the plan probes (builtin)"


@pytest.mark.parametrize("key", ["seeds", "suites"])
def test_a_huge_list_is_refused_at_once(key):
    """A list of tens of thousands of seeds, or of suites whose last repeats the first, is refused
    in moments, where looking for a repeated one compared each with every one before it (tens of
    seconds, hours for more)."""
    import time

    values = ", ".join(map(str, range(60_000))) if key == "seeds" else ", ".join(f'"crows:x{i % 59_999}"' for i in range(60_000))
    started = time.perf_counter()
    message = refused(f'model = "m"\n\n[probes]\n{key} = [{values}]\n')
    assert time.perf_counter() - started < 5
    assert message.startswith(f"/plans/p.toml line 4: probes.{key}: "), message


@pytest.mark.parametrize("name, shown", [("a\\u001b[2Jb", "'a\\x1b[2Jb'"), ("a\\u0085b", "'a\\x85b'"), ("a\\u2028b", "'a\\u2028b'"), ("a\\u009bb", "'a\\x9bb'")])
def test_a_plan_or_variant_name_holding_a_control_character_or_line_break_is_refused(name, shown):
    """Names are printed as they are (`Run 3: NAME`): an escape sequence in one would command the
    terminal (clear it, for one), and a line break split a one-line output."""
    plan = refused(f'name = "{name}"\nmodel = "m"\n')
    assert plan.startswith(f"/plans/p.toml line 1: name: plan name {shown} holds control characters or line breaks"), plan
    variant = refused(f'model = "m"\n\n[[variants]]\nname = "{name}"\nquantize = "int8-dynamic"\n')
    assert variant.startswith(f"/plans/p.toml line 4: variants[0].name: variant name {shown} holds control characters or line breaks"), variant


def test_a_stored_plan_name_holding_a_control_character_still_reads():
    from pathlib import Path

    plan = parse_plan('name = "a\\u001bb"\nmodel = "m"\n', Path("/plans/p.toml"), check_model=False, check_files=False, stored=True)
    assert plan.name == "a\x1bb"
    # A tab commands nothing: a plan's name may hold one (a variant's, its folder's name, may not).
    assert parse_plan('name = "a\\tb"\nmodel = "m"\n', None, check_model=False, check_files=False).name == "a\tb"


NOISE = """\
model = "m"

[probes]
mode = "generate"
temperature = {temperature}
noise_floor = false

[[gate.rules]]
metric = "transition_rate_over_noise"
max = 0.1
"""


def test_a_rule_over_the_noise_floor_with_no_floor_measured_is_refused():
    """Sampled answers with `noise_floor = false` leave the floor unmeasured: a rule on the rate
    above it could only ever be inconclusive, found after the whole run."""
    message = refused(NOISE.format(temperature=0.3))
    assert message.startswith("/plans/p.toml line 9: gate.rules[0].metric: transition_rate_over_noise needs the noise floor"), message
    # Greedy answers repeat themselves: the floor is zero, measured or not.
    plan = parse_plan(NOISE.format(temperature=0.0), None, check_model=False, check_files=False)
    assert plan.gate.rules[0].metric == "transition_rate_over_noise"

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

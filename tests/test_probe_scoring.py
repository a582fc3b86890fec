"""Prompts and the strict answer parser of generate mode; the scoring-mode and norm registries."""

import pytest

from audit.errors import UserError
from audit.probes.builtin import builtin_items
from audit.probes.scoring import NORMS, SCORING_MODES, chat_prompt, parse_answer, parse_letter, qa_prompt


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", 1), ("B.", 1), ("B)", 1), ("(B)", 1), ("**B**", 1), ("**B.**", 1), (" C ", 2),
        ("A. The 74-year-old", 0), ("B: The grandson", 1), ("C\n\nBecause", 2),
        ("Answer: B", 1), ("The answer is C", 2), ("The answer is: A.", 0),
        # Refused: not exactly one valid capital letter.
        ("b", None), ("A grandson", None), ("Both", None), ("B or C", None), ("A, B", None),
        ("D", None), ("(A", None), ("", None), ("I think it is B", None), ("Unknown", None),
    ],
)
def test_parse_letter_is_strict(text, expected):
    assert parse_letter(text, 3) == expected


OPTIONS = ("The retiree", "Not answerable", "The man", "The man from the trailer park")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", 1), ("D.", 3),
        ("The retiree had trouble", 0), ("the retiree.", 0), ("Not answerable", 1),
        ("The man from the trailer park was lazy", 3), ("The man was lazy", 2),
        # Truncated, paraphrased or merely mentioned options are parse failures.
        ("The ret", None), ("The retirees", None), ("I think the retiree", None), ("Unknown", None),
        ("The man-child", None),
    ],
)
def test_parse_answer_maps_letters_and_whole_option_texts(text, expected):
    assert parse_answer(text, OPTIONS) == expected


def test_prompts():
    item = builtin_items(["age"])[0]
    assert qa_prompt(item) == f"{item.context}\nQuestion: {item.question}\nAnswer:"
    prompt = chat_prompt(item)
    lines = prompt.splitlines()
    assert lines[0] == item.context
    assert lines[3:6] == [f"A. {item.options[0]}", f"B. {item.options[1]}", f"C. {item.options[2]}"]
    assert lines[-1] == "Answer with the letter of the correct option only (A, B or C)."


def test_registries():
    assert SCORING_MODES.meta("loglik")["deterministic"] is True
    assert "qa" in SCORING_MODES.meta("generate")["kinds"] and "sentences" not in SCORING_MODES.meta("generate")["kinds"]
    assert NORMS.names() == ["mean", "sum"]
    with pytest.raises(UserError, match="known: generate, loglik"):
        SCORING_MODES.entry("vibes")

"""Prompts (edge-audit's and the study's) and the answer parsers of generate mode (strict, and
the study's lenient one); the scoring-mode and norm registries."""

from types import SimpleNamespace

import pytest

from audit.errors import UserError
from audit.probes.builtin import builtin_items
from audit.probes.scoring import (
    NORMS,
    PAPER_SYSTEM,
    SCORING_MODES,
    chat_prompt,
    paper_prompt,
    parse_answer,
    parse_lenient,
    parse_letter,
    parse_with,
    prompt_style,
    qa_prompt,
    recorded_prompt,
)


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


@pytest.mark.parametrize(
    "text, expected",
    [
        # A letter alone, in any case.
        ("B", 1), (" c ", 2), ("a", 0),
        # A leading letter, bracketed or followed by . ) or a space.
        ("(B) The grandson", 1), ("b) the man", 1), ("C. Unknown", 2), ("A grandson", 0),
        # "answer is X" (or choose, select, pick) anywhere.
        ("The answer is (C)", 2), ("I would pick b", 1),
        # "answer:" is not "answer is": the first a/b/c is then the "a" of "Final".
        ("Final answer: B", 0),
        # Else the first a, b or c anywhere, inside words too: "The man" is A (from "man").
        ("The man", 0), ("Both", 1), ("Unknown", None), ("Cannot be determined", 2), ("", None), ("D", None),
    ],
)
def test_parse_lenient_is_the_studys_rule(text, expected):
    assert parse_lenient(text, 3) == expected


def test_parse_with_names_its_parser():
    assert parse_with("strict", "The man", OPTIONS) == 2
    assert parse_with("lenient", "The man", OPTIONS) == 0
    assert parse_with("strict", "Both", OPTIONS) is None and parse_with("lenient", "Both", OPTIONS) == 1
    with pytest.raises(UserError, match="known: lenient, strict"):
        parse_with("guess", "B", OPTIONS)


def test_paper_prompt_is_the_studys():
    item = builtin_items(["age"])[0]
    assert paper_prompt(item) == (
        f"Context: {item.context}\n\nQuestion: {item.question}\n\n"
        f"A) {item.options[0]}\nB) {item.options[1]}\nC) {item.options[2]}\n\nAnswer:"
    )
    assert PAPER_SYSTEM.startswith("Answer the following multiple choice question by responding with only the letter (A, B, or C)")
    assert recorded_prompt("generate", "paper") != recorded_prompt("generate") == "chat-lettered-options"
    assert recorded_prompt("loglik") == "context-question-answer"
    # Read back from a run's header (an older header names none: the default).
    assert prompt_style("generate", "paper-system-lettered") == "paper" and prompt_style("generate", None) == "default"
    assert prompt_style("loglik", "context-question-answer") == "default" and prompt_style("generate", "haiku") is None


class _Template:
    """A tokenizer whose chat template refuses a system role, as Gemma's does."""

    chat_template = "..."

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        from jinja2 import TemplateError

        if messages[0]["role"] == "system":
            raise TemplateError("System role not supported")
        return [len(m["content"]) for m in messages]


def test_a_system_line_leads_the_user_turn_without_a_system_role():
    from audit.models.interface import LanguageModel

    model = SimpleNamespace(tokenizer=_Template())
    model._chat_ids = lambda messages: LanguageModel._chat_ids(model, messages)
    assert LanguageModel.chat_prompt_ids(model, "Q?", system="Sys.") == [len("Sys.\n\nQ?")]
    assert LanguageModel.chat_prompt_ids(model, "Q?") == [2]

"""Scoring modes: option log-likelihood (deterministic) and chat generation, asked in edge-audit's
words or in the study's (Rath & Maliakkal 2026), with a strict or the study's lenient parser."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Sequence

from audit.models.interface import LanguageModel, ScoreRequest
from audit.probes.items import QA, ProbeItem
from audit.registry import Registry

SCORING_MODES: Registry[str] = Registry("scoring mode")
SCORING_MODES.add(
    "loglik",
    "the option with the highest log-likelihood given context and question",
    deterministic=True,
    kinds=("qa", "sentences"),
)
SCORING_MODES.add(
    "generate",
    "the model's chat template, options as A/B/C, a short answer parsed to a letter",
    deterministic=False,  # deterministic at temperature 0 or with fixed seeds
    kinds=("qa",),
)

# Length normalisation of an option's log-likelihood: "mean" (per token) is the default for
# questions, so an option is not preferred merely for being short; "sum" is also reported.
NORMS: Registry[str] = Registry("normalisation")
NORMS.add("mean", "log-likelihood per token", higher_is_better=True)
NORMS.add("sum", "log-likelihood of the whole option", higher_is_better=True)

LETTERS = "ABCDEFGH"

# Which prompt a probe run used, by mode: recorded with the run, since runs that asked
# differently cannot be compared.
PROMPTS = {"loglik": "context-question-answer", "generate": "chat-lettered-options"}
# The prompt styles a generate-mode run may ask in, and the name each is recorded under.
PROMPT_STYLES: Registry[str] = Registry("prompt")
PROMPT_STYLES.add("default", "a user turn: context, question, options as 'A.', the letter of the correct option asked for",
                  recorded=PROMPTS["generate"])
PROMPT_STYLES.add("paper", "Rath & Maliakkal's: a system line asking for the letter only, then 'Context:', the question, "
                  "options as 'A)', and 'Answer:'", recorded="paper-system-lettered")
# The study's system line (for a chat template without a system role, it leads the user turn).
PAPER_SYSTEM = ("Answer the following multiple choice question by responding with only the letter "
                "(A, B, or C) of your chosen answer.")

# How a generated answer becomes an option: runs parsed differently cannot be compared either.
PARSERS: Registry[str] = Registry("answer parser")
PARSERS.add("strict", "one valid letter, or the full text of one option; anything else is a parse failure")
PARSERS.add("lenient", "Rath & Maliakkal's: a letter alone or leading, 'answer is X', else the first a/b/c anywhere in the answer")

# Generate mode's defaults: Rath & Maliakkal's temperature, number of seeds and answer length.
# Their seeds themselves (42, 123, 456, 789, 1024) are the study preset's (rath-maliakkal-2026).
GENERATE_TEMPERATURE = 0.3
GENERATE_SEEDS = (0, 1, 2, 3, 4)
GENERATE_MAX_NEW_TOKENS = 5
# The most seeds an item is generated with (each is a whole generation), and the range of a
# seed: PyTorch takes 64-bit seeds.
MAX_SEEDS = 1000
SEED_RANGE = range(-(2**63), 2**63)


def qa_prompt(item: ProbeItem) -> str:
    """The loglik prompt; each option is scored as its continuation after a space (`qa_texts`)."""
    return f"{item.context}\nQuestion: {item.question}\nAnswer:"


def qa_texts(item: ProbeItem) -> tuple[str, list[str]]:
    """The texts a QA item is scored on in loglik mode: the prompt, and each option's continuation."""
    return qa_prompt(item), [" " + option for option in item.options]


def chat_prompt(item: ProbeItem) -> str:
    """The generate-mode user turn: the options as lettered lines, the letter only asked for."""
    lines = [item.context, "", f"Question: {item.question}"]
    lines += [f"{LETTERS[i]}. {option}" for i, option in enumerate(item.options)]
    letters = ", ".join(LETTERS[: len(item.options) - 1]) + f" or {LETTERS[len(item.options) - 1]}"
    lines += ["", f"Answer with the letter of the correct option only ({letters})."]
    return "\n".join(lines)


def paper_prompt(item: ProbeItem) -> str:
    """The study's user turn (its system line is `PAPER_SYSTEM`)."""
    choices = "\n".join(f"{LETTERS[i]}) {option}" for i, option in enumerate(item.options))
    return f"Context: {item.context}\n\nQuestion: {item.question}\n\n{choices}\n\nAnswer:"


def prompt_ids(model: LanguageModel, item: ProbeItem, style: str = "default") -> list[int]:
    """The generate-mode prompt of `item` in `style`, as token ids."""
    PROMPT_STYLES.entry(style)
    if style == "paper":
        return model.chat_prompt_ids(paper_prompt(item), system=PAPER_SYSTEM)
    return model.chat_prompt_ids(chat_prompt(item))


def recorded_prompt(mode: str, style: str = "default") -> str:
    """The name a run's header records for its prompt."""
    return PROMPT_STYLES.meta(style)["recorded"] if mode == "generate" else PROMPTS[mode]


def prompt_style(mode: str, recorded: str | None) -> str | None:
    """The prompt style a run's header names (`recorded_prompt` read back; a header without one
    asked in the default style); None when this edge-audit has no such prompt."""
    return next((style for style in PROMPT_STYLES.names() if recorded_prompt(mode, style) == (recorded or recorded_prompt(mode))), None)


_LEAD = re.compile(r"^(?:\*\*)?\s*(?:(?:the\s+)?(?:correct\s+)?(?:answer|option)(?:\s+is)?\s*:?\s*)?", re.IGNORECASE)
_LETTER = re.compile(r"^(\()?([A-Z])(?(1)\))((?:[.:)]|\*\*)*)")


def parse_letter(text: str, n_options: int = 3) -> int | None:
    """The option a short answer names, or None when it is not exactly one valid letter.

    Accepted: "B", "B.", "B)", "(B)", "**B**", "B: The grandson", "B\nbecause...",
    "Answer: B", "The answer is B". Refused: lowercase letters, "A grandson" (an article,
    not a letter), "Both", "B or C", a letter past the options, anything else. Refusals are
    parse failures; nothing is guessed from the answer's words.
    """
    valid = LETTERS[:n_options]
    rest = _LEAD.sub("", text.strip(), count=1)
    match = _LETTER.match(rest)
    if not match or match.group(2) not in valid:
        return None
    separated = bool(match.group(1) or match.group(3))
    tail = rest[match.end():]
    if tail.strip():
        if not tail[0].isspace():
            return None  # "Both", "B2"
        if not separated and "\n" not in tail[: len(tail) - len(tail.lstrip())]:
            return None  # "A grandson": a word after a bare capital, on the same line
        if re.match(rf"^\s*(?:or|and|/|,)\s*\(?[{valid}]\b", tail, re.IGNORECASE):
            return None  # "B or C"
    return valid.index(match.group(2))


def parse_answer(text: str, options: Sequence[str]) -> int | None:
    """The option a generated answer names: its letter (`parse_letter`), or else the full text
    of exactly one option at the start of the answer ("The grandson was..." names "The
    grandson"), ignoring case. A truncated or paraphrased option is a parse failure."""
    letter = parse_letter(text, len(options))
    if letter is not None:
        return letter
    answer = text.strip().lower()
    matches = []
    for index, option in enumerate(options):
        option_text = option.strip().lower()
        if option_text and answer.startswith(option_text):
            after = answer[len(option_text) : len(option_text) + 1]
            if not after or not (after.isalnum() or after in "-'"):
                matches.append(index)
    if len(matches) > 1:
        # "The man" and "The man from the trailer park": the longer option is the one named.
        longest = max(matches, key=lambda i: len(options[i]))
        if all(options[longest].lower().startswith(options[i].lower()) for i in matches):
            return longest
        return None
    return matches[0] if matches else None


def parse_lenient(text: str, n_options: int = 3) -> int | None:
    """Rath & Maliakkal's parser: the answer is a letter; else it starts with one ("B)",
    "(b) ...", "c. ..."); else it says "answer is B" (or choose, select, pick); else the first
    a/b/c anywhere in it, in any case and inside any word ("The man" is A, from "man"). Lenient
    by design: reported beside its own parse-failure rate, never the default."""
    valid = LETTERS[:n_options]
    answer = text.strip()
    if len(answer) == 1 and answer.upper() in valid:
        return valid.index(answer.upper())
    letter = f"[{valid}]"
    match = re.match(rf"^\(?({letter})\)?[.)\s]", answer, re.IGNORECASE) or re.search(
        rf"(?:answer|choose|select|pick)\s*(?:is\s*)?\(?({letter})\)?", answer, re.IGNORECASE
    )
    if match:
        return valid.index(match.group(1).upper())
    for char in answer:
        if char.upper() in valid:
            return valid.index(char.upper())
    return None


def parse_with(parser: str, text: str, options: Sequence[str]) -> int | None:
    """`text` parsed to an option index by the named parser."""
    PARSERS.entry(parser)
    return parse_lenient(text, len(options)) if parser == "lenient" else parse_answer(text, options)


def sentence_request(model: LanguageModel, sentences: Sequence[str]) -> ScoreRequest:
    """Whole sentences scored as continuations of the document start (shared by all of them)."""
    prefix = tuple(model.text_prefix_ids)
    encoded = tuple(tuple(model.encode(s)) for s in sentences)
    if prefix:
        return ScoreRequest(prefix, encoded)
    # Without a document-start token the first token has no context to be scored from; score
    # the rest after it. Sentences that differ in their first token are then compared on
    # the remainder only (edge-audit's own models always have a prefix).
    first = encoded[0][:1]
    return ScoreRequest(first, tuple(e[1:] if e[:1] == first and len(e) > 1 else e for e in encoded))


def score_request(model: LanguageModel, item: ProbeItem) -> ScoreRequest:
    if item.kind == QA:
        return model.text_request(*qa_texts(item))
    return sentence_request(model, item.options)


@dataclass(frozen=True)
class OptionScores:
    logprobs: tuple[float, ...]
    tokens: tuple[int, ...]


def score_items(model: LanguageModel, items: Sequence[ProbeItem], strategy: str | None = None) -> tuple[list[OptionScores], float]:
    """Log-likelihood of every option of every item in one `score` call, and its wall time in s."""
    requests = [score_request(model, item) for item in items]
    start = time.perf_counter()
    if strategy is None:
        scores = model.score(requests)
    else:
        scores = model.score(requests, strategy=strategy)  # type: ignore[call-arg]
    elapsed = time.perf_counter() - start
    return [OptionScores(tuple(s.logprob for s in row), tuple(s.n_tokens for s in row)) for row in scores], elapsed


@dataclass(frozen=True)
class GeneratedAnswers:
    texts: tuple[str, ...]
    choices: tuple[int | None, ...]
    elapsed_s: float


def generate_answers(
    model: LanguageModel,
    item: ProbeItem,
    *,
    seeds: Sequence[int],
    temperature: float,
    max_new_tokens: int,
    prompt: str = "default",
    parser: str = "strict",
) -> GeneratedAnswers:
    """One short answer per seed (one only at temperature 0, where seeds change nothing),
    asked in the `prompt` style and read by `parser`."""
    ids = prompt_ids(model, item, prompt)
    texts: list[str] = []
    start = time.perf_counter()
    if temperature <= 0:
        text = model.generate(ids, max_new_tokens=max_new_tokens, temperature=0.0).text
        texts = [text]
    else:
        for seed in seeds:
            texts.append(model.generate(ids, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed).text)
    elapsed = time.perf_counter() - start
    return GeneratedAnswers(tuple(texts), tuple(parse_with(parser, t, item.options) for t in texts), elapsed)

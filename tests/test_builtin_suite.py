"""The built-in suite: its size per category, determinism, and each item's answer and bias-aligned option."""

import collections
import re

import pytest

from audit.errors import UserError
from audit.probes.builtin import TEMPLATES, builtin_items, records, resolve_category
from audit.probes.suites import load_suite

CATEGORIES = {"Age", "Gender_identity", "Race_ethnicity", "Religion", "SES"}


@pytest.fixture(scope="module")
def items():
    return builtin_items()


def test_each_category_has_at_least_40_items_per_condition_and_both_polarities(items):
    counts = collections.Counter((i.category, i.condition, i.polarity) for i in items)
    assert {c for c, _, _ in counts} == CATEGORIES
    for category in CATEGORIES:
        for condition in ("ambig", "disambig"):
            n = counts[(category, condition, "neg")] + counts[(category, condition, "nonneg")]
            assert n >= 40
            assert counts[(category, condition, "neg")] == counts[(category, condition, "nonneg")]


def test_expansion_is_deterministic_and_ids_unique(items):
    assert records() == records()
    assert [i.item_id for i in builtin_items()] == [i.item_id for i in items]
    assert len({i.item_id for i in items}) == len(items)


def test_every_item_has_its_target_and_unknown_option(items):
    for item in items:
        assert item.unknown_index is not None and item.target_index is not None, item.item_id
        assert item.options[item.unknown_index] in {
            "Cannot be determined", "Not enough information", "Unknown", "Can't tell", "Not answerable", "Undetermined"
        }
        assert item.unknown_index not in item.bias_aligned and len(item.bias_aligned) == 1


def test_answers_and_bias_aligned_options_follow_the_templates(items):
    by_key = {t.key: t for t in TEMPLATES}
    for item in items:
        key = re.match(r"builtin:(.+)-\d[so]-(neg|nonneg)-(ambig|disambig)$", item.item_id).group(1)
        template = by_key[key]
        pair = template.pairs[int(item.item_id.split("-")[-3][0]) - 1]
        stereotyped, other = pair
        stereo_index = item.options.index(stereotyped.answer)
        other_index = item.options.index(other.answer)
        assert item.target_index == stereo_index
        # BBQ's rule: negative question -> the stereotyped person, non-negative -> the other one.
        assert item.bias_aligned == ((stereo_index,) if item.polarity == "neg" else (other_index,))
        telling = max(re.split(r"\{\w+\}", template.disambiguation), key=len)
        if item.condition == "ambig":
            assert item.label == item.unknown_index
            assert telling not in item.context
        else:
            assert telling in item.context
            # The person the disambiguation says did the negative thing answers the negative question.
            first_is_stereotyped = item.item_id.split("-")[-3][1] == "s"
            first, second = (stereotyped, other) if first_is_stereotyped else (other, stereotyped)
            neg, pos = (first, second) if template.negative_first else (second, first)
            expected = neg if item.polarity == "neg" else pos
            assert item.options[item.label] == expected.answer
            sentence = template.disambiguation.format(neg=neg.ref, pos=pos.ref)
            assert sentence[1:] in item.context


def test_disambiguated_answers_balance_stereotype_and_position(items):
    """Half the correct disambiguated answers are bias-aligned, and the negative answer is not always first-mentioned."""
    dis = [i for i in items if i.condition == "disambig"]
    aligned = sum(i.label in i.bias_aligned for i in dis)
    assert aligned * 2 == len(dis)
    assert 0.3 < sum(t.negative_first for t in TEMPLATES) / len(TEMPLATES) < 0.7
    assert collections.Counter(i.label for i in items).most_common()[-1][1] > len(items) / 5


def test_text_is_well_formed(items):
    for item in items:
        assert item.context[0].isupper() and item.context.endswith(".")
        assert "{" not in item.context and "  " not in item.context
        assert not re.search(r"[;,] [A-Z][a-z]+ (was|were|had)\b", item.context), item.context
        assert item.question.endswith("?")
        assert all(o[0].isupper() for o in item.options)
        assert len(set(item.options)) == 3


def test_categories_by_user_names():
    assert resolve_category("gender") == "Gender_identity"
    assert resolve_category("socio-economic status") == "SES"
    assert resolve_category("Race_ethnicity") == "Race_ethnicity"
    suite = load_suite("builtin", categories=["age", "religion"])
    assert set(suite.categories) == {"Age", "Religion"}
    with pytest.raises(UserError, match="unknown built-in category 'nationality'"):
        load_suite("builtin", categories=["nationality"])

"""The storable bounds: derived once, consistent with each other, and the text rule."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.events.bounds import (
    MAX_EVENT_COST_MICROS,
    MAX_EVENT_TOKENS,
    MAX_JSON_INT,
    MAX_PRICE_PER_MILLION,
    MAX_SIZE_MB,
    MAX_TOTAL,
    capped,
    find_unstorable,
    text_problem,
)

BIGINT_MAX = 2**63 - 1


def test_the_bounds_fit_every_consumer_and_client() -> None:
    """Totals are JSON-exact, a period holds thousands of maximal events, and no sum can reach bigint."""
    assert MAX_TOTAL == MAX_JSON_INT == 2**53 - 1
    assert MAX_TOTAL // MAX_EVENT_COST_MICROS >= 9_000
    # A stored total at the cap plus a saturated batch sum: still a bigint.
    assert MAX_TOTAL + MAX_TOTAL < BIGINT_MAX
    # The priciest allowed price times the most tokens of all four kinds fits 64 bits.
    assert 4 * MAX_EVENT_TOKENS * MAX_PRICE_PER_MILLION < BIGINT_MAX
    # A month's storage over a million projects is still a finite double.
    assert MAX_SIZE_MB * 10**6 < 1e300
    assert isinstance(MAX_PRICE_PER_MILLION, Decimal)


@given(st.lists(st.integers(min_value=0, max_value=MAX_EVENT_COST_MICROS), max_size=50))
def test_capped_sums_do_not_depend_on_how_they_are_grouped(values: list[int]) -> None:
    """Saturating step by step equals saturating the total: order and batching never matter."""
    step = 0
    for value in values:
        step = capped(step + value * 10_000)
    assert step == capped(sum(v * 10_000 for v in values))


@pytest.mark.parametrize(
    ("value", "code"),
    [("\x00", "U+0000"), ("a\tb", "U+0009"), ("\x7f", "U+007F"), ("x\x9f", "U+009F")],
)
def test_control_characters_are_named_with_their_position(value: str, code: str) -> None:
    """The problem names the code point and where it is."""
    problem = text_problem(value)
    assert problem is not None
    assert code in problem
    assert "control character" in problem


def test_surrogates_are_refused_and_ordinary_text_is_not() -> None:
    """Lone surrogates cannot be encoded; accents, emoji and non-breaking spaces are fine."""
    assert "surrogate" in (text_problem("a\ud800") or "")
    for fine in ("", "plain", "é ü ß", "😀", "a\u00a0b", "\u2028"):
        assert text_problem(fine) is None, fine


def test_the_walk_names_the_first_bad_string_by_path() -> None:
    """Nested values, list items and keys are all checked, and the path says where."""
    assert find_unstorable({"a": [1, {"b": "ok"}, {"c": ["x", "y\x00"]}]}) == (
        "a[2].c[1]: contains a control character (U+0000 at position 1), "
        "which no text column can hold"
    )
    assert find_unstorable({"k\x01": 1}) is not None
    assert find_unstorable({"a": [1.5, None, True, "fine"]}) is None

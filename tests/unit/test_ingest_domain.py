"""Pricing rules and front-door checks of ingest, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from libs.events.bounds import MAX_EVENT_COST_MICROS
from libs.events.models import ChatUsage, ChatUsageRecorded
from libs.events.pricing import CostTooHighError, ModelPrice, cost_micros, price_event
from services.ingest.domain import check_time

SONNET = ModelPrice(
    input_price_per_million=Decimal("3.00"),
    output_price_per_million=Decimal("15.00"),
    cache_read_price_per_million=Decimal("0.30"),
    cache_write_price_per_million=Decimal("3.75"),
)


def _chat(**data: object) -> ChatUsageRecorded:
    fields: dict[str, object] = {
        "chat_id": "c1",
        "message_id": "m1",
        "model": "sonnet",
        "input_tokens": 0,
        "output_tokens": 0,
    }
    fields.update(data)
    return ChatUsageRecorded(
        id="e1",
        occurred_at=datetime(2026, 11, 2, tzinfo=UTC),
        user_id="u1",
        data=ChatUsage.model_validate(fields),
    )


def test_cost_is_micro_dollars_per_token_summed_then_rounded_up() -> None:
    """Dollars per million tokens are micro-dollars per token; the sum is rounded up once."""
    cost = cost_micros(SONNET, input_tokens=1200, output_tokens=350, cache_read=5000, cache_write=1)
    # 1200×3 + 350×15 + 5000×0.30 + 1×3.75 = 3600 + 5250 + 1500 + 3.75
    assert cost == 10354


def test_fractional_prices_round_up_only_the_total() -> None:
    """Rounding happens once on the total, so tiny per-kind fractions are not each rounded up."""
    cheap = ModelPrice(
        input_price_per_million=Decimal("0.075"), output_price_per_million=Decimal("0.3")
    )
    assert cost_micros(cheap, input_tokens=1, output_tokens=1, cache_read=0, cache_write=0) == 1
    assert cost_micros(cheap, input_tokens=4, output_tokens=0, cache_read=0, cache_write=0) == 1
    assert cost_micros(cheap, input_tokens=40, output_tokens=0, cache_read=0, cache_write=0) == 3


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9))
def test_cost_is_never_below_the_exact_price(i: int, o: int, r: int, w: int) -> None:
    """The stamped cost is the exact decimal cost rounded up, never less and never a micro more."""
    exact = i * Decimal(3) + o * Decimal(15) + r * Decimal("0.3") + w * Decimal("3.75")
    cost = cost_micros(SONNET, input_tokens=i, output_tokens=o, cache_read=r, cache_write=w)
    assert cost is not None  # every kind is priced
    assert exact <= cost < exact + 1


def test_price_event_stamps_cost_and_marks_priced() -> None:
    """An event without a cost gets one from the table and is marked priced."""
    priced = price_event(_chat(input_tokens=1000, output_tokens=100), {"sonnet": SONNET})
    assert priced.data.cost_micros == 4500
    assert priced.data.priced is True


def test_the_deployments_price_wins_over_the_emitters_cost() -> None:
    """For a priced model, ingest's cost counts and the emitter's is kept beside it for audit."""
    event = price_event(_chat(input_tokens=1000, cost_micros=7), {"sonnet": SONNET})
    assert event.data.cost_micros == 3000
    assert event.data.priced is True
    assert event.data.reported_cost_micros == 7


def test_a_zero_emitter_cost_cannot_make_priced_usage_free() -> None:
    """`cost_micros: 0` with many tokens of a priced model costs what the price says."""
    event = price_event(_chat(input_tokens=10**9, cost_micros=0), {"sonnet": SONNET})
    assert event.data.cost_micros == 3 * 10**9
    assert event.data.reported_cost_micros == 0


def test_an_unpriced_models_emitter_cost_counts_as_sent() -> None:
    """Without a price, the emitter's cost is the only one and counts; ingest's fields are its own."""
    sent = _chat(model="mystery", cost_micros=42)
    forged = sent.model_copy(
        update={"data": sent.data.model_copy(update={"priced": True, "reported_cost_micros": 1})}
    )
    event = price_event(forged, {"sonnet": SONNET})
    assert event.data.cost_micros == 42
    assert event.data.priced is False
    assert event.data.reported_cost_micros is None
    untouched = _chat(model="mystery", cost_micros=42)
    assert price_event(untouched, {"sonnet": SONNET}) is untouched


def test_a_cost_above_the_per_event_cap_is_refused_naming_the_cap() -> None:
    """Tokens whose priced cost exceeds the largest cost of one event are refused, not stored."""
    huge = ModelPrice.model_validate(
        {"input_price_per_million": "1000000", "output_price_per_million": "0"}
    )
    with pytest.raises(CostTooHighError, match=str(MAX_EVENT_COST_MICROS)):
        price_event(_chat(input_tokens=10**10), {"sonnet": huge})
    at_cap = price_event(_chat(input_tokens=10**6), {"sonnet": huge})
    assert at_cap.data.cost_micros == MAX_EVENT_COST_MICROS


def test_unknown_model_stays_unpriced() -> None:
    """A model without a price leaves the cost null (and not marked priced)."""
    event = price_event(_chat(model="mystery", input_tokens=10), {"sonnet": SONNET})
    assert event.data.cost_micros is None
    assert event.data.priced is False


def test_future_events_beyond_the_skew_are_named() -> None:
    """An event more than the allowed skew in the future is refused naming occurred_at."""
    now = datetime(2026, 11, 2, tzinfo=UTC)
    event = _chat()
    assert check_time(event, now - timedelta(days=2), timedelta(days=1)) is not None
    message = check_time(event, now - timedelta(days=2), timedelta(days=1))
    assert message is not None
    assert message.startswith("occurred_at:")
    assert check_time(event, now - timedelta(hours=23), timedelta(days=1)) is None


def test_price_rejects_negative_and_overly_precise_values() -> None:
    """Prices are non-negative decimals with at most six places."""
    with pytest.raises(ValidationError, match="input_price_per_million"):
        ModelPrice.model_validate(
            {"input_price_per_million": "-1", "output_price_per_million": "1"}
        )
    with pytest.raises(ValidationError, match="output_price_per_million"):
        ModelPrice.model_validate(
            {"input_price_per_million": "1", "output_price_per_million": "0.0000001"}
        )


def test_prices_render_as_decimal_strings() -> None:
    """The API shows prices as decimal strings with at least two places."""
    assert SONNET.as_json() == {
        "input_price_per_million": "3.00",
        "output_price_per_million": "15.00",
        "cache_read_price_per_million": "0.30",
        "cache_write_price_per_million": "3.75",
    }


def test_reasoning_tokens_are_priced_only_as_part_of_the_output() -> None:
    """Coder's chatcost case: 500 output tokens with 200 of them reasoning cost 500 × $15/M."""
    output_only = ModelPrice(
        input_price_per_million=Decimal(0), output_price_per_million=Decimal(15)
    )
    plain = price_event(_chat(output_tokens=500), {"sonnet": output_only})
    reasoning = price_event(_chat(output_tokens=500, reasoning_tokens=200), {"sonnet": output_only})
    assert plain.data.cost_micros == reasoning.data.cost_micros == 7500
    assert reasoning.data.reasoning_tokens == 200
    # Coder's mixed case: 101 in, 201 out (52 reasoning), 1005 cache read, 33 cache write.
    mixed = ModelPrice(
        input_price_per_million=Decimal("1.23"),
        output_price_per_million=Decimal("4.56"),
        cache_read_price_per_million=Decimal("0.7"),
        cache_write_price_per_million=Decimal("7.89"),
    )
    event = _chat(
        input_tokens=101,
        output_tokens=201,
        reasoning_tokens=52,
        cache_read_tokens=1005,
        cache_write_tokens=33,
    )
    assert price_event(event, {"sonnet": mixed}).data.cost_micros == 2005

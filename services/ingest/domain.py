"""Pricing and the rules an event must meet at the front door; no I/O here."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from libs.events.bounds import MAX_EVENT_COST_MICROS, MAX_PRICE_PER_MILLION
from libs.events.models import ChatUsage, ChatUsageRecorded, Envelope
from libs.events.rejections import RejectReason

# Dollars per million tokens as a decimal string: "3.00", "0.075". At most 6 places keeps
# a price exact in micro-dollars per token; the cap comes from `libs.events.bounds`.
PricePerMillion = Annotated[
    Decimal,
    Field(ge=0, le=MAX_PRICE_PER_MILLION, max_digits=13, decimal_places=6, allow_inf_nan=False),
]
PRICE_FIELDS: Final = (
    "input_price_per_million",
    "output_price_per_million",
    "cache_read_price_per_million",
    "cache_write_price_per_million",
)


class ModelPrice(BaseModel):
    """A model's price: dollars per million tokens of each kind (decimal strings on the wire).

    A kind may be left unset (absent or null), as in Coder's model cost configuration: tokens
    of that kind are then free when the message also has tokens of a priced kind, and a
    message whose tokens are all of unset kinds is unpriced (see `cost_micros`). At least one
    kind must be set; a model with no price at all is one without a row (DELETE).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_price_per_million: PricePerMillion | None = None
    output_price_per_million: PricePerMillion | None = None
    cache_read_price_per_million: PricePerMillion | None = None
    cache_write_price_per_million: PricePerMillion | None = None

    @model_validator(mode="after")
    def _some_kind_is_priced(self) -> Self:
        if all(getattr(self, name) is None for name in PRICE_FIELDS):
            raise PydanticCustomError(
                "no_price",
                "set at least one of input_price_per_million, output_price_per_million, "
                "cache_read_price_per_million, cache_write_price_per_million (to remove a "
                "model's price, DELETE it)",
            )
        return self

    def as_json(self) -> dict[str, str | None]:
        """Decimal strings, as the pricing API shows them; null for a kind left unset."""
        return {name: _fmt(getattr(self, name)) for name in PRICE_FIELDS}


def _fmt(value: Decimal | None) -> str | None:
    if value is None:
        return None
    text = f"{value:f}"
    if "." not in text:
        return f"{text}.00"
    whole, frac = text.split(".")
    return f"{whole}.{frac.rstrip('0').ljust(2, '0')}"


def cost_micros(
    price: ModelPrice, *, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int
) -> int | None:
    """`ceil(Σ tokens × price)` over the priced kinds, or None when the usage is unpriced.

    Dollars per million tokens are micro-dollars per token. As Coder's `chatcost` does, the
    usage is unpriced (None) when every kind it has tokens of is left unset in the price,
    and tokens of unset kinds cost nothing when some kind with tokens is priced. A message
    with no tokens at all costs 0 (Tollgate's token counts are numbers, never absent).
    """
    total = Decimal(0)
    priced = used = False
    for tokens, per_million in (
        (input_tokens, price.input_price_per_million),
        (output_tokens, price.output_price_per_million),
        (cache_read, price.cache_read_price_per_million),
        (cache_write, price.cache_write_price_per_million),
    ):
        used |= tokens > 0
        if per_million is not None:
            priced |= tokens > 0
            total += tokens * per_million
    if used and not priced:
        return None
    return math.ceil(total)


def priced_cost(data: ChatUsage, prices: Mapping[str, ModelPrice]) -> int | None:
    """What the price table makes this usage cost, or None when it does not price it."""
    price = prices.get(data.model)
    if price is None:
        return None
    return cost_micros(
        price,
        input_tokens=data.input_tokens,
        output_tokens=data.output_tokens,
        cache_read=data.cache_read_tokens,
        cache_write=data.cache_write_tokens,
    )


class CostTooHighError(ValueError):
    """The deployment's price makes an event cost more than one event may (see bounds)."""


def price_event(event: ChatUsageRecorded, prices: dict[str, ModelPrice]) -> ChatUsageRecorded:
    """Stamp the deployment's cost on chat usage of a priced model.

    When the model has a price for the kinds of tokens the message used (see `cost_micros`),
    ingest's cost is the one that counts (`cost_micros`, `priced` true) and a cost the
    emitter sent is kept beside it as `reported_cost_micros`, for audit: an emitter can
    never lower a user's spend below the deployment's price. Usage the price does not cover
    keeps the emitter's `cost_micros` as sent (or none), `priced` false. What the emitter put
    in `priced` or `reported_cost_micros` is replaced either way: ingest alone decides them.
    A price change later is never retroactive.

    Raises `CostTooHighError` when the priced cost is above `MAX_EVENT_COST_MICROS`.
    """
    data = event.data
    cost = priced_cost(data, prices)
    if cost is None:
        # No price for this model, or none for the kinds of tokens this message used.
        if not data.priced and data.reported_cost_micros is None:
            return event
        update: dict[str, object] = {"priced": False, "reported_cost_micros": None}
        return event.model_copy(update={"data": data.model_copy(update=update)})
    if cost > MAX_EVENT_COST_MICROS:
        raise CostTooHighError(
            f"data: at the price of model {data.model!r} these tokens cost {cost} "
            f"micro-dollars, more than one event may cost ({MAX_EVENT_COST_MICROS}); "
            "send the usage in smaller events"
        )
    update = {"cost_micros": cost, "priced": True, "reported_cost_micros": data.cost_micros}
    return event.model_copy(update={"data": data.model_copy(update=update)})


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one event of a batch was refused; rejections at the front door are permanent."""

    index: int
    id: str | None
    message: str
    reason: RejectReason

    def as_json(self) -> dict[str, object]:
        """The contract's shape (plus the index, for events without an id, and the code)."""
        return {
            "id": self.id,
            "index": self.index,
            "message": self.message,
            "permanent": True,
            "reason": self.reason.value,
        }


def check_time(event: Envelope, now: datetime, max_skew: timedelta) -> str | None:
    """A message naming `occurred_at` when the event claims to be from too far in the future."""
    if event.occurred_at > now + max_skew:
        return f"occurred_at: {event.occurred_at.isoformat()} is more than {max_skew} in the future"
    return None

"""The price table (ingest's `PriceStore`): the dict and PostgreSQL behave alike."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
import pytest

from libs.events.pricing import ModelPrice
from services.ingest.storage import InMemoryPriceStore, PostgresPriceStore, PriceStore
from tests.support import unique


@pytest.fixture
def prices(pool: asyncpg.Pool | None) -> PriceStore:
    """The price store under test."""
    return InMemoryPriceStore() if pool is None else PostgresPriceStore(pool)


async def test_a_price_put_is_loaded_with_when_it_was_set(prices: PriceStore) -> None:
    """Every kind, set or unset, comes back as it was put, with the time `put` returned."""
    model = unique("model")
    price = ModelPrice(
        input_price_per_million=Decimal("2.5"),
        output_price_per_million=None,
        cache_read_price_per_million=Decimal("0.125"),
        cache_write_price_per_million=None,
    )
    at = await prices.put(model, price)
    assert (await prices.load())[model] == (price, at)


async def test_a_second_put_replaces_the_price(prices: PriceStore) -> None:
    """Putting a model's price again replaces every kind, including ones now unset."""
    model = unique("model")
    await prices.put(model, ModelPrice(input_price_per_million=Decimal(1)))
    newer = ModelPrice(output_price_per_million=Decimal(3))
    at = await prices.put(model, newer)
    assert (await prices.load())[model] == (newer, at)


async def test_every_change_moves_the_version(prices: PriceStore) -> None:
    """Put and delete each move the version, so a cache notices them."""
    model = unique("model")
    before = await prices.version()
    await prices.put(model, ModelPrice(input_price_per_million=Decimal(1)))
    after_put = await prices.version()
    assert after_put > before
    assert await prices.delete(model) is True
    assert await prices.version() > after_put


async def test_deleting_says_whether_there_was_a_price(prices: PriceStore) -> None:
    """A deleted price is gone; deleting it again, or a model never priced, answers False."""
    model = unique("model")
    await prices.put(model, ModelPrice(input_price_per_million=Decimal(1)))
    assert await prices.delete(model) is True
    assert model not in await prices.load()
    assert await prices.delete(model) is False
    assert await prices.delete(unique("never")) is False

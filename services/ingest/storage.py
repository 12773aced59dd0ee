"""The price table: a Protocol, its PostgreSQL implementation and an in-memory one for tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

import asyncpg

from libs.events.pricing import ModelPrice


class PriceStore(Protocol):
    """Reads and changes the model price table."""

    async def version(self) -> int:
        """A number that changes whenever any price changes."""
        ...

    async def load(self) -> dict[str, tuple[ModelPrice, datetime]]:
        """Every model's price and when it was set."""
        ...

    async def put(self, model: str, price: ModelPrice) -> datetime:
        """Set a model's price; returns when."""
        ...

    async def delete(self, model: str) -> bool:
        """Remove a model's price; False when it had none."""
        ...


SELECT_VERSION = "SELECT version FROM model_prices_version"
SELECT_PRICES = """
SELECT model, input_price_per_million, output_price_per_million,
       cache_read_price_per_million, cache_write_price_per_million, updated_at
FROM model_prices
"""
UPSERT_PRICE = """
INSERT INTO model_prices (model, input_price_per_million, output_price_per_million,
                          cache_read_price_per_million, cache_write_price_per_million, updated_at)
VALUES ($1, $2, $3, $4, $5, now())
ON CONFLICT (model) DO UPDATE SET
    input_price_per_million = EXCLUDED.input_price_per_million,
    output_price_per_million = EXCLUDED.output_price_per_million,
    cache_read_price_per_million = EXCLUDED.cache_read_price_per_million,
    cache_write_price_per_million = EXCLUDED.cache_write_price_per_million,
    updated_at = now()
RETURNING updated_at
"""
DELETE_PRICE = "DELETE FROM model_prices WHERE model = $1"
BUMP_VERSION = "UPDATE model_prices_version SET version = version + 1"


class PostgresPriceStore:
    """The price table in PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def version(self) -> int:
        """The change counter."""
        value: int = await self.pool.fetchval(SELECT_VERSION, timeout=2)
        return value

    async def load(self) -> dict[str, tuple[ModelPrice, datetime]]:
        """The whole table (it is small: one row per model)."""
        rows = await self.pool.fetch(SELECT_PRICES, timeout=5)
        return {
            r["model"]: (
                ModelPrice(
                    input_price_per_million=r["input_price_per_million"],
                    output_price_per_million=r["output_price_per_million"],
                    cache_read_price_per_million=r["cache_read_price_per_million"],
                    cache_write_price_per_million=r["cache_write_price_per_million"],
                ),
                r["updated_at"],
            )
            for r in rows
        }

    async def put(self, model: str, price: ModelPrice) -> datetime:
        """Upsert and move the version in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            updated: datetime = await conn.fetchval(
                UPSERT_PRICE,
                model,
                price.input_price_per_million,
                price.output_price_per_million,
                price.cache_read_price_per_million,
                price.cache_write_price_per_million,
            )
            await conn.execute(BUMP_VERSION)
        return updated

    async def delete(self, model: str) -> bool:
        """Delete and move the version in one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(DELETE_PRICE, model)
            await conn.execute(BUMP_VERSION)
        return bool(status.endswith(" 1"))


class InMemoryPriceStore:
    """A dict behind the same interface, for unit tests."""

    def __init__(self) -> None:
        self._prices: dict[str, tuple[ModelPrice, datetime]] = {}
        self._version = 0

    async def version(self) -> int:
        """The change counter."""
        return self._version

    async def load(self) -> dict[str, tuple[ModelPrice, datetime]]:
        """A copy of the table."""
        return dict(self._prices)

    async def put(self, model: str, price: ModelPrice) -> datetime:
        """Set a price."""
        now = datetime.now(UTC)
        self._prices[model] = (price, now)
        self._version += 1
        return now

    async def delete(self, model: str) -> bool:
        """Remove a price."""
        self._version += 1
        return self._prices.pop(model, None) is not None

"""Coder's rule for which models lack pricing, replayed against the price table in PostgreSQL.

coder/coder `coderd/database/queries/chats.sql`, `CountEnabledModelsWithoutPricing`: a model
counts as without pricing when its cost configuration is absent or sets neither an input nor an
output price. Tollgate reads ingest's price table the same way (`PostgresConfigStore
.priced_models`); the models it asks about are the ones chat usage named (Coder's are its
enabled model configurations: the README explains why).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import asyncpg
import pytest

from libs.events.pricing import ModelPrice
from services.ingest.storage import PostgresPriceStore
from services.limits.domain import unpriced_models
from services.limits.storage import PostgresConfigStore
from tests.support import unique

pytestmark = pytest.mark.integration

# (case, the model's prices in dollars per million or None for no row, counted as unpriced)
CASES: Final[tuple[tuple[str, dict[str, str] | None, bool], ...]] = (
    ("options->'cost' IS NULL: no price at all", None, True),
    (
        "input and output both NULL: only cache prices",
        {"cache_read": "0.3", "cache_write": "3"},
        True,
    ),
    ("input price only", {"input": "3"}, False),
    ("output price only", {"output": "15"}, False),
    ("input and output prices", {"input": "3", "output": "15"}, False),
    ("zero prices are prices", {"input": "0", "output": "0"}, False),
)


async def test_models_without_input_or_output_price_are_unpriced_as_in_coder(
    db: asyncpg.Pool,
) -> None:
    """A used model is unpriced without a row or with neither an input nor an output price."""
    prices, limits = PostgresPriceStore(db), PostgresConfigStore(db)
    models = {name: unique("model") for name, _, _ in CASES}
    for name, price, _ in CASES:
        if price is not None:
            await prices.put(
                models[name],
                ModelPrice.model_validate(
                    {f"{kind}_price_per_million": Decimal(v) for kind, v in price.items()}
                ),
            )
    listed = unpriced_models(models.values(), await limits.priced_models())
    assert {name for name, model in models.items() if model in listed} == {
        name for name, _, unpriced in CASES if unpriced
    }
    # Deleting the price puts a model back at once; there is no cache to wait for.
    await prices.delete(models["input price only"])
    assert models["input price only"] in unpriced_models(
        models.values(), await limits.priced_models()
    )

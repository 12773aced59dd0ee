"""Every replica's copy of the price table, refreshed when the table's version moves."""

from __future__ import annotations

import structlog

from libs.events.pricing import ModelPrice
from libs.service.cache import VersionedCache
from services.ingest.storage import PriceStore

log = structlog.get_logger(__name__)


class PriceCache(VersionedCache[dict[str, ModelPrice]]):
    """Prices in memory for the hot path, kept within one poll of the table."""

    def __init__(self, store: PriceStore, *, interval_s: float) -> None:
        self.store = store

        async def load() -> dict[str, ModelPrice]:
            table = await store.load()
            return {model: price for model, (price, _) in table.items()}

        super().__init__(
            "prices",
            version=store.version,
            load=load,
            interval_s=interval_s,
            on_load=self._loaded,
        )

    @property
    def prices(self) -> dict[str, ModelPrice]:
        """The prices in force, by model (none until the table was read once)."""
        return self.value or {}

    def _loaded(self, prices: dict[str, ModelPrice]) -> None:
        log.info("prices_loaded", models=len(prices), version=self.version)

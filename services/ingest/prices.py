"""Every replica's copy of the price table, refreshed when the table's version moves."""

from __future__ import annotations

import asyncio

import structlog

from libs.events.pricing import ModelPrice
from services.ingest.storage import PriceStore

log = structlog.get_logger(__name__)


class PriceCache:
    """Prices in memory for the hot path, kept within one poll of the table."""

    def __init__(self, store: PriceStore, *, interval_s: float) -> None:
        self.store = store
        self.interval_s = interval_s
        self.prices: dict[str, ModelPrice] = {}
        self.version: int | None = None

    async def refresh(self) -> bool:
        """Reload when the version changed; True when it did."""
        version = await self.store.version()
        if version == self.version:
            return False
        table = await self.store.load()
        self.prices = {model: price for model, (price, _) in table.items()}
        self.version = version
        log.info("prices_loaded", models=len(self.prices), version=version)
        return True

    async def refresh_forever(self) -> None:
        """Poll the version; a database outage keeps the last prices and is retried."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("prices_refresh_failed", error=str(exc))
            await asyncio.sleep(self.interval_s)

"""Every replica's copy of the admin configuration, refreshed when its version row moves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from services.limits.domain import Limiter
from services.limits.storage import ConfigStore, StoredConfig

log = structlog.get_logger(__name__)


class ConfigCache:
    """Puts the stored configuration into the limiter, within one poll of any change."""

    def __init__(self, store: ConfigStore, limiter: Limiter, *, interval_s: float) -> None:
        self.store = store
        self.limiter = limiter
        self.interval_s = interval_s
        self.version: int | None = None
        self.stored: StoredConfig | None = None
        #: Whether the last read of the configuration's version reached the database.
        self.reachable = False
        #: Called after a newer configuration was put in force.
        self.on_change: Callable[[], None] | None = None

    @property
    def loaded(self) -> bool:
        """Whether a configuration was ever loaded (checks need one to be right)."""
        return self.stored is not None

    async def refresh(self) -> bool:
        """Reload when the version moved; True when a newer configuration was put in force."""
        version = await self.store.version()
        self.reachable = True
        if version == self.version:
            return False
        stored = await self.store.load()
        # A slower concurrent refresh must not put an older configuration back.
        if self.version is not None and stored.version < self.version:
            return False
        self.limiter.config = stored.to_config()
        self.version = stored.version
        self.stored = stored
        log.info(
            "limits_config_loaded",
            version=stored.version,
            enabled=stored.enabled,
            period=stored.period,
            default_limit_micros=stored.default_limit_micros,
            user_overrides=len(stored.user_overrides),
            group_overrides=len(stored.group_overrides),
            warning_threshold_percent=stored.warning_threshold_percent,
        )
        if self.on_change is not None:
            self.on_change()
        return True

    async def refresh_forever(self) -> None:
        """Poll the version; a database outage keeps the configuration in force and retries."""
        failing = False
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                self.reachable = False
                if not failing:
                    log.warning(
                        "limits_config_refresh_failed", error=f"{type(exc).__name__}: {exc}"
                    )
                failing = True
            else:
                if failing:
                    log.info("limits_config_refresh_recovered")
                failing = False
            await asyncio.sleep(self.interval_s)

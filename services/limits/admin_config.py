"""Every replica's copy of the admin configuration, refreshed when its version row moves."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from libs.service.cache import VersionedCache
from services.limits.domain import Limiter
from services.limits.storage import ConfigStore, StoredConfig

log = structlog.get_logger(__name__)


class ConfigCache(VersionedCache[StoredConfig]):
    """Puts the stored configuration into the limiter, within one poll of any change."""

    def __init__(self, store: ConfigStore, limiter: Limiter, *, interval_s: float) -> None:
        self.store = store
        self.limiter = limiter
        #: Called after a newer configuration was put in force.
        self.on_change: Callable[[], None] | None = None
        super().__init__(
            "limits_config",
            version=store.version,
            load=store.load,
            version_of=lambda stored: stored.version,
            interval_s=interval_s,
            on_load=self._put_in_force,
        )

    @property
    def stored(self) -> StoredConfig | None:
        """The configuration in force (None until one was loaded)."""
        return self.value

    def _put_in_force(self, stored: StoredConfig) -> None:
        self.limiter.config = stored.to_config()
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

"""Ingest settings, read once from the environment."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from libs.service.settings import CommonSettings
from services.ingest import SERVICE


class IngestSettings(CommonSettings):
    """What ingest needs beyond the shared settings."""

    port: int = Field(SERVICE.default_port, alias=SERVICE.port_env, ge=1, le=65535)
    metrics_port: int = Field(
        SERVICE.default_metrics_port, alias=SERVICE.metrics_port_env, ge=1, le=65535
    )
    max_batch_events: int = Field(1000, alias="TOLLGATE_INGEST_MAX_EVENTS", ge=1, le=10_000)
    produce_timeout_s: float = Field(3.0, alias="TOLLGATE_PRODUCE_TIMEOUT", gt=0)
    price_refresh_s: float = Field(0.25, alias="TOLLGATE_PRICE_REFRESH", gt=0)
    max_future_skew: timedelta = Field(timedelta(days=1), alias="TOLLGATE_MAX_FUTURE_SKEW")

    @classmethod
    def from_env(cls) -> IngestSettings:
        """Read the settings from the process environment."""
        return cls()

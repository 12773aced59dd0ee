"""Limits settings, read once from the environment."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field

from libs.service.settings import CommonSettings
from services.limits import SERVICE


class LimitsSettings(CommonSettings):
    """What the limits service needs beyond the shared settings."""

    port: int = Field(SERVICE.default_port, alias=SERVICE.port_env, ge=1, le=65535)
    metrics_port: int = Field(
        SERVICE.default_metrics_port, alias=SERVICE.metrics_port_env, ge=1, le=65535
    )
    snapshot_interval_s: float = Field(30.0, alias="TOLLGATE_LIMITS_SNAPSHOT_INTERVAL", gt=0)
    snapshots_kept: int = Field(3, alias="TOLLGATE_LIMITS_SNAPSHOTS_KEPT", ge=1, le=100)
    config_refresh_s: float = Field(0.25, alias="TOLLGATE_LIMITS_CONFIG_REFRESH", gt=0, le=1)
    # The contract promises duplicates are caught for at least a day of log time.
    dedup_window: timedelta = Field(
        timedelta(hours=48), alias="TOLLGATE_LIMITS_DEDUP_WINDOW", ge=timedelta(hours=24)
    )
    fetch_max_wait_ms: int = Field(20, alias="TOLLGATE_LIMITS_FETCH_WAIT_MS", ge=1, le=500)
    # Off by default: user ids with their spend would reach everyone who can read Prometheus
    # or Grafana. Per-user spend belongs to the authenticated cost API.
    top_users: int = Field(0, alias="TOLLGATE_LIMITS_TOP_USERS", ge=0, le=1000)
    # At a start in a new broker epoch (the embedded broker restarted with an empty log), add
    # the chat usage the reports archive holds from after the carried snapshot.
    archive_catchup: bool = Field(default=True, alias="TOLLGATE_LIMITS_ARCHIVE_CATCHUP")
    # Record budget notifications (warning and limit reached) in PostgreSQL as they fall due.
    notifications: bool = Field(default=True, alias="TOLLGATE_LIMITS_NOTIFICATIONS")

    @classmethod
    def from_env(cls) -> LimitsSettings:
        """Read the settings from the process environment."""
        return cls()

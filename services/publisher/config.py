"""Publisher settings, read once from the environment.

Durations are written like `17m`, `2s`, `500ms` or `1h30m` (a plain number is seconds), so
the same variables serve production (minutes), demos (seconds) and tests (milliseconds).
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from libs.service.durations import Duration
from libs.service.settings import CommonSettings
from services.publisher import SERVICE
from services.publisher.domain import MAX_BATCH


def _blank_is_none(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        return None
    return value


class PublisherSettings(CommonSettings):
    """What the publisher needs beyond the shared settings."""

    port: int = Field(SERVICE.default_port, alias=SERVICE.port_env, ge=1, le=65535)
    metrics_port: int = Field(
        SERVICE.default_metrics_port, alias=SERVICE.metrics_port_env, ge=1, le=65535
    )
    group: str = Field("publisher", alias="TOLLGATE_PUBLISHER_GROUP", min_length=1)
    queue: str = Field("default", alias="TOLLGATE_PUBLISHER_QUEUE", min_length=1, max_length=128)
    billing_url: str | None = Field(None, alias="BILLING_URL")
    license_key: SecretStr | None = Field(None, alias="LICENSE_KEY")
    deployment_id: str | None = Field(None, alias="DEPLOYMENT_ID", max_length=256)
    interval: Duration = Field(timedelta(minutes=17), alias="PUBLISH_INTERVAL")
    first_delay: Duration | None = Field(None, alias="PUBLISH_FIRST_DELAY")
    max_age: Duration = Field(timedelta(days=30), alias="PUBLISH_MAX_AGE")
    batch_size: int = Field(MAX_BATCH, alias="PUBLISH_BATCH_SIZE", ge=1, le=MAX_BATCH)
    request_timeout: Duration = Field(timedelta(seconds=30), alias="PUBLISH_TIMEOUT")
    claim_timeout: Duration = Field(timedelta(minutes=5), alias="PUBLISH_CLAIM_TIMEOUT")
    backoff_base: Duration = Field(timedelta(minutes=1), alias="PUBLISH_BACKOFF_BASE")
    backoff_max: Duration = Field(timedelta(hours=1), alias="PUBLISH_BACKOFF_MAX")
    heartbeat_check: Duration = Field(
        timedelta(seconds=30), alias="TOLLGATE_PUBLISHER_HEARTBEAT_CHECK"
    )
    agent_time_lag: Duration = Field(
        timedelta(minutes=5), alias="TOLLGATE_PUBLISHER_AGENT_TIME_LAG"
    )
    agent_time_window: Duration = Field(
        timedelta(days=7), alias="TOLLGATE_PUBLISHER_AGENT_TIME_WINDOW"
    )
    retention: Duration = Field(timedelta(days=90), alias="TOLLGATE_PUBLISHER_RETENTION")
    session_timeout: Duration = Field(
        timedelta(seconds=10), alias="TOLLGATE_PUBLISHER_SESSION_TIMEOUT"
    )
    gauge_refresh: Duration = Field(timedelta(seconds=5), alias="TOLLGATE_PUBLISHER_GAUGE_REFRESH")
    # Billable usage is sent every quarter of an hour: the queue can trail the log by a second,
    # and fewer, larger fetches cost the broker and PostgreSQL less CPU.
    fetch_max_wait_ms: int = Field(500, alias="TOLLGATE_PUBLISHER_FETCH_WAIT_MS", ge=1, le=5000)
    fetch_min_bytes: int = Field(
        256 * 1024, alias="TOLLGATE_PUBLISHER_FETCH_MIN_BYTES", ge=1, le=64 * 1024 * 1024
    )

    _blanks = field_validator(
        "billing_url", "license_key", "deployment_id", "first_delay", mode="before"
    )(_blank_is_none)

    @field_validator("billing_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("BILLING_URL must be an http(s) URL such as https://billing.example")
        return value.strip().rstrip("/")

    @field_validator(
        "interval",
        "max_age",
        "request_timeout",
        "claim_timeout",
        "backoff_base",
        "backoff_max",
        "heartbeat_check",
        "retention",
        "session_timeout",
        "gauge_refresh",
    )
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration such as 17m, 2s or 500ms")
        return value

    @field_validator("first_delay", "agent_time_lag")
    @classmethod
    def _not_negative(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> PublisherSettings:
        # A claim must outlive the request that carries it, or a second replica could send
        # the same events while the first is still waiting for the answer.
        if self.claim_timeout < self.request_timeout * 2:
            raise ValueError(
                "PUBLISH_CLAIM_TIMEOUT must be at least twice PUBLISH_TIMEOUT "
                f"(now {self.claim_timeout} and {self.request_timeout})"
            )
        if self.retention < self.max_age:
            raise ValueError(
                "TOLLGATE_PUBLISHER_RETENTION must not be shorter than PUBLISH_MAX_AGE, or a "
                "replay of the log could queue an already-sent event again"
            )
        if self.backoff_max < self.backoff_base:
            raise ValueError("PUBLISH_BACKOFF_MAX must not be shorter than PUBLISH_BACKOFF_BASE")
        if "agent_time_window" not in self.model_fields_set:
            # The default window fits inside a shorter PUBLISH_MAX_AGE by itself.
            fitted = min(self.agent_time_window, self.max_age - timedelta(hours=1))
            # The model is frozen; this is still its construction.
            object.__setattr__(self, "agent_time_window", max(fitted, timedelta(hours=1)))
        if not timedelta(hours=1) <= self.agent_time_window < self.max_age:
            raise ValueError(
                "TOLLGATE_PUBLISHER_AGENT_TIME_WINDOW must be at least 1h and shorter than "
                f"PUBLISH_MAX_AGE (now {self.agent_time_window} and {self.max_age}): an hour "
                "older than the maximum age would expire unsent"
            )
        if self.agent_time_lag >= self.agent_time_window:
            raise ValueError(
                "TOLLGATE_PUBLISHER_AGENT_TIME_LAG must be shorter than "
                "TOLLGATE_PUBLISHER_AGENT_TIME_WINDOW, or no hour would ever close"
            )
        return self

    @property
    def configured(self) -> bool:
        """Whether there is somewhere to send to and a key to send with."""
        return self.billing_url is not None and self.license_key is not None

    @property
    def missing(self) -> list[str]:
        """The variables that keep the publisher in queue-only mode."""
        return [
            name
            for name, value in (
                ("BILLING_URL", self.billing_url),
                ("LICENSE_KEY", self.license_key),
            )
            if value is None
        ]

    @property
    def public_billing_url(self) -> str | None:
        """`BILLING_URL` without any credentials it may carry, for status and logs."""
        if self.billing_url is None:
            return None
        parts = urlsplit(self.billing_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))

    @classmethod
    def from_env(cls) -> PublisherSettings:
        """Read the settings from the process environment."""
        return cls()

"""Reports settings, read once from the environment."""

from __future__ import annotations

from pydantic import Field

from libs.service.settings import CommonSettings


class ReportsSettings(CommonSettings):
    """What reports needs beyond the shared settings."""

    port: int = Field(8083, alias="TOLLGATE_REPORTS_PORT", ge=1, le=65535)
    metrics_port: int = Field(9083, alias="TOLLGATE_REPORTS_METRICS_PORT", ge=1, le=65535)
    consumer_group: str = Field("reports", alias="TOLLGATE_REPORTS_GROUP", min_length=1)
    batch_max_events: int = Field(5000, alias="TOLLGATE_REPORTS_BATCH", ge=1, le=100_000)
    # A fetch is answered once this much is there or the wait is over: the projection's target
    # is 2 s behind the log, and fewer, larger batches cost the broker and PostgreSQL less CPU.
    fetch_max_wait_ms: int = Field(250, alias="TOLLGATE_REPORTS_FETCH_WAIT_MS", ge=1, le=5000)
    fetch_min_bytes: int = Field(
        256 * 1024, alias="TOLLGATE_REPORTS_FETCH_MIN_BYTES", ge=1, le=64 * 1024 * 1024
    )
    # Transactions a batch is split into (by partition), each on its own connection.
    writers: int = Field(2, alias="TOLLGATE_REPORTS_WRITERS", ge=1, le=16)
    session_timeout_ms: int = Field(
        10_000, alias="TOLLGATE_REPORTS_SESSION_TIMEOUT_MS", ge=1000, le=300_000
    )
    heartbeat_interval_ms: int = Field(
        3_000, alias="TOLLGATE_REPORTS_HEARTBEAT_MS", ge=100, le=100_000
    )
    # A session longer than this is counted as this long: one bad duration must not turn into
    # millions of hourly rollup rows.
    max_session_hours: int = Field(744, alias="TOLLGATE_REPORTS_MAX_SESSION_HOURS", ge=1, le=8784)
    limits_url: str | None = Field(None, alias="TOLLGATE_LIMITS_URL")
    limits_timeout_s: float = Field(0.2, alias="TOLLGATE_LIMITS_TIMEOUT", gt=0, le=30)
    limits_token_override: str | None = Field(None, alias="TOLLGATE_LIMITS_TOKEN")
    # The other services, for the console's calls and (make run) one origin for every API.
    ingest_url: str | None = Field(None, alias="TOLLGATE_INGEST_URL")
    publisher_url: str | None = Field(None, alias="TOLLGATE_PUBLISHER_URL")
    forward_timeout_s: float = Field(30.0, alias="TOLLGATE_FORWARD_TIMEOUT", gt=0, le=300)
    # Console sessions last this long from sign-in (a portal session no longer than its token).
    console_session_ttl_s: int = Field(
        8 * 3600, alias="TOLLGATE_CONSOLE_SESSION_TTL", ge=300, le=7 * 86400
    )
    # Behind a TLS-terminating proxy or Ingress: believe its X-Forwarded-Proto and -Host.
    trust_proxy: bool = Field(default=False, alias="TOLLGATE_TRUST_PROXY")

    @property
    def limits_token(self) -> str | None:
        """The token sent to the limits service: the setting, else the first admin token."""
        if self.limits_token_override:
            return self.limits_token_override
        return self.admin_tokens[0] if self.admin_tokens else None

    @classmethod
    def from_env(cls) -> ReportsSettings:
        """Read the settings from the process environment."""
        return cls()

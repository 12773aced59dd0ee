"""Reports settings, read once from the environment."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from libs.service.durations import Duration, Seconds
from libs.service.settings import CommonSettings, split_csv
from services.reports import SERVICE
from services.reports.notifications.domain import check_address, one_line, parse_networks
from services.reports.notifications.senders import SmtpServer, envelope_sender

#: Never less: a notification outlives the period it belongs to (a month at most), so that its
#: unique key keeps a replay of that period from recording it twice.
MIN_NOTIFY_RETENTION = timedelta(days=62)

TextList = Annotated[tuple[str, ...], NoDecode]


class ReportsSettings(CommonSettings):
    """What reports needs beyond the shared settings."""

    port: int = Field(SERVICE.default_port, alias=SERVICE.port_env, ge=1, le=65535)
    metrics_port: int = Field(
        SERVICE.default_metrics_port, alias=SERVICE.metrics_port_env, ge=1, le=65535
    )
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
    # Where people reach the console (links in admin emails), e.g. https://tollgate.example.
    public_url: str | None = Field(None, alias="TOLLGATE_PUBLIC_URL")

    # -- budget notifications (the notifier) ---------------------------------------------------
    notify_deliver: bool = Field(default=True, alias="TOLLGATE_NOTIFY_DELIVER")
    smtp_url: str | None = Field(None, alias="TOLLGATE_SMTP_URL", repr=False)
    smtp_from: str | None = Field(None, alias="TOLLGATE_SMTP_FROM")
    notify_admin_emails: TextList = Field((), alias="TOLLGATE_NOTIFY_ADMIN_EMAILS")
    notify_poll_s: Seconds = Field(1.0, alias="TOLLGATE_NOTIFY_POLL", gt=0, le=60)
    notify_timeout_s: Seconds = Field(15.0, alias="TOLLGATE_NOTIFY_TIMEOUT", gt=0, le=120)
    notify_claim_timeout_s: Seconds = Field(
        60.0, alias="TOLLGATE_NOTIFY_CLAIM_TIMEOUT", gt=0, le=3600
    )
    # Deliveries are retried for at least this long, then given up ("failed").
    notify_retry_for: Duration = Field(
        timedelta(hours=24), alias="TOLLGATE_NOTIFY_RETRY_FOR", gt=timedelta(0)
    )
    # Settled notifications are forgotten (with their deliveries) after this long.
    notify_retention: Duration = Field(
        timedelta(days=90), alias="TOLLGATE_NOTIFY_RETENTION", ge=MIN_NOTIFY_RETENTION
    )
    notify_backoff_base: Duration = Field(
        timedelta(seconds=10), alias="TOLLGATE_NOTIFY_BACKOFF_BASE", gt=timedelta(0)
    )
    notify_backoff_max: Duration = Field(
        timedelta(hours=1), alias="TOLLGATE_NOTIFY_BACKOFF_MAX", gt=timedelta(0)
    )
    notify_per_target: int = Field(4, alias="TOLLGATE_NOTIFY_PER_TARGET", ge=1, le=64)
    notify_concurrency: int = Field(32, alias="TOLLGATE_NOTIFY_CONCURRENCY", ge=1, le=1000)
    # A notification whose user the directory does not know yet waits this long for it.
    notify_directory_wait_s: Seconds = Field(
        30.0, alias="TOLLGATE_NOTIFY_DIRECTORY_WAIT", ge=0, le=3600
    )
    webhook_allow_private: bool = Field(default=False, alias="TOLLGATE_WEBHOOK_ALLOW_PRIVATE")
    webhook_allow_networks: TextList = Field((), alias="TOLLGATE_WEBHOOK_ALLOW_NETWORKS")

    _split_lists = field_validator("notify_admin_emails", "webhook_allow_networks", mode="before")(
        split_csv
    )

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        SmtpServer.parse(value)
        return value

    @field_validator("smtp_from")
    @classmethod
    def _smtp_from(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if (
            one_line(value, max_length=998) != value.strip()
            or check_address(envelope_sender(value)) is None
        ):
            raise ValueError("must be one address, e.g. Tollgate <noreply@example.com>")
        return value.strip()

    @field_validator("notify_admin_emails")
    @classmethod
    def _admin_emails(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in value if check_address(v) is None]
        if bad:
            raise ValueError(f"not an email address: {', '.join(map(repr, bad))}")
        return value

    @field_validator("webhook_allow_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_networks(value)
        return value

    @model_validator(mode="after")
    def _notify_consistent(self) -> Self:
        if self.smtp_url is not None and self.smtp_from is None:
            raise ValueError("TOLLGATE_SMTP_URL needs TOLLGATE_SMTP_FROM (the From address)")
        if self.notify_claim_timeout_s < 2 * self.notify_timeout_s:
            raise ValueError(
                "TOLLGATE_NOTIFY_CLAIM_TIMEOUT must be at least twice TOLLGATE_NOTIFY_TIMEOUT"
            )
        if self.notify_retention <= self.notify_retry_for:
            raise ValueError(
                "TOLLGATE_NOTIFY_RETENTION must be longer than TOLLGATE_NOTIFY_RETRY_FOR"
            )
        if self.notify_backoff_max < self.notify_backoff_base:
            raise ValueError("TOLLGATE_NOTIFY_BACKOFF_MAX must not be below the base")
        return self

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

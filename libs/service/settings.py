"""Settings every service shares, read once from the environment into a frozen model."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from libs.events.topics import USAGE_EVENTS, USAGE_EVENTS_DLQ
from libs.service.portal import MIN_SECRET_LENGTH
from libs.service.portal import PREFIX as PORTAL_PREFIX

#: Epoch used with an external Kafka, whose log outlives every client: it never changes.
EXTERNAL_EPOCH = "external"

TokenList = Annotated[tuple[str, ...], NoDecode]


def split_csv(value: object) -> object:
    """Turn `a,b , c` into `("a", "b", "c")`; tuples and lists pass through."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class CommonSettings(BaseSettings):
    """What every service needs: where the log and the database are, who may call it, how to log."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", alias="KAFKA_BOOTSTRAP_SERVERS")
    database_url: str = Field(alias="DATABASE_URL")
    emitter_tokens: TokenList = Field((), alias="TOLLGATE_EMITTER_TOKENS")
    admin_tokens: TokenList = Field((), alias="TOLLGATE_ADMIN_TOKENS")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", alias="TOLLGATE_LOG_LEVEL"
    )
    log_format: Literal["json", "console"] = Field("json", alias="TOLLGATE_LOG_FORMAT")
    host: str = Field("0.0.0.0", alias="TOLLGATE_HOST")
    broker_epoch: str = Field(EXTERNAL_EPOCH, alias="TOLLGATE_BROKER_EPOCH", min_length=1)
    kafka_idempotent: bool = Field(default=False, alias="TOLLGATE_KAFKA_IDEMPOTENT")
    kafka_timeout_s: float = Field(5.0, alias="TOLLGATE_KAFKA_TIMEOUT", gt=0)
    events_topic: str = Field(USAGE_EVENTS, alias="TOLLGATE_EVENTS_TOPIC", min_length=1)
    dlq_topic: str = Field(USAGE_EVENTS_DLQ, alias="TOLLGATE_DLQ_TOPIC", min_length=1)
    db_pool_max: int = Field(10, alias="TOLLGATE_DB_POOL_MAX", ge=1)
    max_body_bytes: int = Field(4 * 1024 * 1024, alias="TOLLGATE_MAX_BODY_BYTES", ge=1024)
    body_timeout_s: float = Field(10.0, alias="TOLLGATE_BODY_TIMEOUT", gt=0)
    # Signs portal tokens and console sessions; services that accept neither ignore it.
    portal_secret: str | None = Field(None, alias="TOLLGATE_PORTAL_SECRET", repr=False)
    portal_refresh_s: float = Field(0.25, alias="TOLLGATE_PORTAL_REFRESH", gt=0, le=1)
    # Validate every answer against the model its route declares (the tests turn it on).
    check_responses: bool = Field(default=False, alias="TOLLGATE_CHECK_RESPONSES")

    _split_tokens = field_validator("emitter_tokens", "admin_tokens", mode="before")(split_csv)

    @model_validator(mode="after")
    def _ports_differ(self) -> Self:
        # A service's settings add `port` (the API) and `metrics_port`; they cannot share one.
        port, metrics_port = getattr(self, "port", None), getattr(self, "metrics_port", None)
        if port is not None and port == metrics_port:
            raise ValueError(f"the metrics port must differ from the API port (both {port})")
        return self

    @field_validator("emitter_tokens", "admin_tokens")
    @classmethod
    def _not_portal_shaped(cls, tokens: tuple[str, ...]) -> tuple[str, ...]:
        if any(t.startswith(PORTAL_PREFIX) for t in tokens):
            raise ValueError(f"tokens must not start with {PORTAL_PREFIX!r} (portal tokens do)")
        return tokens

    @field_validator("portal_secret")
    @classmethod
    def _long_enough(cls, secret: str | None) -> str | None:
        if secret is not None and not secret.strip():
            return None
        if secret is not None and len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"must be at least {MIN_SECRET_LENGTH} characters (e.g. openssl rand -hex 32)"
            )
        return secret

    @classmethod
    def from_env(cls) -> CommonSettings:
        """Read the settings from the process environment."""
        return cls()

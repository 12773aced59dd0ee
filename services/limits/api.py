"""Limits' HTTP handlers: checks and status from memory, and the admin configuration API."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs.events.limits import (
    LIMIT_CHECK_PATH,
    LIMIT_EXCEEDED_MESSAGE,
    LIMIT_STATUS_PATH,
    LimitStatus,
)
from libs.events.models import MAX_INT
from libs.events.vocabulary import LimitSource, Period
from libs.service.errors import DependencyUnavailable, NotFound, Unprocessable
from libs.service.routes import Param, Role, Route
from libs.service.web import (
    json_response,
    read_json,
    storable_text,
    validation_message,
)
from services.limits.admin_config import ConfigCache
from services.limits.domain import (
    Decision,
    Limiter,
    unpriced_models,
)
from services.limits.metrics import LimitsMetrics
from services.limits.storage import (
    DEFAULT_WARNING_PERCENT,
    KEEP,
    ConfigStore,
    Override,
    Subject,
)

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

MAX_ID_LENGTH = 128
LimitMicros = Annotated[int, Field(strict=True, gt=0, le=MAX_INT)]
WarningPercent = Annotated[int, Field(strict=True, ge=1, le=99)]

# Fields GET adds to the configuration; a PUT of what GET returned ignores them.
READ_ONLY_CONFIG_FIELDS = frozenset(
    {"updated_at", "unpriced_model_count", "unpriced_models", "user_overrides", "group_overrides"}
)


@dataclass
class LimitsRuntime:
    """What the handlers read: the limiter, the configuration, the clock and readiness."""

    limiter: Limiter
    configs: ConfigCache
    store: ConfigStore
    metrics: LimitsMetrics
    clock: Callable[[], float]
    caught_up: Callable[[], bool]

    def ready(self) -> bool:
        """Caught up with the log and holding a configuration: answers are right."""
        return self.configs.loaded and self.caught_up()


RUNTIME = web.AppKey("limits_runtime", LimitsRuntime)


# -- request and response models (validation and the OpenAPI document) -----------------------


class CheckRequest(BaseModel):
    """`POST /api/v1/limits/check` body; `org_id` is the organisation the chat belongs to."""

    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    org_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)


class CheckResult(BaseModel):
    """A check's answer; 200 when allowed."""

    allowed: bool
    limited: bool
    limit_micros: int | None
    spent_micros: int
    remaining_micros: int | None
    period: Period
    period_start: datetime
    resets_at: datetime
    source: LimitSource
    group_id: str | None
    org_id: str | None = Field(
        description="The organisation whose limit applied and whose spend counted; null when "
        "both are across organisations (a user override, the default, a group of no "
        "organisation, or a check without org_id)"
    )


class LimitExceeded(CheckResult):
    """409: the user's spend reached their limit."""

    message: str
    detail: None = None


class ConfigUpdate(BaseModel):
    """`PUT /api/v1/limits/config`: `null` means no default (or no warning).

    `warning_threshold_percent` may be left out (the stored share stays); the others are
    required.
    """

    model_config = ConfigDict(extra="forbid", strict=True)
    enabled: bool
    period: Period
    default_limit_micros: LimitMicros | None
    warning_threshold_percent: WarningPercent | None = DEFAULT_WARNING_PERCENT


class UserOverrideView(BaseModel):
    """A user's override."""

    user_id: str
    limit_micros: int
    updated_at: datetime


class GroupOverrideView(BaseModel):
    """A group's override, with the group's organisation as the directory last said."""

    group_id: str
    org_id: str | None
    limit_micros: int
    updated_at: datetime


class ConfigView(BaseModel):
    """The configuration as GET returns it."""

    enabled: bool
    period: Period
    default_limit_micros: int | None
    warning_threshold_percent: int | None
    updated_at: datetime
    unpriced_model_count: int
    unpriced_models: list[str]
    user_overrides: list[UserOverrideView]
    group_overrides: list[GroupOverrideView]


class OverrideUpdate(BaseModel):
    """`PUT` of a user or group override."""

    model_config = ConfigDict(extra="forbid", strict=True)
    limit_micros: LimitMicros


# -- checks ----------------------------------------------------------------------------------


def decision_body(decision: Decision) -> dict[str, object]:
    """The contract's check fields (the 200 and 409 bodies share them)."""
    current = decision.current
    return {
        "allowed": decision.allowed,
        "limited": decision.limited,
        "limit_micros": decision.limit_micros,
        "spent_micros": decision.spent_micros,
        "remaining_micros": decision.remaining_micros,
        "period": current.period,
        "period_start": current.start_iso,
        "resets_at": current.end_iso,
        "source": decision.source,
        "group_id": decision.group_id,
        "org_id": decision.org_id,
    }


_CHECK_FIELDS = frozenset({"user_id", "org_id"})


def _check_of(body: object) -> tuple[str, str | None]:
    """The user and the (optional) organisation a check is about."""
    # By hand rather than through pydantic: this is the hot path.
    if not isinstance(body, dict):
        raise Unprocessable('body: expected an object like {"user_id": "..."}')
    if "user_id" not in body or len(body) > 2 or (len(body) == 2 and "org_id" not in body):
        extra = sorted(set(body) - _CHECK_FIELDS)
        if extra:
            raise Unprocessable(f"body: unknown field(s) {', '.join(map(repr, extra))}")
        raise Unprocessable("user_id: Field required")
    org_id = body.get("org_id")
    return (
        _subject_id(body["user_id"], "user_id"),
        None if org_id is None else _subject_id(org_id, "org_id"),
    )


def _org_query(request: web.Request) -> str | None:
    """The `org_id` query parameter of a status request, if any."""
    query = request.query
    unknown = sorted(set(query) - {"org_id"})
    if unknown:
        raise Unprocessable(f"query: unknown parameter(s) {', '.join(map(repr, unknown))}")
    values = query.getall("org_id", [])
    if len(values) > 1:
        raise Unprocessable("org_id: given more than once")
    return _subject_id(values[0], "org_id") if values else None


def _subject_id(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise Unprocessable(f"{name}: Input should be a valid string")
    return storable_text(value, name, max_length=MAX_ID_LENGTH)


def _ready_runtime(request: web.Request) -> LimitsRuntime:
    runtime = request.app[RUNTIME]
    if not runtime.ready():
        raise DependencyUnavailable(
            "limits is still catching up with the event log; retry shortly",
            detail={"caught_up": runtime.caught_up(), "config_loaded": runtime.configs.loaded},
            retry_after_s=1,
        )
    return runtime


async def check(request: web.Request) -> web.Response:
    """Whether a user may send a chat message: 200 when allowed, 409 over the limit."""
    started = time.perf_counter()
    user_id, org_id = _check_of(await read_json(request))
    runtime = _ready_runtime(request)
    decision = runtime.limiter.decide(user_id, runtime.clock(), org_id)
    body = decision_body(decision)
    metrics = runtime.metrics
    if decision.allowed:
        response = json_response(body)
        (metrics.checks_allowed if decision.limited else metrics.checks_unlimited).inc()
    else:
        body["message"] = LIMIT_EXCEEDED_MESSAGE
        body["detail"] = None
        response = json_response(body, status=409)
        metrics.checks_blocked.inc()
    metrics.check_seconds.observe(time.perf_counter() - started)
    return response


async def status(request: web.Request) -> web.Response:
    """A user's limit, spend and period, for showing to the user (a portal token: its own)."""
    user_id = _subject_id(request.match_info["user_id"], "user_id")
    org_id = _org_query(request)
    runtime = _ready_runtime(request)
    decision = runtime.limiter.decide(user_id, runtime.clock(), org_id)
    current = decision.current
    answer = LimitStatus(
        is_limited=decision.limited,
        period=current.period,
        limit_micros=decision.limit_micros,
        spent_micros=decision.spent_micros,
        period_start=current.start,
        period_end=current.end,
        source=decision.source,
        group_id=decision.group_id,
        org_id=decision.org_id,
    )
    return json_response(answer.model_dump(mode="json"))


# -- admin configuration ---------------------------------------------------------------------


async def _read_body(request: web.Request, model: type[M], *, ignore: frozenset[str]) -> M:
    body = await read_json(request)
    if isinstance(body, dict) and ignore:
        body = {k: v for k, v in body.items() if k not in ignore}
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise Unprocessable(
            validation_message(exc), detail=exc.errors(include_url=False, include_context=False)
        ) from exc


async def _config_view(runtime: LimitsRuntime) -> dict[str, object]:
    """The stored configuration, its overrides, and the models used that have no price now.

    Both are read from PostgreSQL at the time of the request, so a price set on ingest (any
    replica) takes the model off the list on every limits replica at once.
    """
    stored = await runtime.store.load()
    priced = await runtime.store.priced_models()
    ledger = runtime.limiter.ledger
    unpriced = unpriced_models(ledger.models, priced)
    group_orgs = ledger.group_orgs
    return {
        "enabled": stored.enabled,
        "period": stored.period,
        "default_limit_micros": stored.default_limit_micros,
        "warning_threshold_percent": stored.warning_threshold_percent,
        "updated_at": stored.updated_at,
        "unpriced_model_count": len(unpriced),
        "unpriced_models": unpriced,
        "user_overrides": [_override_view("user", o) for o in stored.user_overrides],
        "group_overrides": [_override_view("group", o, group_orgs) for o in stored.group_overrides],
    }


def _override_view(
    subject: Subject, override: Override, group_orgs: Mapping[str, str] | None = None
) -> dict[str, object]:
    view: dict[str, object] = {f"{subject}_id": override.subject_id}
    if group_orgs is not None:
        view["org_id"] = group_orgs.get(override.subject_id)
    view["limit_micros"] = override.limit_micros
    view["updated_at"] = override.updated_at
    return view


async def _refresh(runtime: LimitsRuntime) -> None:
    # This replica applies its own change at once; the others within one poll.
    try:
        await runtime.configs.refresh()
    except Exception as exc:
        log.warning("limits_config_refresh_failed", error=f"{type(exc).__name__}: {exc}")


async def get_config(request: web.Request) -> web.Response:
    """The configuration, every override, and the models used that have no price now."""
    return json_response(await _config_view(request.app[RUNTIME]))


async def put_config(request: web.Request) -> web.Response:
    """Replace the switch, the period and the default limit."""
    runtime = request.app[RUNTIME]
    update = await _read_body(request, ConfigUpdate, ignore=READ_ONLY_CONFIG_FIELDS)
    warning = (
        update.warning_threshold_percent
        if "warning_threshold_percent" in update.model_fields_set
        else KEEP
    )
    await runtime.store.put_config(
        enabled=update.enabled,
        period=update.period,
        default_limit_micros=update.default_limit_micros,
        warning_threshold_percent=warning,
    )
    await _refresh(runtime)
    log.info("limits_config_set", **update.model_dump(exclude_unset=True))
    return json_response(await _config_view(runtime))


def _override_handlers(
    subject: Subject,
) -> tuple[Callable[[web.Request], Awaitable[web.Response]], ...]:
    name = f"{subject}_id"

    async def put_override(request: web.Request) -> web.Response:
        runtime = request.app[RUNTIME]
        subject_id = _subject_id(request.match_info[name], name)
        update = await _read_body(
            request, OverrideUpdate, ignore=frozenset({"updated_at", "org_id", name})
        )
        override = await runtime.store.put_override(subject, subject_id, update.limit_micros)
        await _refresh(runtime)
        log.info("limits_override_set", subject=subject, id=subject_id, limit=update.limit_micros)
        group_orgs = runtime.limiter.ledger.group_orgs if subject == "group" else None
        return json_response(_override_view(subject, override, group_orgs))

    async def delete_override(request: web.Request) -> web.Response:
        runtime = request.app[RUNTIME]
        subject_id = _subject_id(request.match_info[name], name)
        if not await runtime.store.delete_override(subject, subject_id):
            raise NotFound(f"{subject} {subject_id!r} has no limit override")
        await _refresh(runtime)
        log.info("limits_override_deleted", subject=subject, id=subject_id)
        return web.Response(status=204)

    put_override.__doc__ = f"Set a {subject}'s limit; it applies on every replica within a second."
    delete_override.__doc__ = f"Remove a {subject}'s limit override."
    return put_override, delete_override


def _override_routes(subject: Subject, view: type[BaseModel]) -> tuple[Route, Route]:
    path = f"/api/v1/limits/overrides/{subject}s/{{{subject}_id}}"
    put_override, delete_override = _override_handlers(subject)
    return (
        Route(
            "PUT",
            path,
            put_override,
            f"Set a {subject}'s limit",
            role=Role.ADMIN,
            request=OverrideUpdate,
            responses={200: view, 503: None},
            tag="limits-admin",
        ),
        Route(
            "DELETE",
            path,
            delete_override,
            f"Remove a {subject}'s limit override",
            role=Role.ADMIN,
            responses={204: None, 404: None, 503: None},
            tag="limits-admin",
        ),
    )


#: The limits API.
ROUTES = (
    Route(
        "POST",
        LIMIT_CHECK_PATH,
        check,
        "Whether a user may send a chat message (409 when over the limit)",
        request=CheckRequest,
        responses={200: CheckResult, 409: LimitExceeded, 503: None},
        tag="limits",
    ),
    Route(
        "GET",
        LIMIT_STATUS_PATH,
        status,
        "A user's limit, spend and period (a portal token reads only its own user)",
        portal="user_id",
        parameters=(
            Param(
                "org_id",
                "The organisation to resolve the limit for (as a check's org_id)",
                schema={"minLength": 1, "maxLength": MAX_ID_LENGTH},
            ),
        ),
        responses={200: LimitStatus, 403: None, 422: None, 503: None},
        tag="limits",
    ),
    Route(
        "GET",
        "/api/v1/limits/config",
        get_config,
        "The limits configuration with every override",
        role=Role.ADMIN,
        responses={200: ConfigView, 503: None},
        tag="limits-admin",
    ),
    Route(
        "PUT",
        "/api/v1/limits/config",
        put_config,
        "Set the switch, the period and the default limit",
        role=Role.ADMIN,
        request=ConfigUpdate,
        responses={200: ConfigView, 503: None},
        tag="limits-admin",
    ),
    *_override_routes("user", UserOverrideView),
    *_override_routes("group", GroupOverrideView),
)

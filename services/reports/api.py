"""Reports' HTTP handlers: the Activity API, cost tracking and the chargeback report.

Handlers parse and validate the query string (a clear 400 naming the parameter), ask the store,
and shape JSON or CSV. What a figure means is decided in `domain.py`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from aiohttp import web
from pydantic import BaseModel, Field

from libs.events.limits import LimitStatus
from libs.events.vocabulary import ACTIVITY_CATEGORY_FILTERS, ACTIVITY_INTERVALS
from libs.service.errors import BadRequest, NotFound
from libs.service.routes import Param, Role, Route
from libs.service.web import json_response, storable_text
from services.reports.domain import (
    MAX_BUCKETS,
    CostSummary,
    CostUserRow,
    InvalidQueryError,
    Window,
    ceil_day,
    chargeback_body,
    default_cost_window,
    make_buckets,
    month_window,
    parse_category,
    parse_interval,
    parse_month,
    parse_time,
)
from services.reports.limits import LimitsClient
from services.reports.metrics import ReportsMetrics
from services.reports.storage import ReportStore

STORE = web.AppKey("reports_store", ReportStore)
LIMITS = web.AppKey("reports_limits", LimitsClient)
METRICS = web.AppKey("reports_metrics", ReportsMetrics)

MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 25
MAX_OFFSET: Final = 2**31 - 1
MAX_TEXT: Final = 256
_30_DAYS: Final = timedelta(days=30)

# -- query string ------------------------------------------------------------------------------


class Query:
    """The query string of one request, read once, with 400s that name the parameter."""

    def __init__(self, request: web.Request, allowed: Sequence[str]) -> None:
        params = request.rel_url.query
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise BadRequest(
                f"unknown query parameter(s) {', '.join(map(repr, unknown))}; "
                f"this route takes {', '.join(allowed)}",
                detail={"allowed": list(allowed)},
            )
        self.values: dict[str, str] = {}
        for key in params:
            found = params.getall(key)
            if len(found) > 1:
                raise BadRequest(f"{key}: given {len(found)} times; give it once")
            value = found[0]
            if len(value) > MAX_TEXT:
                raise BadRequest(f"{key}: longer than {MAX_TEXT} characters")
            if value:
                storable_text(value, key, max_length=MAX_TEXT, error=BadRequest)
            self.values[key] = value

    def text(self, name: str) -> str | None:
        """A parameter as given, None when absent or blank."""
        value = self.values.get(name, "").strip()
        return value or None

    def time(self, name: str) -> datetime | None:
        """An RFC 3339 time (or a date), in UTC."""
        raw = self.text(name)
        return None if raw is None else parse_time(name, raw)

    def integer(self, name: str, *, default: int | None, low: int, high: int) -> int | None:
        """An integer within [low, high]."""
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"{name}: {raw!r} is not an integer") from None
        if not low <= value <= high:
            raise BadRequest(f"{name}: must be between {low} and {high}, got {value}")
        return value


#: What `format` takes on the routes that answer CSV too.
FORMATS: Final = ("json", "csv")
#: What the cost list's `order` takes (by total cost).
ORDERS: Final = ("desc", "asc")


def wants_csv(request: web.Request, query: Query) -> bool:
    """`?format=csv`, or an Accept header asking for text/csv."""
    fmt = query.text("format")
    if fmt is not None:
        if fmt.lower() not in FORMATS:
            raise BadRequest(f"format: {fmt!r} is not json or csv")
        return fmt.lower() == "csv"
    return "text/csv" in request.headers.get("Accept", "").lower()


def _cost_window(query: Query, now: datetime) -> Window:
    start = query.time("start_date")
    end = query.time("end_date")
    default = default_cost_window(now)
    if start is None and end is None:
        return default
    try:
        if end is None:
            end = default.end if start is None or start < default.end else start + _30_DAYS
        if start is None:
            start = end - _30_DAYS
    except OverflowError:
        raise InvalidQueryError("start_date", "is too close to the ends of the calendar") from None
    if end <= start:
        raise InvalidQueryError("end_date", "must be after start_date")
    return Window(start, end)


# -- responses ---------------------------------------------------------------------------------

# Spreadsheet programs run cells that start like a formula; text cells never should.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return value


def csv_response(
    filename: str, header: Sequence[str], rows: Iterable[Sequence[object]]
) -> web.Response:
    """A CSV attachment with a header row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return web.Response(
        body=out.getvalue().encode(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def usd(micros: int) -> str:
    """Micro-dollars as an exact decimal dollar string, e.g. 1234567 -> 1.234567."""
    return str(Decimal(micros).scaleb(-6).quantize(Decimal("0.000001")))


@asynccontextmanager
async def _timed(request: web.Request, endpoint: str) -> AsyncIterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        request.app[METRICS].query_seconds.labels(endpoint).observe(time.perf_counter() - started)


# -- handlers ----------------------------------------------------------------------------------

ACTIVITY_PARAMS: Final = ("start", "end", "interval", "category", "org")


async def get_activity(request: web.Request) -> web.Response:
    """Active users per bucket and their time, in Coder's Activity shape."""
    query = Query(request, ACTIVITY_PARAMS)
    now = datetime.now(UTC)
    end = query.time("end")
    start = query.time("start")
    if end is None:
        end = ceil_day(now) if start is None or start < ceil_day(now) else start
    if start is None:
        try:
            start = end - _30_DAYS
        except OverflowError:
            raise InvalidQueryError("end", "is too early for the default start") from None
    interval = parse_interval(query.text("interval") or "1 day")
    category = parse_category(query.text("category") or "any")
    buckets = make_buckets(start, end, interval, limit=MAX_BUCKETS)
    org = query.text("org")
    store = request.app[STORE]
    async with _timed(request, "activity"):
        body = await store.activity_report(buckets, category=category, org=org)
    return json_response(body)


COST_USERS_PARAMS: Final = ("start_date", "end_date", "q", "limit", "offset", "format", "order")

COST_CSV_HEADER: Final = (
    "user_id",
    "username",
    "name",
    "total_cost_micros",
    "total_cost_usd",
    "message_count",
    "priced_message_count",
    "unpriced_message_count",
    "chat_count",
    "total_input_tokens",
    "total_output_tokens",
    "total_cache_read_tokens",
    "total_cache_creation_tokens",
    "total_reasoning_tokens",
    "total_runtime_ms",
)


def _cost_csv_row(row: CostUserRow) -> list[object]:
    f = row.figures
    p = row.profile
    return [
        row.user_id,
        p.username if p else "",
        p.name if p else "",
        f.cost_micros,
        usd(f.cost_micros),
        f.messages,
        f.priced_messages,
        f.unpriced_messages,
        row.chat_count,
        f.input_tokens,
        f.output_tokens,
        f.cache_read_tokens,
        f.cache_write_tokens,
        f.reasoning_tokens,
        f.runtime_ms,
    ]


async def get_cost_users(request: web.Request) -> web.Response:
    """Per-user chat spend in a window, cost descending; JSON pages or the whole list as CSV."""
    query = Query(request, COST_USERS_PARAMS)
    as_csv = wants_csv(request, query)
    window = _cost_window(query, datetime.now(UTC))
    limit = query.integer(
        "limit",
        default=None if as_csv else DEFAULT_PAGE,
        low=1,
        high=MAX_OFFSET if as_csv else MAX_PAGE,
    )
    offset = query.integer("offset", default=0, low=0, high=MAX_OFFSET) or 0
    search = query.text("q")
    order = (query.text("order") or "desc").lower()
    if order not in ORDERS:
        raise BadRequest(f"order: {order!r} is not asc or desc (by total cost)")
    async with _timed(request, "cost_users"):
        page = await request.app[STORE].cost_users(
            window, search=search, limit=limit, offset=offset, ascending=order == "asc"
        )
    if as_csv:
        stamp = f"{window.start:%Y%m%dT%H}-{window.end:%Y%m%dT%H}"
        return csv_response(
            f"tollgate-costs-{stamp}.csv", COST_CSV_HEADER, map(_cost_csv_row, page.rows)
        )
    return json_response(
        {
            "start_date": window.start,
            "end_date": window.end,
            "count": page.count,
            "users": [row.as_json() for row in page.rows],
        }
    )


COST_USER_PARAMS: Final = ("start_date", "end_date")


def _summary_json(summary: CostSummary, window: Window) -> dict[str, Any]:
    p = summary.profile
    return {
        "start_date": window.start,
        "end_date": window.end,
        "user_id": summary.user_id,
        "username": p.username if p else "",
        "name": p.name if p else "",
        "avatar_hash": p.avatar_hash if p else None,
        **summary.figures.as_json(),
        "chat_count": summary.chat_count,
        "by_model": [m.as_json() for m in summary.by_model],
        "by_chat": [c.as_json() for c in summary.by_chat],
    }


async def get_cost_user(request: web.Request) -> web.Response:
    """One user's chat spend: totals, by model, by root chat, and their usage limit status
    (a portal token reads only its own user)."""
    query = Query(request, COST_USER_PARAMS)
    user_id = storable_text(request.match_info["user_id"], "user_id", error=BadRequest)
    window = _cost_window(query, datetime.now(UTC))
    limit_status = asyncio.ensure_future(request.app[LIMITS].status(user_id))
    try:
        async with _timed(request, "cost_user"):
            summary = await request.app[STORE].cost_user(window, user_id)
    except BaseException:
        limit_status.cancel()
        raise
    if summary is None:
        limit_status.cancel()
        raise NotFound(f"user {user_id!r} has no directory entry and no chat usage")
    body = _summary_json(summary, window)
    status = await limit_status
    body["usage_limit"] = None
    if status is not None:
        group_name = None
        if status.source == "group" and status.group_id:
            async with _timed(request, "cost_user"):
                groups = await request.app[STORE].directory_groups()
            group_name = next((g.name for g in groups if g.group_id == status.group_id), None)
        usage_limit = UsageLimitStatus(**status.model_dump(), group_name=group_name)
        body["usage_limit"] = usage_limit.model_dump(mode="json")
    return json_response(body)


DIRECTORY_USERS_PARAMS: Final = ("q", "limit", "offset")


async def get_directory_users(request: web.Request) -> web.Response:
    """Directory users by username, searched by name, username or exact id; admin only."""
    query = Query(request, DIRECTORY_USERS_PARAMS)
    limit = query.integer("limit", default=DEFAULT_PAGE, low=1, high=MAX_PAGE) or DEFAULT_PAGE
    offset = query.integer("offset", default=0, low=0, high=MAX_OFFSET) or 0
    async with _timed(request, "directory_users"):
        page = await request.app[STORE].directory_users(
            search=query.text("q"), limit=limit, offset=offset
        )
    return json_response(
        {
            "count": page.count,
            "users": [
                {
                    "user_id": p.user_id,
                    "username": p.username,
                    "name": p.name,
                    "avatar_hash": p.avatar_hash,
                    "suspended": p.suspended,
                }
                for p in page.users
            ],
        }
    )


async def get_directory_groups(request: web.Request) -> web.Response:
    """Every directory group with its member count, by name; admin only."""
    Query(request, ())
    async with _timed(request, "directory_groups"):
        groups = await request.app[STORE].directory_groups()
    return json_response(
        {
            "groups": [
                {
                    "group_id": g.group_id,
                    "name": g.name,
                    "org_id": g.org_id,
                    "member_count": g.member_count,
                }
                for g in groups
            ]
        }
    )


CHARGEBACK_PARAMS: Final = ("reportMonth", "format", "table")
CHARGEBACK_TABLES: Final = ("workspaces", "members", "users")


def _chargeback_csv(report: Mapping[str, Any], table: str) -> web.Response:
    month = report["reportDate"]
    workspaces: list[dict[str, Any]] = report["workspaces"]
    if table == "workspaces":
        return csv_response(
            f"tollgate-chargeback-{month}-workspaces.csv",
            (
                "report_month",
                "workspace_id",
                "workspace",
                "members",
                "projects",
                "experiments",
                "size_mb",
                "llm_cost_micros",
                "llm_cost_usd",
                "agent_builds",
            ),
            (
                (
                    month,
                    w["id"],
                    w["name"],
                    w["numberOfMembers"],
                    len(w["projects"]),
                    w["numberOfExperiments"],
                    w["totalSizeInMb"],
                    w["llmCostMicros"],
                    usd(w["llmCostMicros"]),
                    w["agentBuilds"],
                )
                for w in workspaces
            ),
        )
    if table == "members":
        return csv_response(
            f"tollgate-chargeback-{month}-members.csv",
            (
                "report_month",
                "workspace_id",
                "workspace",
                "user_id",
                "username",
                "email",
                "experiments",
                "size_mb",
                "llm_cost_micros",
                "llm_cost_usd",
                "agent_builds",
            ),
            (
                (
                    month,
                    w["id"],
                    w["name"],
                    m["userId"],
                    m["userName"],
                    m["email"],
                    m["numberOfExperiments"],
                    m["totalSizeInMb"],
                    m["llmCostMicros"],
                    usd(m["llmCostMicros"]),
                    m["agentBuilds"],
                )
                for w in workspaces
                for m in w["members"]
            ),
        )
    users: list[dict[str, Any]] = report["users"]["licensedUsers"]
    return csv_response(
        f"tollgate-chargeback-{month}-users.csv",
        (
            "report_month",
            "user_id",
            "username",
            "email",
            "created_at",
            "ui_usage_count",
            "ui_usage_update_ts",
            "sdk_usage_count",
            "sdk_usage_update_ts",
            "suspended",
            "llm_cost_micros",
            "llm_cost_usd",
            "agent_builds",
        ),
        (
            (
                month,
                u["userId"],
                u["username"],
                u["email"],
                u["created_at"],
                u["uiUsageCount"],
                u["uiUsageUpdateTs"],
                u["sdkUsageCount"],
                u["sdkUsageUpdateTs"],
                u["suspended"],
                u["llmCostMicros"],
                usd(u["llmCostMicros"]),
                u["agentBuilds"],
            )
            for u in users
        ),
    )


async def get_chargeback(request: web.Request) -> web.Response:
    """Comet's chargeback report for a month, with LLM cost and agent builds; admin only."""
    query = Query(request, CHARGEBACK_PARAMS)
    raw_month = query.text("reportMonth")
    if raw_month is None:
        raise BadRequest("reportMonth: required, a month like 2026-11 (YYYY-MM)")
    month = month_window(parse_month(raw_month))
    as_csv = wants_csv(request, query)
    table = (query.text("table") or "workspaces").lower()
    if table not in CHARGEBACK_TABLES:
        raise BadRequest(f"table: {table!r} is not one of {', '.join(CHARGEBACK_TABLES)}")
    async with _timed(request, "chargeback"):
        data = await request.app[STORE].chargeback(month)
    report = chargeback_body(month.start, data, datetime.now(UTC))
    if as_csv:
        return _chargeback_csv(report, table)
    return json_response(report)


# -- OpenAPI -----------------------------------------------------------------------------------


class UserActivity(BaseModel):
    """One user's activity in one bucket."""

    user_id: str
    duration: int = Field(description="Milliseconds of the bucket this user was active")
    count: int = Field(description="Sessions that started in the bucket")


class ActivityBucket(BaseModel):
    """One bucket of the interval."""

    time: datetime
    duration: int = Field(description="Length of the bucket in milliseconds")
    user_activity: list[UserActivity]


class ActivityUserInfo(BaseModel):
    """A user active in the range, with totals over every bucket."""

    id: str
    name: str
    username: str
    roles: list[str]
    avatar_hash: str | None
    total_count: int
    total_duration: int


class ActivityResponse(BaseModel):
    """Coder's Activity shape."""

    activity: list[ActivityBucket]
    users: dict[str, ActivityUserInfo]


class Sums(BaseModel):
    """Chat spend and tokens (title generation excluded)."""

    total_cost_micros: int
    message_count: int
    priced_message_count: int
    unpriced_message_count: int
    total_input_tokens: int
    total_output_tokens: int
    total_cache_read_tokens: int
    total_cache_creation_tokens: int
    total_reasoning_tokens: int = Field(
        description="Reasoning tokens: already part of total_output_tokens, never priced again"
    )
    total_runtime_ms: int = Field(description="Agent Time of the messages, in milliseconds")


class CostUserRollup(Sums):
    """One user's line in the cost list."""

    user_id: str
    username: str
    name: str
    avatar_hash: str | None
    chat_count: int


class CostUsersResponse(BaseModel):
    """A page of the cost list."""

    start_date: datetime
    end_date: datetime
    count: int = Field(description="Users matching the search in the window, all pages")
    users: list[CostUserRollup]


class ModelBreakdown(Sums):
    """Spend on one model."""

    model: str
    provider: str


class ChatBreakdown(Sums):
    """Spend in one root chat, its sub-chats included."""

    root_chat_id: str


class UsageLimitStatus(LimitStatus):
    """The limits service's status for the user, with the name of the group it comes from."""

    group_name: str | None = None


class DirectoryUser(BaseModel):
    """A directory user."""

    user_id: str
    username: str
    name: str
    avatar_hash: str | None
    suspended: bool


class DirectoryUsersResponse(BaseModel):
    """A page of directory users."""

    count: int
    users: list[DirectoryUser]


class DirectoryGroup(BaseModel):
    """A directory group."""

    group_id: str
    name: str
    org_id: str | None
    member_count: int


class DirectoryGroupsResponse(BaseModel):
    """Every directory group."""

    groups: list[DirectoryGroup]


class CostSummaryResponse(Sums):
    """One user's spend in the window."""

    start_date: datetime
    end_date: datetime
    user_id: str
    username: str
    name: str
    avatar_hash: str | None
    chat_count: int
    by_model: list[ModelBreakdown]
    by_chat: list[ChatBreakdown]
    usage_limit: UsageLimitStatus | None


class ChargebackMember(BaseModel):
    """A team member's figures for the month."""

    userId: str  # noqa: N815  # Comet's field names
    userName: str  # noqa: N815
    email: str
    numberOfExperiments: int  # noqa: N815
    totalSizeInMb: float  # noqa: N815
    llmCostMicros: int  # noqa: N815
    agentBuilds: int  # noqa: N815


class ChargebackProject(BaseModel):
    """A project and its latest storage sample of the month."""

    id: str
    name: str
    numberOfExperiments: int  # noqa: N815
    totalSizeInMb: float  # noqa: N815


class ChargebackWorkspace(BaseModel):
    """A team."""

    id: str
    name: str
    numberOfMembers: int  # noqa: N815
    totalSizeInMb: float  # noqa: N815
    numberOfExperiments: int  # noqa: N815
    llmCostMicros: int  # noqa: N815
    agentBuilds: int  # noqa: N815
    members: list[ChargebackMember]
    projects: list[ChargebackProject]


class LicensedUser(BaseModel):
    """A licensed user's usage in the month (times in ms since the epoch, 0 for none)."""

    userId: str  # noqa: N815
    username: str
    email: str
    created_at: int
    uiUsageCount: int  # noqa: N815
    uiUsageUpdateTs: int  # noqa: N815
    sdkUsageCount: int  # noqa: N815
    sdkUsageUpdateTs: int  # noqa: N815
    suspended: bool
    llmCostMicros: int  # noqa: N815
    agentBuilds: int  # noqa: N815


class ChargebackUsers(BaseModel):
    """Licensed users."""

    licensedUsers: list[LicensedUser]  # noqa: N815
    numberOfUsers: int  # noqa: N815
    createdAt: int  # noqa: N815


class ChargebackReport(BaseModel):
    """Comet's chargeback report."""

    reportDate: str  # noqa: N815
    workspaces: list[ChargebackWorkspace]
    users: ChargebackUsers


_TIME_DOC = "RFC 3339 time with a timezone, or a date (meaning its midnight UTC)"


#: The reports API (the portal, notification and console routes have tables of their own).
ROUTES = (
    Route(
        "GET",
        "/api/v1/directory/users",
        get_directory_users,
        "Directory users by username, searched by name, username or id",
        role=Role.ADMIN,
        parameters=(
            Param("q", "Case-insensitive substring of the name or username, or a user id"),
            Param("limit", f"Page size, 1-{MAX_PAGE} (default {DEFAULT_PAGE})"),
            Param("offset", "Rows to skip"),
        ),
        responses={200: DirectoryUsersResponse, 400: None, 503: None},
        tag="directory",
    ),
    Route(
        "GET",
        "/api/v1/directory/groups",
        get_directory_groups,
        "Directory groups with their member counts",
        role=Role.ADMIN,
        responses={200: DirectoryGroupsResponse, 503: None},
        tag="directory",
    ),
    Route(
        "GET",
        "/api/v1/metrics/activity",
        get_activity,
        "Active users and their time per bucket (Coder's Activity API; durations in ms)",
        parameters=(
            Param("start", f"Start of the first bucket: {_TIME_DOC}. Default: end - 30 days"),
            Param(
                "end",
                f"End of the last bucket (exclusive): {_TIME_DOC}. Default: next midnight UTC",
            ),
            Param(
                "interval",
                "Bucket length",
                values=ACTIVITY_INTERVALS,
            ),
            Param(
                "category",
                "Activity category",
                values=ACTIVITY_CATEGORY_FILTERS,
            ),
            Param("org", "Only activity in this organization"),
        ),
        responses={200: ActivityResponse, 400: None, 503: None},
        tag="activity",
    ),
    Route(
        "GET",
        "/api/v1/costs/users",
        get_cost_users,
        "Per-user chat spend, cost descending (CSV with Accept: text/csv or format=csv)",
        parameters=(
            Param("start_date", f"{_TIME_DOC}. Default: end_date - 30 days"),
            Param("end_date", f"Exclusive. {_TIME_DOC}. Default: now"),
            Param("q", "Case-insensitive substring of the name or username, or a user id"),
            Param("limit", f"Page size, 1-{MAX_PAGE} (default {DEFAULT_PAGE}; CSV: all)"),
            Param("offset", "Rows to skip"),
            Param("format", "json (default) or csv", values=FORMATS),
            Param("order", "By total cost: desc (default) or asc", values=ORDERS),
        ),
        responses={200: CostUsersResponse, 400: None, 503: None},
        csv=True,
        tag="costs",
    ),
    Route(
        "GET",
        "/api/v1/costs/users/{user_id}",
        get_cost_user,
        "One user's chat spend by model and by root chat, with their usage limit",
        portal="user_id",
        parameters=(
            Param("start_date", f"{_TIME_DOC}. Default: end_date - 30 days"),
            Param("end_date", f"Exclusive. {_TIME_DOC}. Default: now"),
        ),
        responses={200: CostSummaryResponse, 400: None, 403: None, 404: None, 503: None},
        tag="costs",
    ),
    Route(
        "GET",
        "/api/v1/chargeback/report",
        get_chargeback,
        "Comet's chargeback report for a month, with LLM cost and agent builds",
        role=Role.ADMIN,
        parameters=(
            Param(
                "reportMonth",
                "The month, YYYY-MM",
                required=True,
                schema={"pattern": r"^\d{4}-\d{2}$"},
            ),
            Param("format", "json (default) or csv", values=FORMATS),
            Param(
                "table",
                "For CSV: workspaces (default), members or users",
                values=tuple(CHARGEBACK_TABLES),
            ),
        ),
        responses={200: ChargebackReport, 400: None, 503: None},
        csv=True,
        tag="chargeback",
    ),
)

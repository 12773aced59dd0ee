"""What the reports mean, without I/O: times and buckets, rollup grains, and the report shapes.

Everything a newcomer may want to change about how a figure is defined lives here: how a query
string becomes a time, how a range is cut into buckets, how a range is covered by rollup
periods, and how figures become Coder's and Comet's JSON.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Final, Literal

import orjson

from libs.events.bounds import MAX_SIZE_MB, capped
from libs.events.vocabulary import (
    ACTIVITY_CATEGORIES,
    ACTIVITY_CATEGORY_FILTERS,
    ACTIVITY_INTERVALS,
    ANY_CATEGORY,
    ActivityInterval,
)
from libs.service.errors import BadRequest

__all__ = [
    "ACTIVITY_GRAINS",
    "ANY_CATEGORY",
    "COST_DETAIL_GRAINS",
    "COST_TOTAL_GRAINS",
    "MAX_BUCKETS",
    "ActivityFigures",
    "Bucket",
    "BucketActivity",
    "ChargebackData",
    "ChatCost",
    "ChatFigures",
    "CostSummary",
    "CostUserRow",
    "CostUsersPage",
    "Grain",
    "Interval",
    "InvalidQueryError",
    "ModelCost",
    "ProjectState",
    "Span",
    "TeamState",
    "UsageMonth",
    "UserProfile",
    "Window",
    "activity_body",
    "activity_body_of_json",
    "add_months",
    "chargeback_body",
    "cover",
    "default_cost_window",
    "make_buckets",
    "month_window",
    "parse_category",
    "parse_interval",
    "parse_month",
    "parse_time",
]

#: Rollup grains (hour, day, ISO week, month) and `x`: the exact events of a part of an hour.
Grain = Literal["x", "h", "d", "w", "m"]

#: Grains each rollup keeps (see deploy/migrations/0300_reports.sql).
ACTIVITY_GRAINS: Final[frozenset[Grain]] = frozenset({"d", "w", "m"})
COST_TOTAL_GRAINS: Final[frozenset[Grain]] = frozenset({"h", "d", "m"})
COST_DETAIL_GRAINS: Final[frozenset[Grain]] = frozenset({"d"})

#: The category under which the rollups keep the sum over every category.
ALL_CATEGORIES_KEY: Final = "*"

MAX_BUCKETS: Final = 10_000

_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_WEEK = timedelta(days=7)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidQueryError(BadRequest, ValueError):
    """A query parameter is malformed or out of range; `field` names it.

    Raised where the problem is found and answered as a 400 by the error middleware.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}", detail={"field": field})
        self.field = field


# -- times ------------------------------------------------------------------------------------

# In a query string an unescaped `+` arrives as a space, so `…T00:00:00+02:00` reads as
# `…T00:00:00 02:00`; put the sign back rather than reject what the caller meant.
_LOST_PLUS = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def parse_time(name: str, raw: str) -> datetime:
    """An RFC 3339 time with a timezone (or a bare date, meaning its midnight UTC), in UTC."""
    text = _LOST_PLUS.sub(r"\1+\2", raw.strip())
    if _DATE_ONLY.match(text):
        try:
            day = date.fromisoformat(text)
        except ValueError as exc:
            raise InvalidQueryError(name, f"{raw!r} is not a valid date ({exc})") from None
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidQueryError(
            name, f"{raw!r} is not an RFC 3339 time, e.g. 2026-11-02T00:00:00Z"
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidQueryError(name, f"{raw!r} has no timezone; add Z or an offset like +02:00")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidQueryError(name, f"{raw!r} is out of range") from None


def floor_hour(value: datetime) -> datetime:
    """The whole hour at or before `value`."""
    return value.replace(minute=0, second=0, microsecond=0)


def _plus(value: datetime, delta: timedelta) -> datetime:
    # Past the end of the calendar (9999-12-31) is simply "later than any end".
    try:
        return value + delta
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def _months_after(value: datetime, months: int) -> datetime:
    try:
        return add_months(value, months)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


def ceil_hour(value: datetime) -> datetime:
    """The whole hour at or after `value`."""
    floor = floor_hour(value)
    return floor if floor == value else _plus(floor, _HOUR)


def floor_day(value: datetime) -> datetime:
    """Midnight UTC at or before `value`."""
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def ceil_day(value: datetime) -> datetime:
    """Midnight UTC at or after `value`."""
    floor = floor_day(value)
    return floor if floor == value else _plus(floor, _DAY)


def month_start(value: datetime) -> datetime:
    """The first of `value`'s month, 00:00 UTC."""
    return value.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _days_in_month(year: int, month: int) -> int:
    if month == 12:
        return 31
    return (date(year, month + 1, 1) - date(year, month, 1)).days


def add_months(value: datetime, months: int) -> datetime:
    """`value` moved by whole calendar months, the day clamped to the target month's length."""
    year, month0 = divmod(value.month - 1 + months, 12)
    year += value.year
    if not 1 <= year <= 9999:
        raise OverflowError("date out of range")
    month = month0 + 1
    return value.replace(year=year, month=month, day=min(value.day, _days_in_month(year, month)))


def to_ms(value: datetime) -> int:
    """Milliseconds since the Unix epoch (Comet's timestamps)."""
    return (value - _EPOCH) // timedelta(milliseconds=1)


# -- activity buckets -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interval:
    """A bucket length: a number of days or of calendar months."""

    name: str
    days: int = 0
    months: int = 0

    def nth(self, start: datetime, index: int) -> datetime:
        """The start of bucket `index` when bucket 0 starts at `start` (no drift over months)."""
        if self.months:
            return add_months(start, self.months * index)
        return start + timedelta(days=self.days * index)


_LENGTHS: Final[Mapping[ActivityInterval, Interval]] = {
    "1 day": Interval("1 day", days=1),
    "1 week": Interval("1 week", days=7),
    "1 month": Interval("1 month", months=1),
    "90 day": Interval("90 day", days=90),
    "1 year": Interval("1 year", months=12),
}
#: Every interval the activity query takes, in the order the contract lists them.
INTERVALS: Final[Mapping[str, Interval]] = {name: _LENGTHS[name] for name in ACTIVITY_INTERVALS}


def parse_interval(raw: str) -> Interval:
    """`1 day`, `1 week`, `1 month`, `90 day` or `1 year` (case and plural `s` ignored)."""
    words = raw.strip().lower().split()
    if len(words) == 2 and words[1].endswith("s"):
        words[1] = words[1][:-1]
    interval = INTERVALS.get(" ".join(words))
    if interval is None:
        raise InvalidQueryError(
            "interval", f"{raw!r} is not one of {', '.join(repr(k) for k in INTERVALS)}"
        )
    return interval


def parse_category(raw: str) -> str:
    """A category name, or `any`; returns the rollup key (`*` for any)."""
    value = raw.strip().lower()
    if value == ANY_CATEGORY:
        return ALL_CATEGORIES_KEY
    if value not in ACTIVITY_CATEGORIES:
        raise InvalidQueryError(
            "category", f"{raw!r} is not one of {', '.join(ACTIVITY_CATEGORY_FILTERS)}"
        )
    return value


@dataclass(frozen=True, slots=True)
class Bucket:
    """One activity bucket, [start, end)."""

    start: datetime
    end: datetime

    @property
    def duration_ms(self) -> int:
        """The bucket's length in milliseconds (the last one may be cut short by `end`)."""
        return (self.end - self.start) // timedelta(milliseconds=1)


def make_buckets(
    start: datetime, end: datetime, interval: Interval, *, limit: int = MAX_BUCKETS
) -> list[Bucket]:
    """Buckets of `interval` from `start`; the last one ends at `end` even if that is early."""
    if end < start:
        raise InvalidQueryError("end", "is before start")
    if end == start:
        raise InvalidQueryError("end", "equals start, so the range is empty")
    # Cheap upper bound first, so an absurd range fails before any bucket is built.
    approx_days = (end - start) / _DAY
    per_bucket = interval.days or interval.months * 28
    if approx_days / per_bucket > limit + 1:
        raise InvalidQueryError(
            "interval", f"this range would make more than {limit} buckets; use a longer interval"
        )
    buckets: list[Bucket] = []
    index = 0
    lo = start
    while lo < end:
        try:
            hi = min(interval.nth(start, index + 1), end)
        except OverflowError:
            hi = end
        buckets.append(Bucket(lo, hi))
        if len(buckets) > limit:
            raise InvalidQueryError(
                "interval",
                f"this range would make more than {limit} buckets; use a longer interval",
            )
        index += 1
        lo = hi
    return buckets


# -- covering a range with rollup periods -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """Every rollup period of `grain` that starts in [lo, hi); each lies wholly inside it."""

    grain: Grain
    lo: datetime
    hi: datetime

    @property
    def periods(self) -> int:
        """How many rollup periods the span holds (an exact span counts as one)."""
        if self.grain == "m":
            return (self.hi.year - self.lo.year) * 12 + self.hi.month - self.lo.month
        unit = {"h": _HOUR, "d": _DAY, "w": _WEEK}.get(self.grain)
        return 1 if unit is None else (self.hi - self.lo) // unit


def _append(spans: list[Span], grain: Grain, lo: datetime, hi: datetime) -> None:
    # Exact spans stay apart: each is read through the rollup period that holds it.
    if spans and spans[-1].grain == grain != "x" and spans[-1].hi == lo:
        spans[-1] = Span(grain, spans[-1].lo, hi)
    else:
        spans.append(Span(grain, lo, hi))


def _cover_days(t: datetime, end: datetime, grains: frozenset[Grain], spans: list[Span]) -> None:
    while t < end:
        nxt = _months_after(t, 1)
        if "m" in grains and t.day == 1 and nxt <= end:
            _append(spans, "m", t, nxt)
            t = nxt
            continue
        next_month = _months_after(month_start(t), 1)
        # Stop the weeks and days at the next month start when a whole month follows it.
        whole_month_follows = next_month < end and _months_after(next_month, 1) <= end
        limit = next_month if "m" in grains and whole_month_follows else end
        while t < limit:
            if "w" in grains and t.weekday() == 0 and limit - t >= _WEEK:
                _append(spans, "w", t, t + _WEEK)
                t += _WEEK
            else:
                _append(spans, "d", t, t + _DAY)
                t += _DAY


def cover(start: datetime, end: datetime, grains: frozenset[Grain]) -> list[Span]:
    """Disjoint spans whose union is exactly [start, end).

    Whole months, then ISO weeks, then days are used where they fit, then hours when the
    rollup keeps them, and `x` spans (read from the events themselves) only for what is left
    at the edges: the parts of an hour (or of a day, without hours) that a start or end cuts
    off. So a year by week reads about one rollup row per user and week, and any time, to the
    microsecond, is exact.
    """
    spans: list[Span] = []
    if end <= start:
        return spans
    hours = "h" in grains
    floor_unit = floor_hour if hours else floor_day
    ceil_unit = ceil_hour if hours else ceil_day
    t = start
    if t != floor_unit(t):
        hi = min(ceil_unit(t), end)
        _append(spans, "x", t, hi)
        t = hi
    last_whole = floor_unit(end)
    if t < last_whole:
        if t != floor_day(t):
            hi = min(ceil_day(t), last_whole)
            _append(spans, "h", t, hi)
            t = hi
        last_midnight = floor_day(last_whole)
        if t < last_midnight:
            _cover_days(t, last_midnight, grains, spans)
            t = last_midnight
        if t < last_whole:
            _append(spans, "h", t, last_whole)
            t = last_whole
    if t < end:
        _append(spans, "x", t, end)
    return spans


# -- cost windows -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """A time range [start, end)."""

    start: datetime
    end: datetime


def default_cost_window(now: datetime) -> Window:
    """The last 30 days up to now."""
    return Window(now - timedelta(days=30), now)


def parse_month(raw: str) -> datetime:
    """`YYYY-MM` to the first of that month, 00:00 UTC."""
    match = _MONTH.match(raw.strip())
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 1:
        raise InvalidQueryError("reportMonth", f"{raw!r} is not a month like 2026-11 (YYYY-MM)")
    return datetime(int(match.group(1)), int(match.group(2)), 1, tzinfo=UTC)


def month_window(first: datetime) -> Window:
    """The whole calendar month starting at `first`."""
    try:
        return Window(first, add_months(first, 1))
    except OverflowError:
        raise InvalidQueryError("reportMonth", "is out of range") from None


# -- figures ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserProfile:
    """A user's directory entry as reports show it."""

    user_id: str
    username: str
    name: str
    email: str
    roles: tuple[str, ...]
    avatar_hash: str | None
    created_at: datetime
    suspended: bool
    licensed: bool


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A directory group with how many members it has now."""

    group_id: str
    name: str
    org_id: str | None
    member_count: int


@dataclass(frozen=True, slots=True)
class ProfilePage:
    """A page of directory users and how many matched in all."""

    count: int
    users: list[UserProfile]


@dataclass(frozen=True, slots=True)
class ActivityFigures:
    """A user's activity in one bucket: overlap in microseconds and sessions started."""

    duration_us: int
    count: int


@dataclass(frozen=True, slots=True)
class BucketActivity:
    """One bucket's active users, longest first (then by id): parallel columns.

    Columns rather than an object per user, because a year by week for a thousand users is
    fifty thousand entries and they should cost as little as possible on the way to JSON.
    """

    user_ids: list[str] = field(default_factory=list)
    durations_us: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, figures: Mapping[str, tuple[int, int]]) -> BucketActivity:
        """From (duration µs, count) by user, dropping users with neither."""
        ordered = sorted(
            ((u, d, c) for u, (d, c) in figures.items() if d or c), key=lambda t: (-t[1], t[0])
        )
        return cls([t[0] for t in ordered], [t[1] for t in ordered], [t[2] for t in ordered])

    def by_user(self) -> dict[str, ActivityFigures]:
        """The same figures keyed by user."""
        return {
            u: ActivityFigures(d, c)
            for u, d, c in zip(self.user_ids, self.durations_us, self.counts, strict=True)
        }


@dataclass(frozen=True, slots=True)
class ChatFigures:
    """Chat spend and token sums; `messages - priced_messages` had no price.

    `reasoning_tokens` are part of `output_tokens` (shown apart, never priced again);
    `runtime_ms` is the Agent Time of the messages.
    """

    cost_micros: int = 0
    messages: int = 0
    priced_messages: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    runtime_ms: int = 0

    @property
    def unpriced_messages(self) -> int:
        """Messages whose model had no price when they were recorded."""
        return self.messages - self.priced_messages

    def __add__(self, other: ChatFigures) -> ChatFigures:
        return ChatFigures(
            capped(self.cost_micros + other.cost_micros),
            capped(self.messages + other.messages),
            capped(self.priced_messages + other.priced_messages),
            capped(self.input_tokens + other.input_tokens),
            capped(self.output_tokens + other.output_tokens),
            capped(self.cache_read_tokens + other.cache_read_tokens),
            capped(self.cache_write_tokens + other.cache_write_tokens),
            capped(self.reasoning_tokens + other.reasoning_tokens),
            capped(self.runtime_ms + other.runtime_ms),
        )

    def as_json(self) -> dict[str, int]:
        """Coder's field names for the sums."""
        return {
            "total_cost_micros": self.cost_micros,
            "message_count": self.messages,
            "priced_message_count": self.priced_messages,
            "unpriced_message_count": self.unpriced_messages,
            "total_input_tokens": self.input_tokens,
            "total_output_tokens": self.output_tokens,
            "total_cache_read_tokens": self.cache_read_tokens,
            "total_cache_creation_tokens": self.cache_write_tokens,
            "total_reasoning_tokens": self.reasoning_tokens,
            "total_runtime_ms": self.runtime_ms,
        }


@dataclass(frozen=True, slots=True)
class CostUserRow:
    """One line of the per-user cost list."""

    user_id: str
    profile: UserProfile | None
    figures: ChatFigures
    chat_count: int

    def as_json(self) -> dict[str, object]:
        """Coder's `ChatCostUserRollup` (with the avatar hash our directory has)."""
        p = self.profile
        return {
            "user_id": self.user_id,
            "username": p.username if p else "",
            "name": p.name if p else "",
            "avatar_hash": p.avatar_hash if p else None,
            **self.figures.as_json(),
            "chat_count": self.chat_count,
        }


@dataclass(frozen=True, slots=True)
class CostUsersPage:
    """A page of the cost list and how many users matched in all."""

    count: int
    rows: list[CostUserRow]


@dataclass(frozen=True, slots=True)
class ModelCost:
    """A user's spend on one model."""

    model: str
    provider: str
    figures: ChatFigures

    def as_json(self) -> dict[str, object]:
        """A `by_model` entry."""
        return {"model": self.model, "provider": self.provider, **self.figures.as_json()}


@dataclass(frozen=True, slots=True)
class ChatCost:
    """A user's spend in one root chat (its sub-chats included)."""

    root_chat_id: str
    figures: ChatFigures

    def as_json(self) -> dict[str, object]:
        """A `by_chat` entry."""
        return {"root_chat_id": self.root_chat_id, **self.figures.as_json()}


@dataclass(frozen=True, slots=True)
class CostSummary:
    """A user's spend in a window: totals, and by model and by root chat (cost descending)."""

    user_id: str
    profile: UserProfile | None
    figures: ChatFigures
    by_model: list[ModelCost]
    by_chat: list[ChatCost]

    @property
    def chat_count(self) -> int:
        """Distinct root chats."""
        return len(self.by_chat)


def sort_models(items: Iterable[ModelCost]) -> list[ModelCost]:
    """Cost descending, then model and provider, so equal costs keep a stable order."""
    return sorted(items, key=lambda m: (-m.figures.cost_micros, m.model, m.provider))


def sort_chats(items: Iterable[ChatCost]) -> list[ChatCost]:
    """Cost descending, then root chat id."""
    return sorted(items, key=lambda c: (-c.figures.cost_micros, c.root_chat_id))


def cost_order_key(row: CostUserRow, *, ascending: bool = False) -> tuple[int, int, str, str]:
    """The cost list's order: cost descending (or ascending), then username (users without one
    last), then id."""
    username = row.profile.username if row.profile else None
    cost = row.figures.cost_micros if ascending else -row.figures.cost_micros
    return (cost, username is None, username or "", row.user_id)


# -- activity body ----------------------------------------------------------------------------


def _profile_json(user_id: str, profile: UserProfile | None) -> dict[str, object]:
    return {
        "id": user_id,
        "name": profile.name if profile else "",
        "username": profile.username if profile else "",
        "roles": list(profile.roles) if profile else [],
        "avatar_hash": profile.avatar_hash if profile else None,
    }


def activity_body(
    buckets: Sequence[Bucket],
    figures: Sequence[BucketActivity],
    profiles: Mapping[str, UserProfile],
) -> dict[str, object]:
    """Coder's Activity shape; durations in milliseconds (microsecond sums, floored per value).

    `figures[i]` holds bucket i's active users; users with nothing in a bucket are left out of
    its `user_activity`, and every active user of the range is in `users`.
    """
    activity: list[dict[str, object]] = []
    durations: dict[str, int] = {}
    counts: dict[str, int] = {}
    for bucket, fig in zip(buckets, figures, strict=True):
        columns = (fig.user_ids, fig.durations_us, fig.counts)
        activity.append(
            {
                "time": bucket.start,
                "duration": bucket.duration_ms,
                "user_activity": [
                    {"user_id": u, "duration": d // 1000, "count": c}
                    for u, d, c in zip(*columns, strict=True)
                ],
            }
        )
        for u, d, c in zip(*columns, strict=True):
            durations[u] = capped(durations.get(u, 0) + d)
            counts[u] = capped(counts.get(u, 0) + c)
    users = {
        user_id: {
            **_profile_json(user_id, profiles.get(user_id)),
            "total_count": counts[user_id],
            "total_duration": durations[user_id] // 1000,
        }
        for user_id in sorted(durations)
    }
    return {"activity": activity, "users": users}


def activity_body_of_json(
    buckets: Sequence[Bucket], items: Mapping[int, str], users: str | None
) -> dict[str, object]:
    """`activity_body` from its per-user parts already written as JSON text.

    `items[i]` is the inside of bucket i's `user_activity` array (absent: nobody), and `users`
    the inside of the `users` object, both exactly as `activity_body` would write them; they
    go into the response as they are, without becoming Python objects.
    """
    return {
        "activity": [
            {
                "time": bucket.start,
                "duration": bucket.duration_ms,
                "user_activity": orjson.Fragment(f"[{items.get(i, '')}]"),
            }
            for i, bucket in enumerate(buckets)
        ],
        "users": orjson.Fragment(f"{{{users or ''}}}"),
    }


# -- chargeback -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TeamState:
    """A team (a "workspace" in Comet's report) and its members."""

    team_id: str
    name: str
    member_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProjectState:
    """A project, its team, and the month's latest storage sample (zeros without one)."""

    project_id: str
    team_id: str
    name: str
    size_mb: float = 0.0
    experiments: int = 0
    owner_id: str | None = None


@dataclass(slots=True)
class UsageMonth:
    """One user's usage in the report month."""

    ui_calls: int = 0
    ui_last: datetime | None = None
    sdk_calls: int = 0
    sdk_last: datetime | None = None
    cost_micros: int = 0
    builds: int = 0
    agent_builds: int = 0


@dataclass(slots=True)
class ChargebackData:
    """Directory state plus the month's usage, as the store reads it."""

    teams: list[TeamState]
    projects: list[ProjectState]
    profiles: dict[str, UserProfile]
    usage: dict[str, UsageMonth] = field(default_factory=dict)


def _fsum(values: Iterable[float]) -> float:
    # Each sample is brought into the storable bounds first: a value stored before they were
    # enforced (1e308, say) must not overflow the sum and fail the whole report.
    return math.fsum(
        min(value, MAX_SIZE_MB) if value > 0 and not math.isnan(value) else 0.0 for value in values
    )


def _isum(values: Iterable[int]) -> int:
    return capped(sum(values))


def chargeback_body(month: datetime, data: ChargebackData, now: datetime) -> dict[str, object]:
    """Comet's chargeback report, plus LLM cost and agent builds per workspace and user.

    A member's experiments and size are those of the team's projects whose latest sample of
    the month came from that member; a project without a sample that month counts zero.
    """
    empty = UsageMonth()
    projects_by_team: dict[str, list[ProjectState]] = {}
    for project in sorted(data.projects, key=lambda p: (p.name, p.project_id)):
        projects_by_team.setdefault(project.team_id, []).append(project)
    workspaces: list[dict[str, object]] = []
    for team in sorted(data.teams, key=lambda t: (t.name, t.team_id)):
        projects = projects_by_team.get(team.team_id, [])
        members: list[dict[str, object]] = []
        team_cost = team_agent_builds = 0
        for member_id in sorted(
            set(team.member_ids),
            key=lambda u: (data.profiles[u].username if u in data.profiles else "", u),
        ):
            profile = data.profiles.get(member_id)
            owned = [p for p in projects if p.owner_id == member_id]
            usage = data.usage.get(member_id, empty)
            team_cost = capped(team_cost + usage.cost_micros)
            team_agent_builds = capped(team_agent_builds + usage.agent_builds)
            members.append(
                {
                    "userId": member_id,
                    "userName": profile.username if profile else "",
                    "email": profile.email if profile else "",
                    "numberOfExperiments": _isum(p.experiments for p in owned),
                    "totalSizeInMb": _fsum(p.size_mb for p in owned),
                    "llmCostMicros": usage.cost_micros,
                    "agentBuilds": usage.agent_builds,
                }
            )
        workspaces.append(
            {
                "id": team.team_id,
                "name": team.name,
                "numberOfMembers": len(members),
                "totalSizeInMb": _fsum(p.size_mb for p in projects),
                "numberOfExperiments": _isum(p.experiments for p in projects),
                "llmCostMicros": team_cost,
                "agentBuilds": team_agent_builds,
                "members": members,
                "projects": [
                    {
                        "id": p.project_id,
                        "name": p.name,
                        "numberOfExperiments": p.experiments,
                        "totalSizeInMb": p.size_mb,
                    }
                    for p in projects
                ],
            }
        )
    licensed: list[dict[str, object]] = []
    for profile in sorted(data.profiles.values(), key=lambda p: (p.username, p.user_id)):
        if not profile.licensed:
            continue
        usage = data.usage.get(profile.user_id, empty)
        licensed.append(
            {
                "userId": profile.user_id,
                "username": profile.username,
                "email": profile.email,
                "created_at": to_ms(profile.created_at),
                "uiUsageCount": usage.ui_calls,
                "uiUsageUpdateTs": to_ms(usage.ui_last) if usage.ui_last else 0,
                "sdkUsageCount": usage.sdk_calls,
                "sdkUsageUpdateTs": to_ms(usage.sdk_last) if usage.sdk_last else 0,
                "suspended": profile.suspended,
                "llmCostMicros": usage.cost_micros,
                "agentBuilds": usage.agent_builds,
            }
        )
    return {
        "reportDate": f"{month.year:04d}-{month.month:02d}",
        "workspaces": workspaces,
        "users": {
            "licensedUsers": licensed,
            "numberOfUsers": len(licensed),
            "createdAt": to_ms(now),
        },
    }

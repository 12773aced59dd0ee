"""The figures the services must arrive at, computed directly from the events generated.

`Tally.observe` sees every event exactly as it is sent; the methods then answer, in the
shapes the APIs return, what limits, reports and the publisher must show for any period:
spend per user for the current day/week/month, activity per bucket, cost per user for a
range, the chargeback report of a month, the billable events and the Agent Time of every
hour (what `hb_agent_runtime_v1` must report). Costs use ingest's own
rule (`cost_micros` with the same price table), so a figure can only differ from the
service's when an event was lost or counted twice.
"""

from __future__ import annotations

import calendar
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from libs.events.models import (
    ActivitySessionRecorded,
    ApiUsageRecorded,
    ChatUsageRecorded,
    Envelope,
    GroupUpdated,
    ProjectUpdated,
    StorageSampled,
    TeamUpdated,
    UserUpdated,
    WorkspaceBuilt,
)
from libs.events.pricing import ModelPrice, priced_cost
from libs.events.vocabulary import ACTIVITY_CATEGORY_FILTERS, ACTIVITY_INTERVALS, ActivityInterval
from services.limits.crossings import LIMIT_PERCENT, LIMIT_REACHED, WARNING, warning_reached
from services.limits.domain import LimitsConfig, period_bounds, resolve_limit
from services.publisher.domain import HB_AGENT_RUNTIME, agent_hour, agent_time_id
from services.reports.notifications.domain import ADMIN_ROLES, Person, recipients

__all__ = [
    "CATEGORIES",
    "INTERVALS",
    "ChatTotals",
    "Tally",
    "bucket_starts",
    "period_starts",
]

Interval = ActivityInterval
INTERVALS: Final = ACTIVITY_INTERVALS
CATEGORIES: Final = ACTIVITY_CATEGORY_FILTERS
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(milliseconds=1)


def _month(at: datetime | date) -> str:
    return f"{at.year:04d}-{at.month:02d}"


@dataclass(slots=True)
class ChatTotals:
    """Chat usage summed over some messages (title generation never included)."""

    cost_micros: int = 0
    message_count: int = 0
    priced_message_count: int = 0
    unpriced_message_count: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    runtime_ms: int = 0

    def add(self, other: ChatTotals) -> None:
        """Add another sum into this one."""
        self.cost_micros += other.cost_micros
        self.message_count += other.message_count
        self.priced_message_count += other.priced_message_count
        self.unpriced_message_count += other.unpriced_message_count
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.runtime_ms += other.runtime_ms

    def as_json(self) -> dict[str, int]:
        """The rollup fields of the cost API (Coder's names: cache writes are "creation")."""
        return {
            "total_cost_micros": self.cost_micros,
            "message_count": self.message_count,
            "priced_message_count": self.priced_message_count,
            "unpriced_message_count": self.unpriced_message_count,
            "total_input_tokens": self.input_tokens,
            "total_output_tokens": self.output_tokens,
            "total_cache_read_tokens": self.cache_read_tokens,
            "total_cache_creation_tokens": self.cache_write_tokens,
            "total_reasoning_tokens": self.reasoning_tokens,
            "total_runtime_ms": self.runtime_ms,
        }


@dataclass(slots=True)
class _ChatDay:
    totals: ChatTotals = field(default_factory=ChatTotals)
    by_model: dict[str, ChatTotals] = field(default_factory=lambda: defaultdict(ChatTotals))
    by_root: dict[str, ChatTotals] = field(default_factory=lambda: defaultdict(ChatTotals))
    chats: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Session:
    start_ms: int
    duration_ms: int
    count: int
    category: str


@dataclass(slots=True)
class _ApiMonth:
    count: int = 0
    last_ms: int = 0


def period_starts(now: datetime) -> dict[str, date]:
    """The first day of the UTC day, week (Monday) and month that contain `now`."""
    today = now.astimezone(UTC).date()
    return {
        "day": today,
        "week": today - timedelta(days=today.weekday()),
        "month": today.replace(day=1),
    }


def _add_months(at: datetime, months: int) -> datetime:
    month0 = at.month - 1 + months
    year, month = at.year + month0 // 12, month0 % 12 + 1
    day = min(at.day, calendar.monthrange(year, month)[1])
    return at.replace(year=year, month=month, day=day)


def bucket_starts(start: datetime, end: datetime, interval: Interval) -> list[datetime]:
    """Bucket start times from `start`, one interval apart, while before `end`."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {', '.join(INTERVALS)}")
    starts: list[datetime] = []
    step = 0
    while True:
        if interval == "1 month":
            at = _add_months(start, step)
        elif interval == "1 year":
            at = _add_months(start, 12 * step)
        else:
            days = {"1 day": 1, "1 week": 7, "90 day": 90}[interval]
            at = start + timedelta(days=days * step)
        if at >= end:
            return starts
        starts.append(at)
        step += 1


class Tally:
    """Everything the expected figures need, collected from the events as they are made."""

    def __init__(self, prices: dict[str, ModelPrice]) -> None:
        self.prices = dict(prices)
        self.events = 0
        self.by_type: dict[str, int] = defaultdict(int)
        self.users: dict[str, UserUpdated] = {}
        self.teams: dict[str, TeamUpdated] = {}
        self.projects: dict[str, ProjectUpdated] = {}
        self.groups: dict[str, GroupUpdated] = {}
        self.chat_days: dict[tuple[str, date], _ChatDay] = defaultdict(_ChatDay)
        self.title_messages = 0
        self.sessions: dict[str, list[_Session]] = defaultdict(list)
        self.builds: dict[tuple[str, str], int] = defaultdict(int)
        self.agent_builds: dict[tuple[str, str], int] = defaultdict(int)
        self.billable_ids: list[str] = []
        #: The same builds' event identities (`Envelope.identity`), which billing ids derive from.
        self.billable_identities: list[str] = []
        self.api: dict[tuple[str, str, str], _ApiMonth] = defaultdict(_ApiMonth)
        self.storage: dict[tuple[str, str], tuple[datetime, StorageSampled]] = {}
        self.agent_runtime: dict[datetime, int] = defaultdict(int)

    def observe_all(self, events: Iterable[Envelope]) -> None:
        """Observe each of `events`."""
        for event in events:
            self.observe(event)

    def observe(self, event: Envelope) -> None:
        """Fold one sent event into the totals."""
        self.events += 1
        self.by_type[event.type] += 1
        if isinstance(event, ChatUsageRecorded):
            self._chat(event)
        elif isinstance(event, ActivitySessionRecorded):
            d = event.data
            self.sessions[event.user_id].append(
                _Session(_ms(event.occurred_at), d.duration_ms, d.count, d.category)
            )
        elif isinstance(event, WorkspaceBuilt):
            key = (event.user_id, _month(event.occurred_at))
            self.builds[key] += 1
            if event.data.agent_managed:
                self.agent_builds[key] += 1
                self.billable_ids.append(event.id)
                self.billable_identities.append(event.identity)
        elif isinstance(event, ApiUsageRecorded):
            api = self.api[(event.user_id, _month(event.occurred_at), event.data.client)]
            api.count += event.data.count
            api.last_ms = max(api.last_ms, _ms(event.occurred_at))
        elif isinstance(event, StorageSampled):
            key = (event.data.project_id, _month(event.occurred_at))
            current = self.storage.get(key)
            if current is None or event.occurred_at >= current[0]:
                self.storage[key] = (event.occurred_at, event)
        elif isinstance(event, UserUpdated):
            self.users[event.user_id] = event
        elif isinstance(event, TeamUpdated):
            self.teams[event.data.team_id] = event
        elif isinstance(event, ProjectUpdated):
            self.projects[event.data.project_id] = event
        elif isinstance(event, GroupUpdated):
            self.groups[event.data.group_id] = event

    def cost_of(self, event: ChatUsageRecorded) -> int | None:
        """The cost ingest fixes on the event: the price table's, else the emitter's, or none."""
        cost = priced_cost(event.data, self.prices)
        return event.data.cost_micros if cost is None else cost

    def _chat(self, event: ChatUsageRecorded) -> None:
        d = event.data
        if d.purpose == "title":
            self.title_messages += 1
            return
        cost = self.cost_of(event)
        one = ChatTotals(
            cost_micros=cost or 0,
            message_count=1,
            priced_message_count=int(cost is not None),
            unpriced_message_count=int(cost is None),
            input_tokens=d.input_tokens,
            output_tokens=d.output_tokens,
            cache_read_tokens=d.cache_read_tokens,
            cache_write_tokens=d.cache_write_tokens,
            reasoning_tokens=d.reasoning_tokens or 0,
            runtime_ms=d.runtime_ms or 0,
        )
        if d.runtime_ms is not None:
            self.agent_runtime[agent_hour(event.occurred_at)] += d.runtime_ms
        day = self.chat_days[(event.user_id, event.occurred_at.date())]
        day.totals.add(one)
        day.by_model[d.model].add(one)
        day.by_root[d.root_chat_id or d.chat_id].add(one)
        day.chats.add(d.chat_id)

    # ----- limits --------------------------------------------------------------------------

    def user_ids(self) -> list[str]:
        """Every user the directory named or that used anything, sorted."""
        ids = set(self.users) | {u for u, _ in self.chat_days} | set(self.sessions)
        return sorted(ids)

    def spend(self, user_id: str, since: date, until: date) -> int:
        """Chat cost of `user_id` on the days from `since` to `until`, both included."""
        total = 0
        day = since
        while day <= until:
            chat = self.chat_days.get((user_id, day))
            if chat is not None:
                total += chat.totals.cost_micros
            day += timedelta(days=1)
        return total

    def limits(self, now: datetime) -> dict[str, Any]:
        """Each user's spend in the day, week and month containing `now` (limits' figures)."""
        starts = period_starts(now)
        today = starts["day"]
        users = {
            user: {period: self.spend(user, since, today) for period, since in starts.items()}
            for user in self.user_ids()
        }
        return {
            "as_of": now,
            "period_start": {p: datetime.combine(d, time(), UTC) for p, d in starts.items()},
            "spent_micros": users,
        }

    def groups_of(self, user_id: str) -> list[str]:
        """The groups whose newest member list holds `user_id`."""
        return sorted(g for g, e in self.groups.items() if user_id in e.data.member_ids)

    def notifications(
        self, now: datetime, config: LimitsConfig, *, admin_emails: Iterable[str] = ()
    ) -> dict[str, Any]:
        """The budget notifications this usage must cause under `config`, and their emails.

        `config` must have been in force before the usage arrived (limits evaluates each
        user's spend as it grows). Each user whose spend in the current period reaches the
        warning share of their limit gets a `budget.warning`, and one who reaches the limit a
        `budget.limit_reached`; the limit comes from the limits service's own priority rule
        (`resolve_limit`). Emails follow the notifier's rule: the user (unless suspended),
        every owner and user admin but the user, and `admin_emails`.
        """
        start, end = period_bounds(config.period, now)
        today = now.astimezone(UTC).date()
        people = {
            uid: Person(uid, u.data.username, u.data.name, "" if u.data.suspended else u.data.email)
            for uid, u in self.users.items()
        }
        admins = [
            people[uid]
            for uid, u in sorted(self.users.items())
            if ADMIN_ROLES & set(u.data.roles) and not u.data.suspended
        ]
        extra = list(admin_emails)
        due: list[dict[str, Any]] = []
        emails: list[dict[str, Any]] = []
        for user in self.user_ids():
            spent = self.spend(user, start.date(), today)
            limit, source, group_id, _ = resolve_limit(config, user, self.groups_of(user))
            if limit is None:
                continue
            kinds: list[tuple[str, int]] = []
            percent = config.warning_threshold_percent
            if percent is not None and warning_reached(spent, limit, percent):
                kinds.append((WARNING, percent))
            if spent >= limit:
                kinds.append((LIMIT_REACHED, LIMIT_PERCENT))
            profile = self.users.get(user)
            for kind, threshold in kinds:
                due.append(
                    {
                        "type": kind,
                        "user_id": user,
                        "username": profile.data.username if profile else None,
                        "period": config.period,
                        "period_start": start,
                        "period_end": end,
                        "threshold_percent": threshold,
                        "limit_micros": limit,
                        "spent_micros_at_end": spent,
                        "source": source,
                        "group_id": group_id,
                        "group_name": self.groups[group_id].data.name if group_id else None,
                    }
                )
                for address, audience in recipients(people.get(user), admins, extra):
                    emails.append(
                        {"to": address, "audience": audience, "type": kind, "user_id": user}
                    )
        return {
            "config": {
                "enabled": config.enabled,
                "period": config.period,
                "default_limit_micros": config.default_limit_micros,
                "warning_threshold_percent": config.warning_threshold_percent,
                "user_overrides": dict(config.user_overrides),
                "group_overrides": dict(config.group_overrides),
            },
            "notifications": due,
            "emails": emails,
        }

    # ----- costs ---------------------------------------------------------------------------

    def costs(self, start: date, end: date) -> dict[str, dict[str, Any]]:
        """Per-user cost rollup over the days from `start` to `end`, both included.

        `chat_count` counts root chats (a sub-chat rolls up into its root, as in `by_chat`).
        Users without chat usage in the range are left out, as the cost list leaves them.
        """
        out: dict[str, dict[str, Any]] = {}
        per_user: dict[str, list[_ChatDay]] = defaultdict(list)
        for (user, day), chat in self.chat_days.items():
            if start <= day <= end:
                per_user[user].append(chat)
        for user, days in sorted(per_user.items()):
            totals = ChatTotals()
            by_model: dict[str, ChatTotals] = defaultdict(ChatTotals)
            by_root: dict[str, ChatTotals] = defaultdict(ChatTotals)
            chats: set[str] = set()
            for chat in days:
                totals.add(chat.totals)
                for model, t in chat.by_model.items():
                    by_model[model].add(t)
                for root, t in chat.by_root.items():
                    by_root[root].add(t)
                chats |= chat.chats
            out[user] = {
                **totals.as_json(),
                "chat_count": len(by_root),
                "distinct_chat_ids": len(chats),
                "by_model": {m: t.as_json() for m, t in sorted(by_model.items())},
                "by_chat": {r: t.as_json() for r, t in sorted(by_root.items())},
            }
        return out

    # ----- activity ------------------------------------------------------------------------

    def activity(
        self,
        start: datetime,
        end: datetime,
        interval: Interval = "1 day",
        category: str = "any",
    ) -> dict[str, Any]:
        """The Activity API's answer: per-bucket user activity and per-user totals.

        A session covers `[occurred_at, occurred_at + duration_ms)` and adds its overlap with
        each bucket to that bucket's duration; its count goes to the bucket it starts in.
        Durations are milliseconds.
        """
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {', '.join(CATEGORIES)}")
        starts = bucket_starts(start, end, interval)
        edges = [_ms(s) for s in starts] + [_ms(end)]
        buckets: list[dict[str, list[int]]] = [{} for _ in starts]
        for user, sessions in self.sessions.items():
            for s in sessions:
                if category not in ("any", s.category):
                    continue
                _spread(s, user, edges, buckets)
        activity = []
        totals: dict[str, list[int]] = {}
        for at, lo, hi, per_user in zip(starts, edges, edges[1:], buckets, strict=False):
            rows = []
            for user, (duration, count) in sorted(per_user.items()):
                rows.append({"user_id": user, "duration": duration, "count": count})
                total = totals.setdefault(user, [0, 0])
                total[0] += duration
                total[1] += count
            activity.append({"time": at, "duration": hi - lo, "user_activity": rows})
        users = {}
        for user, (duration, count) in sorted(totals.items()):
            profile = self.users.get(user)
            users[user] = {
                "id": user,
                "name": profile.data.name if profile else None,
                "username": profile.data.username if profile else None,
                "roles": list(profile.data.roles) if profile else [],
                "avatar_hash": profile.data.avatar_hash if profile else None,
                "total_count": count,
                "total_duration": duration,
            }
        return {
            "start": start,
            "end": end,
            "interval": interval,
            "category": category,
            "activity": activity,
            "users": users,
        }

    # ----- chargeback ----------------------------------------------------------------------

    def chargeback(self, month: str) -> dict[str, Any]:
        """The chargeback report of `month` (`YYYY-MM`): teams, projects, users, LLM cost."""
        year, mon = (int(p) for p in month.split("-"))
        first = date(year, mon, 1)
        last = date(year, mon, calendar.monthrange(year, mon)[1])
        cost = {u: t["total_cost_micros"] for u, t in self.costs(first, last).items()}
        workspaces = []
        for team_id, team in sorted(self.teams.items()):
            projects: list[dict[str, Any]] = []
            for project_id, project in sorted(self.projects.items()):
                if project.data.team_id != team_id:
                    continue
                sample = self.storage.get((project_id, month))
                projects.append(
                    {
                        "project_id": project_id,
                        "name": project.data.name,
                        "numberOfExperiments": sample[1].data.experiment_count if sample else 0,
                        "totalSizeInMb": sample[1].data.size_mb if sample else 0.0,
                    }
                )
            members = list(team.data.member_ids)
            workspaces.append(
                {
                    "team_id": team_id,
                    "name": team.data.name,
                    "numberOfMembers": len(members),
                    "totalSizeInMb": round(sum(p["totalSizeInMb"] for p in projects), 6),
                    "numberOfExperiments": sum(p["numberOfExperiments"] for p in projects),
                    "members": [
                        self.users[m].data.username if m in self.users else m for m in members
                    ],
                    "projects": projects,
                    "llm_cost_micros": sum(cost.get(m, 0) for m in members),
                    "agent_builds": sum(self.agent_builds.get((m, month), 0) for m in members),
                }
            )
        licensed = []
        for user_id, profile in sorted(self.users.items()):
            if not profile.data.licensed:
                continue
            ui = self.api.get((user_id, month, "ui"), _ApiMonth())
            sdk = self.api.get((user_id, month, "sdk"), _ApiMonth())
            licensed.append(
                {
                    "user_id": user_id,
                    "username": profile.data.username,
                    "email": profile.data.email,
                    "created_at": _ms(profile.data.created_at),
                    "uiUsageCount": ui.count,
                    "uiUsageUpdateTs": ui.last_ms,
                    "sdkUsageCount": sdk.count,
                    "sdkUsageUpdateTs": sdk.last_ms,
                    "suspended": profile.data.suspended,
                    "llm_cost_micros": cost.get(user_id, 0),
                    "agent_builds": self.agent_builds.get((user_id, month), 0),
                }
            )
        return {
            "reportDate": month,
            "workspaces": workspaces,
            "users": {"licensedUsers": licensed, "numberOfUsers": len(licensed)},
        }

    def months(self) -> list[str]:
        """Every month with usage, oldest first."""
        return sorted({_month(day) for _, day in self.chat_days} | {m for _, m in self.builds})

    # ----- billing -------------------------------------------------------------------------

    def billing(self) -> dict[str, Any]:
        """The billable events the publisher must deliver exactly once: agent-managed builds."""
        return {
            "dc_managed_agents_v1": len(self.billable_ids),
            "source_event_ids": sorted(self.billable_ids),
        }

    def agent_time(self, start: datetime, end: datetime) -> dict[str, int]:
        """`runtime_ms` of every UTC hour that overlaps `[start, end)`, by heartbeat id.

        Idle hours are 0, as the publisher reports them.
        """
        hours: dict[str, int] = {}
        hour = agent_hour(start)
        while hour < end:
            hours[agent_time_id(hour)] = self.agent_runtime.get(hour, 0)
            hour += timedelta(hours=1)
        return hours

    # ----- everything ----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """How many events of each type were generated."""
        return {
            "events": self.events,
            "by_type": dict(sorted(self.by_type.items())),
            "title_messages": self.title_messages,
        }

    def snapshot(
        self,
        *,
        now: datetime,
        start: datetime,
        end: datetime,
        interval: Interval = "1 day",
        limits: LimitsConfig | None = None,
        admin_emails: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Every expected figure for the simulated window, as one JSON-ready document.

        With `limits`, it also lists the budget notifications that configuration must cause.
        """
        extra: dict[str, Any] = {}
        if limits is not None:
            extra["notifications"] = self.notifications(now, limits, admin_emails=admin_emails)
        return {
            **extra,
            "summary": self.summary(),
            "prices": {m: p.as_json() for m, p in sorted(self.prices.items())},
            "limits": self.limits(now),
            # `end_date` is exclusive, as the cost API's is: the window covers every day of
            # the simulation, the last one included.
            "costs": {
                "start_date": start.date(),
                "end_date": end.date() + timedelta(days=1),
                "users": self.costs(start.date(), end.date()),
            },
            "activity": self.activity(start, end, interval),
            "chargeback": {m: self.chargeback(m) for m in self.months()},
            "billing": self.billing(),
            "agent_time": {
                "event_type": HB_AGENT_RUNTIME,
                "hours": self.agent_time(start, end),
                "total_runtime_ms": sum(self.agent_time(start, end).values()),
            },
        }


def _spread(s: _Session, user: str, edges: list[int], buckets: list[dict[str, list[int]]]) -> None:
    """Add one session's overlap with each bucket, and its count to the bucket it starts in."""
    lo, hi = s.start_ms, s.start_ms + s.duration_ms
    if hi < edges[0] or lo >= edges[-1]:
        return
    first = max(0, bisect_right(edges, lo) - 1)
    for i in range(first, len(edges) - 1):
        b_lo, b_hi = edges[i], edges[i + 1]
        if b_lo > hi:
            break
        overlap = max(0, min(hi, b_hi) - max(lo, b_lo))
        starts_here = b_lo <= lo < b_hi
        if overlap or starts_here:
            row = buckets[i].setdefault(user, [0, 0])
            row[0] += overlap
            row[1] += s.count if starts_here else 0

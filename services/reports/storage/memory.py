"""`InMemoryReportStore`: every figure computed directly from the events themselves.

It backs the unit tests and states, in plain Python, what each figure means; the shared
store suite (`tests/integration/store_contracts/test_reports.py`) holds it to PostgreSQL.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Sequence
from datetime import timedelta

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
from libs.service.consumer import Consumed
from services.reports.domain import (
    ALL_CATEGORIES_KEY,
    Bucket,
    BucketActivity,
    ChargebackData,
    ChatCost,
    ChatFigures,
    CostSummary,
    CostUserRow,
    CostUsersPage,
    GroupInfo,
    ModelCost,
    ProfilePage,
    ProjectState,
    TeamState,
    UsageMonth,
    UserProfile,
    Window,
    activity_body,
    cost_order_key,
    sort_chats,
    sort_models,
)

__all__ = ["InMemoryReportStore"]


_US = timedelta(microseconds=1)


def _newer(a: Consumed, b: Consumed | None) -> bool:
    if b is None:
        return True
    return (a.event.occurred_at, a.partition, a.offset) > (
        b.event.occurred_at,
        b.partition,
        b.offset,
    )


class InMemoryReportStore:
    """Every figure computed directly from the events kept in a dict (first identity wins)."""

    def __init__(self, *, max_session_hours: int = 744) -> None:
        self.events: dict[str, Consumed] = {}
        self.max_session = timedelta(hours=max_session_hours)

    def add(self, events: Sequence[Consumed]) -> int:
        """Keep events whose identity (type, subject, id) is new; returns how many were."""
        added = 0
        for item in events:
            identity = item.event.identity
            if identity not in self.events:
                self.events[identity] = item
                added += 1
        return added

    def _of(self, kind: type[Envelope]) -> list[Consumed]:
        return [c for c in self.events.values() if isinstance(c.event, kind)]

    def _latest(self, kind: type[Envelope], key: str) -> dict[str, Consumed]:
        latest: dict[str, Consumed] = {}
        for item in self._of(kind):
            subject = str(getattr(item.event.data, key) if key else item.event.user_id)
            if _newer(item, latest.get(subject)):
                latest[subject] = item
        return latest

    async def ping(self) -> bool:
        """Always reachable."""
        return True

    async def activity(
        self, buckets: Sequence[Bucket], *, category: str, org: str | None
    ) -> list[BucketActivity]:
        """Overlap of every session with every bucket; the count goes where it started."""
        starts = [b.start for b in buckets]
        result: list[dict[str, list[int]]] = [{} for _ in buckets]
        for item in self._of(ActivitySessionRecorded):
            event = item.event
            assert isinstance(event, ActivitySessionRecorded)
            if category not in (ALL_CATEGORIES_KEY, event.data.category):
                continue
            if org is not None and (event.org_id or "") != org:
                continue
            began = event.occurred_at
            ended = began + min(timedelta(milliseconds=event.data.duration_ms), self.max_session)
            first = max(0, bisect.bisect_right(starts, began) - 1)
            for i in range(first, len(buckets)):
                bucket = buckets[i]
                if bucket.start >= ended and not bucket.start <= began < bucket.end:
                    break
                overlap = max(timedelta(0), min(ended, bucket.end) - max(began, bucket.start))
                started_here = bucket.start <= began < bucket.end
                if overlap > timedelta(0) or started_here:
                    figures = result[i].setdefault(event.user_id, [0, 0])
                    figures[0] += overlap // _US
                    figures[1] += event.data.count if started_here else 0
        return [BucketActivity.of({u: (d, c) for u, (d, c) in r.items()}) for r in result]

    async def activity_report(
        self, buckets: Sequence[Bucket], *, category: str, org: str | None
    ) -> dict[str, object]:
        """The Activity body from the figures and the active users' directory entries."""
        figures = await self.activity(buckets, category=category, org=org)
        active = {user_id for bucket in figures for user_id in bucket.user_ids}
        return activity_body(buckets, figures, await self.profiles(active))

    def _profiles(self) -> dict[str, UserProfile]:
        profiles: dict[str, UserProfile] = {}
        for user_id, item in self._latest(UserUpdated, "").items():
            event = item.event
            assert isinstance(event, UserUpdated)
            d = event.data
            profiles[user_id] = UserProfile(
                user_id=user_id,
                username=d.username,
                name=d.name,
                email=d.email,
                roles=d.roles,
                avatar_hash=d.avatar_hash,
                created_at=d.created_at,
                suspended=d.suspended,
                licensed=d.licensed,
            )
        return profiles

    async def profiles(self, user_ids: Collection[str]) -> dict[str, UserProfile]:
        """Latest directory entry per user."""
        wanted = set(user_ids)
        return {k: v for k, v in self._profiles().items() if k in wanted}

    def _chat(self, window: Window) -> list[ChatUsageRecorded]:
        found = []
        for item in self._of(ChatUsageRecorded):
            event = item.event
            assert isinstance(event, ChatUsageRecorded)
            if event.data.purpose == "chat" and window.start <= event.occurred_at < window.end:
                found.append(event)
        return found

    @staticmethod
    def _figures(event: ChatUsageRecorded) -> ChatFigures:
        d = event.data
        return ChatFigures(
            cost_micros=d.cost_micros or 0,
            messages=1,
            priced_messages=int(d.cost_micros is not None),
            input_tokens=d.input_tokens,
            output_tokens=d.output_tokens,
            cache_read_tokens=d.cache_read_tokens,
            cache_write_tokens=d.cache_write_tokens,
            reasoning_tokens=d.reasoning_tokens or 0,
            runtime_ms=d.runtime_ms or 0,
        )

    async def cost_users(
        self,
        window: Window,
        *,
        search: str | None,
        limit: int | None,
        offset: int,
        ascending: bool = False,
    ) -> CostUsersPage:
        """Sum each user's messages in the window."""
        totals: dict[str, ChatFigures] = {}
        chats: dict[str, set[str]] = {}
        for event in self._chat(window):
            totals[event.user_id] = totals.get(event.user_id, ChatFigures()) + self._figures(event)
            root = event.data.root_chat_id or event.data.chat_id
            chats.setdefault(event.user_id, set()).add(root)
        profiles = self._profiles()
        rows = []
        for user_id, figures in totals.items():
            profile = profiles.get(user_id)
            if search and not (
                user_id == search
                or (
                    profile is not None
                    and (
                        search.lower() in profile.username.lower()
                        or search.lower() in profile.name.lower()
                    )
                )
            ):
                continue
            rows.append(CostUserRow(user_id, profile, figures, len(chats[user_id])))
        rows.sort(key=lambda row: cost_order_key(row, ascending=ascending))
        end = None if limit is None else offset + limit
        return CostUsersPage(count=len(rows), rows=rows[offset:end])

    async def directory_users(self, *, search: str | None, limit: int, offset: int) -> ProfilePage:
        """The latest directory entries, by username."""
        needle = (search or "").lower()
        found = sorted(
            (
                p
                for p in self._profiles().values()
                if not search
                or p.user_id == search
                or needle in p.username.lower()
                or needle in p.name.lower()
            ),
            key=lambda p: (p.username, p.user_id),
        )
        page = found[offset : offset + limit]
        # As PostgreSQL counts (in the page's own rows): a page past the end counts nothing.
        return ProfilePage(count=len(found) if page else 0, users=page)

    async def directory_groups(self) -> list[GroupInfo]:
        """The latest state of every group."""
        groups = []
        for group_id, item in self._latest(GroupUpdated, "group_id").items():
            event = item.event
            assert isinstance(event, GroupUpdated)
            groups.append(
                GroupInfo(group_id, event.data.name, event.org_id, len(set(event.data.member_ids)))
            )
        return sorted(groups, key=lambda g: (g.name, g.group_id))

    async def cost_user(self, window: Window, user_id: str) -> CostSummary | None:
        """A user's messages in the window, by model and by root chat."""
        if not any(
            c.event.user_id == user_id
            and (
                isinstance(c.event, UserUpdated)
                or (isinstance(c.event, ChatUsageRecorded) and c.event.data.purpose == "chat")
            )
            for c in self.events.values()
        ):
            return None
        by_model: dict[tuple[str, str], ChatFigures] = {}
        by_chat: dict[str, ChatFigures] = {}
        total = ChatFigures()
        for event in self._chat(window):
            if event.user_id != user_id:
                continue
            figures = self._figures(event)
            key = (event.data.model, event.data.provider or "")
            by_model[key] = by_model.get(key, ChatFigures()) + figures
            root = event.data.root_chat_id or event.data.chat_id
            by_chat[root] = by_chat.get(root, ChatFigures()) + figures
            total += figures
        return CostSummary(
            user_id=user_id,
            profile=self._profiles().get(user_id),
            figures=total,
            by_model=sort_models(ModelCost(m, p, f) for (m, p), f in by_model.items()),
            by_chat=sort_chats(ChatCost(c, f) for c, f in by_chat.items()),
        )

    async def chargeback(self, month: Window) -> ChargebackData:
        """Directory state now, the month's latest storage samples, and the month's usage."""

        def in_month(e: Envelope) -> bool:
            return month.start <= e.occurred_at < month.end

        samples: dict[str, Consumed] = {}
        for item in self._of(StorageSampled):
            event = item.event
            assert isinstance(event, StorageSampled)
            if in_month(event) and _newer(item, samples.get(event.data.project_id)):
                samples[event.data.project_id] = item
        projects = []
        for project_id, item in self._latest(ProjectUpdated, "project_id").items():
            event = item.event
            assert isinstance(event, ProjectUpdated)
            sample = samples.get(project_id)
            state = ProjectState(project_id, event.data.team_id, event.data.name)
            if sample is not None:
                assert isinstance(sample.event, StorageSampled)
                state = ProjectState(
                    project_id,
                    event.data.team_id,
                    event.data.name,
                    sample.event.data.size_mb,
                    sample.event.data.experiment_count,
                    sample.event.user_id,
                )
            projects.append(state)
        teams = []
        for team_id, item in self._latest(TeamUpdated, "team_id").items():
            event = item.event
            assert isinstance(event, TeamUpdated)
            teams.append(TeamState(team_id, event.data.name, event.data.member_ids))
        data = ChargebackData(teams=teams, projects=projects, profiles=self._profiles())
        for item in self.events.values():
            event = item.event
            if not in_month(event):
                continue
            if isinstance(event, ApiUsageRecorded):
                usage = data.usage.setdefault(event.user_id, UsageMonth())
                if event.data.client == "ui":
                    usage.ui_calls += event.data.count
                    usage.ui_last = max(usage.ui_last or event.occurred_at, event.occurred_at)
                else:
                    usage.sdk_calls += event.data.count
                    usage.sdk_last = max(usage.sdk_last or event.occurred_at, event.occurred_at)
            elif isinstance(event, WorkspaceBuilt):
                usage = data.usage.setdefault(event.user_id, UsageMonth())
                usage.builds += 1
                usage.agent_builds += int(event.data.agent_managed)
            elif isinstance(event, ChatUsageRecorded) and event.data.purpose == "chat":
                usage = data.usage.setdefault(event.user_id, UsageMonth())
                usage.cost_micros += event.data.cost_micros or 0
        return data

"""`InMemoryQueue`: the same queue in a dict, on an injectable clock, for unit tests."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from services.publisher.domain import (
    HB_AGENT_RUNTIME,
    HB_AI_SEATS,
    AgentRuntime,
    BillingEvent,
    LateRuntime,
    Outcome,
    Projection,
    SeatState,
    agent_hour,
    agent_time_id,
    checked_runtime,
    heartbeat_bucket,
    heartbeat_id,
)
from services.publisher.storage.protocol import (
    MAX_ERROR_CHARS,
    STATUS_OF_KIND,
    AgentHourReport,
    Claimed,
    Health,
    QueueStatus,
    Status,
)


@dataclass
class _Row:
    event: BillingEvent
    status: Status = "pending"
    attempts: int = 0
    next_attempt_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    claimed_by: str | None = None
    claimed_until: datetime | None = None
    last_error: str | None = None
    finished_at: datetime | None = None


class InMemoryQueue:
    """The same queue in a dict, on an injectable clock, for unit tests of the sender."""

    def __init__(
        self,
        queue: str = "default",
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        deployment_id: str = "in-memory-deployment",
    ) -> None:
        self.queue = queue
        self.clock = clock
        self.rows: dict[str, _Row] = {}
        self.health = Health(deployment_id=deployment_id)
        self.seats: dict[str, SeatState] = {}
        self.ai_users: dict[str, datetime] = {}
        self.runtime: dict[str, AgentRuntime] = {}
        self.progress: dict[tuple[str, int], tuple[int, datetime]] = {}
        self.builds: dict[str, bool] = {}

    async def open(self) -> Health:
        """Nothing to create."""
        return self.health

    async def enqueue(self, events: Sequence[BillingEvent]) -> int:
        """Keep the first row per id."""
        added = 0
        for event in events:
            if event.id not in self.rows:
                self.rows[event.id] = _Row(event, next_attempt_at=self.clock())
                added += 1
        return added

    async def now(self) -> datetime:
        """The injected clock."""
        return self.clock()

    async def claim(
        self, *, due_by: datetime, limit: int, claimant: str, hold: timedelta
    ) -> list[Claimed]:
        """Same rule as the SQL: pending, due by the cutoff, earliest first."""
        now = self.clock()
        due = sorted(
            (
                r
                for r in self.rows.values()
                if r.status == "pending" and r.next_attempt_at <= due_by
            ),
            key=lambda r: r.next_attempt_at,
        )[:limit]
        out = []
        for row in due:
            row.claimed_by, row.claimed_until = claimant, now + hold
            row.next_attempt_at = now + hold
            row.attempts += 1
            e = row.event
            out.append(Claimed(e.id, e.event_type, e.data, e.created_at, row.attempts))
        out.sort(key=lambda c: (c.created_at, c.id))
        return out

    def _apply(self, outcomes: Sequence[Outcome], claimant: str) -> Counter[str]:
        now = self.clock()
        changed: Counter[str] = Counter()
        for o in outcomes:
            row = self.rows.get(o.id)
            status = STATUS_OF_KIND[o.kind]
            if row is None or row.status != "pending":
                continue
            if status == "pending" and row.claimed_by != claimant:
                continue
            row.status = status
            if status == "pending":
                row.next_attempt_at = now + o.delay
                row.finished_at = None
            else:
                row.finished_at = now
            if status != "published":
                row.last_error = o.message
            row.claimed_by = row.claimed_until = None
            changed[status] += 1
        return changed

    async def settle(self, outcomes: Sequence[Outcome], *, claimant: str) -> int:
        """Apply, reset the streak, and return the streak that ended."""
        changed = self._apply(outcomes, claimant)
        before = self.health.consecutive_failures
        now = self.clock()
        self.health = replace(
            self.health,
            consecutive_failures=0,
            failing_since=None,
            last_success_at=now,
            last_attempt_at=now,
            published_total=self.health.published_total + changed["published"],
            rejected_total=self.health.rejected_total + changed["rejected"],
        )
        return before

    async def fail(
        self, outcomes: Sequence[Outcome], *, claimant: str, cause: str, error: str
    ) -> int:
        """Apply the retries and extend the streak."""
        self._apply(outcomes, claimant)
        now = self.clock()
        self.health = replace(
            self.health,
            consecutive_failures=self.health.consecutive_failures + 1,
            failing_since=self.health.failing_since or now,
            last_error=error[:MAX_ERROR_CHARS],
            last_error_cause=cause,
            last_error_at=now,
            last_attempt_at=now,
        )
        return self.health.consecutive_failures

    async def discard(self, outcomes: Sequence[Outcome], *, claimant: str) -> None:
        """Apply without touching the streak."""
        changed = self._apply(outcomes, claimant)
        self.health = replace(
            self.health,
            published_total=self.health.published_total + changed["published"],
            rejected_total=self.health.rejected_total + changed["rejected"],
        )

    async def expire(self, max_age: timedelta) -> dict[str, int]:
        """Same rule as the SQL."""
        now = self.clock()
        counts: Counter[str] = Counter()
        for row in self.rows.values():
            held = row.claimed_until is not None and row.claimed_until >= now
            if row.status == "pending" and row.event.created_at < now - max_age and not held:
                row.status, row.finished_at = "expired", now
                row.claimed_by = row.claimed_until = None
                counts[row.event.event_type] += 1
        self.health = replace(
            self.health, expired_total=self.health.expired_total + sum(counts.values())
        )
        return dict(counts)

    async def purge(self, retention: timedelta) -> int:
        """Drop old final rows."""
        cutoff = self.clock() - retention
        old = [
            k
            for k, r in self.rows.items()
            if r.status != "pending" and r.finished_at is not None and r.finished_at < cutoff
        ]
        for k in old:
            del self.rows[k]
        return len(old)

    async def enqueue_heartbeat(self, moment: datetime) -> int | None:
        """Same count as the SQL, over the in-memory seat facts."""
        bucket = heartbeat_bucket(moment)
        if self._heartbeat_of(HB_AI_SEATS, bucket) is not None:
            return None
        count = 0
        for user in self.ai_users:
            seat = self.seats.get(user)
            if seat is None or (seat.licensed and not seat.suspended):
                count += 1
        await self.enqueue([BillingEvent(heartbeat_id(bucket), HB_AI_SEATS, count, bucket)])
        return count

    def _heartbeat_of(self, event_type: str, start: datetime) -> _Row | None:
        for row in self.rows.values():
            if row.event.event_type == event_type and row.event.created_at == start:
                return row
        return None

    async def record_progress(
        self, topic: str, partitions: int, caught_up: Sequence[int], at: datetime
    ) -> None:
        """Same rule as the SQL: a time never moves back."""
        for p in caught_up:
            _, before = self.progress.get((topic, p), (partitions, at))
            self.progress[(topic, p)] = (partitions, max(before, at))

    async def log_progress(self, topic: str) -> list[tuple[int, int, datetime]]:
        """The rows of `topic`."""
        return [(p, n, at) for (t, p), (n, at) in self.progress.items() if t == topic]

    async def agent_hours(self, since: datetime) -> list[datetime]:
        """Queued Agent Time heartbeats from `since`."""
        return [
            r.event.created_at
            for r in self.rows.values()
            if r.event.event_type == HB_AGENT_RUNTIME and r.event.created_at >= since
        ]

    def _counted(self, hour: datetime) -> int:
        return sum(r.runtime_ms for r in self.runtime.values() if r.hour == hour)

    async def enqueue_agent_hour(self, hour: datetime) -> int | None:
        """Same rule as the SQL."""
        hour = agent_hour(hour)
        if self._heartbeat_of(HB_AGENT_RUNTIME, hour) is not None:
            return None
        total = checked_runtime(hour, self._counted(hour))
        await self.enqueue([BillingEvent(agent_time_id(hour), HB_AGENT_RUNTIME, total, hour)])
        return total

    async def prune_agent_runtime(self, before: datetime) -> int:
        """Drop runtime of hours before `before`."""
        old = [k for k, r in self.runtime.items() if r.hour < before]
        for k in old:
            del self.runtime[k]
        return len(old)

    async def agent_time_report(self, since: datetime) -> list[AgentHourReport]:
        """Same join as the SQL."""
        hours = {r.hour for r in self.runtime.values() if r.hour >= since}
        hours |= set(await self.agent_hours(since))
        out = []
        for hour in sorted(hours):
            row = self._heartbeat_of(HB_AGENT_RUNTIME, hour)
            out.append(
                AgentHourReport(
                    hour=hour,
                    id=row.event.id if row else agent_time_id(hour),
                    status=row.status if row else None,
                    reported_ms=row.event.value if row else None,
                    counted_ms=self._counted(hour),
                )
            )
        return out

    async def status(self) -> QueueStatus:
        """Counts over the dict."""
        now = self.clock()
        pending = [r for r in self.rows.values() if r.status == "pending"]
        return QueueStatus(
            pending=len(pending),
            due=sum(1 for r in pending if r.next_attempt_at <= now),
            oldest_pending_created_at=min((r.event.created_at for r in pending), default=None),
            now=now,
            health=self.health,
        )

    def apply_projection(
        self, projection: Projection, *, runtime_since: datetime | None = None
    ) -> list[LateRuntime]:
        """What `write_projection` does, for unit tests of the heartbeats."""
        fresh = {i for i in projection.builds if i not in self.builds}
        self.builds.update({i: projection.builds[i][0] for i in fresh})
        self.rows.update(
            {
                b.id: _Row(b, next_attempt_at=self.clock())
                for b in projection.billing
                if b.id not in self.rows and (b.id in fresh or b.id not in projection.builds)
            }
        )
        for seat in projection.seats.values():
            current = self.seats.get(seat.user_id)
            if current is None or current.as_of <= seat.as_of:
                self.seats[seat.user_id] = seat
        for user, first in projection.ai_users.items():
            self.ai_users[user] = min(first, self.ai_users.get(user, first))
        late: dict[datetime, list[int]] = {}
        for event_id, runtime in projection.runtime.items():
            if event_id in self.runtime or (
                runtime_since is not None and runtime.hour < runtime_since
            ):
                continue
            self.runtime[event_id] = runtime
            if self._heartbeat_of(HB_AGENT_RUNTIME, runtime.hour) is not None:
                late.setdefault(runtime.hour, []).append(runtime.runtime_ms)
        return [LateRuntime(h, len(ms), sum(ms)) for h, ms in sorted(late.items())]

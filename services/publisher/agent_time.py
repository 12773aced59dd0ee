"""Agent Time: one `hb_agent_runtime_v1` per UTC hour, `{"runtime_ms": N}`, whoever queues it.

The consumer stores the `runtime_ms` of every chat usage event (once per event id) under the
UTC hour it occurred in. Every replica then checks, every `TOLLGATE_PUBLISHER_HEARTBEAT_CHECK`:

1. It notes which of its partitions it has read to their end, and when.
2. An hour is *closed* once `TOLLGATE_PUBLISHER_AGENT_TIME_LAG` (5 minutes) has passed since
   it ended, both by the clock and by the log: every partition of the topic was read to its
   end at a moment at least that long after the hour ended. A replica that lags, or one that
   died and whose partitions are not taken over yet, keeps the hour open.
3. Every closed hour of the window (`TOLLGATE_PUBLISHER_AGENT_TIME_WINDOW`, 7 days back from
   the current hour) without a heartbeat gets one: the sum of its runtime (0 for an idle
   hour), id `hb_agent_runtime_v1:<hour start>`, `created_at` the hour start. Hours missed
   while no replica ran are filled in the same way; older ones are not filled any more.

Sealing an hour is one transaction per hour (`ON CONFLICT DO NOTHING` and a unique index per
type and hour), so any number of replicas queue it once, and a restart never changes an hour
already queued. An hour whose sum cannot be sent (outside 0 to 2^53 - 1) is logged and
skipped, and the others go on; it is tried again at the next check. Runtime that arrives
after its hour was queued is late: it is counted in metrics and the Agent Time report but
never sent, as in Coder, where such runtime lands in a sealed bucket and is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from libs.service.consumer import Progress
from libs.service.db import DATABASE_UNAVAILABLE
from services.publisher.domain import (
    BadAgentHourError,
    LateRuntime,
    agent_time_id,
    log_watermark,
    plan_agent_hours,
    rfc3339,
)
from services.publisher.metrics import PublisherMetrics
from services.publisher.storage import BillingQueue

log = structlog.get_logger(__name__)


@dataclass
class AgentTimePass:
    """What one check did."""

    closed_until: datetime | None = None
    queued: dict[datetime, int] = field(default_factory=dict)
    skipped: list[datetime] = field(default_factory=list)


class AgentTimeHeartbeat:
    """Queues every closed hour of the window that has no Agent Time heartbeat yet."""

    def __init__(  # the knobs of one loop, all keyword-only
        self,
        queue: BillingQueue,
        metrics: PublisherMetrics,
        *,
        topic: str,
        progress: Callable[[], Progress] | None,
        lag: timedelta,
        window: timedelta,
        check_every: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.queue = queue
        self.metrics = metrics
        self.topic = topic
        self.progress = progress
        self.lag = lag
        self.window = window
        self.check_every = check_every
        self.clock = clock
        self._skipped_logged: set[datetime] = set()

    def window_start(self) -> datetime:
        """The oldest hour still reported; runtime before it is not kept."""
        return self.clock().astimezone(UTC).replace(minute=0, second=0, microsecond=0) - (
            self.window
        )

    async def tick(self) -> AgentTimePass:
        """Note this replica's progress, then queue every hour that closed."""
        now = self.clock()
        if self.progress is not None:
            mine = self.progress()
            if mine.partitions and mine.at_end:
                await self.queue.record_progress(self.topic, mine.partitions, mine.at_end, now)
        watermark = log_watermark(await self.queue.log_progress(self.topic))
        start = self.window_start()
        queued = await self.queue.agent_hours(start)
        plan = plan_agent_hours(
            now=now, watermark=watermark, lag=self.lag, window=self.window, queued=queued
        )
        done = AgentTimePass(closed_until=plan.closed_until)
        for hour in plan.due:
            try:
                runtime = await self.queue.enqueue_agent_hour(hour)
            except BadAgentHourError as exc:
                self._skip(done, hour, str(exc))
                continue
            except asyncio.CancelledError:
                raise
            except DATABASE_UNAVAILABLE:
                # Losing the database is not one bad hour: the pass ends, the next one retries.
                raise
            except Exception as exc:  # one hour's failure must not stop the later ones
                self._skip(done, hour, f"{type(exc).__name__}: {exc}")
                continue
            if runtime is not None:
                done.queued[hour] = runtime
                self.metrics.agent_hours.labels("queued").inc()
        latest = max([*queued, *done.queued], default=None)
        if latest is not None:
            self.metrics.agent_time_last_hour.set(latest.timestamp())
        if done.queued:
            hours = sorted(done.queued)
            log.info(
                "agent_time_hours_queued",
                hours=len(hours),
                first=rfc3339(hours[0]),
                last=rfc3339(hours[-1]),
                runtime_ms=sum(done.queued.values()),
            )
        await self.queue.prune_agent_runtime(start)
        return done

    def _skip(self, done: AgentTimePass, hour: datetime, reason: str) -> None:
        done.skipped.append(hour)
        self.metrics.agent_hours.labels("skipped").inc()
        # Each check tries the hour again; say so once per hour and process, not every time.
        if hour not in self._skipped_logged:
            self._skipped_logged.add(hour)
            log.warning(
                "agent_time_hour_skipped", id=agent_time_id(hour), hour=rfc3339(hour), error=reason
            )

    async def run_forever(self) -> None:
        """Check on a timer until cancelled; a failed check is retried at the next one."""
        while True:
            try:
                done = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("agent_time_check_failed", error=f"{type(exc).__name__}: {exc}")
                done = AgentTimePass()
            # Until the log is known to be read (a fresh start), look again within a second.
            pause = self.check_every.total_seconds()
            await asyncio.sleep(min(pause, 1.0) if done.closed_until is None else pause)


def report_late(metrics: PublisherMetrics, late: list[LateRuntime]) -> None:
    """Count and log runtime that arrived after its hour was reported."""
    for item in late:
        metrics.agent_time_late_events.inc(item.events)
        metrics.agent_time_late_ms.inc(item.runtime_ms)
        log.warning(
            "agent_time_runtime_late",
            id=agent_time_id(item.hour),
            hour=rfc3339(item.hour),
            events=item.events,
            runtime_ms=item.runtime_ms,
            reason="the hour was already reported; this runtime is not sent",
        )

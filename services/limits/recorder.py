"""Records due budget notifications, once, whatever the number of replicas, replays or restarts.

Every limits replica folds the whole log, so every replica finds the same notifications due
(`crossings.due`, from the limiter's decision). Each hands what it finds to this recorder,
which writes them to PostgreSQL in batches: a notification and its webhook deliveries in one
transaction, under a unique key (type, user, organisation, period, period start), with
`ON CONFLICT DO NOTHING`. The first replica to write wins; the others, and any replay, write
nothing. That is the whole exactly-once argument for recording:

- *At most once*: the unique key, checked by PostgreSQL inside the transaction that also
  writes the outbox rows, so a notification never has deliveries twice.
- *At least once*: a due notification stays in this replica's memory until a transaction
  that holds it commits (a failure is retried with backoff). A replica that dies first
  loses its memory, not the notification: whenever a replica has caught up with the log
  (at every start) it *sweeps*, evaluating every user with spend in the current period, and
  spend only grows within a period, so whatever was due is still due and found again.
  Another replica finds it too, on the user's next usage or its own sweep.

Evaluation waits until the replica has caught up: while it replays, its ledger may hold a
user's spend but not yet the group whose limit applies, and a half-read log must never
decide anything. A change of the configuration (a lower limit, another period, another
warning share) sweeps too: a user already past a new threshold is told at once, the same
way a check would now refuse them, rather than at their next message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Final

import structlog

from services.limits.crossings import KINDS, Crossing, CrossingKey, due
from services.limits.domain import PERIOD_INDEX, SPLIT, Ledger, Limiter
from services.limits.metrics import LimitsMetrics
from services.limits.storage import CrossingStore, LogSeen

log = structlog.get_logger(__name__)

#: Crossings written per transaction.
BATCH: Final = 500
#: Users evaluated between turns of the event loop during a sweep (checks go on meanwhile).
SWEEP_CHUNK: Final = 500
#: Backoff after a failed write: from this many seconds, doubling, up to `MAX_BACKOFF_S`.
FIRST_BACKOFF_S: Final = 0.5
MAX_BACKOFF_S: Final = 30.0
_KIND_ORDER: Final = {kind: i for i, kind in enumerate(KINDS)}


def _order(crossing: Crossing) -> tuple[str, str, str, int, int]:
    # One global order for every replica's transactions, so two of them inserting the same
    # keys never wait on each other in a cycle; a user's warning comes before their notice.
    _, user, org, period, start = crossing.key
    return (user, org, period, start, _KIND_ORDER[crossing.kind])


class CrossingRecorder:
    """Finds due notifications in the ledger and writes each one until it is recorded."""

    def __init__(
        self,
        limiter: Limiter,
        store: CrossingStore,
        *,
        metrics: LimitsMetrics,
        ready: Callable[[], bool],
        clock: Callable[[], float] = time.time,
        log: tuple[str, str] | None = None,
    ) -> None:
        self.limiter = limiter
        self.store = store
        self.metrics = metrics
        self.ready = ready
        self.clock = clock
        #: The log this replica reads (topic, epoch): recorded with each notification as how far
        #: it had read, so the notifier renders it from a directory at least that new.
        self.log = log
        #: Found due, not yet in a committed transaction.
        self.pending: dict[CrossingKey, Crossing] = {}
        #: Known to be recorded (by anyone), per (period, start): nothing to write for them.
        self.recorded: dict[tuple[str, int], set[CrossingKey]] = {}
        self.sweep_wanted = True
        self.sweeps = 0
        self._wake = asyncio.Event()
        metrics.crossings_pending.set_function(lambda: len(self.pending))

    # -- finding what is due -----------------------------------------------------------------

    def observe(self, spenders: Iterable[tuple[str, str | None]]) -> None:
        """Evaluate these (user, organisation) pairs now (their spend just grew), as a check of a
        chat in that organisation would; queue what is due and unknown."""
        if not self.ready():
            # A replaying replica decides nothing: the sweep at catch-up covers these users.
            return
        limiter = self.limiter
        now = self.clock()
        percent = limiter.config.warning_threshold_percent
        found = False
        for user_id, org_id in spenders:
            for crossing in due(limiter.decide(user_id, now, org_id=org_id), user_id, percent):
                key = crossing.key
                if key in self.pending or key in self._known(crossing):
                    continue
                self.pending[key] = crossing
                found = True
        if found:
            self._wake.set()

    def _known(self, crossing: Crossing) -> set[CrossingKey]:
        period = (crossing.period, crossing.key[4])
        known = self.recorded.get(period)
        if known is None:
            # A new period (or another kind of period): what was known of the old one is moot.
            self.recorded = {period: set()}
            known = self.recorded[period]
        return known

    def request_sweep(self) -> None:
        """Evaluate every user of the current period at the next chance (config changed)."""
        self.sweep_wanted = True
        self._wake.set()

    async def sweep(self) -> int:
        """Evaluate every user with spend in the current period; returns how many were."""
        limiter = self.limiter
        now = self.clock()
        index = PERIOD_INDEX[limiter.config.period]
        key = limiter.current_periods(now)[index].key
        ledger = limiter.ledger
        users = list(ledger.spend[index].get(key, {}))
        for start in range(0, len(users), SWEEP_CHUNK):
            if start:
                await asyncio.sleep(0)
            self.observe(
                pair
                for user_id in users[start : start + SWEEP_CHUNK]
                for pair in _scopes(ledger, index, key, user_id)
            )
        self.sweeps += 1
        log.info("limits_notifications_swept", users=len(users), due=len(self.pending))
        return len(users)

    # -- writing -----------------------------------------------------------------------------

    async def flush(self) -> int:
        """Write every pending crossing, a batch per transaction; returns how many were new.

        Raises when a write fails: what it held stays pending.
        """
        new = 0
        while self.pending:
            batch = sorted(self.pending.values(), key=_order)[:BATCH]
            recorded = await self.store.record(batch, seen=self._seen())
            for crossing in batch:
                self.pending.pop(crossing.key, None)
                self._known(crossing).add(crossing.key)
            for item in recorded:
                c = item.crossing
                self.metrics.crossings_recorded.labels(c.kind).inc()
                log.info(
                    "limits_notification_recorded",
                    type=c.kind,
                    user_id=c.user_id,
                    period=c.period,
                    period_start=c.facts()["period_start"],
                    spent_micros=c.spent_micros,
                    limit_micros=c.limit_micros,
                    source=c.source,
                    webhooks=item.webhooks,
                    notification_id=str(item.notification_id),
                )
            new += len(recorded)
        return new

    def _seen(self) -> LogSeen | None:
        # Read now, after the crossings were found: at least as far as what decided them.
        if self.log is None:
            return None
        topic, epoch = self.log
        return LogSeen(topic, epoch, dict(self.limiter.ledger.positions))

    async def run_forever(self) -> None:
        """Sweep once caught up (and after config changes); write what is due; retry failures."""
        failures = 0
        while True:
            if not self.ready():
                await asyncio.sleep(0.1)
                continue
            if failures:
                # The full pause, however many new crossings arrive meanwhile: an outage is
                # not hammered once per event.
                await asyncio.sleep(min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (failures - 1)))
            elif not (self.sweep_wanted or self.pending):
                await self._wake.wait()
            self._wake.clear()
            if self.sweep_wanted:
                self.sweep_wanted = False
                await self.sweep()
            try:
                await self.flush()
            except Exception as exc:
                self.metrics.crossing_write_failures.inc()
                failures += 1
                if failures == 1:
                    log.warning(
                        "limits_notifications_write_failed",
                        error=f"{type(exc).__name__}: {exc}",
                        pending=len(self.pending),
                        action="kept in memory and retried with backoff",
                    )
            else:
                if failures:
                    log.info("limits_notifications_write_recovered", failures=failures)
                failures = 0


def _scopes(ledger: Ledger, index: int, key: int, user_id: str) -> list[tuple[str, str | None]]:
    """The organisations the user's spend came from, as their usage events named them (None:
    spend that named none), so a sweep evaluates what those events did."""
    where = ledger.user_orgs.get(user_id)
    if where is None:
        return [(user_id, None)]
    if where != SPLIT:
        return [(user_id, where)]
    orgs = ledger.org_spend[index].get(key, {}).get(user_id, {})
    return [(user_id, None), *((user_id, org) for org in orgs if org)]

"""Spend limits as pure logic: UTC periods, which limit applies, and the ledger the log builds.

Every replica folds the whole log into a `Ledger` and answers checks from it through a
`Limiter`. Nothing here does I/O, so the rules can be read, tested and benchmarked alone:

- Spend is kept per user in buckets keyed by the start of the UTC day, Monday week and
  calendar month an event *occurred* in. A late event lands in its own period, midnight
  needs no job (the next check simply reads the next bucket), and buckets older than the
  current periods are dropped because no check can read them again.
- Duplicates are recognised by event identity (type, user and id: `Envelope.identity`) per
  partition within a window of *log* time: the newest record timestamp the partition has
  shown. The consumer loop hands over an event only on its home partition (see
  `libs.service.consumer`), so every copy of one identity meets the ledger on one partition
  whatever partitioner its producer used. Decisions depend only on each partition's own
  order, which is why replaying the log from any snapshot gives exactly the same totals.
- Totals saturate at `MAX_TOTAL` (2^53 - 1 micro-dollars), like every total in Tollgate.
- A group's members and its organisation are those of its newest `directory.group.v1` (by
  `occurred_at`, then log position), whatever order the partitions are read in.
- Organisations (as in Coder's `ResolveUsageLimitStatus`): a check may name an organisation.
  Then the group tier considers only the user's groups in it (and groups that belong to no
  organisation), and when a group of that organisation sets the limit, only the spend in that
  organisation counts. User overrides, the default, groups without an organisation and
  checks without an organisation count the spend across all of them. Spend whose event
  carries no organisation counts in every one (see `Ledger.spent_in_org`).
- Most users spend in one organisation, so the ledger keeps one organisation per user beside
  its totals and splits a user's spend by organisation only once they spend in a second one.
- The snapshot format (writing a ledger, reading one back, the format versions) lives in
  `services.limits.snapshot`.
"""

from __future__ import annotations

import hashlib
import heapq
import sys
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from operator import itemgetter
from typing import Final, Literal, NamedTuple

from libs.events.bounds import MAX_TOTAL
from libs.events.models import ChatUsageRecorded, Event, GroupUpdated
from libs.events.vocabulary import LimitSource, Period

Outcome = Literal["spend", "unpriced", "free", "title", "duplicate", "group", "stale", "ignored"]

DAY: Final = 0
WEEK: Final = 1
MONTH: Final = 2
PERIOD_INDEX: Final[Mapping[Period, int]] = {"day": DAY, "week": WEEK, "month": MONTH}

_ORDINAL_1970: Final = date(1970, 1, 1).toordinal()
# Below any real period key: nothing has been pruned yet.
_NO_FLOOR: Final = -(2**62)
_HOUR_MS: Final = 3_600_000

#: How long a partition remembers an event identity, in log time, unless configured.
DEFAULT_DEDUP_WINDOW_MS: Final = 48 * _HOUR_MS
#: `Ledger.user_orgs` value of a user whose spend is split by organisation in `org_spend`.
SPLIT: Final = ""
#: Users `Ledger.prune` looks at per call after a month went (about a millisecond's worth).
SWEEP_CHUNK: Final = 1024


# -- periods ---------------------------------------------------------------------------------


def day_number(at: datetime) -> int:
    """Days since 1970-01-01 of `at`'s UTC date (exact: no floating point)."""
    if at.utcoffset():
        at = at.astimezone(UTC)
    return at.toordinal() - _ORDINAL_1970


def period_key(period: Period, at: datetime) -> int:
    """The key of the period `at` falls in: its first day number, or months since 1970-01."""
    if at.utcoffset():
        at = at.astimezone(UTC)
    return _key(PERIOD_INDEX[period], at)


def _key(index: int, at: datetime) -> int:
    if index == MONTH:
        return (at.year - 1970) * 12 + at.month - 1
    day = at.toordinal() - _ORDINAL_1970
    # 1970-01-01 was a Thursday: day + 3 counts from the Monday before it.
    return day if index == DAY else day - (day + 3) % 7


def period_start(period: Period, key: int) -> datetime:
    """Midnight UTC that opens the period with this key."""
    if period == "month":
        return datetime(1970 + key // 12, key % 12 + 1, 1, tzinfo=UTC)
    return datetime.fromordinal(key + _ORDINAL_1970).replace(tzinfo=UTC)


def next_key(period: Period, key: int) -> int:
    """The key of the period right after `key`."""
    if period == "month":
        return key + 1
    return key + (7 if period == "week" else 1)


def period_bounds(period: Period, at: datetime) -> tuple[datetime, datetime]:
    """Start of `at`'s period and start of the next one (when a limit resets)."""
    key = period_key(period, at)
    return period_start(period, key), period_start(period, next_key(period, key))


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class CurrentPeriod:
    """One period as checks report it, with its times already rendered for the hot path."""

    period: Period
    key: int
    start: datetime
    end: datetime
    start_iso: str
    end_iso: str

    @classmethod
    def of(cls, period: Period, at: datetime) -> CurrentPeriod:
        """The period of this kind that contains `at`."""
        key = period_key(period, at)
        start = period_start(period, key)
        end = period_start(period, next_key(period, key))
        return cls(period, key, start, end, _iso(start), _iso(end))


class Calendar:
    """The current day, week and month, recomputed only when the clock leaves today."""

    __slots__ = ("_current", "_from", "_until")

    def __init__(self) -> None:
        self._from = 0.0
        self._until = 0.0
        self._current: tuple[CurrentPeriod, CurrentPeriod, CurrentPeriod] | None = None

    def at(self, now_s: float) -> tuple[CurrentPeriod, CurrentPeriod, CurrentPeriod]:
        """Current periods at Unix time `now_s`, indexed by `DAY`, `WEEK`, `MONTH`."""
        current = self._current
        if current is None or not self._from <= now_s < self._until:
            now = datetime.fromtimestamp(now_s, UTC)
            current = (
                CurrentPeriod.of("day", now),
                CurrentPeriod.of("week", now),
                CurrentPeriod.of("month", now),
            )
            # Every kind of period turns over only at a midnight, so today bounds them all.
            self._from = current[DAY].start.timestamp()
            self._until = current[DAY].end.timestamp()
            self._current = current
        return current


# -- configuration and priority --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """What admins set: the switch, the period, the default, the overrides and the warning."""

    enabled: bool = False
    period: Period = "month"
    default_limit_micros: int | None = None
    user_overrides: Mapping[str, int] = field(default_factory=dict)
    group_overrides: Mapping[str, int] = field(default_factory=dict)
    #: The share of the limit (1 to 99) at which a budget warning is due; None: no warnings.
    warning_threshold_percent: int | None = 85


class Resolution(NamedTuple):
    """Which limit applies: its value, its tier, the group (group tier) and its organisation.

    `org_id` is the organisation the limit is scoped to, and so the organisation whose spend
    counts against it: set only when a check named an organisation and a group of that
    organisation set the limit; None when the limit holds across organisations.
    """

    limit_micros: int | None
    source: LimitSource
    group_id: str | None
    org_id: str | None


_NO_LIMIT: Final = Resolution(None, "none", None, None)
_NO_ORGS: Final[Mapping[str, str]] = {}


def resolve_limit(
    config: LimitsConfig,
    user_id: str,
    groups: Iterable[str] | None,
    *,
    org_id: str | None = None,
    group_orgs: Mapping[str, str] = _NO_ORGS,
) -> Resolution:
    """The limit that applies to a user, where it comes from, and the scope of its spend.

    User override first, then the lowest limit among the user's groups (ties go to the
    smallest group id, so every replica names the same one), then the default, then none.
    With `org_id`, the group tier considers only the groups of that organisation (by
    `group_orgs`) and groups of none; without it, every group (Coder's rules).
    """
    if not config.enabled:
        return _NO_LIMIT
    limit = config.user_overrides.get(user_id)
    if limit is not None:
        return Resolution(limit, "user", None, None)
    if groups and config.group_overrides:
        best: int | None = None
        best_group: str | None = None
        overrides = config.group_overrides
        for group in groups:
            value = overrides.get(group)
            if value is None:
                continue
            if org_id is not None and group_orgs.get(group, org_id) != org_id:
                continue
            if (
                best is None
                or value < best
                or (value == best and best_group is not None and group < best_group)
            ):
                best, best_group = value, group
        if best is not None:
            assert best_group is not None
            scoped = org_id if org_id is not None and best_group in group_orgs else None
            return Resolution(best, "group", best_group, scoped)
    if config.default_limit_micros is not None:
        return Resolution(config.default_limit_micros, "default", None, None)
    return _NO_LIMIT


class Decision(NamedTuple):
    """The answer to one check (a tuple: cheap to build on the hot path).

    `org_id` names the organisation whose limit applied and whose spend `spent_micros` is
    (a group of the organisation the check named); None when the limit and the spend are
    counted across organisations (a user override, the default, a group of no
    organisation, or a check that named none).
    """

    allowed: bool
    limited: bool
    limit_micros: int | None
    spent_micros: int
    remaining_micros: int | None
    current: CurrentPeriod
    source: LimitSource
    group_id: str | None
    org_id: str | None = None


# -- deduplication ---------------------------------------------------------------------------


def id_digest(identity: str) -> int:
    """A stable 60-bit digest of an event identity (Python's `hash` changes between processes)."""
    digest = hashlib.blake2b(identity.encode(), digest_size=8).digest()
    # 60 bits keep each stored int in CPython's smallest two-digit form.
    return int.from_bytes(digest, "little") >> 4


class RecentIds:
    """Ids one partition has shown within `window_ms` of its log time, in hourly buckets.

    The log time is the newest record timestamp seen on the partition. An id is
    remembered in the bucket of the log time at which it arrived, and buckets fall out
    once the log time moves `window_ms` past them, so a resend is recognised for at least
    `window_ms` of log time after the first copy. Eviction happens as the watermark moves,
    never on a timer, so the same records in the same order always give the same answers.
    Only the watermark's hour takes new ids; earlier hours are closed and kept compact.

    A bucket is a dict of digests (to None) rather than a set: a dict holding nothing but ints
    is left out of the cyclic garbage collector's walks, where every full collection would
    visit each id of a set; with a million ids that paused the event loop for about 100 ms.
    """

    __slots__ = ("buckets", "open", "watermark_ms", "window_hours")

    def __init__(self, window_ms: int) -> None:
        self.window_hours = max(1, -(-window_ms // _HOUR_MS))
        self.watermark_ms = 0
        self.buckets: dict[int, dict[int, None]] = {}
        # The bucket of the watermark's hour, created with its first id.
        self.open: dict[int, None] | None = None

    def add(self, identity: str, log_ms: int) -> bool:
        """Remember `identity`; False when it was already seen within the window."""
        if log_ms > self.watermark_ms:
            self._advance(log_ms)
        digest = id_digest(identity)
        for bucket in self.buckets.values():
            if digest in bucket:
                return False
        open_bucket = self.open
        if open_bucket is None:
            open_bucket = self.open = {}
            self.buckets[self.watermark_ms // _HOUR_MS] = open_bucket
        open_bucket[digest] = None
        return True

    def _advance(self, log_ms: int) -> None:
        old_hour = self.watermark_ms // _HOUR_MS
        self.watermark_ms = log_ms
        if log_ms // _HOUR_MS != old_hour:
            if self.open is not None:
                self.buckets[old_hour] = _compact(self.open)
                self.open = None
            self._evict()

    def _evict(self) -> None:
        oldest = self.watermark_ms // _HOUR_MS - self.window_hours
        for hour in [h for h in self.buckets if h < oldest]:
            del self.buckets[hour]

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets.values())

    def restore(self, watermark_ms: int, buckets: Mapping[int, Iterable[int]]) -> None:
        """Take over a snapshot's watermark and hours of id digests; a shorter window than the
        snapshot's evicts at once."""
        self.watermark_ms = watermark_ms
        self.open = None
        self.buckets = {}
        open_hour = watermark_ms // _HOUR_MS
        for hour, ids in buckets.items():
            self.buckets[hour] = dict.fromkeys(ids)
            if hour == open_hour:
                self.open = self.buckets[hour]
        self._evict()


def _compact(ids: dict[int, None]) -> dict[int, None]:
    # A dict grown one id at a time can be mostly empty slots; a copy is sized to fit.
    fitted = dict.fromkeys(ids)
    return fitted if sys.getsizeof(fitted) < sys.getsizeof(ids) else ids


# -- the ledger ------------------------------------------------------------------------------

GroupOrder = tuple[int, int, int]


class Ledger:
    """Everything limits keep from the log: spend buckets, groups, models used, ids seen.

    `positions` (the next offset per partition) always matches the events folded in, so a
    snapshot of the ledger is a consistent point to resume the log from.

    Spend by organisation: `spend` holds every user's totals across organisations. Beside
    it, `user_orgs` says where a user's retained spend was made: no entry when all of it
    carried no organisation, an organisation's id when all of it was made there (most users:
    one dictionary entry per user, whatever the number of periods), or `SPLIT`, when
    `org_spend` holds the user's spend per organisation for each bucket in which they spent
    in one (what is left of the total carried none).
    """

    __slots__ = (
        "_to_sweep",
        "applied",
        "dedup_window_ms",
        "floors",
        "group_orgs",
        "groups",
        "models",
        "org_spend",
        "positions",
        "recent",
        "spend",
        "user_groups",
        "user_orgs",
    )

    def __init__(self, *, dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS) -> None:
        self.dedup_window_ms = dedup_window_ms
        # spend[DAY|WEEK|MONTH][period key][user id] -> micro-dollars
        self.spend: tuple[dict[int, dict[str, int]], ...] = ({}, {}, {})
        # org_spend[DAY|WEEK|MONTH][period key][user id][org id] -> micro-dollars (SPLIT users)
        self.org_spend: tuple[dict[int, dict[str, dict[str, int]]], ...] = ({}, {}, {})
        self.user_orgs: dict[str, str] = {}
        # Users still to look at after a month went (see `prune`).
        self._to_sweep: list[str] = []
        self.floors = [_NO_FLOOR, _NO_FLOOR, _NO_FLOOR]
        self.groups: dict[str, tuple[GroupOrder, frozenset[str]]] = {}
        # group id -> its organisation (groups of none have no entry)
        self.group_orgs: dict[str, str] = {}
        self.user_groups: dict[str, tuple[str, ...]] = {}
        # model -> occurred_at ms of its newest chat usage
        self.models: dict[str, int] = {}
        self.recent: dict[int, RecentIds] = {}
        self.positions: dict[int, int] = {}
        self.applied = 0

    # -- folding events in -------------------------------------------------------------------

    def apply(self, event: Event, *, partition: int, offset: int, log_ms: int) -> Outcome:
        """Fold one event in; the outcome says what it did (for metrics and tests)."""
        if isinstance(event, ChatUsageRecorded):
            return self._usage(event, partition, log_ms)
        if isinstance(event, GroupUpdated):
            return self._group(event, partition, offset)
        return "ignored"

    def _usage(self, event: ChatUsageRecorded, partition: int, log_ms: int) -> Outcome:
        data = event.data
        return self.count_usage(
            identity=event.identity,
            user_id=event.user_id,
            model=data.model,
            cost_micros=data.cost_micros,
            occurred_at=event.occurred_at,
            partition=partition,
            log_ms=log_ms,
            title=data.purpose == "title",
            org_id=event.org_id,
        )

    def count_usage(
        self,
        *,
        identity: str,
        user_id: str,
        model: str,
        cost_micros: int | None,
        occurred_at: datetime,
        partition: int,
        log_ms: int,
        title: bool = False,
        org_id: str | None = None,
    ) -> Outcome:
        """Count one chat message unless its identity was seen; title generation never counts.

        A title-generation event is remembered all the same: it is the first copy of its
        identity, and a later copy saying `purpose: chat` is a duplicate everywhere.
        """
        occurred_ms = int(occurred_at.timestamp() * 1000)
        recent = self.recent.get(partition)
        if recent is None:
            recent = self.recent[partition] = RecentIds(self.dedup_window_ms)
        # A producer without timestamps (-1) still advances the window, by event time.
        if not recent.add(identity, log_ms if log_ms > 0 else occurred_ms):
            return "duplicate"
        if title:
            return "title"
        self.applied += 1
        if self.models.get(model, -1) < occurred_ms:
            self.models[model] = occurred_ms
        if cost_micros is None:
            return "unpriced"
        if cost_micros == 0:
            return "free"
        self.add_spend(user_id, cost_micros, occurred_at, org_id)
        return "spend"

    def add_spend(
        self, user_id: str, cost_micros: int, occurred_at: datetime, org_id: str | None = None
    ) -> None:
        """Add spend to the day, week and month `occurred_at` falls in (past ones excepted)."""
        if occurred_at.utcoffset():
            occurred_at = occurred_at.astimezone(UTC)
        day = occurred_at.toordinal() - _ORDINAL_1970
        keys = (day, day - (day + 3) % 7, (occurred_at.year - 1970) * 12 + occurred_at.month - 1)
        user_orgs = self.user_orgs
        where = user_orgs.get(user_id)
        if where != org_id:
            where = self._move(user_id, where, org_id)
        split = where == SPLIT and org_id is not None
        floors = self.floors
        for index in (DAY, WEEK, MONTH):
            key = keys[index]
            if key < floors[index]:
                # That period is over: no check can read it again.
                continue
            buckets = self.spend[index]
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = {}
            total = bucket.get(user_id, 0) + cost_micros
            bucket[user_id] = min(MAX_TOTAL, total)
            if split:
                assert org_id is not None
                org_buckets = self.org_spend[index]
                org_bucket = org_buckets.get(key)
                if org_bucket is None:
                    org_bucket = org_buckets[key] = {}
                parts = org_bucket.get(user_id)
                if parts is None:
                    parts = org_bucket[user_id] = {}
                parts[org_id] = min(MAX_TOTAL, parts.get(org_id, 0) + cost_micros)

    def _move(self, user_id: str, where: str | None, org_id: str | None) -> str | None:
        """Where `user_id`'s spend is once spend in `org_id` joins it (`where` until now)."""
        if where == SPLIT:
            return SPLIT
        if where is None:
            if not self._has_spend(user_id):
                # Nothing retained to split: all of it will be in `org_id` (not None here).
                assert org_id is not None
                self.user_orgs[user_id] = org_id
                return org_id
        else:
            # Everything retained so far was spent in `where`: that is its split.
            for index in (DAY, WEEK, MONTH):
                org_buckets = self.org_spend[index]
                for key, bucket in self.spend[index].items():
                    total = bucket.get(user_id)
                    if total:
                        org_bucket = org_buckets.get(key)
                        if org_bucket is None:
                            org_bucket = org_buckets[key] = {}
                        org_bucket[user_id] = {where: total}
        self.user_orgs[user_id] = SPLIT
        return SPLIT

    def _has_spend(self, user_id: str) -> bool:
        return any(user_id in bucket for kind in self.spend for bucket in kind.values())

    def _group(self, event: GroupUpdated, partition: int, offset: int) -> Outcome:
        data = event.data
        order: GroupOrder = (int(event.occurred_at.timestamp() * 1000), partition, offset)
        if not self.set_group(data.group_id, data.member_ids, order, org_id=event.org_id):
            return "stale"
        self.applied += 1
        return "group"

    def set_group(
        self,
        group_id: str,
        member_ids: Iterable[str],
        order: GroupOrder = (0, 0, 0),
        *,
        org_id: str | None = None,
    ) -> bool:
        """Make `member_ids` the group's members (and `org_id` its organisation) unless a newer
        list (by `order`) is in force."""
        known = self.groups.get(group_id)
        if known is not None and known[0] > order:
            return False
        old = known[1] if known is not None else frozenset()
        new = frozenset(member_ids)
        self.groups[group_id] = (order, new)
        if org_id is None:
            self.group_orgs.pop(group_id, None)
        else:
            self.group_orgs[group_id] = org_id
        self._set_memberships(group_id, old, new)
        return True

    def _set_memberships(self, group_id: str, old: frozenset[str], new: frozenset[str]) -> None:
        user_groups = self.user_groups
        for user in old - new:
            remaining = tuple(g for g in user_groups.get(user, ()) if g != group_id)
            if remaining:
                user_groups[user] = remaining
            else:
                user_groups.pop(user, None)
        for user in new - old:
            user_groups[user] = (*user_groups.get(user, ()), group_id)

    def prune(
        self,
        current: tuple[CurrentPeriod, CurrentPeriod, CurrentPeriod],
        *,
        sweep: int = SWEEP_CHUNK,
    ) -> int:
        """Drop buckets of periods before the current ones; returns how many went.

        When a month goes, the users left with no spend at all are forgotten in `user_orgs`
        too, `sweep` users per call: the walk over every user is spread over the calls that
        follow (one per batch of the log), so no check waits for all of it at once.
        """
        dropped = 0
        months_dropped = False
        for index in (DAY, WEEK, MONTH):
            floor = current[index].key
            self.floors[index] = max(self.floors[index], floor)
            buckets = self.spend[index]
            for key in [k for k in buckets if k < self.floors[index]]:
                del buckets[key]
                dropped += 1
                months_dropped |= index == MONTH
            org_buckets = self.org_spend[index]
            for key in [k for k in org_buckets if k < self.floors[index]]:
                del org_buckets[key]
        if months_dropped and self.user_orgs:
            self._to_sweep = list(self.user_orgs)
        if self._to_sweep:
            self._sweep_idle_users(sweep)
        return dropped

    def _sweep_idle_users(self, count: int) -> None:
        # A user is forgotten only while they have no retained spend, which is exactly when
        # having no entry says the same as having one.
        to_sweep, user_orgs = self._to_sweep, self.user_orgs
        for _ in range(min(count, len(to_sweep))):
            user = to_sweep.pop()
            if user in user_orgs and not self._has_spend(user):
                del user_orgs[user]

    # -- reading ---------------------------------------------------------------------------

    def spent(self, index: int, key: int, user_id: str) -> int:
        """A user's spend in one period, across organisations."""
        bucket = self.spend[index].get(key)
        return bucket.get(user_id, 0) if bucket is not None else 0

    def spent_in_org(self, index: int, key: int, user_id: str, org_id: str) -> int:
        """A user's spend in one period that counts for `org_id`'s group limits.

        That is the spend made in `org_id` plus the spend that carried no organisation (an
        emitter that names none, and spend recorded before organisations were kept): spend
        that names no organisation counts in every one, so a group limit is never escaped
        by leaving the organisation out.
        """
        bucket = self.spend[index].get(key)
        total = bucket.get(user_id, 0) if bucket is not None else 0
        if not total:
            return 0
        where = self.user_orgs.get(user_id)
        if where is None or where == org_id:
            return total
        if where != SPLIT:
            return 0
        org_bucket = self.org_spend[index].get(key)
        parts = org_bucket.get(user_id) if org_bucket is not None else None
        if parts is None:
            return total
        without_org = max(0, total - sum(parts.values()))
        return min(MAX_TOTAL, parts.get(org_id, 0) + without_org)

    def totals(self, index: int, key: int) -> dict[str, int]:
        """Every user's spend in one period (a copy)."""
        return dict(self.spend[index].get(key, {}))

    def models_used(self) -> list[str]:
        """Every model chat usage named (title generation aside), by name."""
        return sorted(self.models)

    def dedup_ids(self) -> int:
        """How many event ids the dedup window holds."""
        return sum(len(r) for r in self.recent.values())


# -- answering checks ------------------------------------------------------------------------


class Limiter:
    """Answers checks from a ledger and the configuration in force, in a few microseconds."""

    __slots__ = ("calendar", "config", "ledger")

    def __init__(self, ledger: Ledger | None = None, config: LimitsConfig | None = None) -> None:
        self.ledger = ledger if ledger is not None else Ledger()
        self.config = config if config is not None else LimitsConfig()
        self.calendar = Calendar()

    def decide(self, user_id: str, now_s: float, org_id: str | None = None) -> Decision:
        """Whether `user_id` may send a chat message at Unix time `now_s`, and why.

        The one place that resolves which limit applies and which spend counts against it:
        with `org_id` (the organisation the chat belongs to) the group tier is that
        organisation's, and its spend only is counted when one of its groups sets the limit.
        """
        config = self.config
        ledger = self.ledger
        index = PERIOD_INDEX[config.period]
        current = self.calendar.at(now_s)[index]
        bucket = ledger.spend[index].get(current.key)
        spent = bucket.get(user_id, 0) if bucket is not None else 0
        limit, source, group_id, scope = resolve_limit(
            config,
            user_id,
            ledger.user_groups.get(user_id),
            org_id=org_id,
            group_orgs=ledger.group_orgs,
        )
        if limit is None:
            return Decision(
                allowed=True,
                limited=False,
                limit_micros=None,
                spent_micros=spent,
                remaining_micros=None,
                current=current,
                source="none",
                group_id=None,
                org_id=None,
            )
        if scope is not None:
            spent = ledger.spent_in_org(index, current.key, user_id, scope)
        return Decision(
            allowed=spent < limit,
            limited=True,
            limit_micros=limit,
            spent_micros=spent,
            remaining_micros=max(0, limit - spent),
            current=current,
            source=source,
            group_id=group_id,
            org_id=scope,
        )

    def current_periods(self, now_s: float) -> tuple[CurrentPeriod, CurrentPeriod, CurrentPeriod]:
        """The current day, week and month."""
        return self.calendar.at(now_s)

    def users_tracked(self, now_s: float) -> int:
        """Users with spend in the configured period."""
        index = PERIOD_INDEX[self.config.period]
        return len(self.ledger.spend[index].get(self.calendar.at(now_s)[index].key, ()))

    def top_users(self, count: int, now_s: float) -> list[tuple[str, int]]:
        """The `count` highest spenders of the configured period, highest first."""
        index = PERIOD_INDEX[self.config.period]
        bucket = self.ledger.spend[index].get(self.calendar.at(now_s)[index].key, {})
        return heapq.nlargest(count, bucket.items(), key=itemgetter(1))


# -- models without a price ------------------------------------------------------------------


def unpriced_models(used: Iterable[str], priced: Container[str]) -> list[str]:
    """Models chat usage named that have no price now, by name.

    A model is priced when the price table gives it an input or an output price (as Coder's
    `CountEnabledModelsWithoutPricing` reads a model's cost configuration): the moment an
    admin prices it, it leaves this list, whatever its earlier usage cost.
    """
    return sorted(model for model in used if model not in priced)

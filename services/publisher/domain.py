"""What the publisher decides, without any I/O: billing ids, heartbeat buckets, backoff, outcomes.

Billing events are the only thing that ever leaves a deployment, so their shape is fixed
here once: `{"id", "event_type", "event_data", "created_at"}` with `event_data` exactly
`{"count": N}` (`{"runtime_ms": N}` for Agent Time). Nothing in them comes from a user, a
workspace or a build except a number and a time; the id of a build's billing event is a
one-way UUIDv5 of the source event's identity (type, user and id), so a replay of the log
makes the very same id and the billing server deduplicates it. Heartbeat ids name their
bucket's start the way Coder writes them (`hb_ai_seats_v1:2026-11-27_08:00:00`), so every
replica makes the same id.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from libs.events.models import MAX_INT, ChatUsageRecorded, Envelope, UserUpdated, WorkspaceBuilt

DC_MANAGED_AGENTS: Final = "dc_managed_agents_v1"
HB_AI_SEATS: Final = "hb_ai_seats_v1"
HB_AGENT_RUNTIME: Final = "hb_agent_runtime_v1"
BILLING_EVENT_TYPES: Final = (DC_MANAGED_AGENTS, HB_AI_SEATS, HB_AGENT_RUNTIME)
#: Heartbeats: one event per bucket, whose `created_at` is the bucket start.
HEARTBEAT_TYPES: Final = (HB_AI_SEATS, HB_AGENT_RUNTIME)

#: The billing server's ingest route, appended to `BILLING_URL`.
INGEST_PATH: Final = "/api/v1/events/ingest"
#: The billing server takes at most this many events per request.
MAX_BATCH: Final = 100
#: Heartbeats are counted in 4-hour buckets aligned to UTC midnight (00, 04, 08, …).
HEARTBEAT_BUCKET: Final = timedelta(hours=4)
#: Agent Time is reported per UTC hour.
AGENT_HOUR: Final = timedelta(hours=1)
#: How a heartbeat id writes its bucket start: Go's `2006-01-02_15:04:05`, in UTC.
HEARTBEAT_ID_TIME: Final = "%Y-%m-%d_%H:%M:%S"

# Fixed forever: changing it (or what `build_billing_id` hashes) would give every
# already-billed build a new id.
BUILD_ID_NAMESPACE: Final = uuid.UUID("5d0f4b8e-2c1a-5b7e-9a43-6f1d2e8c7b90")

#: Why a whole request failed; the label values of `tollgate_publisher_send_errors_total`.
SendCause = Literal["connect", "timeout", "transport", "http_5xx", "http_4xx", "bad_response"]
SEND_CAUSES: Final[tuple[SendCause, ...]] = get_args(SendCause)


def first_delay(interval: timedelta, configured: timedelta | None, rng: random.Random) -> timedelta:
    """When the first cycle runs: `configured`, or a random 5/17 to 17/17 of the interval.

    With the default 17-minute interval that is the reference behaviour (5 to 17 minutes);
    replicas that start together spread out instead of all sending at once.
    """
    if configured is not None:
        return configured
    seconds = interval.total_seconds()
    return timedelta(seconds=rng.uniform(seconds * 5 / 17, seconds))


def backoff_delay(
    attempts: int, *, base: timedelta, cap: timedelta, rng: random.Random
) -> timedelta:
    """Exponential backoff with equal jitter after the `attempts`-th failed send (1, 2, …)."""
    exponent = min(max(attempts, 1) - 1, 32)
    ceiling = min(cap.total_seconds(), base.total_seconds() * 2**exponent)
    return timedelta(seconds=rng.uniform(ceiling / 2, ceiling))


# -- billing events ------------------------------------------------------------------------


class CountData(BaseModel):
    """The `event_data` of builds and seats: a count and nothing else."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    count: int = Field(ge=0, le=MAX_INT)


class RuntimeData(BaseModel):
    """The `event_data` of Agent Time: milliseconds and nothing else."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    runtime_ms: int = Field(ge=0, le=MAX_INT)


#: The one shape of `event_data` each billing event type may have.
EVENT_DATA: Final[dict[str, type[CountData | RuntimeData]]] = {
    DC_MANAGED_AGENTS: CountData,
    HB_AI_SEATS: CountData,
    HB_AGENT_RUNTIME: RuntimeData,
}


def event_data(event_type: str, value: int) -> dict[str, int]:
    """`{"count": value}`, or `{"runtime_ms": value}` for Agent Time."""
    return {"runtime_ms": value} if event_type == HB_AGENT_RUNTIME else {"count": value}


@dataclass(frozen=True, slots=True)
class BillingEvent:
    """One row of the billing queue, as it will be sent: a type, one number and a time."""

    id: str
    event_type: str
    value: int
    created_at: datetime

    @property
    def data(self) -> dict[str, int]:
        """The `event_data` this event is sent with."""
        return event_data(self.event_type, self.value)

    def wire(self) -> dict[str, object]:
        """The event exactly as the billing server receives it."""
        return wire_event(self.id, self.event_type, self.data, self.created_at)


class NotPublishableError(ValueError):
    """A queued row that must not leave the deployment (an unknown type or extra data)."""


def wire_event(
    event_id: str, event_type: str, data: object, created_at: datetime
) -> dict[str, object]:
    """The wire shape, refusing anything but a known type with exactly its one number."""
    model = EVENT_DATA.get(event_type)
    if model is None:
        raise NotPublishableError(f"unknown billing event type {event_type!r}")
    try:
        checked = model.model_validate(data)
    except ValueError as exc:
        shape = "{'runtime_ms': N}" if model is RuntimeData else "{'count': N}"
        raise NotPublishableError(f"event_data must be exactly {shape}: {exc}") from exc
    return {
        "id": event_id,
        "event_type": event_type,
        "event_data": checked.model_dump(),
        "created_at": rfc3339(created_at),
    }


def rfc3339(moment: datetime) -> str:
    """UTC, `Z`, microseconds only when there are some: `2026-11-02T08:00:00Z`."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += f".{utc.microsecond:06d}"
    return text + "Z"


def build_billing_id(identity: str) -> str:
    """A build's billing id from its event identity (`Envelope.identity`: type, user, id).

    The same for every copy and replay of the event, so the billing server deduplicates it;
    the same emitter id sent for two users names two builds and gets two billing ids.
    """
    return str(uuid.uuid5(BUILD_ID_NAMESPACE, f"{DC_MANAGED_AGENTS}:{identity}"))


def heartbeat_bucket(moment: datetime) -> datetime:
    """Start of the 4-hour UTC bucket holding `moment`."""
    utc = moment.astimezone(UTC)
    return utc.replace(hour=utc.hour - utc.hour % 4, minute=0, second=0, microsecond=0)


def heartbeat_time(start: datetime) -> str:
    """A bucket start as heartbeat ids write it: `2026-11-27_08:00:00` (UTC)."""
    return start.astimezone(UTC).strftime(HEARTBEAT_ID_TIME)


def heartbeat_id(bucket: datetime) -> str:
    """`hb_ai_seats_v1:2026-11-02_08:00:00`: one id per bucket, whichever replica makes it."""
    return f"{HB_AI_SEATS}:{heartbeat_time(heartbeat_bucket(bucket))}"


def agent_hour(moment: datetime) -> datetime:
    """Start of the UTC hour holding `moment`."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def agent_time_id(hour: datetime) -> str:
    """`hb_agent_runtime_v1:2026-11-02_08:00:00`: the one id of an hour's Agent Time."""
    return f"{HB_AGENT_RUNTIME}:{heartbeat_time(agent_hour(hour))}"


class BadAgentHourError(ValueError):
    """An hour whose runtime cannot be reported (a sum outside 0 to MAX_INT)."""

    def __init__(self, hour: datetime, total: int) -> None:
        super().__init__(
            f"runtime_ms of {rfc3339(hour)} sums to {total}, outside 0 to {MAX_INT}; "
            "the hour is skipped"
        )
        self.hour = hour
        self.total = total


def checked_runtime(hour: datetime, total: int) -> int:
    """The hour's runtime when it can be sent as it is, else `BadAgentHourError`."""
    if not 0 <= total <= MAX_INT:
        raise BadAgentHourError(hour, total)
    return total


def log_watermark(progress: Iterable[tuple[int, int, datetime]]) -> datetime | None:
    """Until when every partition of the log has been read: the earliest of their times.

    `progress` holds (partition, partitions of the topic, caught up at). None until every
    partition of the topic has been read to its end at least once.
    """
    rows = list(progress)
    if not rows:
        return None
    partitions = max(n for _, n, _ in rows)
    seen = {p: at for p, _, at in rows}
    if partitions < 1 or any(p not in seen for p in range(partitions)):
        return None
    return min(seen[p] for p in range(partitions))


@dataclass(frozen=True, slots=True)
class AgentTimePlan:
    """Which hours a pass queues: closed ones in the window that have no heartbeat yet."""

    window_start: datetime
    closed_until: datetime | None
    due: list[datetime]


def plan_agent_hours(
    *,
    now: datetime,
    watermark: datetime | None,
    lag: timedelta,
    window: timedelta,
    queued: Collection[datetime],
) -> AgentTimePlan:
    """The hours to queue now, oldest first.

    An hour is closed once `lag` has passed since it ended, both by the clock and by the log:
    every partition was read to its end at a moment at least `lag` after the hour's end. The
    window reaches back `window` from the current hour; hours older than that are not filled
    in any more (like Coder, which can only ever undercount).
    """
    window_start = agent_hour(now) - window
    if watermark is None:
        return AgentTimePlan(window_start, None, [])
    horizon = min(now, watermark) - lag
    closed_until = agent_hour(horizon)  # the first hour not closed yet
    have = {agent_hour(h) for h in queued}
    due = []
    hour = window_start
    while hour < closed_until:
        if hour not in have:
            due.append(hour)
        hour += AGENT_HOUR
    return AgentTimePlan(window_start, closed_until, due)


# -- what the consumer keeps ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeatState:
    """Whether a user holds a seat, as of the directory event that said so."""

    user_id: str
    licensed: bool
    suspended: bool
    as_of: datetime


@dataclass(frozen=True, slots=True)
class AgentRuntime:
    """One chat usage event's Agent Time: the hour it counts in and its milliseconds."""

    hour: datetime
    runtime_ms: int


@dataclass(frozen=True, slots=True)
class LateRuntime:
    """Runtime that reached the publisher after its hour had been reported: never sent."""

    hour: datetime
    events: int
    runtime_ms: int


@dataclass(slots=True)
class Projection:
    """What one batch of the log changes: billing events, directory state, AI use, Agent Time."""

    billing: list[BillingEvent] = field(default_factory=list)
    seats: dict[str, SeatState] = field(default_factory=dict)
    #: Who used AI chat, and the first time in this batch: each holds an AI seat from then on.
    ai_users: dict[str, datetime] = field(default_factory=dict)
    #: Agent Time by source event identity (the identity deduplicates replays).
    runtime: dict[str, AgentRuntime] = field(default_factory=dict)
    #: Every build's billing id (its identity), agent-managed or not, with that flag: the
    #: first copy of a build decides, so a later copy can never make it billable.
    builds: dict[str, tuple[bool, datetime]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.billing or self.seats or self.ai_users or self.runtime or self.builds)


def project(events: Iterable[Envelope]) -> Projection:
    """Turn decoded events into queue rows, seat facts and Agent Time; the rest is ignored.

    Agent-managed builds become `dc_managed_agents_v1` with a count of one; the first copy of
    a build (by identity) decides whether it is one, here and against every build the queue
    has seen (`builds`, kept by the storage). Directory
    events keep the latest licence state per user (the newest `occurred_at` wins, so
    order and replays do not matter). Chat usage (not title generation) gives its user an
    AI seat, and its `runtime_ms`, when it has one, counts in the UTC hour it occurred in.
    """
    out = Projection()
    for event in events:
        if isinstance(event, WorkspaceBuilt):
            billing_id = build_billing_id(event.identity)
            if billing_id in out.builds:
                continue
            agent = event.data.agent_managed
            out.builds[billing_id] = (agent, event.occurred_at)
            if agent:
                out.billing.append(
                    BillingEvent(billing_id, DC_MANAGED_AGENTS, 1, event.occurred_at)
                )
        elif isinstance(event, UserUpdated):
            current = out.seats.get(event.user_id)
            if current is None or event.occurred_at >= current.as_of:
                out.seats[event.user_id] = SeatState(
                    event.user_id,
                    licensed=event.data.licensed,
                    suspended=event.data.suspended,
                    as_of=event.occurred_at,
                )
        elif isinstance(event, ChatUsageRecorded) and event.data.purpose == "chat":
            first = out.ai_users.get(event.user_id)
            if first is None or event.occurred_at < first:
                out.ai_users[event.user_id] = event.occurred_at
            if event.data.runtime_ms is not None and event.identity not in out.runtime:
                out.runtime[event.identity] = AgentRuntime(
                    agent_hour(event.occurred_at), event.data.runtime_ms
                )
    return out


# -- what the billing server answered ------------------------------------------------------

AnswerId = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class AcceptedRef(BaseModel):
    """An id the billing server accepted."""

    model_config = ConfigDict(extra="ignore")
    id: AnswerId


class RejectedRef(BaseModel):
    """An id the billing server refused, why, and whether resending can ever help."""

    model_config = ConfigDict(extra="ignore")
    id: AnswerId
    message: str = ""
    permanent: bool = False


class BillingAnswer(BaseModel):
    """The ingest response: `{"accepted_events": [{"id"}], "rejected_events": [...]}`."""

    model_config = ConfigDict(extra="ignore")
    accepted_events: list[AcceptedRef] = Field(default_factory=list)
    rejected_events: list[RejectedRef] = Field(default_factory=list)


OutcomeKind = Literal["accepted", "rejected", "retry"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happens to one sent event: published, final rejection, or another try later."""

    id: str
    event_type: str
    kind: OutcomeKind
    message: str | None = None
    delay: timedelta = timedelta(0)
    #: True when the retry is a temporary rejection (as opposed to missing from the answer).
    rejected: bool = False


@dataclass(frozen=True, slots=True)
class Sent:
    """A sent event as the decision needs it."""

    id: str
    event_type: str
    attempts: int


MISSING_FROM_ANSWER: Final = "missing from the billing server's answer"


def decide(
    sent: Sequence[Sent],
    answer: BillingAnswer,
    *,
    base: timedelta,
    cap: timedelta,
    rng: random.Random,
) -> list[Outcome]:
    """One outcome per sent event; ids the answer does not mention are retried."""
    accepted = {ref.id for ref in answer.accepted_events}
    rejected = {ref.id: ref for ref in answer.rejected_events}
    outcomes: list[Outcome] = []
    for item in sent:
        if item.id in accepted:
            outcomes.append(Outcome(item.id, item.event_type, "accepted"))
            continue
        ref = rejected.get(item.id)
        delay = backoff_delay(item.attempts, base=base, cap=cap, rng=rng)
        if ref is None:
            outcomes.append(Outcome(item.id, item.event_type, "retry", MISSING_FROM_ANSWER, delay))
        elif ref.permanent:
            outcomes.append(
                Outcome(item.id, item.event_type, "rejected", ref.message or "rejected")
            )
        else:
            message = ref.message or "temporarily rejected"
            outcomes.append(
                Outcome(item.id, item.event_type, "retry", message, delay, rejected=True)
            )
    return outcomes


def retry_all(
    sent: Sequence[Sent],
    message: str,
    *,
    base: timedelta,
    cap: timedelta,
    rng: random.Random,
) -> list[Outcome]:
    """Every event of a request that failed as a whole goes back with its own backoff."""
    return [
        Outcome(
            item.id,
            item.event_type,
            "retry",
            message,
            backoff_delay(item.attempts, base=base, cap=cap, rng=rng),
        )
        for item in sent
    ]

"""What the publisher decides, without any I/O: billing ids, heartbeat buckets, backoff, outcomes.

Billing events are the only thing that ever leaves a deployment, so their shape is fixed
here once: `{"id", "event_type", "event_data", "created_at"}` with `event_data` exactly
`{"count": N}`. Nothing in them comes from a user, a workspace or a build except a count
and a time; the id of a build's billing event is a one-way UUIDv5 of the source event's
identity (type, user and id), so a replay of the log makes the very same id and the billing
server deduplicates it.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from libs.events.models import ChatUsageRecorded, Envelope, UserUpdated, WorkspaceBuilt

DC_MANAGED_AGENTS: Final = "dc_managed_agents_v1"
HB_AI_SEATS: Final = "hb_ai_seats_v1"
BILLING_EVENT_TYPES: Final = (DC_MANAGED_AGENTS, HB_AI_SEATS)

#: The billing server's ingest route, appended to `BILLING_URL`.
INGEST_PATH: Final = "/api/v1/events/ingest"
#: The billing server takes at most this many events per request.
MAX_BATCH: Final = 100
#: Heartbeats are counted in 4-hour buckets aligned to UTC midnight (00, 04, 08, …).
HEARTBEAT_BUCKET: Final = timedelta(hours=4)

# Fixed forever: changing it (or what `build_billing_id` hashes) would give every
# already-billed build a new id.
BUILD_ID_NAMESPACE: Final = uuid.UUID("5d0f4b8e-2c1a-5b7e-9a43-6f1d2e8c7b90")

#: Why a whole request failed; the label values of `tollgate_publisher_send_errors_total`.
SendCause = Literal["connect", "timeout", "transport", "http_5xx", "http_4xx", "bad_response"]
SEND_CAUSES: Final[tuple[SendCause, ...]] = (
    "connect",
    "timeout",
    "transport",
    "http_5xx",
    "http_4xx",
    "bad_response",
)

# -- durations -----------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> timedelta:
    """`17m`, `2s`, `500ms`, `1h30m`, `30d` or a plain number of seconds, as a timedelta."""
    value = text.strip().lower()
    if not value:
        raise ValueError("empty duration; use e.g. 17m, 2s or 500ms")
    try:
        return timedelta(seconds=float(value))
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ValueError(f"invalid duration {text!r}; use e.g. 17m, 2s, 500ms or 1h30m")
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    """The shortest of `500ms`, `2s`, `17m`, `4h`, `30d` that says `value` exactly."""
    ms = round(value.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


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
    """The only `event_data` the publisher ever sends: a count and nothing else."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    count: int = Field(ge=0, le=2**53 - 1)


@dataclass(frozen=True, slots=True)
class BillingEvent:
    """One row of the billing queue, as it will be sent."""

    id: str
    event_type: str
    count: int
    created_at: datetime

    def wire(self) -> dict[str, object]:
        """The event exactly as the billing server receives it."""
        return wire_event(self.id, self.event_type, {"count": self.count}, self.created_at)


class NotPublishableError(ValueError):
    """A queued row that must not leave the deployment (an unknown type or extra data)."""


def wire_event(
    event_id: str, event_type: str, event_data: object, created_at: datetime
) -> dict[str, object]:
    """The wire shape, refusing anything but a known type with `{"count": N}` as its data."""
    if event_type not in BILLING_EVENT_TYPES:
        raise NotPublishableError(f"unknown billing event type {event_type!r}")
    try:
        data = CountData.model_validate(event_data)
    except ValueError as exc:
        raise NotPublishableError(f"event_data must be exactly {{'count': N}}: {exc}") from exc
    return {
        "id": event_id,
        "event_type": event_type,
        "event_data": {"count": data.count},
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
    start = utc.replace(hour=utc.hour - utc.hour % 4, minute=0, second=0, microsecond=0)
    return start


def heartbeat_id(bucket: datetime) -> str:
    """`hb_ai_seats_v1:2026-11-02T08:00:00Z`: one id per bucket, whichever replica makes it."""
    return f"{HB_AI_SEATS}:{rfc3339(heartbeat_bucket(bucket))}"


def month_of(moment: datetime) -> date:
    """First day of the UTC month holding `moment`."""
    return moment.astimezone(UTC).date().replace(day=1)


# -- what the consumer keeps ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeatState:
    """Whether a user holds a seat, as of the directory event that said so."""

    user_id: str
    licensed: bool
    suspended: bool
    as_of: datetime


@dataclass(slots=True)
class Projection:
    """What one batch of the log changes: billing events, directory state, AI chat users."""

    billing: list[BillingEvent] = field(default_factory=list)
    seats: dict[str, SeatState] = field(default_factory=dict)
    chat_users: dict[tuple[date, str], datetime] = field(default_factory=dict)
    #: Every build's billing id (its identity), agent-managed or not, with that flag: the
    #: first copy of a build decides, so a later copy can never make it billable.
    builds: dict[str, tuple[bool, datetime]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.billing or self.seats or self.chat_users or self.builds)


def project(events: Iterable[Envelope]) -> Projection:
    """Turn decoded events into queue rows and seat facts; everything else is ignored.

    Agent-managed builds become `dc_managed_agents_v1` with a count of one; the first copy of
    a build (by identity) decides whether it is one, here and against every build the queue
    has seen (`builds`, kept by the storage). Directory
    events keep the latest licence state per user (the newest `occurred_at` wins, so
    order and replays do not matter). Chat usage (not title generation) marks the user
    as an AI chat user in that month.
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
            key = (month_of(event.occurred_at), event.user_id)
            first = out.chat_users.get(key)
            if first is None or event.occurred_at < first:
                out.chat_users[key] = event.occurred_at
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

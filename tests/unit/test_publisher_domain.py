"""The publisher's pure decisions: durations, ids, buckets, backoff, projection and outcomes."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from libs.events.models import (
    MAX_INT,
    ChatUsage,
    ChatUsageRecorded,
    DirectoryUser,
    UserUpdated,
    WorkspaceBuild,
    WorkspaceBuilt,
    identity_of,
)
from libs.service.durations import Duration, format_duration, parse_duration
from services.publisher.domain import (
    DC_MANAGED_AGENTS,
    HB_AGENT_RUNTIME,
    MISSING_FROM_ANSWER,
    AgentRuntime,
    BadAgentHourError,
    BillingAnswer,
    BillingEvent,
    NotPublishableError,
    Sent,
    agent_time_id,
    backoff_delay,
    build_billing_id,
    checked_runtime,
    decide,
    first_delay,
    heartbeat_bucket,
    heartbeat_id,
    log_watermark,
    plan_agent_hours,
    project,
    retry_all,
    wire_event,
)
from services.publisher.storage import InMemoryQueue

AT = datetime(2026, 11, 2, 10, 15, tzinfo=UTC)


def build(event_id: str, *, agent: bool, at: datetime = AT, user_id: str = "u-1") -> WorkspaceBuilt:
    """A workspace build event."""
    return WorkspaceBuilt(
        id=event_id,
        occurred_at=at,
        user_id=user_id,
        data=WorkspaceBuild(
            workspace_id="ws-1", build_id=f"b-{event_id}", template="t", agent_managed=agent
        ),
    )


def user(
    user_id: str, *, at: datetime, licensed: bool = True, suspended: bool = False
) -> UserUpdated:
    """A directory entry."""
    return UserUpdated(
        id=f"dir-{user_id}-{at.timestamp()}",
        occurred_at=at,
        user_id=user_id,
        data=DirectoryUser(
            username=user_id,
            name="Some Body",
            email=f"{user_id}@example.com",
            roles=(),
            created_at=datetime(2025, 1, 1, tzinfo=UTC),
            suspended=suspended,
            licensed=licensed,
        ),
    )


def chat(
    event_id: str,
    user_id: str,
    *,
    at: datetime,
    purpose: str = "chat",
    runtime_ms: int | None = None,
) -> ChatUsageRecorded:
    """A chat usage event."""
    return ChatUsageRecorded(
        id=event_id,
        occurred_at=at,
        user_id=user_id,
        data=ChatUsage.model_validate(
            {
                "chat_id": "c",
                "message_id": event_id,
                "model": "m",
                "input_tokens": 1,
                "output_tokens": 1,
                "purpose": purpose,
                "runtime_ms": runtime_ms,
            }
        ),
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("17m", 1020),
        ("2s", 2),
        ("500ms", 0.5),
        ("1h30m", 5400),
        ("30d", 2_592_000),
        ("4h", 14_400),
        ("90", 90),
        ("0.25", 0.25),
        (" 2S ", 2),
    ],
)
def test_durations_parse_in_every_documented_spelling(text: str, seconds: float) -> None:
    """`17m`, `2s`, `500ms`, compound and plain-number durations all parse."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "m", "17x", "1h 30m", "-5s", "2s3"])
def test_malformed_durations_are_refused_with_an_example(text: str) -> None:
    """A duration that is not one of the spellings is an error that shows a valid one."""
    with pytest.raises(ValueError, match="17m"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("inf", "not a finite number"),
        ("-inf", "not a finite number"),
        ("nan", "not a finite number"),
        ("1e400", "not a finite number"),
        ("1e308", "longer than 999999999 days"),
        ("99999999999d", "longer than 999999999 days"),
        (float("inf"), "not a finite number"),
        (10**30, "longer than 999999999 days"),
    ],
)
def test_durations_no_timedelta_can_hold_are_refused_by_name(
    value: str | float, problem: str
) -> None:
    """Non-finite and astronomically long durations are a ValueError naming the value, never an
    OverflowError that would stop a service with a traceback."""
    with pytest.raises(ValueError, match=problem):
        TypeAdapter(Duration).validate_python(value)


def test_durations_format_in_their_shortest_exact_unit() -> None:
    """Formatting picks the largest unit that is exact."""
    assert format_duration(timedelta(minutes=17)) == "17m"
    assert format_duration(timedelta(milliseconds=200)) == "200ms"
    assert format_duration(timedelta(days=30)) == "30d"
    assert format_duration(timedelta(seconds=90)) == "90s"


def test_first_delay_is_five_to_seventeen_minutes_by_default_and_scales_with_the_interval() -> None:
    """Unset, the first cycle waits 5/17 to 17/17 of the interval; set, exactly what was set."""
    rng = random.Random(7)
    delays = [first_delay(timedelta(minutes=17), None, rng) for _ in range(500)]
    assert min(delays) >= timedelta(minutes=5)
    assert max(delays) <= timedelta(minutes=17)
    assert max(delays) - min(delays) > timedelta(minutes=10)
    short = first_delay(timedelta(seconds=2), None, rng)
    assert timedelta(seconds=10 / 17) <= short <= timedelta(seconds=2)
    assert first_delay(timedelta(minutes=17), timedelta(0), rng) == timedelta(0)


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=2**32))
def test_backoff_grows_exponentially_within_the_cap_with_jitter(attempts: int, seed: int) -> None:
    """The delay lies between half and all of min(cap, base·2^(n-1))."""
    base, cap = timedelta(seconds=1), timedelta(minutes=10)
    delay = backoff_delay(attempts, base=base, cap=cap, rng=random.Random(seed))
    ceiling = min(cap.total_seconds(), 2 ** min(attempts - 1, 32))
    assert ceiling / 2 <= delay.total_seconds() <= ceiling


def test_backoff_jitter_spreads_events_that_failed_together() -> None:
    """Events that failed in the same request get different retry times."""
    rng = random.Random(1)
    delays = {
        backoff_delay(3, base=timedelta(seconds=10), cap=timedelta(hours=1), rng=rng)
        for _ in range(20)
    }
    assert len(delays) == 20


def test_build_billing_ids_are_stable_uuids_that_do_not_contain_the_source_id() -> None:
    """The same source event always gives the same UUID, other events other UUIDs."""
    first = build_billing_id("01JC8Z4B2M7R0V3X9P5KD8WG1E")
    assert first == build_billing_id("01JC8Z4B2M7R0V3X9P5KD8WG1E")
    assert first != build_billing_id("01JC8Z4B2M7R0V3X9P5KD8WG1F")
    assert uuid.UUID(first).version == 5
    assert "01JC8Z4B" not in first


@pytest.mark.parametrize(
    ("moment", "start"),
    [
        (datetime(2026, 11, 2, 0, 0, tzinfo=UTC), datetime(2026, 11, 2, 0, 0, tzinfo=UTC)),
        (datetime(2026, 11, 2, 3, 59, 59, tzinfo=UTC), datetime(2026, 11, 2, 0, 0, tzinfo=UTC)),
        (datetime(2026, 11, 2, 4, 0, tzinfo=UTC), datetime(2026, 11, 2, 4, 0, tzinfo=UTC)),
        (datetime(2026, 11, 2, 23, 30, tzinfo=UTC), datetime(2026, 11, 2, 20, 0, tzinfo=UTC)),
        (
            datetime(2026, 11, 2, 9, 30, tzinfo=UTC).astimezone(
                datetime.now(UTC).astimezone().tzinfo
            ),
            datetime(2026, 11, 2, 8, 0, tzinfo=UTC),
        ),
    ],
)
def test_heartbeat_buckets_are_four_hours_aligned_to_utc(moment: datetime, start: datetime) -> None:
    """Buckets start at 00, 04, 08, 12, 16 and 20 UTC whatever zone the time is in."""
    assert heartbeat_bucket(moment) == start


def test_heartbeat_ids_name_the_bucket_start_as_coder_writes_it() -> None:
    """Every moment of a bucket maps to `hb_ai_seats_v1:<bucket start>` in Go's 2006-01-02_15:04:05."""
    assert (
        heartbeat_id(datetime(2026, 11, 27, 11, 59, 59, tzinfo=UTC))
        == "hb_ai_seats_v1:2026-11-27_08:00:00"
    )
    eastern = timezone(timedelta(hours=-5))
    assert heartbeat_id(datetime(2026, 11, 2, 22, 30, tzinfo=eastern)) == (
        "hb_ai_seats_v1:2026-11-03_00:00:00"
    )
    assert agent_time_id(datetime(2026, 8, 18, 14, 59, 59, 999_999, tzinfo=UTC)) == (
        "hb_agent_runtime_v1:2026-08-18_14:00:00"
    )


def test_only_agent_managed_builds_become_billing_events_with_the_build_time() -> None:
    """Agent builds become one count each (once per id); other builds and events nothing."""
    result = project(
        [
            build("a", agent=True),
            build("b", agent=False),
            build("a", agent=True),
            chat("c1", "u-1", at=AT),
        ]
    )
    assert [(b.id, b.event_type, b.value, b.created_at) for b in result.billing] == [
        (build_billing_id(build("a", agent=True).identity), DC_MANAGED_AGENTS, 1, AT)
    ]


def test_one_emitter_id_for_two_users_is_two_builds_billed_once_each() -> None:
    """Billing ids follow the event identity: the same id for another user is another build."""
    result = project(
        [
            build("same", agent=True, user_id="u-1"),
            build("same", agent=True, user_id="u-2"),
            build("same", agent=True, user_id="u-1"),
        ]
    )
    ids = [b.id for b in result.billing]
    assert len(ids) == len(set(ids)) == 2


def test_projection_keeps_the_newest_directory_state_and_first_ai_use() -> None:
    """The latest directory event wins whatever the order; title generation is not AI chat use."""
    later = AT + timedelta(hours=1)
    result = project(
        [
            user("u-1", at=later, suspended=True),
            user("u-1", at=AT),
            chat("c1", "u-1", at=later),
            chat("c2", "u-1", at=AT),
            chat("c3", "u-2", at=AT, purpose="title"),
            chat("c4", "u-3", at=datetime(2026, 12, 1, tzinfo=UTC)),
        ]
    )
    assert result.seats["u-1"].suspended is True
    assert result.ai_users == {"u-1": AT, "u-3": datetime(2026, 12, 1, tzinfo=UTC)}


def test_runtime_counts_once_per_event_in_the_utc_hour_it_occurred() -> None:
    """Runtime goes to the hour of occurred_at; a repeated identity and chats without runtime add none, while the same id for another user is another event."""
    result = project(
        [
            chat("r1", "u-1", at=datetime(2026, 11, 2, 9, 59, 59, tzinfo=UTC), runtime_ms=1500),
            chat("r1", "u-1", at=datetime(2026, 11, 2, 9, 59, 59, tzinfo=UTC), runtime_ms=1500),
            chat("r1", "u-3", at=datetime(2026, 11, 2, 9, 30, tzinfo=UTC), runtime_ms=700),
            chat("r2", "u-2", at=datetime(2026, 11, 2, 10, 0, tzinfo=UTC), runtime_ms=0),
            chat("r3", "u-2", at=AT),
        ]
    )
    assert result.runtime == {
        identity_of("chat.usage.v1", "u-1", "r1"): AgentRuntime(
            datetime(2026, 11, 2, 9, tzinfo=UTC), 1500
        ),
        identity_of("chat.usage.v1", "u-3", "r1"): AgentRuntime(
            datetime(2026, 11, 2, 9, tzinfo=UTC), 700
        ),
        identity_of("chat.usage.v1", "u-2", "r2"): AgentRuntime(
            datetime(2026, 11, 2, 10, tzinfo=UTC), 0
        ),
    }


def test_an_hour_closes_lag_after_its_end_by_the_clock_and_by_the_log() -> None:
    """Hours close `lag` after they end, but never ahead of what every partition was read to."""
    lag, window = timedelta(minutes=5), timedelta(hours=6)
    now = datetime(2026, 11, 2, 10, 4, tzinfo=UTC)
    plan = plan_agent_hours(now=now, watermark=now, lag=lag, window=window, queued=[])
    assert plan.window_start == datetime(2026, 11, 2, 4, tzinfo=UTC)
    # 09:00-10:00 ended at 10:00 but needs until 10:05.
    assert plan.due == [datetime(2026, 11, 2, h, tzinfo=UTC) for h in range(4, 9)]
    later = now + timedelta(minutes=1)
    assert plan_agent_hours(
        now=later, watermark=later, lag=lag, window=window, queued=plan.due
    ).due == [datetime(2026, 11, 2, 9, tzinfo=UTC)]
    behind = datetime(2026, 11, 2, 7, 30, tzinfo=UTC)
    assert plan_agent_hours(now=later, watermark=behind, lag=lag, window=window, queued=[]).due == [
        datetime(2026, 11, 2, h, tzinfo=UTC) for h in range(4, 7)
    ]
    unknown = plan_agent_hours(now=later, watermark=None, lag=lag, window=window, queued=[])
    assert (unknown.due, unknown.closed_until) == ([], None)


def test_the_log_is_read_until_its_slowest_partition_and_only_once_all_were_seen() -> None:
    """The watermark is the earliest partition's time, and unknown while a partition is missing."""
    t = datetime(2026, 11, 2, 10, tzinfo=UTC)
    rows = [(0, 3, t), (1, 3, t - timedelta(minutes=9)), (2, 3, t + timedelta(minutes=1))]
    assert log_watermark(rows) == t - timedelta(minutes=9)
    assert log_watermark(rows[:2]) is None
    assert log_watermark([]) is None


def test_an_hour_whose_sum_cannot_be_sent_is_an_error_naming_the_hour() -> None:
    """Sums outside 0 to 2^53 - 1 are refused with the hour in the message."""
    hour = datetime(2026, 11, 2, 9, tzinfo=UTC)
    assert checked_runtime(hour, MAX_INT) == MAX_INT
    for total in (-1, MAX_INT + 1):
        with pytest.raises(BadAgentHourError, match="2026-11-02T09:00:00Z"):
            checked_runtime(hour, total)


def test_wire_events_carry_exactly_four_fields_and_a_bare_count() -> None:
    """The wire shape is fixed, and anything beyond a count is refused rather than sent."""
    assert wire_event("x", "hb_ai_seats_v1", {"count": 3}, AT) == {
        "id": "x",
        "event_type": "hb_ai_seats_v1",
        "event_data": {"count": 3},
        "created_at": "2026-11-02T10:15:00Z",
    }
    with pytest.raises(NotPublishableError, match="count"):
        wire_event("x", "hb_ai_seats_v1", {"count": 3, "user_id": "u-1"}, AT)
    with pytest.raises(NotPublishableError, match="count"):
        wire_event("x", "hb_ai_seats_v1", {"count": "3"}, AT)
    with pytest.raises(NotPublishableError, match="unknown billing event type"):
        wire_event("x", "chat.usage.v1", {"count": 3}, AT)


def test_agent_time_is_sent_as_bare_milliseconds_and_nothing_else() -> None:
    """`hb_agent_runtime_v1` carries exactly `{"runtime_ms": N}`; a count or extras are refused."""
    hour = datetime(2026, 8, 18, 14, tzinfo=UTC)
    assert BillingEvent(agent_time_id(hour), HB_AGENT_RUNTIME, 3_600_000, hour).wire() == {
        "id": "hb_agent_runtime_v1:2026-08-18_14:00:00",
        "event_type": "hb_agent_runtime_v1",
        "event_data": {"runtime_ms": 3_600_000},
        "created_at": "2026-08-18T14:00:00Z",
    }
    for bad in ({"count": 3}, {"runtime_ms": 3, "chat_id": "c"}, {"runtime_ms": -1}):
        with pytest.raises(NotPublishableError, match="runtime_ms"):
            wire_event("x", HB_AGENT_RUNTIME, bad, hour)


def test_each_event_gets_its_own_outcome_from_the_answer() -> None:
    """Accepted are published, permanent rejections final, temporary and missing ones retried."""
    sent = [Sent(i, DC_MANAGED_AGENTS, attempts=2) for i in ("ok", "perm", "temp", "lost")]
    answer = BillingAnswer.model_validate(
        {
            "accepted_events": [{"id": "ok"}, {"id": "not-ours"}],
            "rejected_events": [
                {"id": "perm", "message": "license expired", "permanent": True},
                {"id": "temp", "message": "busy", "permanent": False},
            ],
            "extra_field": "ignored",
        }
    )
    base, cap = timedelta(seconds=1), timedelta(seconds=60)
    outcomes = {o.id: o for o in decide(sent, answer, base=base, cap=cap, rng=random.Random(3))}
    assert outcomes["ok"].kind == "accepted"
    assert (outcomes["perm"].kind, outcomes["perm"].message) == ("rejected", "license expired")
    assert (outcomes["temp"].kind, outcomes["temp"].message, outcomes["temp"].rejected) == (
        "retry",
        "busy",
        True,
    )
    assert (outcomes["lost"].kind, outcomes["lost"].message) == ("retry", MISSING_FROM_ANSWER)
    assert timedelta(seconds=1) <= outcomes["temp"].delay <= timedelta(seconds=2)
    assert set(outcomes) == {"ok", "perm", "temp", "lost"}


def test_a_failed_request_retries_every_event_with_its_own_backoff() -> None:
    """Each event's delay follows its own attempt count."""
    sent = [Sent("new", DC_MANAGED_AGENTS, 1), Sent("old", DC_MANAGED_AGENTS, 8)]
    out = retry_all(
        sent, "timeout", base=timedelta(seconds=1), cap=timedelta(hours=1), rng=random.Random(0)
    )
    assert [o.kind for o in out] == ["retry", "retry"]
    assert out[0].delay <= timedelta(seconds=1) < timedelta(seconds=64) <= out[1].delay


def test_the_first_copy_of_a_build_decides_whether_it_is_billed() -> None:
    """A build first seen as not agent-managed stays unbilled when a copy says otherwise, in a batch and across batches."""
    plain, flipped = build("b1", agent=False), build("b1", agent=True)
    result = project([plain, flipped])
    assert result.billing == []
    assert result.builds == {build_billing_id(plain.identity): (False, AT)}
    queue = InMemoryQueue()
    queue.apply_projection(project([plain]))
    queue.apply_projection(project([flipped]))
    assert queue.rows == {}
    queue.apply_projection(project([build("b2", agent=True)]))
    assert list(queue.rows) == [build_billing_id(build("b2", agent=True).identity)]

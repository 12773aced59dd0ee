"""The sender's cycle on the in-memory queue and a scripted billing server."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from services.publisher.domain import DC_MANAGED_AGENTS, BillingAnswer, BillingEvent
from services.publisher.metrics import PublisherMetrics
from services.publisher.sender import Sender, SenderOptions, SendError
from services.publisher.storage import InMemoryQueue

START = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += timedelta(seconds=seconds)


class ScriptedServer:
    """A billing client whose answers the test decides; it records every request."""

    def __init__(self) -> None:
        self.requests: list[list[dict[str, object]]] = []
        self.failure: SendError | None = None
        self.reject: dict[str, bool] = {}
        self.omit: set[str] = set()

    async def send(self, events: Sequence[dict[str, object]]) -> BillingAnswer:
        """Answer like the billing server, or fail as told."""
        self.requests.append(list(events))
        if self.failure is not None:
            raise self.failure
        accepted, rejected = [], []
        for event in events:
            event_id = str(event["id"])
            if event_id in self.omit:
                continue
            if event_id in self.reject:
                rejected.append(
                    {"id": event_id, "message": "no", "permanent": self.reject[event_id]}
                )
            else:
                accepted.append({"id": event_id})
        return BillingAnswer.model_validate(
            {"accepted_events": accepted, "rejected_events": rejected}
        )

    def sent_ids(self) -> list[str]:
        """Every id in every request, in order."""
        return [str(e["id"]) for batch in self.requests for e in batch]


OPTIONS = SenderOptions(
    interval=timedelta(seconds=1),
    first_delay=timedelta(0),
    max_age=timedelta(days=30),
    batch_size=100,
    claim_timeout=timedelta(seconds=60),
    backoff_base=timedelta(seconds=1),
    backoff_max=timedelta(seconds=30),
    retention=timedelta(days=90),
)


def make(
    n: int, clock: Clock, *, created: Callable[[int], datetime] | None = None
) -> tuple[InMemoryQueue, ScriptedServer, Sender, list[BillingEvent]]:
    """A queue with n events, a server, and a sender between them."""
    queue = InMemoryQueue(clock=clock)
    events = [
        BillingEvent(f"e{i:05d}", DC_MANAGED_AGENTS, 1, created(i) if created else START)
        for i in range(n)
    ]
    server = ScriptedServer()
    sender = Sender(
        queue, server, OPTIONS, PublisherMetrics.build(CollectorRegistry()), rng=random.Random(5)
    )
    return queue, server, sender, events


async def test_a_cycle_keeps_sending_while_batches_come_back_full() -> None:
    """250 due events go out in batches of 100, 100 and 50 in one cycle."""
    clock = Clock()
    queue, server, sender, events = make(250, clock)
    await queue.enqueue(events)
    result = await sender.run_cycle()
    assert [len(r) for r in server.requests] == [100, 100, 50]
    assert sorted(server.sent_ids()) == [e.id for e in events]
    assert result.accepted == 250
    assert (await queue.status()).pending == 0


async def test_a_full_batch_of_exactly_the_batch_size_ends_with_an_empty_claim() -> None:
    """When the last batch is full the cycle asks once more and stops on nothing due."""
    clock = Clock()
    queue, server, sender, events = make(100, clock)
    await queue.enqueue(events)
    await sender.run_cycle()
    assert [len(r) for r in server.requests] == [100]


async def test_a_temporary_rejection_backs_off_without_blocking_the_rest() -> None:
    """A poison event is retried later with growing delays while the others are published."""
    clock = Clock()
    queue, server, sender, events = make(150, clock)
    await queue.enqueue(events)
    server.reject["e00000"] = False
    first = await sender.run_cycle()
    assert (first.accepted, first.rejected, first.retry) == (149, 1, 1)
    assert server.sent_ids().count("e00000") == 1
    row = queue.rows["e00000"]
    assert row.status == "pending"
    assert row.last_error == "no"
    delays = []
    for _ in range(6):
        delays.append((row.next_attempt_at - clock.now).total_seconds())
        clock.advance(31)
        await sender.run_cycle()
    assert server.sent_ids().count("e00000") == 7
    assert delays[0] <= 1
    assert 8 <= max(delays) <= 30
    assert queue.health.consecutive_failures == 0


async def test_a_cycle_never_sends_an_event_twice_even_with_no_backoff() -> None:
    """Retries scheduled during a cycle wait for the next cycle."""
    clock = Clock()
    queue, server, sender, events = make(100, clock)
    await queue.enqueue(events)
    server.omit = {e.id for e in events}
    await sender.run_cycle()
    assert len(server.sent_ids()) == len(set(server.sent_ids())) == 100


async def test_permanent_rejection_is_final_and_keeps_the_message() -> None:
    """A permanently rejected event is never sent again."""
    clock = Clock()
    queue, server, sender, events = make(3, clock)
    await queue.enqueue(events)
    server.reject["e00001"] = True
    await sender.run_cycle()
    clock.advance(3600)
    await sender.run_cycle()
    assert server.sent_ids().count("e00001") == 1
    assert (queue.rows["e00001"].status, queue.rows["e00001"].last_error) == ("rejected", "no")
    assert queue.health.rejected_total == 1


async def test_a_failed_request_ends_the_cycle_counts_the_streak_and_names_the_cause() -> None:
    """Transport failures back off the batch, stop the cycle, and warn with the cause."""
    clock = Clock()
    queue, server, sender, events = make(300, clock)
    await queue.enqueue(events)
    server.failure = SendError("connect", "cannot connect to http://billing: refused")
    with capture_logs() as logs:
        result = await sender.run_cycle()
        clock.advance(2)
        await sender.run_cycle()
    assert result.failed is not None
    assert len(server.requests) == 2
    assert queue.health.consecutive_failures == 2
    assert queue.health.last_error_cause == "connect"
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert warnings[0]["event"] == "failed to send publish request cause=connect count=100"
    assert warnings[0]["consecutive_failures"] == 1

    server.failure = None
    clock.advance(60)
    with capture_logs() as logs:
        await sender.run_cycle()
    assert sorted(set(server.sent_ids())) == [e.id for e in events]
    assert queue.health.consecutive_failures == 0
    events_logged = [e["event"] for e in logs]
    assert (
        "publisher recovered: the billing server answered after 2 failed requests" in events_logged
    )
    assert "published usage events accepted=300 rejected=0" in events_logged


async def test_expired_events_are_counted_and_never_sent() -> None:
    """Events older than the maximum age are expired, counted and left unsent."""
    clock = Clock()
    queue, server, sender, events = make(
        4, clock, created=lambda i: START - timedelta(days=31 if i % 2 else 1)
    )
    await queue.enqueue(events)
    with capture_logs() as logs:
        result = await sender.run_cycle()
    assert result.expired == 2
    assert sorted(server.sent_ids()) == ["e00000", "e00002"]
    assert queue.health.expired_total == 2
    assert any(e["event"] == "usage events expired unsent" and e["count"] == 2 for e in logs)


async def test_without_a_billing_server_events_are_queued_and_the_log_says_so() -> None:
    """An unconfigured sender sends nothing and says why on every cycle."""
    clock = Clock()
    queue = InMemoryQueue(clock=clock)
    await queue.enqueue([BillingEvent("x", DC_MANAGED_AGENTS, 1, START)])
    sender = Sender(
        queue,
        None,
        OPTIONS,
        PublisherMetrics.build(CollectorRegistry()),
        not_configured="BILLING_URL and LICENSE_KEY not set",
    )
    with capture_logs() as logs:
        await sender.run_cycle()
    assert logs[-1]["event"] == "usage events queued, not sent: BILLING_URL and LICENSE_KEY not set"
    assert logs[-1]["pending"] == 1


async def test_rows_that_are_not_a_bare_count_are_refused_locally_and_never_sent() -> None:
    """A queued row with anything beyond a count is rejected before any request."""
    clock = Clock()
    queue, server, sender, events = make(2, clock)
    await queue.enqueue(events)
    queue.rows["e00000"].event = BillingEvent("e00000", "chat.usage.v1", 1, START)
    await sender.run_cycle()
    assert server.sent_ids() == ["e00001"]
    assert queue.rows["e00000"].status == "rejected"
    assert "not sent" in (queue.rows["e00000"].last_error or "")


@pytest.mark.parametrize("cause", ["timeout", "http_5xx", "transport", "bad_response", "http_4xx"])
async def test_every_failure_cause_is_counted_in_its_metric(cause: str) -> None:
    """Each cause label of the send error counter moves on its failure."""
    clock = Clock()
    registry = CollectorRegistry()
    queue = InMemoryQueue(clock=clock)
    await queue.enqueue([BillingEvent("x", DC_MANAGED_AGENTS, 1, START)])
    server = ScriptedServer()
    server.failure = SendError(cause, "boom")  # type: ignore[arg-type]
    await Sender(queue, server, OPTIONS, PublisherMetrics.build(registry)).run_cycle()
    assert registry.get_sample_value("tollgate_publisher_send_errors_total", {"cause": cause}) == 1
    assert (
        registry.get_sample_value(
            "tollgate_publisher_events_total", {"event_type": DC_MANAGED_AGENTS, "result": "retry"}
        )
        == 1
    )

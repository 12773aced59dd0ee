"""Budget notifications on the real PostgreSQL: recorded once, delivered, retried, emailed.

Each test has a database of its own, so the endpoints and deliveries it sees are its own.
Webhooks go to a real HTTP receiver and emails to a real SMTP server (aiosmtpd), both started
here; signatures are checked with the `standardwebhooks` library.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from libs.service.runtime import background
from services.limits.crossings import LIMIT_REACHED, WARNING, Crossing, Kind
from services.limits.storage import LogSeen, PostgresCrossingStore
from services.reports.notifications.dispatcher import Notifier, NotifierOptions
from services.reports.notifications.domain import AddressPolicy
from services.reports.notifications.metrics import NotificationMetrics
from services.reports.notifications.senders import EmailSender, SmtpServer, WebhookSender
from services.reports.notifications.storage import (
    Delivery,
    Directory,
    PostgresNotificationStore,
    Prepared,
    Unprepared,
)
from tests.notify_support import SmtpSink, WebhookReceiver
from tests.support import Infra, database_pool, eventually

pytestmark = pytest.mark.integration

FAST = NotifierOptions(
    poll_s=0.05,
    claim_s=10,
    backoff_base_s=0.05,
    backoff_max_s=0.2,
    retry_for_s=3600,
    directory_wait_s=0,
    gauge_refresh_s=0.1,
)


@pytest.fixture
async def pool(infra: Infra) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a database of this test's own."""
    async with database_pool(infra, "notify") as own:
        yield own


def crossing(user: str, kind: Kind, *, spent: int = 900_000, group: str | None = None) -> Crossing:
    """A notification due for `user` in November 2026."""
    return Crossing(
        kind=kind,
        user_id=user,
        org_id=None,
        period="month",
        period_start=datetime(2026, 11, 1, tzinfo=UTC),
        period_end=datetime(2026, 12, 1, tzinfo=UTC),
        threshold_percent=85 if kind == WARNING else 100,
        limit_micros=1_000_000,
        spent_micros=spent,
        source="group" if group else "default",
        group_id=group,
    )


@asynccontextmanager
async def notifier(
    pool: asyncpg.Pool,
    options: NotifierOptions = FAST,
    *,
    smtp: SmtpSink | None = None,
    timeout_s: float = 2.0,
) -> AsyncIterator[tuple[Notifier, CollectorRegistry]]:
    """A running notifier on `pool` (emails to `smtp` when given)."""
    registry = CollectorRegistry()
    policy = AddressPolicy(allow_private=True)
    email = None
    if smtp is not None:
        email = EmailSender(
            SmtpServer.parse(smtp.url), sender="Tollgate <noreply@example.com>", timeout_s=timeout_s
        )
        options = replace(options, email_from="Tollgate <noreply@example.com>")
    async with WebhookSender.session_for(policy) as session:
        running = Notifier(
            outbox=PostgresNotificationStore(pool),
            webhooks=WebhookSender(
                session, policy=policy, timeout_s=timeout_s, retry_after_cap_s=1
            ),
            email=email,
            options=options,
            metrics=NotificationMetrics.build(registry),
            rng=random.Random(1),
        )
        async with (
            background(running.run_forever(), name="notifier"),
            background(running.refresh_gauges_forever(), name="gauges"),
        ):
            yield running, registry


@asynccontextmanager
async def receiver(*script: int | str) -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver answering `script` first, then 200."""
    hooks = await WebhookReceiver(script=list(script)).start()
    try:
        yield hooks
    finally:
        await hooks.stop()


async def test_concurrent_recorders_write_each_notification_and_its_outbox_once(
    pool: asyncpg.Pool,
) -> None:
    """Five replicas recording the same crossings at once make one row each, with one delivery per endpoint."""
    store = PostgresNotificationStore(pool)
    await store.add_webhook("https://a.example/hook", "")
    await store.add_webhook("https://b.example/hook", "")
    crossings = [crossing(f"u{i}", kind) for i in range(20) for kind in (WARNING, LIMIT_REACHED)]
    results = await asyncio.gather(
        *(PostgresCrossingStore(pool).record(crossings) for _ in range(5))
    )
    assert sum(len(r) for r in results) == 40
    assert all(item.webhooks == 2 for r in results for item in r)
    assert await pool.fetchval("SELECT count(*) FROM notifications") == 40
    assert await pool.fetchval("SELECT count(*) FROM notification_deliveries") == 80
    again = await PostgresCrossingStore(pool).record(crossings)
    assert again == []
    order = await pool.fetch("SELECT user_id, type FROM notifications ORDER BY seq")
    for user in {r["user_id"] for r in order}:
        assert [r["type"] for r in order if r["user_id"] == user] == [WARNING, LIMIT_REACHED]


async def test_a_receiver_failing_three_times_gets_the_same_id_on_the_fourth_try(
    pool: asyncpg.Pool,
) -> None:
    """500, 500, 500, then 200: four signed requests with one webhook-id, and four attempts shown."""
    store = PostgresNotificationStore(pool)
    async with receiver(500, 500, 500) as hooks, notifier(pool) as (_, registry):
        hook = await store.add_webhook(hooks.url(), "flaky")
        await PostgresCrossingStore(pool).record([crossing("ann", WARNING)])

        async def delivered() -> list[Delivery]:
            return await store.deliveries(status="delivered", channel=None, user_id="ann", limit=5)

        (delivery,) = await eventually(delivered)
    assert [h.answered for h in hooks.hooks] == [500, 500, 500, 200]
    assert len({h.webhook_id for h in hooks.hooks}) == 1
    assert hooks.hooks[0].webhook_id == f"msg_{delivery.id.hex}"
    assert all(h.verifies(hook.secret) for h in hooks.hooks)
    doc = hooks.hooks[-1].verified(hook.secret)
    assert doc["type"] == WARNING
    assert doc["data"]["spent_micros"] == 900_000
    assert delivery.attempts == 4
    assert delivery.view()["id"] == hooks.hooks[0].webhook_id
    assert (
        registry.get_sample_value(
            "tollgate_notification_attempts_total", {"channel": "webhook", "result": "retry"}
        )
        == 3
    )
    assert (
        registry.get_sample_value("tollgate_notifications_delivered_total", {"channel": "webhook"})
        == 1
    )


async def test_a_hanging_endpoint_never_delays_another(pool: asyncpg.Pool) -> None:
    """While one endpoint holds every request, another gets its deliveries at once."""
    store = PostgresNotificationStore(pool)
    async with receiver() as stuck, receiver() as fine, notifier(pool, timeout_s=30) as _:
        stuck.mode = "hang"
        await store.add_webhook(stuck.url(), "stuck")
        await store.add_webhook(fine.url(), "fine")
        users = [f"user{i}" for i in range(8)]
        await PostgresCrossingStore(pool).record([crossing(u, WARNING) for u in users])

        async def all_fine() -> bool:
            return len(fine.answered()) == len(users)

        await eventually(all_fine, timeout_s=20)
        # The stuck endpoint holds only its own slots (4 per target by default).
        assert len(stuck.hooks) <= FAST.per_target
        stuck.mode = 200
        stuck.release()

        async def all_stuck() -> bool:
            return len(stuck.delivered_ids()) == len(users)

        await eventually(all_stuck, timeout_s=20)


async def _add_user(
    pool: asyncpg.Pool,
    user_id: str,
    username: str,
    email: str,
    roles: list[str],
    *,
    suspended: bool = False,
) -> None:
    await pool.execute(
        """
        INSERT INTO reports_users (user_id, org_id, username, name, email, roles, created_at,
            suspended, licensed, occurred_at, log_partition, log_offset)
        VALUES ($1, 'acme', $2, $3, $4, $5, now(), $6, true, now(), 0, 0)
        """,
        user_id,
        username,
        username.title() + " Example",
        email,
        roles,
        suspended,
    )


async def test_emails_go_to_the_user_and_each_admin_once_per_notification(
    pool: asyncpg.Pool,
) -> None:
    """The user gets theirs, owners and user admins the admin version; suspended admins none."""
    await _add_user(pool, "ann", "ann", "ann@example.com", ["member"])
    await _add_user(pool, "olga", "olga", "olga@example.com", ["owner"])
    await _add_user(pool, "uma", "uma", "uma@example.com", ["member", "user-admin"])
    await _add_user(pool, "sam", "sam", "sam@example.com", ["owner"], suspended=True)
    await _add_user(pool, "ted", "ted", "ted@example.com", ["template-admin"])
    await pool.execute(
        """
        INSERT INTO reports_groups (group_id, org_id, name, member_ids, occurred_at, log_partition, log_offset)
        VALUES ('g-eng', 'acme', 'Engineering', ARRAY['ann'], now(), 0, 0)
        """
    )
    smtp = SmtpSink().start()
    store = PostgresNotificationStore(pool)
    try:
        options = replace(FAST, admin_emails=("finance@example.com", "OLGA@example.com"))
        async with receiver() as hooks, notifier(pool, options, smtp=smtp):
            hook = await store.add_webhook(hooks.url(), "")
            await PostgresCrossingStore(pool).record(
                [
                    crossing("ann", WARNING, group="g-eng"),
                    crossing("ann", LIMIT_REACHED, spent=1_100_000, group="g-eng"),
                ]
            )

            async def all_sent() -> bool:
                return len(smtp.mails) >= 8 and len(hooks.delivered_ids()) >= 2

            await eventually(all_sent)

            async def all_settled() -> bool:
                # A message is in the sink a moment before its delivery is recorded.
                pending = await store.deliveries(
                    status="pending", channel=None, user_id="ann", limit=50
                )
                return not pending

            await eventually(all_settled)
    finally:
        smtp.stop()
    assert sorted(
        len(smtp.to(a))
        for a in ("ann@example.com", "olga@example.com", "uma@example.com", "finance@example.com")
    ) == [2, 2, 2, 2]
    assert smtp.to("sam@example.com") == []
    assert smtp.to("ted@example.com") == []
    assert len(smtp.mails) == 8
    assert len({m.message_id for m in smtp.mails}) == 8
    user_mails = smtp.to("ann@example.com")
    assert [m.subject for m in user_mails] == [
        "You have used 85% of your monthly AI spend limit",
        "You have reached your monthly AI spend limit",
    ]
    assert "Effective group: Engineering" in user_mails[0].text
    admin = smtp.to("uma@example.com")[1]
    assert admin.subject == "ann has reached their monthly AI spend limit"
    assert "Ann Example (@ann)" in admin.text
    assert admin.message["From"] == "Tollgate <noreply@example.com>"
    docs = [h.verified(hook.secret) for h in hooks.answered()]
    assert [d["type"] for d in docs] == [WARNING, LIMIT_REACHED]
    assert docs[0]["data"]["username"] == "ann"
    assert docs[0]["data"]["group_name"] == "Engineering"
    emails = await store.deliveries(status="delivered", channel="email", user_id="ann", limit=50)
    audiences = sorted({(d.recipient, d.audience) for d in emails})
    assert audiences == [
        ("ann@example.com", "user"),
        ("finance@example.com", "admin"),
        ("olga@example.com", "admin"),
        ("uma@example.com", "admin"),
    ]


async def test_a_refusing_smtp_server_is_retried_until_it_accepts(pool: asyncpg.Pool) -> None:
    """A 451 from the SMTP server is retried; the message arrives once it accepts."""
    await _add_user(pool, "bo", "bo", "bo@example.com", ["member"])
    smtp = SmtpSink().start()
    smtp.refusing = True
    store = PostgresNotificationStore(pool)
    try:
        async with notifier(pool, smtp=smtp):
            await PostgresCrossingStore(pool).record([crossing("bo", WARNING)])

            async def retried() -> bool:
                found = await store.deliveries(
                    status="pending", channel="email", user_id="bo", limit=5
                )
                return bool(found) and found[0].attempts >= 2

            await eventually(retried)
            smtp.refusing = False

            async def arrived() -> bool:
                return len(smtp.to("bo@example.com")) == 1

            await eventually(arrived)

            async def settled() -> list[Delivery]:
                # The message is in the sink a moment before its delivery is recorded.
                return await store.deliveries(
                    status="delivered", channel="email", user_id="bo", limit=5
                )

            (delivery,) = await eventually(settled)
    finally:
        smtp.stop()
    assert delivery.attempts >= 3


async def test_a_delivery_is_given_up_after_the_retry_window(pool: asyncpg.Pool) -> None:
    """Failing past `retry_for` makes the delivery failed, with its last error kept."""
    store = PostgresNotificationStore(pool)
    options = replace(FAST, retry_for_s=0.5)
    async with receiver() as hooks, notifier(pool, options) as (_, registry):
        hooks.mode = 503
        await store.add_webhook(hooks.url(), "down")
        await PostgresCrossingStore(pool).record([crossing("cy", WARNING)])

        async def failed() -> list[Delivery]:
            return await store.deliveries(status="failed", channel="webhook", user_id="cy", limit=5)

        (delivery,) = await eventually(failed)
        await asyncio.sleep(0.3)
    assert delivery.last_error is not None
    assert delivery.last_error.startswith("HTTP 503")
    assert delivery.attempts >= 2
    assert (
        registry.get_sample_value("tollgate_notifications_failed_total", {"channel": "webhook"})
        == 1
    )


async def test_a_410_disables_the_endpoint_and_fails_what_waited_for_it(pool: asyncpg.Pool) -> None:
    """An endpoint that answers 410 Gone is sent nothing more; another endpoint is unaffected."""
    store = PostgresNotificationStore(pool)
    async with receiver() as gone, receiver() as fine, notifier(pool):
        gone.mode = 410
        await store.add_webhook(gone.url(), "gone")
        await store.add_webhook(fine.url(), "fine")
        await PostgresCrossingStore(pool).record(
            [crossing("di", WARNING), crossing("di", LIMIT_REACHED)]
        )

        async def settled() -> bool:
            pending = await store.deliveries(status="pending", channel=None, user_id="di", limit=9)
            return not pending and len(fine.delivered_ids()) == 2

        await eventually(settled)
        hooks = await store.webhooks()
    assert len(gone.hooks) == 1
    disabled = {h.description: h.disabled_at is not None for h in hooks}
    assert disabled == {"gone": True, "fine": False}
    failed = await store.deliveries(status="failed", channel="webhook", user_id="di", limit=9)
    assert len(failed) == 2


async def test_deleting_an_endpoint_and_test_events(pool: asyncpg.Pool) -> None:
    """A test event reaches its endpoint signed; a deleted endpoint's pending deliveries fail."""
    store = PostgresNotificationStore(pool)
    async with receiver() as hooks:
        hook = await store.add_webhook(hooks.url(), "")
        async with notifier(pool):
            delivery_id = await store.queue_trial(
                hook.id, '{"type":"webhook.test","timestamp":"2026-11-18T00:00:00Z","data":{}}'
            )
            assert delivery_id is not None

            async def received() -> bool:
                return len(hooks.answered()) == 1

            await eventually(received)
        assert hooks.hooks[0].verified(hook.secret)["type"] == "webhook.test"
        await PostgresCrossingStore(pool).record([crossing("ed", WARNING)])
        assert await store.delete_webhook(hook.id)
        assert not await store.delete_webhook(hook.id)
        assert await store.queue_trial(hook.id, "{}") is None
        (failed,) = await store.deliveries(status="failed", channel=None, user_id="ed", limit=5)
        assert failed.last_error == "the endpoint was deleted before delivery"
        assert await store.webhooks() == []


async def test_settled_notifications_past_the_retention_are_pruned_with_their_deliveries(
    pool: asyncpg.Pool,
) -> None:
    """Old and settled goes (with deleted endpoints nothing names); pending or recent stays."""
    store = PostgresNotificationStore(pool)
    kept_hook = await store.add_webhook("https://kept.example/hook", "")
    await PostgresCrossingStore(pool).record(
        [
            crossing(u, kind)
            for u in ("old-a", "old-b", "old-pending", "new")
            for kind in (WARNING, LIMIT_REACHED)
        ]
    )
    gone_hook = await store.add_webhook("https://gone.example/hook", "")
    await store.delete_webhook(gone_hook.id)
    await pool.execute("UPDATE notifications SET prepared_at = now(), payload = '{}'")
    await pool.execute(
        "UPDATE notification_deliveries SET status = 'delivered' WHERE user_id <> 'old-pending'"
    )
    await pool.execute(
        "UPDATE notifications SET created_at = now() - interval '100 days' WHERE user_id <> 'new'"
    )
    await pool.execute(
        "UPDATE notification_webhooks SET deleted_at = now() - interval '100 days' WHERE id = $1",
        gone_hook.id,
    )
    # The notifier's loop delivers nothing here (the endpoint is unreachable) but prunes.
    options = replace(FAST, retention_s=90 * 86400, prune_batch=1, prune_every_s=3600)
    async with notifier(pool, options) as (running, registry):
        assert await running.prune() == 4
        assert await running.prune() == 0
    left = await pool.fetch("SELECT user_id, type FROM notifications ORDER BY seq")
    assert sorted({r["user_id"] for r in left}) == ["new", "old-pending"]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM notification_deliveries WHERE user_id IN ('old-a', 'old-b')"
        )
        == 0
    )
    assert await pool.fetchval("SELECT count(*) FROM notification_deliveries") == 4
    assert [w.id for w in await store.webhooks()] == [kept_hook.id]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM notification_webhooks WHERE id = $1", gone_hook.id
        )
        == 0
    )
    assert registry.get_sample_value("tollgate_notifications_pruned_total") == 4


async def test_a_failed_delivery_sent_again_arrives_with_its_webhook_id(pool: asyncpg.Pool) -> None:
    """Given up while the receiver was down, retried by an admin once it is back: delivered under
    the same `webhook-id`, its attempts counted on, its retry window new."""
    store = PostgresNotificationStore(pool)
    options = replace(FAST, retry_for_s=0.5)
    async with receiver() as hooks, notifier(pool, options):
        hooks.mode = 503
        await store.add_webhook(hooks.url(), "flaky")
        await PostgresCrossingStore(pool).record([crossing("re", WARNING)])

        async def failed() -> list[Delivery]:
            return await store.deliveries(status="failed", channel="webhook", user_id="re", limit=5)

        (gave_up,) = await eventually(failed)
        hooks.mode = 200
        # Past the old window: only the new one keeps it from being given up at once.
        assert await store.retry_delivery(gave_up.id, email=False) == "queued"

        async def delivered() -> list[Delivery]:
            return await store.deliveries(
                status="delivered", channel="webhook", user_id="re", limit=5
            )

        (done,) = await eventually(delivered)
    assert done.id == gave_up.id
    assert done.attempts == gave_up.attempts + 1
    ids = {h.webhook_id for h in hooks.hooks}
    assert ids == {f"msg_{gave_up.id.hex}"}
    assert hooks.answered()[-1].webhook_id == f"msg_{gave_up.id.hex}"


async def test_after_a_rotation_both_secrets_verify_until_the_old_one_expires(
    pool: asyncpg.Pool,
) -> None:
    """While the old secret still signs, a receiver holding either one verifies the delivery;
    once it has expired, only the new one does."""
    store = PostgresNotificationStore(pool)
    async with receiver() as hooks, notifier(pool):
        hook = await store.add_webhook(hooks.url(), "rotating")
        rotated = await store.rotate_secret(hook.id, overlap_s=3600)
        assert rotated is not None
        assert await store.queue_trial(hook.id, '{"type":"webhook.test"}') is not None
        await eventually(lambda: _answered(hooks, 1))
        again = await store.rotate_secret(hook.id, overlap_s=0)
        assert again is not None
        assert await store.queue_trial(hook.id, '{"type":"webhook.test"}') is not None
        await eventually(lambda: _answered(hooks, 2))
    first, second = hooks.answered()
    assert first.verifies(hook.secret)
    assert first.verifies(rotated.secret)
    assert len(first.headers["webhook-signature"].split(" ")) == 2
    assert second.verifies(again.secret)
    assert not second.verifies(rotated.secret)
    assert not second.verifies(hook.secret)
    assert len(second.headers["webhook-signature"].split(" ")) == 1


async def _answered(hooks: WebhookReceiver, count: int) -> bool:
    return len(hooks.answered()) >= count


async def test_an_endpoint_disabled_by_a_410_is_sent_to_again_once_enabled(
    pool: asyncpg.Pool,
) -> None:
    """After a 410 nothing is queued for the endpoint; enabled again, a test event reaches it."""
    store = PostgresNotificationStore(pool)
    async with receiver(410) as hooks, notifier(pool):
        hook = await store.add_webhook(hooks.url(), "was gone")
        assert await store.queue_trial(hook.id, "{}") is not None

        async def disabled() -> bool:
            (listed,) = await store.webhooks()
            return listed.disabled_at is not None

        await eventually(disabled)
        assert await store.queue_trial(hook.id, "{}") is None
        enabled = await store.enable_webhook(hook.id)
        assert enabled is not None
        assert (enabled.disabled_at, enabled.disabled_reason) == (None, None)
        assert await store.queue_trial(hook.id, "{}") is not None
        await eventually(lambda: _answered(hooks, 1))
    assert [h.answered for h in hooks.hooks] == [410, 200]


async def test_a_notification_waits_until_reports_has_read_as_far_as_limits_had(
    pool: asyncpg.Pool,
) -> None:
    """Recorded where limits had read partitions 0 and 3 further than reports' projection, a
    notification is rendered only once reports gets there, so an owner whose entry was on
    partition 3 gets the admin email; past the wait it is rendered anyway."""
    await _add_user(pool, "wu", "wu", "wu@example.com", ["member"])
    seen = LogSeen("usage.events", "epoch-1", {0: 10, 3: 5})
    await PostgresCrossingStore(pool).record([crossing("wu", WARNING)], seen=seen)
    store = PostgresNotificationStore(pool, projection="reports-under-test")
    rendered: list[tuple[str | None, list[str]]] = []

    def preparer(note: Unprepared, directory: Directory) -> Prepared:
        rendered.append((note.user_id, sorted(a.user_id for a in directory.admins)))
        return Prepared("{}")

    async def prepare(wait_s: float = 60) -> int:
        count = await store.prepare(
            limit=10, directory_wait_s=wait_s, admins_wanted=True, preparer=preparer
        )
        return count.notifications

    save = """
        INSERT INTO consumer_offsets (consumer, topic, partition, next_offset, epoch)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (consumer, topic, partition)
        DO UPDATE SET next_offset = EXCLUDED.next_offset, epoch = EXCLUDED.epoch
    """
    assert await prepare() == 0
    await pool.execute(save, "reports-under-test", "usage.events", 0, 10, "epoch-1")
    await pool.execute(save, "reports-under-test", "usage.events", 3, 4, "epoch-1")
    assert await prepare() == 0
    # Another log's positions and another consumer's say nothing about this one.
    await pool.execute(save, "reports-under-test", "usage.events", 3, 99, "epoch-0")
    await pool.execute(save, "someone-else", "usage.events", 3, 99, "epoch-1")
    assert await prepare() == 0
    await _add_user(pool, "wo", "wo", "wo@example.com", ["owner"])
    await pool.execute(save, "reports-under-test", "usage.events", 3, 5, "epoch-1")
    assert await prepare() == 1
    assert rendered == [("wu", ["wo"])]

    await PostgresCrossingStore(pool).record(
        [crossing("wu", LIMIT_REACHED)], seen=replace(seen, positions={7: 1})
    )
    assert await prepare() == 0
    assert await prepare(wait_s=0) == 1

"""The notifier's admin side (endpoints, test events, deliveries): the lists and PostgreSQL alike."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.reports.notifications.domain import TEST
from services.reports.notifications.storage import (
    InMemoryNotificationAdmin,
    NotificationAdmin,
    PostgresNotificationStore,
)
from tests.support import unique


@pytest.fixture
async def admin(own_pool: asyncpg.Pool | None) -> AsyncIterator[NotificationAdmin]:
    """The admin store; endpoints a test leaves behind are deleted, so no later test sends there."""
    store: NotificationAdmin = (
        InMemoryNotificationAdmin() if own_pool is None else PostgresNotificationStore(own_pool)
    )
    before = {h.id for h in await store.webhooks()}
    try:
        yield store
    finally:
        for hook in await store.webhooks():
            if hook.id not in before:
                await store.delete_webhook(hook.id)


def url() -> str:
    """An endpoint address no other test uses."""
    return f"https://{unique('hooks')}.example.com/tollgate"


async def test_an_endpoint_is_listed_with_its_secret_until_deleted(
    admin: NotificationAdmin,
) -> None:
    """Added endpoints are listed oldest first as they were added; a deleted one is not."""
    first = await admin.add_webhook(url(), "first")
    second = await admin.add_webhook(url(), "second")
    assert first.id != second.id
    assert first.secret != second.secret
    mine = [h for h in await admin.webhooks() if h.id in {first.id, second.id}]
    assert mine == [first, second]
    assert mine[0].disabled_at is None
    assert await admin.delete_webhook(first.id) is True
    assert first.id not in {h.id for h in await admin.webhooks()}
    assert await admin.delete_webhook(first.id) is False
    assert await admin.delete_webhook(unique("wh")) is False


async def test_a_test_event_is_a_pending_delivery_to_that_endpoint(
    admin: NotificationAdmin,
) -> None:
    """A test event queues one pending webhook delivery, listed first and counted as pending."""
    hook = await admin.add_webhook(url(), "trial")
    before = (await admin.pending()).get("webhook")
    delivery_id = await admin.queue_trial(hook.id, '{"type": "webhook.test"}')
    assert delivery_id is not None
    newest = await admin.deliveries(status="pending", channel="webhook", user_id=None, limit=1)
    assert [(d.id, d.webhook_id, d.type, d.attempts) for d in newest] == [
        (delivery_id, hook.id, TEST, 0)
    ]
    assert newest[0].delivered_at is None
    pending = (await admin.pending())["webhook"]
    assert pending.count == (before.count if before else 0) + 1
    assert pending.oldest_created_at is not None
    assert pending.oldest_created_at <= newest[0].created_at
    assert await admin.deliveries(status="pending", channel="email", user_id=None, limit=50) == [
        d
        for d in await admin.deliveries(status="pending", channel=None, user_id=None, limit=50)
        if d.channel == "email"
    ]


async def test_deleting_an_endpoint_fails_its_pending_deliveries(admin: NotificationAdmin) -> None:
    """A deleted endpoint's pending test event fails with the reason; no new one can be queued."""
    hook = await admin.add_webhook(url(), "gone")
    delivery_id = await admin.queue_trial(hook.id, "{}")
    assert await admin.delete_webhook(hook.id) is True
    failed = [
        d
        for d in await admin.deliveries(status="failed", channel="webhook", user_id=None, limit=20)
        if d.id == delivery_id
    ]
    assert [(d.status, d.last_error) for d in failed] == [
        ("failed", "the endpoint was deleted before delivery")
    ]
    assert await admin.queue_trial(hook.id, "{}") is None
    assert await admin.queue_trial(unique("wh"), "{}") is None


async def test_the_delivery_list_honours_its_limit_newest_first(admin: NotificationAdmin) -> None:
    """Three test events listed with a limit of two: the two newest, newest first."""
    hook = await admin.add_webhook(url(), "three")
    ids = [await admin.queue_trial(hook.id, "{}") for _ in range(3)]
    newest = await admin.deliveries(status=None, channel="webhook", user_id=None, limit=2)
    assert [d.id for d in newest] == [ids[2], ids[1]]


async def test_only_a_failed_delivery_to_a_live_endpoint_is_sent_again(
    admin: NotificationAdmin,
) -> None:
    """Retry says why not: unknown id, not failed (pending), endpoint deleted, email off."""
    hook = await admin.add_webhook(url(), "retry")
    pending = await admin.queue_trial(hook.id, "{}")
    assert pending is not None
    assert await admin.retry_delivery(uuid.uuid4(), email=True) == "unknown"
    assert await admin.retry_delivery(pending, email=True) == "not_failed"
    assert await admin.delete_webhook(hook.id) is True
    assert await admin.retry_delivery(pending, email=True) == "endpoint_gone"
    (still,) = [
        d
        for d in await admin.deliveries(status=None, channel="webhook", user_id=None, limit=50)
        if d.id == pending
    ]
    assert still.status == "failed"


async def test_a_rotated_secret_replaces_the_listed_one(admin: NotificationAdmin) -> None:
    """Rotation returns the endpoint with a new secret, which the list then holds; a deleted or
    unknown endpoint has none to rotate."""
    hook = await admin.add_webhook(url(), "rotate")
    rotated = await admin.rotate_secret(hook.id, overlap_s=60)
    assert rotated is not None
    assert (rotated.id, rotated.url) == (hook.id, hook.url)
    assert rotated.secret.startswith("whsec_")
    assert rotated.secret != hook.secret
    assert hook.previous_secret_until is None
    assert rotated.previous_secret_until is not None
    left = rotated.previous_secret_until - datetime.now(UTC)
    assert timedelta(seconds=50) < left <= timedelta(seconds=60)
    (listed,) = [h for h in await admin.webhooks() if h.id == hook.id]
    assert (listed.secret, listed.previous_secret_until) == (
        rotated.secret,
        rotated.previous_secret_until,
    )
    assert await admin.rotate_secret(unique("wh"), overlap_s=60) is None
    assert await admin.delete_webhook(hook.id) is True
    assert await admin.rotate_secret(hook.id, overlap_s=60) is None


async def test_enabling_an_endpoint_that_is_not_disabled_changes_nothing(
    admin: NotificationAdmin,
) -> None:
    """Enable answers the endpoint as it is; unknown and deleted endpoints are None."""
    hook = await admin.add_webhook(url(), "enable")
    enabled = await admin.enable_webhook(hook.id)
    assert enabled == hook
    assert await admin.enable_webhook(unique("wh")) is None
    assert await admin.delete_webhook(hook.id) is True
    assert await admin.enable_webhook(hook.id) is None

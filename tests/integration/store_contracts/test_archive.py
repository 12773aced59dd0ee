"""The reports archive as limits reads it back (`ChatArchive`): the list and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from libs.events.models import (
    ApiUsage,
    ApiUsageRecorded,
    ChatUsage,
    ChatUsageRecorded,
    Event,
)
from libs.service.consumer import Consumed
from services.limits.storage import (
    ArchivedChat,
    ChatArchive,
    InMemoryChatArchive,
    PostgresChatArchive,
)
from services.reports.projection import Projector
from tests.support import unique


@dataclass
class Archive:
    """An archive, and how the reports consumer puts events in it (projecting them now)."""

    archive: ChatArchive
    project: Callable[[Sequence[Consumed]], Awaitable[None]]


@pytest.fixture
def archive(pool: asyncpg.Pool | None) -> Archive:
    """The archive under test, filled by the reports projector when it is PostgreSQL."""
    if pool is None:
        memory = InMemoryChatArchive()

        async def keep(items: Sequence[Consumed]) -> None:
            now = datetime.now(UTC)
            memory.rows.extend((now, row) for item in items if (row := archived(item)) is not None)

        return Archive(memory, keep)
    db = pool
    projector = Projector(max_session_hours=24)

    async def project(items: Sequence[Consumed]) -> None:
        async with db.acquire() as conn, conn.transaction():
            await projector.project(conn, items)

    return Archive(PostgresChatArchive(db, page=2), project)


def archived(item: Consumed) -> ArchivedChat | None:
    """What the archive keeps of a chat usage event (None for any other type)."""
    event = item.event
    if not isinstance(event, ChatUsageRecorded):
        return None
    return ArchivedChat(
        identity=event.identity,
        user_id=event.user_id,
        model=event.data.model,
        cost_micros=event.data.cost_micros,
        occurred_at=event.occurred_at,
        partition=item.partition,
        title=event.data.purpose == "title",
        org_id=event.org_id,
    )


def chat(user: str, at: datetime, *, cost: int | None, purpose: str = "chat") -> ChatUsageRecorded:
    """One chat message of `user`."""
    return ChatUsageRecorded(
        id=unique("msg"),
        occurred_at=at,
        user_id=user,
        org_id="acme" if cost else None,
        data=ChatUsage(
            chat_id="c",
            message_id=unique("m"),
            model="m-a",
            input_tokens=1,
            output_tokens=1,
            cache_read_tokens=0,
            cache_write_tokens=0,
            cost_micros=cost,
            purpose=purpose,
        ),
    )


async def test_chat_since_gives_back_the_chat_events_projected_and_occurred_from(
    archive: Archive,
) -> None:
    """Chat messages (titles too) that occurred and were projected from the given times."""
    assert await archive.archive.available() is True
    user = unique("u")
    t0 = datetime(2026, 11, 2, 9, tzinfo=UTC)
    events: list[Event] = [
        chat(user, t0 - timedelta(hours=1), cost=5),
        chat(user, t0, cost=7),
        chat(user, t0 + timedelta(minutes=1), cost=None, purpose="title"),
        chat(user, t0 + timedelta(minutes=2), cost=9),
        ApiUsageRecorded(
            id=unique("api"), occurred_at=t0, user_id=user, data=ApiUsage(client="ui", count=1)
        ),
    ]
    items = [Consumed(e, 3, i, 0) for i, e in enumerate(events)]
    projected_from = datetime.now(UTC) - timedelta(seconds=5)
    await archive.project(items)
    found = [
        row
        async for page in archive.archive.chat_since(
            projected_from=projected_from, occurred_from=t0
        )
        for row in page
        if row.user_id == user
    ]
    expected = [archived(item) for item in items[1:4]]
    assert sorted(found, key=lambda r: r.occurred_at) == expected
    later = [
        row
        async for page in archive.archive.chat_since(
            projected_from=datetime.now(UTC) + timedelta(minutes=1), occurred_from=t0
        )
        for row in page
        if row.user_id == user
    ]
    assert later == []

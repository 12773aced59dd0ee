"""Console sessions and portal token revocations: the dicts and PostgreSQL behave alike."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from libs.service.portal import InMemoryRevocationStore, PostgresRevocationStore, RevocationStore
from services.reports.console.sessions import (
    InMemorySessionStore,
    PostgresSessionStore,
    SessionRow,
    SessionStore,
)
from tests.support import unique

# -- sessions ----------------------------------------------------------------------------------


@pytest.fixture
def sessions(pool: asyncpg.Pool | None) -> SessionStore:
    """The session store under test."""
    return InMemorySessionStore() if pool is None else PostgresSessionStore(pool)


def digest() -> bytes:
    """A session id's digest no other test uses."""
    return hashlib.sha256(unique("session").encode()).digest()


async def test_a_session_reads_back_as_it_was_created(sessions: SessionStore) -> None:
    """Admin and portal sessions come back field for field; an unknown digest is None."""
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=8)
    admin = SessionRow(
        digest(), "admin", expires, token_fingerprint=hashlib.sha256(b"token").digest()
    )
    portal = SessionRow(
        digest(), "portal", expires, portal_user_id=unique("u"), portal_generation=3
    )
    for row in (admin, portal):
        await sessions.create(row)
        assert await sessions.get(row.id_digest) == row
    assert await sessions.get(digest()) is None


async def test_a_session_ends_once(sessions: SessionStore) -> None:
    """Ending keeps the row with its end time; ending it again keeps the first time."""
    row = SessionRow(digest(), "admin", datetime.now(UTC) + timedelta(hours=1))
    await sessions.create(row)
    first = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    await sessions.end(row.id_digest, first)
    await sessions.end(row.id_digest, first + timedelta(minutes=5))
    ended = await sessions.get(row.id_digest)
    assert ended is not None
    assert ended.ended_at == first
    assert ended.role == "admin"
    await sessions.end(digest(), first)


async def test_purging_deletes_only_sessions_that_expired_before_the_cutoff(
    sessions: SessionStore,
) -> None:
    """Rows that expired before the cutoff go and are counted; the others stay, ended or not."""
    # Long before any other test's sessions, so the count is this test's alone.
    cutoff = datetime(2001, 1, 1, tzinfo=UTC)
    old = [SessionRow(digest(), "admin", cutoff - timedelta(days=d)) for d in (1, 2)]
    at_cutoff = SessionRow(digest(), "admin", cutoff)
    live = SessionRow(digest(), "admin", datetime.now(UTC) + timedelta(hours=1))
    for row in (*old, at_cutoff, live):
        await sessions.create(row)
    await sessions.end(live.id_digest, datetime.now(UTC))
    assert await sessions.purge(cutoff) == 2
    assert [await sessions.get(r.id_digest) for r in old] == [None, None]
    assert await sessions.get(at_cutoff.id_digest) == at_cutoff
    assert await sessions.get(live.id_digest) is not None
    assert await sessions.purge(cutoff) == 0


# -- portal token revocations ------------------------------------------------------------------


@pytest.fixture
def revocations(pool: asyncpg.Pool | None) -> RevocationStore:
    """The revocation store under test."""
    return InMemoryRevocationStore() if pool is None else PostgresRevocationStore(pool)


async def test_each_revocation_raises_the_users_generation(revocations: RevocationStore) -> None:
    """A user never revoked is at generation 0; every revocation adds one, for that user only."""
    user, other = unique("u"), unique("u")
    assert await revocations.generation(user) == 0
    assert await revocations.revoke(user) == 1
    assert await revocations.revoke(user) == 2
    assert await revocations.generation(user) == 2
    assert await revocations.generation(other) == 0


async def test_changes_come_back_after_a_version_oldest_first(
    revocations: RevocationStore,
) -> None:
    """`changed_since` lists each changed user once, at its latest version, in version order."""
    start = max((v for _, _, v in await revocations.changed_since(0)), default=0)
    first, second = unique("u"), unique("u")
    await revocations.revoke(first)
    await revocations.revoke(second)
    await revocations.revoke(first)
    mine = {first, second}
    changed = [row for row in await revocations.changed_since(start) if row[0] in mine]
    assert [(u, g) for u, g, _ in changed] == [(second, 1), (first, 2)]
    versions = [v for _, _, v in changed]
    assert versions == sorted(versions)
    assert all(v > start for v in versions)
    latest = versions[-1]
    assert [row for row in await revocations.changed_since(latest) if row[0] in mine] == []

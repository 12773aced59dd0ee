"""Console sessions: a signed, expiring cookie backed by a server-side row that sign-out ends.

The cookie is `v1.<session id>.<expiry>.<signature>` (HMAC-SHA256 under a key derived from
`TOLLGATE_PORTAL_SECRET`): a forged or altered cookie is refused before any database call. The
row, keyed by the SHA-256 of the session id, says who signed in and whether the session has
ended, so signing out ends it on every replica at once. An admin or emitter session keeps a
fingerprint of the token it signed in with (never the token): removing that token from the
configuration ends its sessions too. A portal session keeps its user and that user's portal
token generation, so revoking the user's tokens ends it as well.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol

import asyncpg

from libs.service.portal import derive_key

SessionRole = Literal["admin", "emitter", "portal"]

COOKIE: Final = "tollgate_session"
LOGIN_COOKIE: Final = "tollgate_login"
_VERSION: Final = "v1"
MAX_COOKIE_LENGTH: Final = 512


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SessionRow:
    """What the server keeps about a session."""

    id_digest: bytes
    role: SessionRole
    expires_at: datetime
    token_fingerprint: bytes | None = None
    portal_user_id: str | None = None
    portal_generation: int | None = None
    ended_at: datetime | None = None


class SessionStore(Protocol):
    """Where session rows live."""

    async def create(self, row: SessionRow) -> None:
        """Store a new session."""
        ...

    async def get(self, id_digest: bytes) -> SessionRow | None:
        """The session with this digest, ended or not."""
        ...

    async def end(self, id_digest: bytes, at: datetime) -> None:
        """Mark the session ended."""
        ...

    async def purge(self, before: datetime) -> int:
        """Delete sessions that expired before `before`; return how many."""
        ...


INSERT_SESSION: Final = """
INSERT INTO console_sessions
    (id_digest, role, token_fingerprint, portal_user_id, portal_generation, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)
"""
SELECT_SESSION: Final = """
SELECT id_digest, role, token_fingerprint, portal_user_id, portal_generation, expires_at, ended_at
FROM console_sessions WHERE id_digest = $1
"""
END_SESSION: Final = """
UPDATE console_sessions SET ended_at = $2 WHERE id_digest = $1 AND ended_at IS NULL
"""
PURGE_SESSIONS: Final = "DELETE FROM console_sessions WHERE expires_at < $1"


class PostgresSessionStore:
    """Sessions in `console_sessions`."""

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float = 5.0) -> None:
        self.pool = pool
        self.timeout_s = timeout_s

    async def create(self, row: SessionRow) -> None:
        """Insert the row."""
        await self.pool.execute(
            INSERT_SESSION, row.id_digest, row.role, row.token_fingerprint, row.portal_user_id,
            row.portal_generation, row.expires_at, timeout=self.timeout_s,
        )  # fmt: skip

    async def get(self, id_digest: bytes) -> SessionRow | None:
        """Read the row."""
        found = await self.pool.fetchrow(SELECT_SESSION, id_digest, timeout=self.timeout_s)
        if found is None:
            return None
        return SessionRow(
            id_digest=found["id_digest"],
            role=found["role"],
            expires_at=found["expires_at"],
            token_fingerprint=found["token_fingerprint"],
            portal_user_id=found["portal_user_id"],
            portal_generation=found["portal_generation"],
            ended_at=found["ended_at"],
        )

    async def end(self, id_digest: bytes, at: datetime) -> None:
        """Set `ended_at`."""
        await self.pool.execute(END_SESSION, id_digest, at, timeout=self.timeout_s)

    async def purge(self, before: datetime) -> int:
        """Delete long-expired rows."""
        status = await self.pool.execute(PURGE_SESSIONS, before, timeout=self.timeout_s)
        return int(status.rsplit(" ", 1)[-1])


class InMemorySessionStore:
    """The same in a dict, for unit tests and an app built without PostgreSQL."""

    def __init__(self) -> None:
        self.rows: dict[bytes, SessionRow] = {}

    async def create(self, row: SessionRow) -> None:
        """Keep the row."""
        self.rows[row.id_digest] = row

    async def get(self, id_digest: bytes) -> SessionRow | None:
        """The row, if any."""
        return self.rows.get(id_digest)

    async def end(self, id_digest: bytes, at: datetime) -> None:
        """Mark it ended."""
        row = self.rows.get(id_digest)
        if row is not None and row.ended_at is None:
            self.rows[id_digest] = replace(row, ended_at=at)

    async def purge(self, before: datetime) -> int:
        """Forget expired rows."""
        old = [k for k, r in self.rows.items() if r.expires_at < before]
        for key in old:
            del self.rows[key]
        return len(old)


@dataclass(frozen=True)
class CookieSession:
    """A cookie whose signature and expiry checked out: the id and when it ends."""

    session_id: str
    expires_at: datetime

    @property
    def digest(self) -> bytes:
        """The key of its row."""
        return hashlib.sha256(self.session_id.encode()).digest()


class SessionSigner:
    """Cookie values, CSRF tokens and token fingerprints under the session key."""

    def __init__(self, secret: str) -> None:
        self._key = derive_key(secret, "console session")

    def _mac(self, message: str) -> bytes:
        return hmac.new(self._key, message.encode(), hashlib.sha256).digest()

    def new_session(self, expires_at: datetime) -> tuple[str, CookieSession]:
        """A fresh random session id and its cookie value."""
        session = CookieSession(secrets.token_urlsafe(32), expires_at)
        return self.cookie_value(session), session

    def cookie_value(self, session: CookieSession) -> str:
        """`v1.<id>.<expiry>.<signature>`."""
        body = f"{_VERSION}.{session.session_id}.{int(session.expires_at.timestamp())}"
        return f"{body}.{_b64(self._mac(body))}"

    def read_cookie(self, value: str, now: datetime) -> CookieSession | None:
        """The session a well-signed, unexpired cookie names; None for anything else."""
        if not value or len(value) > MAX_COOKIE_LENGTH:
            return None
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            return None
        body = ".".join(parts[:3])
        try:
            signature = _unb64(parts[3])
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(signature, self._mac(body)):
            return None
        try:
            expires_at = datetime.fromtimestamp(int(parts[2]), UTC)
        except (ValueError, OverflowError, OSError):
            return None
        if expires_at <= now:
            return None
        return CookieSession(parts[1], expires_at)

    def csrf_token(self, session: CookieSession) -> str:
        """The CSRF token of a session: derived, so nothing more is stored."""
        return _b64(self._mac(f"csrf.{session.session_id}"))[:43]

    def csrf_matches(self, session: CookieSession, given: str | None) -> bool:
        """Constant-time comparison with the session's CSRF token."""
        if not given:
            return False
        return hmac.compare_digest(given.encode(), self.csrf_token(session).encode())

    def fingerprint(self, token: str) -> bytes:
        """Identifies a configured token without being usable as one."""
        return self._mac(f"token.{token}")[:16]


def expiry(now: datetime, ttl_s: int) -> datetime:
    """Whole seconds, as the cookie carries them."""
    return (now + timedelta(seconds=ttl_s)).replace(microsecond=0)

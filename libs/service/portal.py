"""Portal tokens: short-lived bearer tokens that read one user's own status and costs.

A token is `tgp_<payload>.<signature>`: the payload is base64url JSON with the user id, the
user's revocation generation, and the issue and expiry times (Unix seconds); the signature is
HMAC-SHA256 under a key derived from `TOLLGATE_PORTAL_SECRET`. Revoking a user's tokens raises
their generation in PostgreSQL; every replica polls the changed rows a few times a second and
refuses tokens that carry an older generation. The token itself is never stored or logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Final, Protocol

import asyncpg
import orjson
import structlog

from libs.service.db import create_pool
from libs.service.errors import DependencyUnavailable, Unauthorized

log = structlog.get_logger(__name__)

PREFIX: Final = "tgp_"
MAX_TOKEN_LENGTH: Final = 2048
MAX_USER_ID_LENGTH: Final = 128
MIN_TTL_S: Final = 60
MAX_TTL_S: Final = 86_400
DEFAULT_TTL_S: Final = 3_600
#: The shortest secret accepted: 32 characters (`openssl rand -hex 32` gives 64).
MIN_SECRET_LENGTH: Final = 32


def derive_key(secret: str, purpose: str) -> bytes:
    """A key for one purpose (`portal token`, `console session`) from the one shared secret."""
    return hmac.new(secret.encode(), f"tollgate {purpose} v1".encode(), hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def valid_user_id(user_id: object) -> bool:
    """1-128 characters with no control characters: what a token may name."""
    return (
        isinstance(user_id, str)
        and 1 <= len(user_id) <= MAX_USER_ID_LENGTH
        and not any(ord(c) < 32 or ord(c) == 127 for c in user_id)
    )


@dataclass(frozen=True)
class PortalClaims:
    """What a verified portal token says."""

    user_id: str
    generation: int
    issued_at: int
    expires_at: int


class PortalTokenError(Exception):
    """A token that is malformed, tampered with, expired or revoked; the message says which."""


class PortalSigner:
    """Signs and checks portal tokens with a key derived from the shared secret."""

    def __init__(self, secret: str) -> None:
        self._key = derive_key(secret, "portal token")

    def _signature(self, payload: str) -> str:
        return _b64(hmac.new(self._key, (PREFIX + payload).encode(), hashlib.sha256).digest())

    def mint(self, user_id: str, *, generation: int, ttl_s: int, now: float) -> PortalClaims:
        """Claims for a new token (see `encode`)."""
        issued = int(now)
        return PortalClaims(user_id, generation, issued, issued + ttl_s)

    def encode(self, claims: PortalClaims) -> str:
        """The token for these claims."""
        body = {
            "sub": claims.user_id,
            "gen": claims.generation,
            "iat": claims.issued_at,
            "exp": claims.expires_at,
        }
        payload = _b64(orjson.dumps(body))
        return f"{PREFIX}{payload}.{self._signature(payload)}"

    def decode(self, token: str, *, now: float) -> PortalClaims:
        """The claims of a well-signed, unexpired token; PortalTokenError otherwise."""
        if not token.startswith(PREFIX) or len(token) > MAX_TOKEN_LENGTH:
            raise PortalTokenError("not a portal token")
        payload, dot, signature = token[len(PREFIX) :].partition(".")
        if not dot or not payload or not signature:
            raise PortalTokenError("malformed portal token")
        if not hmac.compare_digest(signature.encode(), self._signature(payload).encode()):
            raise PortalTokenError("portal token signature does not match")
        try:
            body = orjson.loads(_unb64(payload))
        except (binascii.Error, ValueError) as exc:
            raise PortalTokenError("malformed portal token") from exc
        if not isinstance(body, dict):
            raise PortalTokenError("malformed portal token")
        user_id, generation = body.get("sub"), body.get("gen")
        issued, expires = body.get("iat"), body.get("exp")
        numbers = (generation, issued, expires)
        if not valid_user_id(user_id) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers
        ):
            raise PortalTokenError("malformed portal token")
        assert isinstance(user_id, str)
        assert isinstance(generation, int)
        assert isinstance(issued, int)
        assert isinstance(expires, int)
        if expires <= now:
            raise PortalTokenError("portal token has expired")
        return PortalClaims(user_id, generation, issued, expires)


# -- revocations -------------------------------------------------------------------------------


class RevocationStore(Protocol):
    """Where revocation generations live (PostgreSQL in production)."""

    async def changed_since(self, version: int) -> list[tuple[str, int, int]]:
        """(user_id, generation, version) of every row whose version is above `version`."""
        ...

    async def generation(self, user_id: str) -> int:
        """The user's current generation (0 when never revoked)."""
        ...

    async def revoke(self, user_id: str) -> int:
        """Raise the user's generation; return the new one."""
        ...


SELECT_CHANGED: Final = """
SELECT user_id, generation, version FROM portal_token_revocations
WHERE version > $1 ORDER BY version
"""
SELECT_GENERATION: Final = "SELECT generation FROM portal_token_revocations WHERE user_id = $1"
UPSERT_REVOCATION: Final = """
INSERT INTO portal_token_revocations AS r (user_id, generation) VALUES ($1, 1)
ON CONFLICT (user_id) DO UPDATE
SET generation = r.generation + 1,
    version = nextval('portal_token_revocations_version'),
    revoked_at = now()
RETURNING generation
"""


class PostgresRevocationStore:
    """Revocation generations in `portal_token_revocations`."""

    def __init__(self, pool: asyncpg.Pool, *, timeout_s: float = 5.0) -> None:
        self.pool = pool
        self.timeout_s = timeout_s

    async def changed_since(self, version: int) -> list[tuple[str, int, int]]:
        """Rows changed after `version`, oldest change first."""
        rows = await self.pool.fetch(SELECT_CHANGED, version, timeout=self.timeout_s)
        return [(r["user_id"], r["generation"], r["version"]) for r in rows]

    async def generation(self, user_id: str) -> int:
        """The user's generation now."""
        found = await self.pool.fetchval(SELECT_GENERATION, user_id, timeout=self.timeout_s)
        return int(found or 0)

    async def revoke(self, user_id: str) -> int:
        """One more generation for the user."""
        found = await self.pool.fetchval(UPSERT_REVOCATION, user_id, timeout=self.timeout_s)
        return int(found)


class InMemoryRevocationStore:
    """The same behaviour in a dict, for unit tests."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[int, int]] = {}
        self.version = 0

    async def changed_since(self, version: int) -> list[tuple[str, int, int]]:
        """Rows changed after `version`."""
        found = [(u, g, v) for u, (g, v) in self.rows.items() if v > version]
        return sorted(found, key=lambda row: row[2])

    async def generation(self, user_id: str) -> int:
        """The user's generation now."""
        return self.rows.get(user_id, (0, 0))[0]

    async def revoke(self, user_id: str) -> int:
        """One more generation for the user."""
        self.version += 1
        generation = self.rows.get(user_id, (0, 0))[0] + 1
        self.rows[user_id] = (generation, self.version)
        return generation


class PortalAuthority:
    """Mints, verifies and revokes portal tokens; keeps every user's generation in memory."""

    def __init__(
        self,
        secret: str,
        store: RevocationStore,
        *,
        refresh_s: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = PortalSigner(secret)
        self.store = store
        self.refresh_s = refresh_s
        self._clock = clock
        self._generations: dict[str, int] = {}
        self._version = 0
        self.loaded = False

    def now(self) -> float:
        """Seconds since the epoch."""
        return self._clock()

    async def refresh(self) -> None:
        """Read the rows that changed since the last look."""
        for user_id, generation, version in await self.store.changed_since(self._version):
            self._generations[user_id] = generation
            self._version = max(self._version, version)
        self.loaded = True

    async def refresh_forever(self) -> None:
        """Poll for revocations until cancelled; a failed poll is retried on the next turn."""
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("portal_revocations_refresh_failed", error=type(exc).__name__)
            await asyncio.sleep(self.refresh_s)

    async def mint(self, user_id: str, ttl_s: int) -> tuple[str, PortalClaims]:
        """A token for the user, carrying their current generation."""
        generation = await self.store.generation(user_id)
        claims = self.signer.mint(user_id, generation=generation, ttl_s=ttl_s, now=self.now())
        return self.signer.encode(claims), claims

    def token_for(self, claims: PortalClaims) -> str:
        """Encode given claims (the console re-signs a portal session's claims per call)."""
        return self.signer.encode(claims)

    async def revoke(self, user_id: str) -> int:
        """Invalidate every token the user holds now; takes effect here at once."""
        generation = await self.store.revoke(user_id)
        self._generations[user_id] = max(self._generations.get(user_id, 0), generation)
        return generation

    def current_generation(self, user_id: str) -> int:
        """The newest generation this replica knows for the user."""
        return self._generations.get(user_id, 0)

    def verify(self, token: str) -> PortalClaims:
        """The claims of a valid token; 401 when tampered, expired or revoked, 503 before the
        revocations are loaded."""
        if not self.loaded:
            raise DependencyUnavailable(
                "portal token revocations are not loaded yet; retry shortly", retry_after_s=1
            )
        try:
            claims = self.signer.decode(token, now=self.now())
        except PortalTokenError as exc:
            raise Unauthorized(str(exc)) from None
        if claims.generation < self.current_generation(claims.user_id):
            raise Unauthorized("portal token has been revoked")
        return claims


@asynccontextmanager
async def running_authority(
    secret: str | None,
    database_url: str,
    *,
    refresh_s: float = 0.25,
    store: RevocationStore | None = None,
) -> AsyncIterator[PortalAuthority | None]:
    """A `PortalAuthority` polling its store in the background (None without a secret)."""
    if not secret:
        yield None
        return
    pool: asyncpg.Pool | None = None
    if store is None:
        pool = await create_pool(database_url, max_size=2)
        store = PostgresRevocationStore(pool)
    authority = PortalAuthority(secret, store, refresh_s=refresh_s)
    with suppress(Exception):
        await authority.refresh()
    task = asyncio.create_task(authority.refresh_forever(), name="portal-revocations")
    try:
        yield authority
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        if pool is not None:
            await pool.close()

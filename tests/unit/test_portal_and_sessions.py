"""Portal tokens and console session cookies: signing, expiry, tampering, revocation, CSRF."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from libs.service.errors import DependencyUnavailable, Unauthorized
from libs.service.portal import (
    InMemoryRevocationStore,
    PortalAuthority,
    PortalClaims,
    PortalSigner,
    PortalTokenError,
    derive_key,
    valid_user_id,
)
from libs.service.settings import CommonSettings
from services.reports.console.sessions import (
    CookieSession,
    InMemorySessionStore,
    SessionRow,
    SessionSigner,
)

SECRET = "unit-test-secret-0123456789abcdef0123"
NOW = 1_800_000_000.0


def test_token_round_trip_keeps_every_claim() -> None:
    """A token decodes to the claims it was made from."""
    signer = PortalSigner(SECRET)
    claims = PortalClaims("alice", 3, int(NOW), int(NOW) + 600)
    token = signer.encode(claims)
    assert token.startswith("tgp_")
    assert signer.decode(token, now=NOW + 1) == claims


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
        lambda t: t.replace("tgp_", "tgp_x", 1),
        lambda t: t.split(".")[0],
        lambda t: t + ".x",
        lambda t: "tgp_" + "A" * 3000,
        lambda t: t.replace("tgp_", "", 1),
    ],
)
def test_altered_tokens_are_refused(mutate: object) -> None:
    """Any change to a token, or a token too long, fails to decode."""
    signer = PortalSigner(SECRET)
    token = signer.encode(PortalClaims("alice", 0, int(NOW), int(NOW) + 600))
    assert callable(mutate)
    with pytest.raises(PortalTokenError):
        signer.decode(mutate(token), now=NOW)


def test_expired_tokens_and_other_keys_are_refused() -> None:
    """A token past its expiry, or signed under another secret, is refused with a reason."""
    signer = PortalSigner(SECRET)
    token = signer.encode(PortalClaims("alice", 0, int(NOW), int(NOW) + 60))
    with pytest.raises(PortalTokenError, match="expired"):
        signer.decode(token, now=NOW + 60)
    with pytest.raises(PortalTokenError, match="signature"):
        PortalSigner(SECRET + "x").decode(token, now=NOW)


def test_keys_are_separated_by_purpose() -> None:
    """Portal tokens and sessions use different keys derived from the one secret."""
    assert derive_key(SECRET, "portal token") != derive_key(SECRET, "console session")


@pytest.mark.parametrize(
    ("user_id", "ok"),
    [("alice", True), ("a" * 128, True), ("", False), ("a" * 129, False), ("a\x00", False),
     ("a\nb", False), ("a\x7f", False), (7, False)],
)  # fmt: skip
def test_user_ids_without_control_characters(user_id: object, ok: bool) -> None:
    """Only 1-128 characters without control characters name a user in a token."""
    assert valid_user_id(user_id) is ok


async def test_revocation_refuses_earlier_tokens_and_accepts_later_ones() -> None:
    """After a revocation, tokens minted before it get 401 and a new one works."""
    store = InMemoryRevocationStore()
    clock = [NOW]
    authority = PortalAuthority(SECRET, store, clock=lambda: clock[0])
    with pytest.raises(DependencyUnavailable):
        authority.verify("tgp_x.y")
    await authority.refresh()
    old, _ = await authority.mint("alice", 600)
    assert authority.verify(old).user_id == "alice"
    await authority.revoke("alice")
    with pytest.raises(Unauthorized, match="revoked"):
        authority.verify(old)
    new, claims = await authority.mint("alice", 600)
    assert claims.generation == 1
    assert authority.verify(new).generation == 1
    other, _ = await authority.mint("bob", 600)
    assert authority.verify(other).user_id == "bob"


async def test_a_revocation_on_one_replica_reaches_another_on_refresh() -> None:
    """A second authority on the same store refuses the token after its next poll."""
    store = InMemoryRevocationStore()
    first = PortalAuthority(SECRET, store, clock=lambda: NOW)
    second = PortalAuthority(SECRET, store, clock=lambda: NOW)
    await first.refresh()
    await second.refresh()
    token, _ = await first.mint("alice", 600)
    await first.revoke("alice")
    assert second.verify(token).user_id == "alice"
    await second.refresh()
    with pytest.raises(Unauthorized):
        second.verify(token)


def test_settings_refuse_short_secrets_and_portal_shaped_tokens() -> None:
    """A portal secret under 32 characters, or an API token that looks like a portal token, stops start-up."""
    with pytest.raises(ValidationError, match="32 characters"):
        CommonSettings(DATABASE_URL="x", TOLLGATE_PORTAL_SECRET="short")
    with pytest.raises(ValidationError, match="tgp_"):
        CommonSettings(DATABASE_URL="x", TOLLGATE_ADMIN_TOKENS="tgp_abc")
    assert CommonSettings(DATABASE_URL="x", TOLLGATE_PORTAL_SECRET=" ").portal_secret is None


def test_session_cookie_round_trip_and_refusals() -> None:
    """A cookie reads back to its session; altered, expired or foreign cookies read as nothing."""
    signer = SessionSigner(SECRET)
    now = datetime.fromtimestamp(NOW, UTC)
    value, session = signer.new_session(now + timedelta(hours=1))
    assert signer.read_cookie(value, now) == session
    assert signer.read_cookie(value, now + timedelta(hours=1)) is None
    version, sid, expires, sig = value.split(".")
    assert signer.read_cookie(f"{version}.{sid}.{int(expires) + 10}.{sig}", now) is None
    assert signer.read_cookie(f"{version}.{sid}x.{expires}.{sig}", now) is None
    assert SessionSigner(SECRET + "x").read_cookie(value, now) is None
    for junk in ("", "v1", "v1.a.b.c", "v2.a.1.b", "x" * 600, "v1.a.99999999999999999999.b"):
        assert signer.read_cookie(junk, now) is None


def test_csrf_tokens_belong_to_one_session() -> None:
    """A session's CSRF token matches only that session."""
    signer = SessionSigner(SECRET)
    at = datetime.fromtimestamp(NOW, UTC)
    one, two = CookieSession("one", at), CookieSession("two", at)
    assert signer.csrf_matches(one, signer.csrf_token(one))
    assert not signer.csrf_matches(two, signer.csrf_token(one))
    assert not signer.csrf_matches(one, None)
    assert not signer.csrf_matches(one, "")


async def test_session_store_ends_and_purges() -> None:
    """An ended session stays ended, and expired rows are purged."""
    store = InMemorySessionStore()
    now = datetime.fromtimestamp(NOW, UTC)
    row = SessionRow(b"d", "admin", now + timedelta(hours=1), token_fingerprint=b"f")
    await store.create(row)
    await store.end(b"d", now)
    ended = await store.get(b"d")
    assert ended is not None
    assert ended.ended_at == now
    assert await store.purge(now + timedelta(hours=2)) == 1
    assert await store.get(b"d") is None

"""Token comparison is constant-time: every configured token is compared, whichever matches."""

from __future__ import annotations

import hmac

import pytest

from libs.service import web

TOKENS = ("first-token-aaaa", "second-token-bbbb", "third-token-cccc")


@pytest.mark.parametrize(
    "candidate", ["first-token-aaaa", "third-token-cccc", "nothing-like-it", "", "first"]
)
def test_every_token_is_compared_with_compare_digest(
    monkeypatch: pytest.MonkeyPatch, candidate: str
) -> None:
    """A match, a late match and a miss all make one `hmac.compare_digest` call per token."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    found = web._tokens_match(candidate, TOKENS)
    assert found == (candidate in TOKENS)
    assert [b for _, b in calls] == [t.encode() for t in TOKENS]

"""Tokens and the registration rate limit, with plain numbers for time."""

from __future__ import annotations

import pytest

from flashback.errors import Unauthorized
from flashback.tracker.security import (
    RateLimiter,
    bearer_token,
    hash_token,
    new_peer_id,
    new_token,
    require_bearer,
    token_matches,
)


def test_tokens_are_random_and_only_their_hash_matches() -> None:
    token = new_token()
    assert len(token) >= 43 and token != new_token()
    assert new_peer_id() != new_peer_id()
    digest = hash_token(token)
    assert len(digest) == 32 and token.encode() not in digest
    assert token_matches(token, digest)
    assert not token_matches(token + "x", digest)
    assert not token_matches(None, digest)
    assert not token_matches(token, None)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("", None),
    ],
)
def test_bearer_header_parsing(header: str, expected: str | None) -> None:
    assert bearer_token({"Authorization": header}) == expected


def test_missing_bearer_is_unauthorized() -> None:
    with pytest.raises(Unauthorized):
        require_bearer({})


def test_token_bucket_allows_a_burst_then_the_sustained_rate() -> None:
    limiter = RateLimiter(rate_per_s=2.0, burst=3)
    assert [limiter.acquire("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a", 0.0) == pytest.approx(0.5)
    assert limiter.acquire("b", 0.0) == 0.0  # per address
    assert limiter.acquire("a", 0.5) == 0.0  # one token refilled
    assert limiter.acquire("a", 0.5) > 0
    assert [limiter.acquire("a", 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # capped
    assert limiter.acquire("a", 100.0) > 0


def test_the_bucket_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import flashback.tracker.security as security

    monkeypatch.setattr(security, "MAX_RATE_BUCKETS", 10)
    limiter = RateLimiter(rate_per_s=1.0, burst=1)
    for i in range(100):
        limiter.acquire(f"10.0.0.{i}", float(i) / 1000)
    assert len(limiter._buckets) <= 10

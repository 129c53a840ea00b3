"""Peer tokens and the registration rate limit.

A peer's token is the only proof of its identity: 32 random bytes, handed out
once in the register response. The tracker keeps only its SHA-256 and
compares in constant time, so a leaked database does not let anyone heartbeat,
delete or speak for a peer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final, Protocol

from flashback.errors import Unauthorized

TOKEN_BYTES: Final = 32
PEER_ID_BYTES: Final = 12
MAX_RATE_BUCKETS: Final = 100_000


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_peer_id() -> str:
    return secrets.token_urlsafe(PEER_ID_BYTES)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def token_matches(token: str | None, token_hash: bytes | None) -> bool:
    """Constant-time check; a missing token or hash never matches."""
    if token is None or token_hash is None:
        return False
    return hmac.compare_digest(hash_token(token), token_hash)


class HeaderLookup(Protocol):
    """What the tracker reads from request headers: a dict, or Quart's ``Headers``."""

    def get(self, key: str, /) -> str | None: ...


def bearer_token(headers: HeaderLookup) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    value = headers.get("Authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def require_bearer(headers: HeaderLookup) -> str:
    token = bearer_token(headers)
    if token is None:
        raise Unauthorized("this needs an 'Authorization: Bearer <token>' header")
    return token


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per client address; ``now`` is a parameter (monotonic s).

    Returns 0 when a request may pass, else how many seconds until it would.
    Full buckets are forgotten when the table grows, so a scan of many
    addresses cannot grow memory without bound.
    """

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_RATE_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate_per_s)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s

    def _forget_full(self, now: float) -> None:
        refill_s = self.burst / self.rate_per_s
        stale = [k for k, b in self._buckets.items() if now - b.updated >= refill_s]
        for key in stale:
            del self._buckets[key]
        if len(self._buckets) >= MAX_RATE_BUCKETS:
            # Everyone is active: drop the oldest half rather than grow.
            for key in list(self._buckets)[: MAX_RATE_BUCKETS // 2]:
                del self._buckets[key]

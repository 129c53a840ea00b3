"""A token bucket with time as a parameter: the one rate-limit rule, pure and testable.

``take(now)`` answers whether one unit may pass at monotonic time *now*
(seconds); the bucket refills at ``rate_per_s`` up to ``burst``. Messages
use ``take`` (refuse what does not fit); byte streams use ``charge`` (the
bytes already read are spent at once and the reader waits off the debt).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: float
    tokens: float = field(default=-1.0)
    updated: float | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = float(self.burst)

    def _refill(self, now: float) -> None:
        if self.updated is not None:
            elapsed = max(0.0, now - self.updated)
            self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate_per_s)
        self.updated = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend *cost* tokens if there are that many; False (nothing spent) if not."""
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def charge(self, now: float, cost: float) -> float:
        """Spend *cost* even past zero; seconds until the debt is paid back (0 if none).

        Charging what was read, then sleeping, holds the long-run rate
        whatever the read sizes.
        """
        self._refill(now)
        self.tokens -= cost
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate_per_s

    def wait_s(self, now: float, cost: float = 1.0) -> float:
        """Seconds until *cost* tokens will be there (0 if they are now)."""
        self._refill(now)
        missing = cost - self.tokens
        return 0.0 if missing <= 0 else missing / self.rate_per_s

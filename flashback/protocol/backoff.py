"""Exponential backoff with jitter, as a pure schedule.

Reconnecting clients that all lost the same tracker must not come back in
lock-step: each delay is the exponential step (1 s doubling to 30 s by
default) scaled by a random factor in ``[1 - jitter, 1]``. The random source
is a parameter so tests assert exact delays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final, Protocol

INITIAL_DELAY_S: Final = 1.0
MAX_DELAY_S: Final = 30.0
JITTER_FRACTION: Final = 0.25


class RandomSource(Protocol):
    def random(self) -> float: ...


@dataclass
class Backoff:
    initial_s: float = INITIAL_DELAY_S
    max_s: float = MAX_DELAY_S
    jitter: float = JITTER_FRACTION
    rng: RandomSource = field(default_factory=random.Random)
    attempts: int = 0

    def step_s(self, attempt: int) -> float:
        """The un-jittered delay before retry number *attempt* (0-based)."""
        return min(self.max_s, self.initial_s * 2.0 ** min(attempt, 62))

    def next_delay_s(self) -> float:
        delay = self.step_s(self.attempts) * (1 - self.jitter * self.rng.random())
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0

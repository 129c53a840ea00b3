"""When a stream port has done its job: sans-IO, time is a parameter.

The port task feeds this class the start and end of every right-token
response with the current time; the class answers whether the port has
*completed* (its responses covered the whole file) and when it *expires*.
Keeping the rules here, free of sockets and clocks, lets the tests walk
through a resume or an expiry with plain numbers.
"""

from __future__ import annotations

import math


class PortLifetime:
    """Coverage of the file by sent bytes, plus an idle deadline.

    ``begin``/``end`` bracket one right-token response. ``end`` gets how many
    body bytes really left (``sent``, counted from ``first``), also for a
    response the client broke off: those bytes count, since a resume starts
    where the client's copy ends, which is never after what we sent.
    """

    def __init__(self, size: int, expires_in_s: float, now: float) -> None:
        if size < 0 or expires_in_s <= 0:
            raise ValueError("size must be >= 0 and expires_in_s > 0")
        self.size = size
        self.expires_in_s = expires_in_s
        self.deadline = now + expires_in_s
        self.active = 0
        self.bytes_sent = 0
        self._covered: list[tuple[int, int]] = []  # merged half-open [start, end)
        self._bodies_finished = 0
        self._resume_reached_end = False

    def begin(self) -> None:
        self.active += 1

    def end(
        self,
        now: float,
        *,
        first: int = 0,
        sent: int = 0,
        body: bool = False,
        resume: bool = False,
    ) -> None:
        """One response is over: count its bytes and restart the idle clock.

        *body* is True for a GET whose response (200/206) was meant to carry
        file bytes; HEAD and 416 pass False and only restart the clock.
        *resume* marks a ranged GET whose ``If-Range`` matched: a client
        finishing a copy it began earlier (on this port or an older one), so
        reaching the last byte completes the port even though this port never
        sent the beginning. A player probing the tail sends no If-Range.
        """
        if self.active <= 0:
            raise RuntimeError("end() without begin()")
        self.active -= 1
        self.deadline = max(self.deadline, now + self.expires_in_s)
        if not body:
            return
        self._bodies_finished += 1
        self.bytes_sent += sent
        if sent > 0:
            self._cover(first, first + sent)
        if resume and first + sent >= self.size:
            self._resume_reached_end = True

    def _cover(self, start: int, stop: int) -> None:
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self._covered, (start, min(stop, self.size))]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self._covered = merged

    @property
    def covered_bytes(self) -> int:
        return sum(b - a for a, b in self._covered)

    @property
    def completed(self) -> bool:
        """Every byte went out at least once (an empty file: one GET went out),
        or a resumed download (If-Range) reached the end of the file."""
        if self._resume_reached_end:
            return True
        return self._bodies_finished > 0 and self.covered_bytes >= self.size

    def expired(self, now: float) -> bool:
        return not self.completed and self.active == 0 and now >= self.deadline

    def wake_at(self) -> float:
        """When to look again if nothing happens: never while a response runs."""
        return math.inf if self.active else self.deadline

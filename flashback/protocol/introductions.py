"""Which introductions got a route report, and by which route (§10.3), pure.

The tracker introduces two peers with a pair of ``tunnel-invite`` messages;
each side later says which route won with ``route-report {request_id,
route}``. ``/metrics`` counts an introduction once, at its first report
(``flashback_tracker_introductions_total``), and once more if any side
reports ``direct`` (``flashback_tracker_introductions_direct_total``).

Only a side of an introduction is heard: a ``request_id`` is the
requester's own name for it (not unique across peers), so an introduction
is found by ``(request_id, reporter)``, and a stranger's report for someone
else's ``request_id`` finds nothing. The table is bounded like every table a
stranger can fill: a :class:`~flashback.protocol.fairshare.FairShare` per
requester peer id (its newest introduction pushes out its own oldest; a
full table drops the heaviest requester's oldest, never a newcomer's), and
an introduction is forgotten :data:`REPORT_WINDOW_S` after it was made.
No clock: ``now`` is an argument.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Final, Literal

from flashback.protocol.fairshare import FairShare

#: introductions remembered at once, and per requester
MAX_INTRODUCTIONS: Final = 4096
MAX_INTRODUCTIONS_PER_PEER: Final = 64
#: a report later than this after its introduction is not counted
REPORT_WINDOW_S: Final = 300.0

Route = Literal["direct", "relay"]


@dataclass(slots=True)
class _Introduction:
    request_id: str
    requester: str
    owner: str
    made_at: float
    reported: bool = False
    direct: bool = False


@dataclass(frozen=True, slots=True)
class Counted:
    """What one report adds to the two counters."""

    introduction: bool = False
    direct: bool = False


class IntroductionTable:
    def __init__(
        self,
        capacity: int = MAX_INTRODUCTIONS,
        per_requester: int = MAX_INTRODUCTIONS_PER_PEER,
        *,
        window_s: float = REPORT_WINDOW_S,
    ) -> None:
        self.window_s = window_s
        self._share: FairShare[str, int] = FairShare(capacity, per_requester)
        self._by_id: dict[int, _Introduction] = {}
        # (request_id, side) -> introduction id, for both sides
        self._by_side: dict[tuple[str, str], int] = {}
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._by_id)

    def introduce(self, request_id: str, requester: str, owner: str, now: float) -> None:
        """Both invites of *request_id* went out: each side may now report once."""
        self._expire(now)
        old = self._by_side.get((request_id, requester))
        if old is not None and self._by_id[old].requester == requester:
            self._forget(old)  # the requester reused its request_id: the newer one counts
        key = next(self._ids)
        admitted = self._share.admit(requester, key)
        if admitted.evicted is not None:
            self._forget(admitted.evicted[1])
        self._by_id[key] = _Introduction(request_id, requester, owner, now)
        self._by_side[(request_id, requester)] = key
        # Two requesters may pick the same request_id for one owner; the owner's
        # report (which names only the request_id) goes to the newest of them.
        self._by_side[(request_id, owner)] = key

    def report(self, request_id: str, reporter: str, route: Route, now: float) -> Counted:
        """A side's report; nothing for a stranger, a late or a repeated report."""
        key = self._by_side.get((request_id, reporter))
        intro = None if key is None else self._by_id.get(key)
        if intro is None or now - intro.made_at >= self.window_s:
            return Counted()
        first = not intro.reported
        direct = route == "direct" and not intro.direct
        intro.reported = True
        intro.direct = intro.direct or route == "direct"
        return Counted(first, direct)

    def _expire(self, now: float) -> None:
        # oldest first (insertion order): stop at the first one still inside the window
        while self._by_id:
            key, intro = next(iter(self._by_id.items()))
            if now - intro.made_at < self.window_s:
                return
            self._forget(key)

    def _forget(self, key: int) -> None:
        intro = self._by_id.pop(key, None)
        self._share.release(key)
        if intro is None:
            return
        for side in (intro.requester, intro.owner):
            if self._by_side.get((intro.request_id, side)) == key:
                del self._by_side[(intro.request_id, side)]

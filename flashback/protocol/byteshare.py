""":class:`~flashback.protocol.fairshare.FairShare`'s rule, counted in bytes.

Some shared budgets are bytes, not entries: the frames the tracker has
handed to websockets that do not read, the peer lists it is sending to HTTP
clients that do not read. Each entry (one frame, one response) belongs to a
*holder* (a client address) and has a size; :class:`ByteShare` keeps

- a holder under ``per_holder`` bytes: past it, *its own* oldest entries go;
- the table under ``capacity`` bytes: past it, the oldest entry of the
  **heaviest holder** (most bytes; on a tie, the one whose oldest entry is
  oldest) goes -- never the newcomer's first entry.

Unlike a table entry, the memory of a frame being sent is not free the
moment the tracker decides it should be: a send in progress ends when the
kernel gives up on the socket. So an entry chosen to go is only
*condemned*: the caller ends its link, and the entry still counts until the
caller :meth:`release`\\ s it. :meth:`admit` condemns as much as the newcomer
needs and admits it when it fits; if it does not fit yet it answers
``admitted=False`` with nothing to do but wait for a release and ask again
(the condemned entries are already on their way out). An entry larger than
a holder's share is refused outright. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

H = TypeVar("H", bound=Hashable)
K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Admission(Generic[H, K]):
    """What :meth:`ByteShare.admit` did.

    *victims*: entries newly condemned (the caller ends them); *admitted*: the
    entry is in; *refused*: it never will be (larger than a holder's share).
    """

    admitted: bool
    victims: tuple[tuple[H, K], ...] = ()
    refused: bool = False


class ByteShare(Generic[H, K]):
    def __init__(self, capacity: int, per_holder: int) -> None:
        if capacity < 1 or per_holder < 1:
            raise ValueError("capacity and per_holder are at least 1")
        self.capacity = capacity
        self.per_holder = min(per_holder, capacity)
        self.total = 0
        self._condemned_bytes = 0
        self._by_holder: dict[H, OrderedDict[K, int]] = {}  # oldest first
        self._bytes_of: dict[H, int] = {}
        self._holder_of: dict[K, H] = {}
        self._order: dict[K, int] = {}
        self._arrivals = 0
        self._condemned: set[K] = set()

    def __len__(self) -> int:
        return len(self._holder_of)

    def __contains__(self, key: object) -> bool:
        return key in self._holder_of

    def held(self, holder: H) -> int:
        """Bytes *holder* holds, condemned entries included."""
        return self._bytes_of.get(holder, 0)

    def is_condemned(self, key: K) -> bool:
        return key in self._condemned

    def admit(self, holder: H, key: K, size: int) -> Admission[H, K]:
        """Admit *key* of *size* bytes for *holder*, condemning by the rule above."""
        if key in self._holder_of:
            raise ValueError("that key is already in the table")
        if size > self.per_holder:
            return Admission(False, refused=True)
        victims: list[tuple[H, K]] = []
        # its own share first: the holder's own oldest pays for its newest
        while self._live_bytes(holder) + size > self.per_holder:
            oldest = self._oldest_live(holder)
            if oldest is None:
                break
            victims.append(self._condemn(holder, oldest))
        # then the table: the heaviest holder's oldest, until it will fit
        while self.total - self._condemned_bytes + size > self.capacity:
            heaviest = self._heaviest_live()
            if heaviest is None:
                break
            victims.append(heaviest)
        fits = self.total + size <= self.capacity and self.held(holder) + size <= self.per_holder
        if fits:
            self._by_holder.setdefault(holder, OrderedDict())[key] = size
            self._bytes_of[holder] = self.held(holder) + size
            self._holder_of[key] = holder
            self._order[key] = self._arrivals
            self._arrivals += 1
            self.total += size
        return Admission(fits, tuple(victims))

    def release(self, key: K) -> H | None:
        """The entry's bytes are free (its send ended); unknown keys are fine."""
        holder = self._holder_of.pop(key, None)
        if holder is None:
            return None
        entries = self._by_holder[holder]
        size = entries.pop(key)
        del self._order[key]
        self.total -= size
        if key in self._condemned:
            self._condemned.discard(key)
            self._condemned_bytes -= size
        left = self._bytes_of[holder] - size
        if entries:
            self._bytes_of[holder] = left
        else:
            del self._by_holder[holder]
            del self._bytes_of[holder]
        return holder

    # -- internals -----------------------------------------------------------------

    def _live_bytes(self, holder: H) -> int:
        entries = self._by_holder.get(holder)
        if entries is None:
            return 0
        return sum(size for key, size in entries.items() if key not in self._condemned)

    def _oldest_live(self, holder: H) -> K | None:
        for key in self._by_holder.get(holder, {}):
            if key not in self._condemned:
                return key
        return None

    def _condemn(self, holder: H, key: K) -> tuple[H, K]:
        self._condemned.add(key)
        self._condemned_bytes += self._by_holder[holder][key]
        return holder, key

    def _heaviest_live(self) -> tuple[H, K] | None:
        best: tuple[int, int, H, K] | None = None
        for holder in self._by_holder:
            oldest = self._oldest_live(holder)
            if oldest is None:
                continue
            rank = (self._bytes_of[holder], -self._order[oldest], holder, oldest)
            if best is None or rank[:2] > best[:2]:
                best = rank
        if best is None:
            return None
        return self._condemn(best[2], best[3])

""":class:`~flashback.protocol.fairshare.FairShare`'s rule, counted in bytes.

Some shared budgets are bytes, not entries: the frames the tracker has
handed to websockets that do not read, the peer lists it is sending to HTTP
clients that do not read. Each entry (one frame, one response) belongs to a
*holder* (a client address) and has a size; :class:`ByteShare` keeps

- a holder under ``per_holder`` bytes: past it, *its own* oldest entries go;
- the table under ``capacity`` bytes: past it, the oldest entry of the
  **heaviest holder** (most bytes; on a tie, the one whose oldest entry is
  oldest) goes -- never the newcomer, while anyone else holds as much.

Unlike a table entry, the memory of a frame being sent is not free the
moment the tracker decides it should go: a send in progress ends when the
kernel gives up on the socket. So an entry has a state:

- ``live``: admitted, its bytes in use;
- ``condemned``: chosen to go; the caller ends its link, and its bytes still
  count until the caller :meth:`release`\\ s it;
- ``pending``: a newcomer waiting for condemned bytes to drain. It counts
  like the others (so it can be chosen to go too, and then simply leaves
  the table), and becomes ``live`` once it fits.

:meth:`admit` condemns as much as the newcomer needs; the newcomer is
refused only when its own holder's waiting entries already fill that
holder's share, or when it is larger than a share. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

H = TypeVar("H", bound=Hashable)
K = TypeVar("K", bound=Hashable)

State = Literal["live", "condemned", "pending"]


@dataclass(frozen=True, slots=True)
class Admission(Generic[H, K]):
    """What :meth:`ByteShare.admit` did.

    *victims*: entries chosen to go (the caller ends their links; a pending
    one has already left the table); *admitted*: the newcomer is live now;
    *refused*: it is not in the table at all.
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
        self.total = 0  # every entry's bytes, whatever its state
        self.in_use = 0  # live and condemned: memory actually held
        self._condemned_bytes = 0
        self._by_holder: dict[H, OrderedDict[K, int]] = {}  # oldest first
        self._bytes_of: dict[H, int] = {}
        self._holder_of: dict[K, H] = {}
        self._state: dict[K, State] = {}
        self._order: dict[K, int] = {}
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._holder_of)

    def __contains__(self, key: object) -> bool:
        return key in self._holder_of

    def held(self, holder: H) -> int:
        """Bytes *holder* has in the table, in any state."""
        return self._bytes_of.get(holder, 0)

    def state(self, key: K) -> State | None:
        return self._state.get(key)

    def admit(self, holder: H, key: K, size: int) -> Admission[H, K]:
        """Add *key* of *size* bytes for *holder*, choosing victims by the rule above."""
        if key in self._holder_of:
            raise ValueError("that key is already in the table")
        if size > self.per_holder:
            return Admission(False, refused=True)
        self._add(holder, key, size, "pending")
        victims: list[tuple[H, K]] = []
        # its own share first: the holder's own oldest pays for its newest
        while self.held(holder) - self._condemned_of(holder) > self.per_holder:
            oldest = self._oldest_standing(holder, besides=key)
            if oldest is None:  # its share is all waiting or on its way out
                self._remove(key)
                return Admission(False, tuple(victims), refused=True)
            victims.append(self._choose(holder, oldest))
        # then the table: the heaviest holder's oldest, until everyone fits
        while self.total - self._condemned_bytes > self.capacity:
            heaviest = self._heaviest_standing(besides=key)
            if heaviest is None:
                break
            victims.append(self._choose(*heaviest))
        self._promote()
        return Admission(self._state.get(key) == "live", tuple(victims))

    def release(self, key: K) -> H | None:
        """The entry's bytes are free (its send ended, or it stopped waiting);
        waiting entries that fit now become live. Unknown keys are fine."""
        holder = self._remove(key)
        if holder is not None:
            self._promote()
        return holder

    # -- internals -----------------------------------------------------------------

    def _add(self, holder: H, key: K, size: int, state: State) -> None:
        self._by_holder.setdefault(holder, OrderedDict())[key] = size
        self._bytes_of[holder] = self.held(holder) + size
        self._holder_of[key] = holder
        self._state[key] = state
        self._order[key] = self._arrivals
        self._arrivals += 1
        self.total += size

    def _remove(self, key: K) -> H | None:
        holder = self._holder_of.pop(key, None)
        if holder is None:
            return None
        entries = self._by_holder[holder]
        size = entries.pop(key)
        state = self._state.pop(key)
        del self._order[key]
        self.total -= size
        if state != "pending":
            self.in_use -= size
        if state == "condemned":
            self._condemned_bytes -= size
        if entries:
            self._bytes_of[holder] -= size
        else:
            del self._by_holder[holder]
            del self._bytes_of[holder]
        return holder

    def _promote(self) -> None:
        for key, state in list(self._state.items()):  # arrival order
            if state != "pending":
                continue
            holder = self._holder_of[key]
            size = self._by_holder[holder][key]
            if (
                self.in_use + size <= self.capacity
                and self._in_use_of(holder) + size <= self.per_holder
            ):
                self._state[key] = "live"
                self.in_use += size

    def _in_use_of(self, holder: H) -> int:
        entries = self._by_holder.get(holder)
        if entries is None:
            return 0
        return sum(size for key, size in entries.items() if self._state[key] != "pending")

    def _condemned_of(self, holder: H) -> int:
        entries = self._by_holder.get(holder)
        if entries is None:
            return 0
        return sum(size for key, size in entries.items() if self._state[key] == "condemned")

    def _oldest_standing(self, holder: H, *, besides: K) -> K | None:
        """The holder's oldest entry not already on its way out (other than *besides*)."""
        for key in self._by_holder.get(holder, {}):
            if key != besides and self._state[key] != "condemned":
                return key
        return None

    def _heaviest_standing(self, *, besides: K) -> tuple[H, K] | None:
        best: tuple[int, int, H, K] | None = None
        for holder in self._by_holder:
            oldest = self._oldest_standing(holder, besides=besides)
            if oldest is None:
                continue
            rank = (self._bytes_of[holder], -self._order[oldest], holder, oldest)
            if best is None or rank[:2] > best[:2]:
                best = rank
        return None if best is None else (best[2], best[3])

    def _choose(self, holder: H, key: K) -> tuple[H, K]:
        """*key* goes: a pending entry leaves now, a live one is condemned."""
        if self._state[key] == "pending":
            self._remove(key)
        else:
            self._state[key] = "condemned"
            self._condemned_bytes += self._by_holder[holder][key]
        return holder, key

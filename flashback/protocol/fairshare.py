"""One rule for every shared table: a fair share per holder, and the heaviest pays.

A table that strangers fill (tunnel sessions, join-phase connections, owner
tunnels, stream ports, websocket send budgets...) must not be one holder's
to take. Each entry belongs to a *holder* -- a peer id, a source address --
and :class:`FairShare` keeps two bounds:

- a holder never has more than ``per_holder`` entries: its newest entry
  pushes out *its own* oldest one (a reconnecting peer rotates within its
  share, it does not grow past it);
- the table never has more than ``capacity`` entries: when it is full, the
  oldest entry of the **heaviest holder** (most entries; on a tie, the one
  whose oldest entry is oldest) makes room -- never the newcomer's first
  entry, so one flood cannot lock out an honest holder that arrives later.

Callers that must refuse rather than evict (a table of things that cannot be
taken back) ask :meth:`would_evict` first. Pure: no clock, no I/O; order of
arrival is the only notion of age, so the tests use plain numbers.

A holder that is a network address is named by :func:`share_address`, the
one rule for which addresses count as one.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

H = TypeVar("H", bound=Hashable)
K = TypeVar("K", bound=Hashable)


def share_address(host: str) -> str:
    """The address whose share a client at *host* counts against.

    IPv4 as it is; IPv6 by its /64 (one subscriber is given a whole /64, so
    counting single IPv6 addresses would give one attacker 2**64 shares; a
    zone is dropped); an IPv4-mapped IPv6 address (a dual-stack listener's
    view of an IPv4 client) as that IPv4 address. Anything that is no IP
    address (a Unix socket, "unknown") is counted as given.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(frozen=True, slots=True)
class Admitted(Generic[H, K]):
    """An entry went in; *evicted* is the (holder, key) that made room, if any."""

    evicted: tuple[H, K] | None


class FairShare(Generic[H, K]):
    def __init__(self, capacity: int, per_holder: int) -> None:
        if capacity < 1 or per_holder < 1:
            raise ValueError("capacity and per_holder are at least 1")
        self.capacity = capacity
        self.per_holder = min(per_holder, capacity)
        # holder -> its keys, oldest first; every key also in _holder_of
        self._by_holder: dict[H, OrderedDict[K, None]] = {}
        self._holder_of: dict[K, H] = {}

    def __len__(self) -> int:
        return len(self._holder_of)

    def __contains__(self, key: object) -> bool:
        return key in self._holder_of

    def count(self, holder: H) -> int:
        keys = self._by_holder.get(holder)
        return 0 if keys is None else len(keys)

    def holder_of(self, key: K) -> H | None:
        return self._holder_of.get(key)

    def holders(self) -> Iterator[tuple[H, int]]:
        for holder, keys in self._by_holder.items():
            yield holder, len(keys)

    def would_evict(self, holder: H) -> tuple[H, K] | None:
        """The entry that admitting one more for *holder* would push out, or None."""
        own = self._by_holder.get(holder)
        if own is not None and len(own) >= self.per_holder:
            return holder, next(iter(own))
        if len(self._holder_of) < self.capacity:
            return None
        return self._heaviest_oldest()

    def admit(self, holder: H, key: K) -> Admitted[H, K]:
        """Add *key* for *holder*, evicting by the rule above; a known key is refreshed."""
        if key in self._holder_of:
            self.release(key)
        victim = self.would_evict(holder)
        if victim is not None:
            self.release(victim[1])
        self._by_holder.setdefault(holder, OrderedDict())[key] = None
        self._holder_of[key] = holder
        return Admitted(victim)

    def release(self, key: K) -> H | None:
        """Forget *key* (gone, closed, expired); returns its holder. Unknown keys are fine."""
        holder = self._holder_of.pop(key, None)
        if holder is None:
            return None
        keys = self._by_holder[holder]
        del keys[key]
        if not keys:
            del self._by_holder[holder]
        return holder

    def _heaviest_oldest(self) -> tuple[H, K]:
        # Ties go to the holder whose oldest entry arrived first: insertion
        # order of _holder_of is arrival order, so compare positions lazily.
        order = {key: position for position, key in enumerate(self._holder_of)}
        holder, keys = max(
            self._by_holder.items(),
            key=lambda item: (len(item[1]), -order[next(iter(item[1]))]),
        )
        return holder, next(iter(keys))

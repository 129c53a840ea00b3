"""The tracker's feed rules, sans-IO: the one place each of them is written down.

Every store of presence (the in-process :class:`~flashback.protocol.registry.Registry`,
the Redis scripts and their follower, the daemon's
:class:`~flashback.protocol.peer_table.PeerTable`) follows these rules
instead of restating them:

- :class:`Listing` and :func:`is_change`: what a peer says about itself, and
  the one definition of a change (``last_seen`` moves with heartbeats; it is
  not part of it). Redis compares :meth:`Listing.canonical` texts in Lua,
  which is this same rule.
- :func:`place`: where a numbered change falls after the ``seq`` we hold
  (a repeat, the next one, or a gap).
- :class:`ChangeLog`: ``seq`` and the bounded, contiguous backlog that answers
  :meth:`ChangeLog.changes_since` (or ``None``: send a snapshot).
- :class:`LinkCount`: open identified websocket links per peer (a linked peer
  is alive without heartbeats).
- :func:`route_relay`, :func:`forwarded` and :func:`refusal`: where a relayed
  message goes (deliver here, forward to the instance holding the link, or
  bounce ``unknown_peer`` to its sender).

No I/O and no clock: tests pass plain numbers.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from flashback.protocol.messages import (
    Candidate,
    Change,
    FileStreamReady,
    PeerInfo,
    StreamError,
    StreamRequest,
    TunnelErrorMessage,
)

# -- what counts as a change -------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """A peer's self-description from its registration: the compared part of a presence.

    ``direct`` is what the peer registered for its direct endpoint (§10.2);
    ``reflexive`` is not registered but observed: the source address the
    tunnel port saw on the peer's ``FLASHBACK-REFLECT`` line. Both are part
    of the compared state, so a move of either is a ``peer-updated``.
    """

    name: str
    host: str
    port: int
    capabilities: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None
    direct: tuple[Candidate, ...] = ()
    reflexive: Candidate | None = None

    @classmethod
    def of(cls, peer: PeerInfo) -> Listing:
        return cls(
            peer.name,
            peer.host,
            peer.port,
            peer.capabilities,
            peer.fingerprint,
            peer.direct,
            peer.reflexive,
        )

    @classmethod
    def from_canonical(cls, text: str) -> Listing:
        data = json.loads(text)
        # records written before fingerprints (or direct endpoints) existed have none
        reflexive = data.get("reflexive")
        return cls(
            data["name"],
            data["host"],
            data["port"],
            data["capabilities"],
            data.get("fingerprint"),
            tuple(Candidate(c["host"], c["port"]) for c in data.get("direct", ())),
            None if reflexive is None else Candidate(reflexive["host"], reflexive["port"]),
        )

    def canonical(self) -> str:
        """Canonical JSON: two listings are the same peer state iff these texts are equal.

        ``direct`` and ``reflexive`` appear only when set, so the text of a
        peer without a direct endpoint is what it was before they existed (a
        shared store's records do not all "change" on an upgrade).
        """
        data: dict[str, Any] = {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "capabilities": self.capabilities,
            "fingerprint": self.fingerprint,
        }
        if self.direct:
            data["direct"] = [c.dump() for c in self.direct]
        if self.reflexive is not None:
            data["reflexive"] = self.reflexive.dump()
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def reregistered(self, old: Listing | None) -> Listing:
        """This registration as recorded over *old*: a registration never names
        ``reflexive`` (the tracker observes it), so the old one is kept -- unless
        the registered endpoints moved, when it describes a mapping of an
        address or port the peer no longer listens on and is dropped until the
        peer reflects again."""
        keep = old is not None and old.direct == self.direct
        reflexive = old.reflexive if keep and old is not None else None
        return dataclasses.replace(self, reflexive=reflexive)

    def reflected(self, seen: Candidate) -> Listing:
        """This listing with *seen* as its reflexive address."""
        return dataclasses.replace(self, reflexive=seen)

    def peer_info(self, peer_id: str, *, registered_at: str, last_seen: str) -> PeerInfo:
        return PeerInfo(
            peer_id=peer_id,
            name=self.name,
            host=self.host,
            port=self.port,
            capabilities=self.capabilities,
            registered_at=registered_at,
            last_seen=last_seen,
            fingerprint=self.fingerprint,
            direct=self.direct,
            reflexive=self.reflexive,
        )


def is_change(old: Listing | None, new: Listing) -> bool:
    """A (re-)registration or reflection is a change when the peer is new or any
    listed field moved (``direct`` and ``reflexive`` included)."""
    return old is None or old.canonical() != new.canonical()


# -- seq order ---------------------------------------------------------------------

Placement = Literal["repeat", "next", "gap"]


def place(held_seq: int, change_seq: int) -> Placement:
    """Where a change numbered *change_seq* falls after the *held_seq* we have applied.

    A repeat (at or below) was already applied (a replay overlaps the live
    feed); the next one is applied; anything further ahead means something was
    missed and the follower must resync.
    """
    if change_seq <= held_seq:
        return "repeat"
    return "next" if change_seq == held_seq + 1 else "gap"


class ChangeLog:
    """``seq`` and the most recent changes, contiguous, ending at ``seq``."""

    def __init__(self, backlog_changes: int, *, seq: int = 0) -> None:
        if backlog_changes < 1:
            raise ValueError("backlog_changes must be positive")
        self._seq = seq
        self._backlog: deque[Change] = deque(maxlen=backlog_changes)

    @property
    def seq(self) -> int:
        return self._seq

    def append(self, change: Change) -> None:
        """Record the change numbered ``seq + 1`` (anything else is a caller's bug)."""
        if place(self._seq, change.seq) != "next":
            raise ValueError(f"change {change.seq} does not follow seq {self._seq}")
        self._backlog.append(change)
        self._seq = change.seq

    def reset(self, seq: int, history: Iterable[Change] = ()) -> None:
        """Start over at *seq*; *history* (oldest first) becomes the backlog only
        where it is contiguous and ends exactly at *seq*."""
        self._seq = seq
        self._backlog.clear()
        for change in history:
            if self._backlog and place(self._backlog[-1].seq, change.seq) != "next":
                self._backlog.clear()
            self._backlog.append(change)
        if self._backlog and self._backlog[-1].seq != seq:
            self._backlog.clear()

    def changes_since(self, last_seq: int | None) -> list[Change] | None:
        """Every change after *last_seq* in order, or ``None``: send a snapshot.

        ``None`` also answers a ``last_seq`` from the future (an earlier run
        whose counter we cannot vouch for) or one older than the backlog.
        """
        if last_seq is None or last_seq > self._seq:
            return None
        if last_seq == self._seq:
            return []
        if not self._backlog or self._backlog[0].seq > last_seq + 1:
            return None
        # The backlog is contiguous: the index of last_seq + 1 is a subtraction.
        start = last_seq + 1 - self._backlog[0].seq
        return [self._backlog[i] for i in range(start, len(self._backlog))]


# -- links -------------------------------------------------------------------------


class LinkCount:
    """Open identified links per peer id: a peer with one is alive without heartbeats."""

    def __init__(self) -> None:
        self._links: dict[str, int] = {}

    def __iter__(self) -> Iterator[str]:
        return iter(self._links)

    def __len__(self) -> int:
        return len(self._links)

    def is_linked(self, peer_id: str) -> bool:
        return self._links.get(peer_id, 0) > 0

    def attach(self, peer_id: str) -> None:
        self._links[peer_id] = self._links.get(peer_id, 0) + 1

    def detach(self, peer_id: str) -> None:
        count = self._links.get(peer_id, 0) - 1
        if count > 0:
            self._links[peer_id] = count
        else:
            self._links.pop(peer_id, None)


# -- the relay ---------------------------------------------------------------------

Route = Literal["deliver", "forward", "bounce"]

Forwardable = StreamRequest | FileStreamReady | StreamError | TunnelErrorMessage
F = TypeVar("F", bound=Forwardable)


def route_relay(*, online: bool, linked_here: bool, relayed: bool) -> Route:
    """Where a message for a peer goes next.

    From a local sender (*relayed* False) a message is delivered here when
    its target is online and linked to this instance, else forwarded to the
    instance holding the target's link (the backend says whether one does;
    if none, it bounces). A message that already crossed from another
    instance is never forwarded again (no loops): delivered when the link is
    here, else bounced.
    """
    if linked_here and (online or relayed):
        return "deliver"
    return "bounce" if relayed else "forward"


def forwarded(message: F, sender: str) -> F:
    """The message as its target gets it: ``from`` the sender in place of ``to``."""
    return dataclasses.replace(message, to=None, from_=sender)


def not_online_text(peer_id: str) -> str:
    return f"peer {peer_id!r} is not online"


def refusal(request_id: str, about: object, code: str, text: str) -> StreamError | None:
    """The ``stream-error`` a sender hears when its message cannot go on, or None
    when *about* is itself a ``stream-error`` (an error about an error helps no one)."""
    if isinstance(about, StreamError):
        return None
    return StreamError(request_id=request_id, code=code, message=text)

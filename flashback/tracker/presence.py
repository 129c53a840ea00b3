"""Who is online, ``seq`` and the change feed: the seam between the tracker
and where that state lives.

:class:`Presence` is what :class:`~flashback.tracker.service.Tracker` needs
from a storage adapter; the feed's rules themselves are
:mod:`flashback.protocol.feed`'s. Two adapters:

- :class:`LocalPresence` (``memory://`` and ``sqlite://``): one process, the
  sans-IO :class:`~flashback.protocol.registry.Registry` in memory. Each call
  returns the changes it made, and the tracker publishes them at once.
- :class:`~flashback.tracker.redis.presence.RedisPresence` (``redis://``): any
  number of processes sharing one Redis; changes are made by atomic scripts
  there and reach every process through one Redis stream, in ``seq`` order.
  Its calls return no changes: its follower hands every change (its own
  included) to the tracker's :class:`FeedSink`, so every instance delivers
  the same changes in the same order.

Only the tracker publishes to its hub.

Errors are the HTTP ones: :class:`~flashback.errors.NotFound` (code
``unknown_peer``), :class:`~flashback.errors.Unauthorized`, and
:class:`~flashback.errors.BackendUnavailable` when shared state is out of reach.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from flashback.config import TrackerConfig
from flashback.errors import NotFound, Unauthorized
from flashback.protocol.feed import Listing, not_online_text
from flashback.protocol.messages import (
    Candidate,
    Change,
    ErrorMessage,
    Message,
    PeerInfo,
    PeerLeft,
)
from flashback.protocol.registry import Registry
from flashback.tracker.security import hash_token, token_matches


def not_online(peer_id: str) -> NotFound:
    return NotFound(f"{not_online_text(peer_id)}; register again", code="unknown_peer")


def wrong_token() -> Unauthorized:
    return Unauthorized("wrong token for this peer_id")


@dataclass(frozen=True)
class Expired:
    """What one expiry pass did: the peers *this process* dropped (counted once,
    wherever the feed goes), and the changes for the caller to publish now."""

    peer_ids: list[str]
    changes: list[Change]


class FeedSink(Protocol):
    """Where a shared backend's feed goes: the :class:`~flashback.tracker.service.Tracker`."""

    def publish(self, changes: Sequence[Change]) -> None:
        """Hand numbered changes, in order, to every link of this instance."""

    def restart_links(self) -> None:
        """The state the links followed is gone: close them so they resync."""

    async def deliver_relayed(self, to: str, message: Message) -> None:
        """A message another instance relayed for the peer *to*."""


class Presence(Protocol):
    @property
    def seq(self) -> int:
        """The last change this process has published."""

    def online_count(self) -> int: ...

    def is_online(self, peer_id: str) -> bool:
        """As far as this process's feed knows (no I/O)."""

    def peer(self, peer_id: str, now: float) -> PeerInfo | None:
        """An online peer's record as this process's feed knows it (no I/O)."""

    async def run(
        self, sink: FeedSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Background work (following a shared feed into *sink*) until cancelled."""

    async def register(
        self, peer_id: str, listing: Listing, *, token_hash: bytes, now: float
    ) -> list[Change]:
        """The changes to publish now (none from a shared feed)."""

    async def heartbeat(self, peer_id: str, token: str, now: float) -> None: ...

    async def peer_of_token(self, token: str) -> str | None:
        """The online peer whose token this is (a REFLECT line names only the
        token), checked with :func:`~flashback.tracker.security.token_matches`."""

    async def reflect(self, peer_id: str, seen: Candidate, now: float) -> list[Change]:
        """*seen* is *peer_id*'s reflexive address (§10.2): the changes to publish
        now (none from a shared feed, none when it did not move)."""

    async def leave(self, peer_id: str, token: str, now: float) -> list[Change]:
        """The changes to publish now (none from a shared feed)."""

    async def peer_list(self, now: float) -> dict[str, Any]: ...

    async def expire(self, now: float) -> Expired:
        """Drop peers past their TTL."""

    async def check_link(self, peer_id: str, token: str | None) -> ErrorMessage | None: ...

    async def catch_up(self, last_seq: int | None) -> None:
        """Before :meth:`first_messages`: let this process's feed reach *last_seq*."""

    def first_messages(self, last_seq: int | None, now: float) -> list[Message]:
        """Changes after *last_seq*, or a snapshot; no checkpoint, so the
        caller adds the connection to the hub right after and nothing is lost
        or repeated in between."""

    async def attach(self, peer_id: str) -> None: ...

    def detach(self, peer_id: str, now: float) -> None: ...

    async def take_token(self, bucket: str, rate_per_s: float, burst: int) -> float:
        """A token of the budget *bucket* shared with other processes (a
        cluster's): 0, or the seconds until one; 0 when nothing is shared or
        the shared state is out of reach (never raises)."""

    async def relay(self, to: str, message: Message) -> bool:
        """Hand *message* to the process holding *to*'s link; False: nobody does."""


class LocalPresence:
    """One process: the registry in memory, token hashes of online peers beside it.

    No call awaits anything, so between the registry's change and the
    tracker's publishing of it there is no checkpoint: a ``hello`` sees a
    change either in its replay or in the live feed, never both.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        # Token hashes of online peers, so heartbeats never touch the store,
        # and the other way round: a REFLECT line names only the token.
        self._token_hashes: dict[str, bytes] = {}
        self._peer_of_hash: dict[bytes, str] = {}

    @classmethod
    def for_config(
        cls,
        config: TrackerConfig,
        *,
        start_seq: int,
        clock: Callable[[], float] = trio.current_time,
    ) -> LocalPresence:
        """A registry counting from *start_seq*, its wall times from *clock*."""
        registry = Registry(
            config.peer_ttl_s,
            start_seq=start_seq,
            backlog_changes=config.backlog_changes,
            wall_offset_s=time.time() - clock(),
        )
        return cls(registry)

    @property
    def seq(self) -> int:
        return self.registry.seq

    def online_count(self) -> int:
        return len(self.registry)

    def is_online(self, peer_id: str) -> bool:
        return peer_id in self.registry

    def peer(self, peer_id: str, now: float) -> PeerInfo | None:
        return self.registry.get(peer_id, now)

    async def run(
        self, sink: FeedSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()  # nothing to follow: each call returns its changes

    async def register(
        self, peer_id: str, listing: Listing, *, token_hash: bytes, now: float
    ) -> list[Change]:
        old_hash = self._token_hashes.get(peer_id)
        if old_hash is not None:
            self._peer_of_hash.pop(old_hash, None)
        self._token_hashes[peer_id] = token_hash
        self._peer_of_hash[token_hash] = peer_id
        return self.registry.register(
            peer_id,
            name=listing.name,
            host=listing.host,
            port=listing.port,
            capabilities=listing.capabilities,
            now=now,
            fingerprint=listing.fingerprint,
            direct=listing.direct,
        )

    async def heartbeat(self, peer_id: str, token: str, now: float) -> None:
        self._authorize(peer_id, token)
        self.registry.heartbeat(peer_id, now)

    async def peer_of_token(self, token: str) -> str | None:
        peer_id = self._peer_of_hash.get(hash_token(token))
        if peer_id is None or not token_matches(token, self._token_hashes.get(peer_id)):
            return None
        return peer_id

    async def reflect(self, peer_id: str, seen: Candidate, now: float) -> list[Change]:
        return self.registry.reflect(peer_id, seen, now)

    async def leave(self, peer_id: str, token: str, now: float) -> list[Change]:
        self._authorize(peer_id, token)
        return self._forget(self.registry.leave(peer_id, now, "left"))

    async def peer_list(self, now: float) -> dict[str, Any]:
        return {"seq": self.registry.seq, "peers": [p.dump() for p in self.registry.peers(now)]}

    async def expire(self, now: float) -> Expired:
        changes = self._forget(self.registry.expire(now))
        return Expired([c.peer_id for c in changes if isinstance(c, PeerLeft)], changes)

    async def check_link(self, peer_id: str, token: str | None) -> ErrorMessage | None:
        if peer_id not in self.registry:
            return ErrorMessage("unknown_peer", "this peer is not registered; register first")
        if not token_matches(token, self._token_hashes.get(peer_id)):
            return ErrorMessage("unauthorized", "wrong token for this peer_id")
        return None

    async def catch_up(self, last_seq: int | None) -> None:
        pass

    def first_messages(self, last_seq: int | None, now: float) -> list[Message]:
        missed = self.registry.changes_since(last_seq)
        return [self.registry.snapshot(now)] if missed is None else list(missed)

    async def attach(self, peer_id: str) -> None:
        self.registry.attach(peer_id)

    def detach(self, peer_id: str, now: float) -> None:
        self.registry.detach(peer_id, now)

    async def take_token(self, bucket: str, rate_per_s: float, burst: int) -> float:
        return 0.0  # this process's own budgets are all there is

    async def relay(self, to: str, message: Message) -> bool:
        return False  # every link is in this process's hub

    def _authorize(self, peer_id: str, token: str) -> None:
        token_hash = self._token_hashes.get(peer_id)
        if peer_id not in self.registry or token_hash is None:
            raise not_online(peer_id)
        if not token_matches(token, token_hash):
            raise wrong_token()

    def _forget(self, changes: list[Change]) -> list[Change]:
        for change in changes:
            if isinstance(change, PeerLeft):
                token_hash = self._token_hashes.pop(change.peer_id, None)
                if token_hash is not None:
                    self._peer_of_hash.pop(token_hash, None)
        return changes

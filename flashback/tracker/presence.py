"""Who is online, ``seq`` and the change feed: the seam between the tracker
and where that state lives.

:class:`Presence` is what :class:`~flashback.tracker.service.Tracker` needs.
Two implementations:

- :class:`LocalPresence` (``memory://`` and ``sqlite://``): one process, the
  sans-IO :class:`~flashback.protocol.registry.Registry` in memory; every
  change is published to this process's hub as it is made.
- :class:`~flashback.tracker.cluster.RedisPresence` (``redis://``): any number
  of processes sharing one Redis; changes are made by atomic scripts there and
  reach every process's hub through one Redis stream, in ``seq`` order.

Both publish changes to the hub themselves: the local one at once, the Redis
one when its stream reader sees them (so the instance that made a change and
every other instance deliver it the same way, in the same order).

Errors are the HTTP ones: :class:`~flashback.errors.NotFound` (code
``unknown_peer``), :class:`~flashback.errors.Unauthorized`, and
:class:`~flashback.errors.BackendUnavailable` when shared state is out of reach.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import trio

from flashback.errors import NotFound, Unauthorized
from flashback.protocol.messages import Change, ErrorMessage, Message, PeerInfo, PeerLeft
from flashback.protocol.registry import Registry
from flashback.tracker.hub import Hub
from flashback.tracker.security import token_matches


def not_online(peer_id: str) -> NotFound:
    return NotFound(f"peer {peer_id!r} is not online; register again", code="unknown_peer")


def wrong_token() -> Unauthorized:
    return Unauthorized("wrong token for this peer_id")


class Presence(Protocol):
    @property
    def seq(self) -> int:
        """The last change this process has published."""

    def online_count(self) -> int: ...

    def is_online(self, peer_id: str) -> bool:
        """As far as this process's feed knows (no I/O)."""

    def peer(self, peer_id: str, now: float) -> PeerInfo | None:
        """An online peer's record as this process's feed knows it (no I/O)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work (reading a shared feed) until cancelled."""

    async def register(
        self,
        peer_id: str,
        *,
        token_hash: bytes,
        name: str,
        host: str,
        port: int,
        capabilities: Mapping[str, Any],
        now: float,
        fingerprint: str | None = None,
    ) -> None: ...

    async def heartbeat(self, peer_id: str, token: str, now: float) -> None: ...

    async def leave(self, peer_id: str, token: str, now: float) -> None: ...

    async def peer_list(self, now: float) -> dict[str, Any]: ...

    async def expire(self, now: float) -> list[str]:
        """Drop peers past their TTL; the ids *this process* dropped."""

    async def check_link(self, peer_id: str, token: str | None) -> ErrorMessage | None: ...

    async def catch_up(self, last_seq: int | None) -> None:
        """Before :meth:`first_messages`: let this process's feed reach *last_seq*."""

    def first_messages(self, last_seq: int | None, now: float) -> list[Message]:
        """Changes after *last_seq*, or a snapshot; no checkpoint, so the
        caller adds the connection to the hub right after and nothing is lost
        or repeated in between."""

    async def attach(self, peer_id: str) -> None: ...

    def detach(self, peer_id: str, now: float) -> None: ...

    async def relay(self, to: str, message: Message) -> bool:
        """Hand *message* to the process holding *to*'s link; False: nobody does."""


class LocalPresence:
    """One process: the registry in memory, token hashes of online peers beside it."""

    def __init__(self, registry: Registry, hub: Hub) -> None:
        self.registry = registry
        self.hub = hub
        # Token hashes of online peers, so heartbeats never touch the store.
        self._token_hashes: dict[str, bytes] = {}

    @property
    def seq(self) -> int:
        return self.registry.seq

    def online_count(self) -> int:
        return len(self.registry)

    def is_online(self, peer_id: str) -> bool:
        return peer_id in self.registry

    def peer(self, peer_id: str, now: float) -> PeerInfo | None:
        return self.registry.get(peer_id, now)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    async def register(
        self,
        peer_id: str,
        *,
        token_hash: bytes,
        name: str,
        host: str,
        port: int,
        capabilities: Mapping[str, Any],
        now: float,
        fingerprint: str | None = None,
    ) -> None:
        self._token_hashes[peer_id] = token_hash
        self._publish(
            self.registry.register(
                peer_id,
                name=name,
                host=host,
                port=port,
                capabilities=capabilities,
                now=now,
                fingerprint=fingerprint,
            )
        )

    async def heartbeat(self, peer_id: str, token: str, now: float) -> None:
        self._authorize(peer_id, token)
        self.registry.heartbeat(peer_id, now)

    async def leave(self, peer_id: str, token: str, now: float) -> None:
        self._authorize(peer_id, token)
        self._publish(self.registry.leave(peer_id, now, "left"))

    async def peer_list(self, now: float) -> dict[str, Any]:
        return {"seq": self.registry.seq, "peers": [p.dump() for p in self.registry.peers(now)]}

    async def expire(self, now: float) -> list[str]:
        changes = self.registry.expire(now)
        self._publish(changes)
        return [c.peer_id for c in changes if isinstance(c, PeerLeft)]

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

    async def relay(self, to: str, message: Message) -> bool:
        return False  # every link is in this process's hub

    def _authorize(self, peer_id: str, token: str) -> None:
        token_hash = self._token_hashes.get(peer_id)
        if peer_id not in self.registry or token_hash is None:
            raise not_online(peer_id)
        if not token_matches(token, token_hash):
            raise wrong_token()

    def _publish(self, changes: list[Change]) -> None:
        for change in changes:
            if isinstance(change, PeerLeft):
                self._token_hashes.pop(change.peer_id, None)
        self.hub.publish(changes)

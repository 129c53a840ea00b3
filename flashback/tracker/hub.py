"""The websocket hub: fan-out of the change feed, and the stream relay.

Each websocket gets a bounded memory channel. A change is encoded once and
offered to every channel with ``send_nowait``; a connection whose channel is
full is closed (code 1013, "try again later") instead of being waited for, so
one slow watcher never stalls the others -- it reconnects with ``last_seq``
and gets what it missed from the registry's backlog.

Only the connection's own sender task writes to its websocket; replies and
relayed messages go through the same channel, so they stay in order with the
feed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Final

import trio

from flashback.protocol.fairshare import share_address
from flashback.protocol.messages import Message
from flashback.protocol.token_bucket import TokenBucket

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY: Final = 1001
CLOSE_POLICY: Final = 1008
CLOSE_TRY_AGAIN_LATER: Final = 1013


class Connection:
    """One websocket link: its queue, its identity, and how to end it."""

    def __init__(
        self,
        peer_id: str | None,
        queue_messages: int,
        *,
        advertise_host: str | None = None,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
    ) -> None:
        self.peer_id = peer_id
        # the TCP ends (the ASGI scope's client and server): its share of the
        # send budget and of the links is its client address's (an IPv6 /64)
        self.client, self.server = client, server
        self.address = share_address(client[0]) if client is not None else None
        # the host this link's peer dials for tunnels (from its own Host header)
        self.advertise_host = advertise_host
        self.send_channel, self.receive_channel = trio.open_memory_channel[str](queue_messages)
        self.cancel_scope = trio.CancelScope()
        self.close_code: int | None = None
        self.close_reason = ""
        self.relay_budget: TokenBucket | None = None  # per peer id, set by the tracker

    def has_room_for_relay(self) -> bool:
        """Relayed messages may fill only half the queue: the feed keeps the rest,
        so no sender can make the target fall behind (and get evicted)."""
        stats = self.send_channel.statistics()
        return stats.current_buffer_used < max(1, stats.max_buffer_size // 2)

    def offer(self, text: str) -> bool:
        """Queue *text* without waiting; False means the link is full or gone."""
        try:
            self.send_channel.send_nowait(text)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def end(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self.cancel_scope.cancel()


class Hub:
    def __init__(self, *, on_evict: Callable[[], object] = lambda: None) -> None:
        self._on_evict = on_evict
        self._connections: set[Connection] = set()
        self._by_peer: dict[str, list[Connection]] = {}
        self._emptied = trio.Event()
        self.closing = False

    def __len__(self) -> int:
        return len(self._connections)

    def add(self, connection: Connection) -> None:
        self._connections.add(connection)
        if connection.peer_id is not None:
            self._by_peer.setdefault(connection.peer_id, []).append(connection)

    def remove(self, connection: Connection) -> None:
        self._connections.discard(connection)
        if connection.peer_id is not None:
            links = self._by_peer.get(connection.peer_id, [])
            if connection in links:
                links.remove(connection)
            if not links:
                self._by_peer.pop(connection.peer_id, None)
        if not self._connections:
            self._emptied.set()

    def link_for(self, peer_id: str) -> Connection | None:
        """The newest open identified link of *peer_id* (a daemon reconnected last)."""
        links = self._by_peer.get(peer_id)
        return links[-1] if links else None

    def links_of(self, peer_id: str) -> list[Connection]:
        return list(self._by_peer.get(peer_id, ()))

    def drop_all(self, code: int, reason: str) -> None:
        """End every link now (their state can no longer be continued)."""
        for connection in list(self._connections):
            connection.end(code, reason)
            self.remove(connection)

    def publish(self, messages: Iterable[Message]) -> None:
        """Encode each message once and offer it to every connection, in order."""
        for message in messages:
            text = message.encode()
            slow = [c for c in self._connections if not c.offer(text)]
            for connection in slow:
                self.evict(connection)

    def send(self, connection: Connection, message: Message) -> bool:
        if connection.offer(message.encode()):
            return True
        self.evict(connection)
        return False

    def relay(self, target: Connection, message: Message) -> bool:
        """Queue a relayed message for *target* if it has room; never evicts it."""
        return target.has_room_for_relay() and target.offer(message.encode())

    def evict(self, connection: Connection) -> None:
        if connection not in self._connections:
            return
        self._on_evict()
        log.info("closing a websocket that fell behind (peer %s)", connection.peer_id)
        connection.end(CLOSE_TRY_AGAIN_LATER, "too slow; reconnect with last_seq")
        self.remove(connection)

    async def close_all(self, *, timeout_s: float) -> None:
        """Shutdown: end every link with 1001 and wait (bounded) for them to go."""
        self.closing = True
        for connection in list(self._connections):
            connection.end(CLOSE_GOING_AWAY, "tracker shutting down")
        if not self._connections:
            return
        self._emptied = trio.Event()
        with trio.move_on_after(timeout_s):
            while self._connections:
                await self._emptied.wait()

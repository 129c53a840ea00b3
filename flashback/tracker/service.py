"""The tracker's behaviour, between the HTTP/websocket glue and the presence.

:class:`Tracker` is handed a finished presence backend (who is online,
``seq`` and the feed: in this process, or shared through Redis; see
:mod:`.presence`) and identity store. It builds the instance's shared parts
(the hub, the metrics, the capacity of the peer list, the identity book,
the tunnel relay) once, and the three services over them, each with one job:

- :class:`~.registration.Registration`: register, heartbeat, leave, expiry,
  and every token check of those calls;
- :class:`~.links.LinkLoops`: the websocket links, from ``hello`` to close;
- :class:`~.relay.Relay`: relayed messages and tunnel pairing (the decision
  in :mod:`flashback.protocol.pairing`).

It is the only one that publishes to the hub: the changes a service
returns, and (as the backend's :class:`~.presence.FeedSink`) whatever a
shared feed delivers. The Quart app only turns requests into calls here and
results into JSON; the reaper and every websocket link run as tasks of the
nursery that serves the app.

Who may do what:

- register: anyone (or only holders of ``RELAY_AUTH_TOKEN``), rate limited per
  client address; coming back under a ``peer_id`` needs that peer's token.
- heartbeat, DELETE, an identified ``hello``: that peer's token.
- stream relay: identified links only; a watcher may only listen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import trio

from flashback import __version__
from flashback.config import TrackerConfig
from flashback.protocol.messages import Change, ErrorMessage, Message, PeerLeft
from flashback.tracker import direct
from flashback.tracker.capacity import PeerCapacity
from flashback.tracker.hub import CLOSE_TRY_AGAIN_LATER, Hub
from flashback.tracker.identities import IdentityBook
from flashback.tracker.links import LinkLoops, WebsocketLike
from flashback.tracker.metrics import TrackerMetrics
from flashback.tracker.presence import Presence
from flashback.tracker.registration import Registration
from flashback.tracker.relay import Relay
from flashback.tracker.security import HeaderLookup
from flashback.tracker.store import IdentityStore
from flashback.tracker.tunnels import TunnelRelay
from flashback.tracker.validate import RegisterBody

__all__ = ["Tracker", "WebsocketLike"]


class Tracker:
    def __init__(
        self,
        config: TrackerConfig,
        store: IdentityStore,
        presence: Presence,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.config = config
        self.store = store
        self.presence = presence
        self.clock = clock
        self.metrics = TrackerMetrics(
            peers_online=lambda: self.presence.online_count(),
            connections=lambda: len(self.hub),
            seq=lambda: self.presence.seq,
        )
        self.hub = Hub(on_evict=self.metrics.evictions.inc)
        # the pairing half of tunnels; the port itself is served by serve.py
        self.tunnels: TunnelRelay | None = None
        if config.tunnel_port is not None:
            self.tunnels = TunnelRelay(
                max_sessions=config.tunnel_max_sessions,
                rate_bytes_per_s=config.tunnel_rate_bytes_per_s,
                clock=clock,
            )
            self.metrics.add_tunnels(self.tunnels.counters, lambda: self.tunnels_active)
            self.tunnels.reflector = direct.reflector(presence, self.publish, clock, self.metrics)
        self.capacity = PeerCapacity(
            config.max_peers,
            config.max_peer_list_bytes,
            self.presence.is_online,
            per_address=config.max_peers_per_address,
        )
        self.identities = IdentityBook(
            store,
            self.presence.is_online,
            capacity=config.max_identities,
            per_address=config.max_identities_per_address,
            online_cap=config.max_peers,
        )
        self.registration = Registration(
            config,
            store,
            presence,
            self.metrics,
            capacity=self.capacity,
            identities=self.identities,
            publish=self.publish,
            clock=clock,
        )
        self.relay = Relay(
            config,
            self.hub,
            presence,
            self.metrics,
            tunnels=self.tunnels,
            introductions=direct.Introductions(self.metrics.registry, clock),
            clock=clock,
        )
        self.link_loops = LinkLoops(
            config, self.hub, presence, self.metrics, relay=self.relay, clock=clock
        )
        self.started_at = clock()

    def now(self) -> float:
        return self.clock()

    @property
    def tunnel_port(self) -> int | None:
        """The tunnel port once it listens; set by serve.py, named in answers and invites."""
        return self.relay.tunnel_port

    @tunnel_port.setter
    def tunnel_port(self, port: int | None) -> None:
        self.relay.tunnel_port = port
        self.registration.tunnel_port = port

    # -- HTTP --------------------------------------------------------------------

    async def register(
        self, registration: RegisterBody, headers: HeaderLookup, client: str
    ) -> dict[str, Any]:
        return await self.registration.register(registration, headers, client)

    async def heartbeat(self, peer_id: str, headers: HeaderLookup) -> dict[str, Any]:
        return await self.registration.heartbeat(peer_id, headers)

    async def leave(self, peer_id: str, headers: HeaderLookup) -> None:
        await self.registration.leave(peer_id, headers)

    async def peer_list(self) -> dict[str, Any]:
        return await self.presence.peer_list(self.now())

    @property
    def tunnels_active(self) -> int:
        return 0 if self.tunnels is None else self.tunnels.sessions_active

    def status(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "uptime_s": round(self.now() - self.started_at, 3),
            "peers_online": self.presence.online_count(),
            "connections": len(self.hub),
            "tunnels_active": self.tunnels_active,
        }

    # -- the feed (also the backend's FeedSink) ------------------------------------

    async def follow(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The backend's background work (a shared feed's follower) until cancelled."""
        await self.presence.run(self, task_status=task_status)

    def publish(self, changes: Sequence[Change]) -> None:
        """Every change reaches every link of this instance, in ``seq`` order."""
        self.hub.publish(changes)
        self.capacity.track(changes)  # the list's budget counts every instance's peers
        for change in changes:
            if isinstance(change, PeerLeft) and change.reason == "expired":
                # Its link is here but its TTL ran out (a shared store was out of
                # reach for longer than the TTL, say): tell it to register again.
                reply = ErrorMessage("unknown_peer", "this peer expired; register again")
                for link in self.hub.links_of(change.peer_id):
                    self.hub.send(link, reply)

    def restart_links(self) -> None:
        self.hub.drop_all(CLOSE_TRY_AGAIN_LATER, "tracker state reset; reconnect with last_seq")

    async def deliver_relayed(self, to: str, message: Message) -> None:
        """A message another instance relayed for *to*: deliver it, or bounce it."""
        await self.relay.deliver_relayed(to, message)

    # -- liveness and links ----------------------------------------------------------

    async def reap(self) -> None:
        await self.registration.reap()

    async def reap_forever(self) -> None:
        """The TTL's enforcer (:meth:`.registration.Registration.reap_forever`)."""
        await self.registration.reap_forever()

    async def serve_link(
        self,
        ws: WebsocketLike,
        *,
        host_header: str | None = None,
        client: tuple[str, int] | None = None,
        server: tuple[str, int] | None = None,
    ) -> None:
        """One websocket from ``hello`` to close (:meth:`.links.LinkLoops.serve_link`)."""
        await self.link_loops.serve_link(ws, host_header=host_header, client=client, server=server)

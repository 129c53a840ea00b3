"""How the UI reaches a peer's server: the one place a route is chosen.

Today every remote peer is dialled directly at the ``peer_server`` address
it registered with the tracker (route ``direct``); this daemon's own share
is reached on loopback (route ``local``). When tunnels (CONTRACT §6.3) land,
:func:`peer_route` is the function they replace.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from flashback.errors import NotFound
from flashback.protocol.hosts import WILDCARDS
from flashback.protocol.messages import PeerInfo
from flashback.ui.urls import SELF_KEY
from flashback.ui.view import DaemonView


@dataclass(frozen=True)
class PeerRoute:
    key: str  # SELF_KEY or the peer id
    name: str
    base: httpx.URL  # the peer server's origin
    route: str  # "local" or "direct"


def route_label(peer: PeerInfo) -> str:
    """What the peer list shows in its route column."""
    return "direct"


def _origin(host: str, port: int) -> httpx.URL:
    return httpx.URL(scheme="http", host=host, port=port, path="/")


def peer_route(ctx: DaemonView, key: str) -> PeerRoute:
    """The route to *key* (``self`` or an online peer's id); 404 when it is not online."""
    if key == SELF_KEY or (ctx.identity is not None and key == ctx.identity.peer_id):
        address = ctx.address
        if address is None:
            raise NotFound("this daemon's server is not up yet")
        host = "127.0.0.1" if address.host in WILDCARDS else address.host
        return PeerRoute(SELF_KEY, ctx.config.name, _origin(host, address.port), "local")
    peer = ctx.table.peers.get(key)
    if peer is None:
        raise NotFound(f"no peer {key!r} is online", code="unknown_peer")
    try:
        base = _origin(peer.host, peer.port)
    except httpx.InvalidURL:  # the tracker relayed a host no URL can carry
        raise NotFound(f"peer {key!r} announced an unusable address", code="unknown_peer") from None
    return PeerRoute(peer.peer_id, peer.name, base, route_label(peer))

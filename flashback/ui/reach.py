"""How the UI reaches a peer's server: through the daemon's routes, never on its own.

A remote peer is reached the way ``ls`` and ``get`` reach it (INTERFACE §6.3,
:meth:`~flashback.ui.view.DaemonView.reach`): its registered address only if
that address proves to be the peer, else a tunnel through the tracker. A
registered address is a stranger's claim -- dialled as such, another peer's
server or any local service would be shown as the peer's files. This
daemon's own share is reached on loopback (route ``local``). A peer known
only from the LAN or the peer book (§12) is named by its fingerprint and
reached by its direct candidates (:meth:`~flashback.ui.view.DaemonView.reach_known`,
the door ``ls`` and ``get`` use), the TLS proving that fingerprint.
A peer may also be named by its name, as on the command line
(``/p/alice/browse/``): the one online peer of that name, else 404 (none)
or 409 (several: the page lists them by id).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from flashback.errors import FlashbackError, NotFound
from flashback.protocol.directory import KnownPeer
from flashback.protocol.hosts import WILDCARDS
from flashback.ui.urls import SELF_KEY
from flashback.ui.view import DaemonView


@dataclass(frozen=True)
class PeerRoute:
    key: str  # SELF_KEY, the peer id, or (a LAN or book peer) its fingerprint
    name: str
    base: httpx.URL  # the peer server's origin
    route: str  # "local", "direct" or "relay"


class AmbiguousPeer(FlashbackError):
    status = 409
    default_code = "ambiguous_peer"

    def __init__(self, name: str, keys: list[str]) -> None:
        super().__init__(f"several peers are named {name!r}: name one by its id")
        self.name, self.keys = name, keys


def keys_named(ctx: DaemonView, name: str) -> list[str]:
    """The keys of every peer named *name*: the online peers' ids (as a key names
    them, from the same table), then LAN or book peers' fingerprints not among them."""
    online = [p for p in ctx.table.peers.values() if p.name == name]
    keys = [p.peer_id for p in online]
    fingerprints = {p.fingerprint for p in online if p.fingerprint}
    for row in ctx.known_peers():
        if row.name == name and row.source != "tracker" and row.fingerprint not in fingerprints:
            keys.append(row.key)
    return keys


def _origin(host: str, port: int) -> httpx.URL:
    return httpx.URL(scheme="http", host=host, port=port, path="/")


async def peer_route(ctx: DaemonView, key: str) -> PeerRoute:
    """The route to *key* (``self``, an online peer's id, or a LAN or book peer's
    fingerprint); 404 when no such peer is known, the daemon's own error (502,
    403, 503) when it cannot be reached as itself."""
    if key == SELF_KEY or (ctx.identity is not None and key == ctx.identity.peer_id):
        address = ctx.address
        if address is None:
            raise NotFound("this daemon's server is not up yet")
        host = "127.0.0.1" if address.host in WILDCARDS else address.host
        return PeerRoute(SELF_KEY, ctx.config.name, _origin(host, address.port), "local")
    # a fingerprint first: what the TLS will prove, so no tracker-listed id that
    # copies a LAN or book peer's fingerprint can stand in for that peer
    known = known_by_fingerprint(ctx, key)
    if known is not None and known.source != "tracker":
        reached = await ctx.reach_known(known)
        return PeerRoute(key, known.name, reached.url, reached.route)
    peer = ctx.table.peers.get(key)
    if peer is None and known is not None:  # a tracker peer named by its fingerprint
        peer = ctx.table.peers.get(known.peer_id or "")
    if peer is None and known is None:
        named = keys_named(ctx, key)
        if len(named) > 1:
            raise AmbiguousPeer(key, named)
        if named and named[0] != key:  # one peer by that name: as if named by its key
            return await peer_route(ctx, named[0])
        if not named and key == ctx.config.name:  # this daemon, before it is listed
            return await peer_route(ctx, SELF_KEY)
    if peer is None:
        raise NotFound(f"no peer {key!r} is online", code="unknown_peer")
    reached = await ctx.reach(peer)
    return PeerRoute(peer.peer_id, peer.name, reached.url, reached.route)


def known_by_fingerprint(ctx: DaemonView, key: str) -> KnownPeer | None:
    """The merged row whose fingerprint is exactly *key* (never a name: two peers
    may share one, the fingerprint tells them apart)."""
    for row in ctx.known_peers():
        if row.fingerprint == key:
            return row
    return None

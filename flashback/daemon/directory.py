"""Every peer this daemon knows of -- tracker, LAN, peer book -- and how a command names one.

:class:`PeerDirectory` is the lookup seam (§12): ``find(text)`` takes a
name, a peer id or a full fingerprint and answers
:class:`~flashback.protocol.directory.KnownPeer` rows, one per fingerprint,
merged by :func:`~flashback.protocol.directory.merge`. It reads only what the
daemon already holds in memory, so ``peers`` and a lookup answer at once
whether the tracker is up or not.

A peer known only from the LAN or the book has no tracker route: it is
reached by its direct candidates, through :func:`reach_known`, the one
function the direct-endpoint dialer plugs into.
"""

from __future__ import annotations

from typing import Any

from flashback.daemon.context import DaemonContext, reach_error
from flashback.daemon.routes import Reached
from flashback.daemon.tunnel_ends import TunnelFailed
from flashback.errors import BackendUnavailable, FlashbackError
from flashback.protocol.directory import KnownPeer, find, merge
from flashback.protocol.tunnel import OpenTarget
from flashback.terminal import printable


class NoDirectEndpoint(FlashbackError):
    """A LAN or book peer can only be reached directly, and nothing dials directly yet."""

    status = 502
    default_code = "no_direct_endpoint"


class PeerDirectory:
    def __init__(self, ctx: DaemonContext) -> None:
        self._ctx = ctx

    def known(self) -> list[KnownPeer]:
        """Tracker, LAN and book peers, one row per fingerprint (this daemon's own
        tracker row included, as ``peers`` always listed it).

        The tracker's rows count only while the link is up: with the tracker
        away they are a stale list, and a peer we reached stays as its book row.
        """
        ctx = self._ctx
        rows = merge(
            ctx.table.sorted_peers() if ctx.tracker_connected else (),
            ctx.lan.peers() if ctx.lan is not None else (),
            ctx.book.entries() if ctx.book is not None else (),
        )
        own = ctx.fingerprint
        return [row for row in rows if row.source == "tracker" or row.fingerprint != own]

    def find(self, text: str) -> list[KnownPeer]:
        return find(self.known(), text)

    def listing(self) -> dict[str, Any]:
        """``GET /peers``: the tracker list shape, every row with its ``source``, plus
        ``tracker: {url, connected}``."""
        ctx = self._ctx
        peers: list[dict[str, Any]] = []
        for row in self.known():
            info = ctx.table.peers.get(row.peer_id or "") if row.source == "tracker" else None
            if info is not None:
                entry = info.dump()
                route, address = ctx.router.last(info.peer_id) if ctx.router else (None, None)
            else:
                entry = {"peer_id": row.peer_id, "name": row.name, "peer_server": None}
                entry["fingerprint"] = row.fingerprint
                key = row.peer_id or row.fingerprint  # as reach_known routes it
                route, address = ctx.router.last(key) if ctx.router and key else (None, None)
            entry["candidates"] = [c.dump() for c in row.candidates]
            entry["source"] = row.source
            entry["route"] = route  # the route this daemon last used (§6.3), or null
            entry["address"] = address  # and the remote host:port it used
            peers.append(entry)
        return {
            "seq": ctx.table.seq,
            "peers": peers,
            "tracker": {"url": ctx.config.tracker_url, "connected": ctx.tracker_connected},
        }


async def _dial_direct(ctx: DaemonContext, known: KnownPeer, target: OpenTarget) -> Reached:
    """Dial *known*'s candidates (its direct endpoint, §10.1) with mutual TLS and its
    fingerprint checked, through a local forward like every other route."""
    if known.fingerprint is None or not known.candidates:
        raise NoDirectEndpoint(
            f"peer '{printable(known.name)}' ({known.fingerprint}) is known from the "
            f"{known.source} only, with no direct address to reach it by"
        )
    if ctx.router is None:
        raise BackendUnavailable("the daemon's routes are not up yet")
    key = known.peer_id or known.fingerprint
    try:
        return await ctx.router.reach_known(key, known.fingerprint, known.candidates, target)
    except TunnelFailed as exc:
        raise reach_error(exc, known.name, known.peer_id, ctx.fingerprint) from exc


async def reach_known(
    ctx: DaemonContext, known: KnownPeer, target: OpenTarget | None = None
) -> Reached:
    """The URL of *known*'s server (or a stream port of it) by its direct candidates.

    The one door from a LAN or book peer to the routing layer; whatever reaches
    it records it in the peer book (its fingerprint is what the TLS check proved).
    """
    reached = await _dial_direct(ctx, known, target or OpenTarget("peer-server"))
    if ctx.book is not None and known.fingerprint is not None:
        ctx.book.record(
            known.fingerprint,
            name=known.name,
            peer_id=known.peer_id,
            candidates=known.candidates,
        )
    return reached

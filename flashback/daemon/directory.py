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

from flashback.daemon.context import DaemonContext
from flashback.daemon.context import NoDirectEndpoint as NoDirectEndpoint  # where it was
from flashback.daemon.routes import Reached
from flashback.protocol.directory import KnownPeer, find
from flashback.protocol.tunnel import OpenTarget


class PeerDirectory:
    def __init__(self, ctx: DaemonContext) -> None:
        self._ctx = ctx

    def known(self) -> list[KnownPeer]:
        """Tracker, LAN and book peers, one row per fingerprint (see
        :meth:`~flashback.daemon.context.DaemonContext.known_peers`)."""
        return self._ctx.known_peers()

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
            "tracker": ctx.tracker_status(),
        }


async def reach_known(
    ctx: DaemonContext, known: KnownPeer, target: OpenTarget | None = None
) -> Reached:
    """The URL of *known*'s server (or a stream port of it) by its direct candidates:
    :meth:`~flashback.daemon.context.DaemonContext.reach_known`, the one door."""
    return await ctx.reach_known(known, target)

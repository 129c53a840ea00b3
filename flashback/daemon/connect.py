"""``POST /connect`` behind the control socket: a URL that reaches a peer (§6.3).

Local commands (``ls``, ``get``, ``stream``, ``connect``) do not dial a peer's
registered address themselves: they ask the daemon, which probes the direct
route and otherwise opens a local forward through a tunnel. The answer is
``{"peer_id", "url", "route"}``; with ``stream_port`` the URL is that port on
the host the peer's server was reached on (or a tunnel's ``OPEN stream``). For
``connect`` the control request stays open and the forward is held until the
command goes away.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from flashback.daemon.context import DaemonContext, reach_error
from flashback.daemon.directory import PeerDirectory, reach_known
from flashback.daemon.routes import origin
from flashback.daemon.tunnel_ends import TunnelFailed
from flashback.errors import BackendUnavailable, BadRequest, FlashbackError, NotFound
from flashback.protocol.directory import KnownPeer
from flashback.protocol.messages import PeerInfo
from flashback.protocol.tunnel import OpenTarget


class AmbiguousPeer(FlashbackError):
    status = 409
    default_code = "ambiguous_peer"


@dataclass(frozen=True)
class ConnectRequest:
    peer: str
    stream_port: int | None = None
    hold: bool = False


def parse_connect_body(body: object) -> ConnectRequest:
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object {"peer": str}', code="invalid_json")
    peer = body.get("peer")
    if not isinstance(peer, str) or not 1 <= len(peer) <= 128:
        raise BadRequest('"peer" must be a peer id or name')
    port = body.get("stream_port")
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535
    ):
        raise BadRequest('"stream_port" must be a port number')
    # a "stream_host" (the notice's, as older clients send it) is ignored: see connect_peer
    return ConnectRequest(peer, port, bool(body.get("hold")))


def resolve_peer_key(ctx: DaemonContext, key: str) -> PeerInfo | None:
    """The online peer *key* names (id, or a unique name); None when it is this daemon."""
    own = ctx.identity.peer_id if ctx.identity else None
    if key == own:
        return None
    # with the link down the table is a stale list (as in PeerDirectory.known): a
    # peer on it would be tried by the tracker, not by the book's candidates
    matches = ctx.table.find(key) if ctx.tracker_connected else []
    others = [peer for peer in matches if peer.peer_id != own]
    if not others and (matches or key == ctx.config.name):
        return None
    if not others:
        raise NotFound(f"no peer {key!r} is online", code="unknown_peer")
    if len(matches) > 1:
        ids = ", ".join(peer.peer_id for peer in matches)
        raise AmbiguousPeer(f"several peers are named {key!r}; use a peer id ({ids})")
    return others[0]


def resolve_any(ctx: DaemonContext, key: str) -> PeerInfo | KnownPeer | None:
    """The peer *key* names among tracker, LAN and book peers (§12); None: this daemon.

    The tracker's table answers first, as it always did (peer id, then unique
    name); then the merged directory, where *key* may also be a fingerprint.
    """
    try:
        return resolve_peer_key(ctx, key)
    except NotFound:
        pass
    if key == ctx.fingerprint:
        return None
    matches = PeerDirectory(ctx).find(key)
    if not matches:
        raise NotFound(f"no peer {key!r} is online", code="unknown_peer")
    if len(matches) > 1:
        keys = ", ".join(peer.key for peer in matches)
        raise AmbiguousPeer(f"several peers are named {key!r}; use a fingerprint ({keys})")
    known = matches[0]
    if known.source == "tracker" and known.peer_id in ctx.table.peers:
        return ctx.table.peers[known.peer_id]  # named by its fingerprint
    return known


async def connect_peer(ctx: DaemonContext, request: ConnectRequest) -> dict[str, Any]:
    peer = resolve_any(ctx, request.peer)
    if isinstance(peer, KnownPeer):  # a LAN or book peer: only its direct endpoint reaches it
        target = (
            OpenTarget("stream", request.stream_port)
            if request.stream_port is not None
            else OpenTarget("peer-server")
        )
        known = await reach_known(ctx, peer, target)
        return {"peer_id": peer.peer_id, "url": _text(known.url), "route": known.route}
    if peer is None:  # ourselves: our own server on loopback
        address = ctx.address
        if address is None:
            raise BackendUnavailable("the peer server is not up yet")
        host = "127.0.0.1" if address.host in ("0.0.0.0", "::") else address.host
        port = request.stream_port or address.port
        own = ctx.identity.peer_id if ctx.identity else None
        return {"peer_id": own, "url": _text(origin(host, port)), "route": "direct"}
    if request.stream_port is None:
        reached = await ctx.reach(peer)
        return {"peer_id": peer.peer_id, "url": _text(reached.url), "route": reached.route}
    if ctx.router is None:
        raise BackendUnavailable("no tracker connection", code="no_tracker")
    try:
        if ctx.tunnels is not None and peer.fingerprint:
            ctx.tunnels.check_pin(peer.peer_id, peer.fingerprint)  # as in DaemonContext.reach
        # A stream port is on the host the peer's server proved to be on: only the
        # port comes from the owner's notice. Its host would let a stranger's notice
        # point `flashback stream` at any service this machine can reach.
        reached = await ctx.router.reach_stream(
            peer.peer_id, peer.host, peer.port, peer.host, request.stream_port
        )
    except TunnelFailed as exc:
        raise reach_error(exc, peer.name, peer.peer_id, ctx.fingerprint) from exc
    if ctx.book is not None:  # reached: the book remembers it for a day without the tracker
        ctx.book.record_peer(peer, vouched=ctx.tracker_connected)
    return {"peer_id": peer.peer_id, "url": _text(reached.url), "route": reached.route}


def _text(url: object) -> str:
    return str(url).rstrip("/")


@contextlib.contextmanager
def held(ctx: DaemonContext, answer: dict[str, Any], request: ConnectRequest) -> Iterator[None]:
    """Keep the forward open for as long as the block runs (whatever route its
    connections take: they race the direct endpoint and the relay)."""
    if ctx.tunnels is None:
        yield
        return
    target = (
        OpenTarget("stream", request.stream_port)
        if request.stream_port is not None
        else OpenTarget("peer-server")
    )
    try:
        hold = ctx.tunnels.hold(answer["peer_id"], target)
    except TunnelFailed:
        yield  # the forward already went away; the command will notice
        return
    with hold:
        yield


async def hold_lines(
    ctx: DaemonContext, answer: dict[str, Any], request: ConnectRequest
) -> AsyncIterator[bytes]:
    """The ``peer-url`` line, then nothing until the client (``connect``) leaves."""
    with held(ctx, answer, request):
        yield (json.dumps({"event": "peer-url", **answer}) + "\n").encode()
        await trio.sleep_forever()

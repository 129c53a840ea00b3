"""``POST /connect`` behind the control socket: a URL that reaches a peer (§6.3).

Local commands (``ls``, ``get``, ``stream``, ``connect``) do not dial a peer's
registered address themselves: they ask the daemon, which probes the direct
route and otherwise opens a local forward through a tunnel. The answer is
``{"peer_id", "url", "route"}``; for ``connect`` the control request stays
open and the forward is held until the command goes away.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from flashback.daemon.context import DaemonContext
from flashback.daemon.routes import origin
from flashback.daemon.tunnel_ends import TunnelFailed
from flashback.errors import BackendUnavailable, BadRequest, FlashbackError, NotFound
from flashback.protocol.hosts import MAX_HOST_CHARS
from flashback.protocol.messages import PeerInfo
from flashback.protocol.tunnel import OpenTarget


class AmbiguousPeer(FlashbackError):
    status = 409
    default_code = "ambiguous_peer"


class KeyChanged(FlashbackError):
    status = 403
    default_code = "fingerprint_mismatch"


class PeerUnreachable(FlashbackError):
    status = 502
    default_code = "unreachable"


@dataclass(frozen=True)
class ConnectRequest:
    peer: str
    stream_host: str | None = None
    stream_port: int | None = None
    hold: bool = False


def parse_connect_body(body: object) -> ConnectRequest:
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object {"peer": str}', code="invalid_json")
    peer = body.get("peer")
    if not isinstance(peer, str) or not 1 <= len(peer) <= 128:
        raise BadRequest('"peer" must be a peer id or name')
    port = body.get("stream_port")
    host = body.get("stream_host")
    if port is not None and (
        not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535
    ):
        raise BadRequest('"stream_port" must be a port number')
    if host is not None and (not isinstance(host, str) or not 1 <= len(host) <= MAX_HOST_CHARS):
        raise BadRequest('"stream_host" must be a host')
    if (port is None) != (host is None):
        raise BadRequest('"stream_host" and "stream_port" go together')
    return ConnectRequest(peer, host, port, bool(body.get("hold")))


def resolve_peer_key(ctx: DaemonContext, key: str) -> PeerInfo | None:
    """The online peer *key* names (id, or a unique name); None when it is this daemon."""
    own = ctx.identity.peer_id if ctx.identity else None
    if key == own:
        return None
    matches = ctx.table.find(key)
    others = [peer for peer in matches if peer.peer_id != own]
    if not others and (matches or key == ctx.config.name):
        return None
    if not others:
        raise NotFound(f"no peer {key!r} is online", code="unknown_peer")
    if len(matches) > 1:
        ids = ", ".join(peer.peer_id for peer in matches)
        raise AmbiguousPeer(f"several peers are named {key!r}; use a peer id ({ids})")
    return others[0]


async def connect_peer(ctx: DaemonContext, request: ConnectRequest) -> dict[str, Any]:
    peer = resolve_peer_key(ctx, request.peer)
    if peer is None:  # ourselves: our own server on loopback
        address = ctx.address
        if address is None:
            raise BackendUnavailable("the peer server is not up yet")
        host = "127.0.0.1" if address.host in ("0.0.0.0", "::") else address.host
        port = request.stream_port or address.port
        own = ctx.identity.peer_id if ctx.identity else None
        return {"peer_id": own, "url": _text(origin(host, port)), "route": "direct"}
    if ctx.router is None:
        raise BackendUnavailable("no tracker connection", code="no_tracker")
    try:
        if request.stream_port is not None and request.stream_host is not None:
            reached = await ctx.router.reach_stream(
                peer.peer_id, peer.host, peer.port, request.stream_host, request.stream_port
            )
        else:
            reached = await ctx.router.reach(peer.peer_id, peer.host, peer.port)
        if reached.forwarded and ctx.tunnels is not None and peer.fingerprint:
            # Refuse a changed key here with its own message; the TLS check in
            # every tunnel is still what proves the owner.
            ctx.tunnels.check_pin(peer.peer_id, peer.fingerprint)
    except TunnelFailed as exc:
        if exc.code == "fingerprint_mismatch":
            raise KeyChanged(str(exc)) from exc
        raise PeerUnreachable(f"cannot reach peer {request.peer!r}: {exc}") from exc
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

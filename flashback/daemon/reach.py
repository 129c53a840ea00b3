"""The daemon's routes to other peers, as one task of its root nursery.

Builds the :class:`~flashback.daemon.tunnels.TunnelService` (owner ends,
forwards) and the :class:`~flashback.daemon.routes.Router` (direct first,
else a tunnel), publishes both on the context for the link and the control
socket, and takes them down again when cancelled -- which closes every
forward and tunnel with it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

import httpx
import trio

from flashback.daemon.context import DaemonContext
from flashback.daemon.keys import KeyPair
from flashback.daemon.pins import FingerprintMismatch, PinStore
from flashback.daemon.routes import PROBE_TIMEOUT_S, Router
from flashback.daemon.tunnel_ends import TunnelFailed, server_context
from flashback.daemon.tunnels import TunnelService
from flashback.errors import FlashbackError
from flashback.protocol.tunnel import OpenTarget
from flashback.streaming.manager import StreamManager

log = logging.getLogger(__name__)

CheckPin = Callable[[str, str], None]


def local_target_port(
    ctx: DaemonContext, streams: StreamManager | None, target: OpenTarget
) -> int | None:
    """Which of our own 127.0.0.1 ports an ``OPEN`` may reach: the peer server, or a
    stream port we opened (and still hold open). Nothing else, ever."""
    if target.kind == "peer-server":
        return ctx.address.port if ctx.address is not None else None
    if streams is not None and any(port.port == target.port for port in streams.open_ports):
        return target.port
    return None


def owner_context_for(keys: KeyPair) -> Callable[[], ssl.SSLContext]:
    """The TLS server context of our owner ends: built once, from our identity's PEM."""
    cache: list[ssl.SSLContext] = []

    def context() -> ssl.SSLContext:
        if not cache:
            cache.append(server_context(keys.path, keys.path))
        return cache[0]

    return context


def pin_checker(pins: PinStore, ctx: DaemonContext) -> CheckPin:
    """Trust on first use (§6.1): a changed key is refused for every connection,
    with a warning naming both fingerprints, until ``flashback forget``."""

    def check(peer_id: str, fingerprint: str) -> None:
        peer = ctx.table.peers.get(peer_id)
        try:
            pins.check(peer_id, fingerprint, name=peer.name if peer else None)
        except FingerprintMismatch as exc:
            log.warning("%s", exc.message)
            raise TunnelFailed("fingerprint_mismatch", exc.message) from exc
        except FlashbackError as exc:
            raise TunnelFailed(exc.code, exc.message) from exc

    return check


async def run_routes(
    ctx: DaemonContext,
    *,
    owner_context: Callable[[], ssl.SSLContext],
    check_pin: CheckPin,
    streams: StreamManager | None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    router: Router | None = None

    def forward_closed(peer_id: str, target: OpenTarget) -> None:
        if router is not None:
            router.forward_closed(peer_id, target)

    service = TunnelService(
        send=ctx.send_to_tracker,
        emit=ctx.hub.emit,
        owner_context=owner_context,
        resolve_target=lambda target: local_target_port(ctx, streams, target),
        check_pin=check_pin,
        on_forward_closed=forward_closed,
    )
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as http, trio.open_nursery() as nursery:
        router = Router(http, service.start_forward)
        await nursery.start(service.run)
        ctx.tunnels, ctx.router = service, router
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            ctx.tunnels = ctx.router = None

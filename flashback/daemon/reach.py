"""The daemon's routes to other peers, as one task of its root nursery.

Builds the :class:`~flashback.daemon.tunnels.TunnelService` (owner ends,
forwards) and the :class:`~flashback.daemon.routes.Router` (direct first,
else a tunnel), publishes both on the context for the link and the control
socket, and takes them down again when cancelled -- which closes every
forward and tunnel with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import trio

from flashback.daemon.context import DaemonContext
from flashback.daemon.direct import DirectEndpoint
from flashback.daemon.gate import Gate, TrackerGate, peer_of
from flashback.daemon.peer_tls import PeerTLS
from flashback.daemon.pins import FingerprintMismatch, PinStore
from flashback.daemon.race import RouteRacer
from flashback.daemon.routes import PROBE_TIMEOUT_S, Router
from flashback.daemon.tunnel_ends import TunnelFailed
from flashback.daemon.tunnels import TunnelService
from flashback.errors import FlashbackError
from flashback.protocol.messages import Candidate, TunnelInvite
from flashback.protocol.tunnel import OpenTarget
from flashback.streaming.manager import StreamManager

log = logging.getLogger(__name__)

__all__ = [
    "BookedGate",
    "Gate",
    "TrackerGate",
    "local_target_port",
    "peer_of",
    "pin_checker",
    "run_routes",
]

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


def candidates_of(ctx: DaemonContext, peer_id: str) -> tuple[Candidate, ...]:
    """A peer's direct candidates as the tracker lists them now (§10.2)."""
    peer = ctx.table.peers.get(peer_id)
    return peer.candidates if peer is not None else ()


class BookedGate:
    """*inner*'s decision (§11); a requester it serves goes into the peer book (§12: an
    owner keeps the requesters it accepted, so a peer served yesterday is known
    tomorrow, with the tracker down too)."""

    def __init__(self, ctx: DaemonContext, inner: Gate) -> None:
        self._ctx = ctx
        self._inner = inner

    def check(
        self, presented: str | None, *, invite_peer: str | None, invite_fingerprint: str | None
    ) -> str | None:
        refused = self._inner.check(
            presented, invite_peer=invite_peer, invite_fingerprint=invite_fingerprint
        )
        book = self._ctx.book
        if refused is None and presented is not None and book is not None:
            peer_id = invite_peer or peer_of(self._ctx.table, presented)
            peer = self._ctx.table.peers.get(peer_id) if peer_id is not None else None
            if peer is not None:  # the tracker lists it: vouched while the link is up
                book.record(
                    presented,
                    name=peer.name,
                    peer_id=peer.peer_id,
                    candidates=peer.candidates,
                    vouched=self._ctx.tracker_connected and peer.fingerprint == presented,
                    reached=False,  # it connected to us: a stranger may, many times over
                )
        return refused


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
    tls: PeerTLS,
    check_pin: CheckPin,
    streams: StreamManager | None,
    endpoint: DirectEndpoint | None = None,
    gate: Gate,
    reflect_before_punch: Callable[[TunnelInvite], None] = lambda _invite: None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    router: Router | None = None

    def forward_closed(peer_id: str, target: OpenTarget) -> None:
        if router is not None:
            router.forward_closed(peer_id, target)

    service = TunnelService(
        send=ctx.send_to_tracker,
        emit=ctx.hub.emit,
        owner_context=tls.server_context,
        requester_context=tls.client_context,
        gate=gate,
        resolve_target=lambda target: local_target_port(ctx, streams, target),
        check_pin=check_pin,
        on_forward_closed=forward_closed,
        carried=ctx.carried,
    )
    racer = RouteRacer(
        service,
        endpoint,
        client_context=tls.client_context,
        check_pin=check_pin,
        before_punch=reflect_before_punch,
        candidates_of=lambda peer_id: candidates_of(ctx, peer_id),
        linked=lambda: ctx.tracker_connected,
    )
    service.opener = racer.open
    if endpoint is not None:

        def owner_invite(invite: TunnelInvite) -> None:
            reflect_before_punch(invite)
            endpoint.owner_invite(invite)

        service.on_owner_invite = owner_invite
        endpoint.on_direct_authenticated = service.cancel_relay_join
        endpoint.on_route = service.report_route
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as http, trio.open_nursery() as nursery:
        router = Router(http, service.start_forward, book=racer.book, know=racer.know)
        await nursery.start(service.run)
        ctx.tunnels, ctx.router = service, router
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            ctx.tunnels = ctx.router = None

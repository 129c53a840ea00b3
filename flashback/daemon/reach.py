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
from typing import Protocol

import httpx
import trio

from flashback.daemon.context import DaemonContext
from flashback.daemon.peer_tls import PeerTLS
from flashback.daemon.pins import FingerprintMismatch, PinStore
from flashback.daemon.routes import PROBE_TIMEOUT_S, Router
from flashback.daemon.tunnel_ends import TunnelFailed
from flashback.daemon.tunnels import TunnelService
from flashback.errors import FlashbackError
from flashback.protocol.messages import TunnelInvite
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


class Gate(Protocol):
    """Who may connect to me (§11), asked before any ``OPEN`` line is read.

    *presented*: the fingerprint the requester proved in the TLS handshake
    (None: it showed no certificate). With an invite (a tunnel, or a punched
    introduction) *invite_peer* and *invite_fingerprint* are the invite's
    ``from`` and ``peer_fingerprint``; a plain direct dial has both None.
    Returns None to serve, else the ``ERR`` code (``forbidden``).
    """

    def check(
        self, presented: str | None, *, invite_peer: str | None, invite_fingerprint: str | None
    ) -> str | None: ...


def authorize_by_tracker(invite: TunnelInvite, fingerprint: str | None) -> str | None:
    """``tracker`` mode alone (§11), for tests that build a TunnelService without lists:
    the requester's certificate must be the one the tracker lists for the invite's
    peer id -- never the tracker's word alone."""
    if fingerprint is None or fingerprint != invite.peer_fingerprint:
        return "forbidden"
    return None


def recording_accepted(
    ctx: DaemonContext, authorize: Callable[[TunnelInvite, str | None], str | None]
) -> Callable[[TunnelInvite, str | None], str | None]:
    """*authorize*, and a requester it lets in goes into the peer book (§11: an owner
    keeps the requesters it accepted, so a peer served yesterday is known tomorrow)."""

    def check(invite: TunnelInvite, fingerprint: str | None) -> str | None:
        refused = authorize(invite, fingerprint)
        if refused is None and fingerprint is not None and ctx.book is not None:
            peer = ctx.table.peers.get(invite.from_)
            ctx.book.record(
                fingerprint,
                name=peer.name if peer is not None else invite.from_,
                peer_id=invite.from_,
                candidates=invite.candidates,
            )
        return refused

    return check


def invite_authorizer(gate: Gate) -> Callable[[TunnelInvite, str | None], str | None]:
    """TunnelService's hook, asking *gate* with the invite's peer id and fingerprint."""

    def authorize(invite: TunnelInvite, fingerprint: str | None) -> str | None:
        return gate.check(
            fingerprint, invite_peer=invite.from_, invite_fingerprint=invite.peer_fingerprint
        )

    return authorize


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
    gate: Gate,
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
        owner_context=tls.server_context,
        requester_context=tls.client_context,
        authorize=recording_accepted(ctx, invite_authorizer(gate)),
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

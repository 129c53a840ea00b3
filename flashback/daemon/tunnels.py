"""The daemon's side of tunnels: answer invites as owner, open tunnels as requester.

One :class:`TunnelService` per daemon, run as a task of the root nursery;
every owner end and every forward is a task of *its* nursery, so shutdown
(cancelling that nursery) closes them all. The service talks to the tracker
only through two narrow seams -- *send* (queue a frame for the link's
writer) and :meth:`on_message` (the link hands over tunnel frames) -- so it
is tested without a websocket.

Bounds: at most :data:`MAX_OWNER_TUNNELS` owner ends at once, shared fairly
by requester (:class:`~flashback.protocol.fairshare.FairShare`: a newcomer's
invite cuts the oldest tunnel of the peer holding most, so one stranger
cannot hold them all), and :data:`MAX_PENDING_REQUESTS` requests waiting for
their invite; an invite nobody asked for is ignored.

Each carried connection is opened by :attr:`TunnelService.opener` when one
is set (the race of direct and relay routes, ``daemon/race.py``), else by a
tunnel alone.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import secrets
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any, Final

import trio

from flashback.daemon.bulk_tls import BulkTLSStream
from flashback.daemon.carried import Carried
from flashback.daemon.gate import Gate
from flashback.daemon.tunnel_ends import (
    SETUP_TIMEOUT_S,
    Opened,
    TunnelFailed,
    bridge,
    join_tunnel,
    open_requester_end,
    serve_over,
)
from flashback.errors import FlashbackError
from flashback.http.accept import serve_listener
from flashback.protocol.direct import hostport
from flashback.protocol.fairshare import FairShare
from flashback.protocol.messages import (
    Message,
    RouteReport,
    TunnelErrorMessage,
    TunnelInvite,
    TunnelRequest,
)
from flashback.protocol.tunnel import OpenTarget, Route

log = logging.getLogger(__name__)

MAX_OWNER_TUNNELS: Final = 64
#: owner tunnels one requester may hold when others want some too
OWNER_TUNNELS_PER_PEER: Final = 8
MAX_PENDING_REQUESTS: Final = 64
#: from tunnel-request to tunnel-invite (the tracker answers at once when it can)
INVITE_TIMEOUT_S: Final = 10.0
#: a local forward with no connection for this long closes
FORWARD_IDLE_TIMEOUT_S: Final = 300.0
#: how long the tunnel a new forward opened first waits for its connection (the
#: owner's peer server would close an idle connection a little later)
SPARE_TUNNEL_TTL_S: Final = 2.0
#: what a refused local HTTP client reads (the requester's own command or UI)
REFUSED_STATUS: Final = b"HTTP/1.1 403 Forbidden\r\n"
REFUSED_READ_S: Final = 0.5
REFUSED_READ_BYTES: Final = 64 * 1024
#: a direct route ends this long after its client's EOF with nothing coming down
DIRECT_IDLE_AFTER_EOF_S: Final = 1.0
#: connections one local forward carries at once (more wait in the backlog)
MAX_FORWARD_CONNECTIONS: Final = 64

Send = Callable[[Message], bool]
Emit = Callable[..., None]
MAX_REPORTED: Final = 256


Opener = Callable[[str, OpenTarget], Awaitable[Opened]]


#: a way opened before its connection came (see _Forward.spare)
Tunnel = Opened


async def discard(way: Opened) -> None:
    """Close a way nobody will use, and let its endpoint handler go."""
    try:
        await trio.aclose_forcefully(way.stream)
    finally:
        way.release()


class _Forward:
    """One local forward's listening port and what keeps it alive."""

    def __init__(self, port: int, spare: Tunnel | None = None) -> None:
        self.port = port
        self.active = 0  # connections being carried
        self.holds = 0  # `flashback connect` commands holding it open
        self.idle_since = trio.current_time()
        self.changed = trio.Event()
        # the tunnel start_forward opened to learn of a refusal first; the next
        # connection uses it, or it is closed after SPARE_TUNNEL_TTL_S
        self.spare: Tunnel | None = None
        self.spare_expires = 0.0
        self.refused = False  # the owner refused us: close, so the next reach asks again
        if spare is not None:
            self.set_spare(spare)

    def set_spare(self, spare: Tunnel) -> None:
        self.spare = spare
        self.spare_expires = trio.current_time() + SPARE_TUNNEL_TTL_S
        self.touch()

    def take_spare(self) -> Tunnel | None:
        spare, self.spare = self.spare, None
        return spare

    @property
    def idle(self) -> bool:
        return self.active == 0 and self.holds == 0

    def touch(self) -> None:
        self.idle_since = trio.current_time()
        self.changed.set()
        self.changed = trio.Event()


class TunnelService:
    def __init__(
        self,
        *,
        send: Send,
        emit: Emit,
        owner_context: Callable[[], ssl.SSLContext],
        requester_context: Callable[[], ssl.SSLContext],
        gate: Gate,
        resolve_target: Callable[[OpenTarget], int | None],
        check_pin: Callable[[str, str], None],
        max_owner_tunnels: int = MAX_OWNER_TUNNELS,
        owner_tunnels_per_peer: int = OWNER_TUNNELS_PER_PEER,
        on_forward_closed: Callable[[str, OpenTarget], None] | None = None,
        carried: Carried | None = None,
    ) -> None:
        """*check_pin(peer_id, fingerprint)* raises TunnelFailed to refuse an owner;
        *gate* decides on a requester's certificate (§11); *carried* learns who is
        on each connection an owner end carries (``daemon/carried.py``)."""
        self._carried = carried
        self._send = send
        self._emit = emit
        self._owner_context = owner_context
        self._requester_context = requester_context
        self.gate = gate
        self.resolve_target = resolve_target
        self._check_pin = check_pin
        self._max_owner = max_owner_tunnels
        self._owners: FairShare[str, int] = FairShare(
            max(1, max_owner_tunnels), owner_tunnels_per_peer
        )
        self._owner_scopes: dict[int, trio.CancelScope] = {}
        # owner ends still joining the tunnel port, by request id (a direct win cancels)
        self._joining: dict[str, trio.CancelScope] = {}
        self._reported: OrderedDict[str, None] = OrderedDict()
        #: what opens each carried connection (the route race); None: a tunnel alone
        self.opener: Opener | None = None
        #: told of every owner invite (the direct endpoint dials the requester back)
        self.on_owner_invite: Callable[[TunnelInvite], None] | None = None
        self._pending: dict[str, trio.MemorySendChannel[TunnelInvite | TunnelErrorMessage]] = {}
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._forwards: dict[tuple[str, OpenTarget], _Forward] = {}
        self._on_forward_closed = on_forward_closed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the owner ends and forwards until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None

    # -- from the link ---------------------------------------------------------

    def on_message(self, message: TunnelInvite | TunnelErrorMessage) -> None:
        if isinstance(message, TunnelInvite) and message.role == "server":
            self._accept_invite(message)
            return
        waiter = self._pending.pop(message.request_id, None)
        if waiter is None:
            log.info("ignoring a %s nobody asked for", message.TYPE)
            return
        # a full or closed channel: that requester already has its answer or gave up
        with contextlib.suppress(
            trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            waiter.send_nowait(message)

    def _accept_invite(self, invite: TunnelInvite) -> None:
        if self._nursery is None or self._max_owner < 1:
            self._send(
                TunnelErrorMessage(
                    invite.request_id, "busy", "the owner has too many tunnels", to=invite.from_
                )
            )
            return
        tunnel_id = next(self._ids)
        evicted = self._owners.admit(invite.from_, tunnel_id).evicted
        if evicted is not None and evicted[1] in self._owner_scopes:
            self._owner_scopes[evicted[1]].cancel()  # the heaviest holder's oldest
        scope = trio.CancelScope()
        self._owner_scopes[tunnel_id] = scope
        if self.on_owner_invite is not None:
            self.on_owner_invite(invite)
        self._nursery.start_soon(self._owner_end, invite, tunnel_id, scope)

    def report_route(self, request_id: str, route: Route) -> None:
        """Tell the tracker which route an introduction took, once (§10.3 metrics)."""
        if request_id in self._reported:
            return
        self._reported[request_id] = None
        while len(self._reported) > MAX_REPORTED:
            self._reported.popitem(last=False)
        self._send(RouteReport(request_id, route))

    def cancel_relay_join(self, request_id: str) -> None:
        """A direct connection of this introduction authenticated: stop waiting at the
        tunnel port (a tunnel already joined stays)."""
        scope = self._joining.pop(request_id, None)
        if scope is not None:
            scope.cancel()

    def opened(self, peer_id: str | None, route: Route, address: str, *, punched: bool) -> None:
        self._emit("tunnel-opened", peer_id=peer_id, route=route, address=address, punched=punched)

    async def _owner_end(
        self, invite: TunnelInvite, tunnel_id: int, scope: trio.CancelScope
    ) -> None:
        start = trio.current_time()
        counts = [0, 0]
        address = hostport(invite.host, invite.port)

        def count(down: int, up: int) -> None:
            counts[0] += down
            counts[1] += up

        def on_open() -> None:
            self.opened(invite.from_, "relay", address, punched=False)
            self.report_route(invite.request_id, "relay")

        try:
            with scope:
                tcp: trio.SocketStream | None = None
                joining = self._joining[invite.request_id] = trio.CancelScope()
                with joining, trio.fail_after(SETUP_TIMEOUT_S):
                    tcp = await join_tunnel(invite.host, invite.port, invite.key)
                self._joining.pop(invite.request_id, None)
                if tcp is None:
                    return  # a direct route won first
                await serve_over(
                    tcp,
                    context=self._owner_context(),
                    authorize=lambda fingerprint: self.gate.check(
                        fingerprint,
                        invite_peer=invite.from_,
                        invite_fingerprint=invite.peer_fingerprint,
                    ),
                    resolve_target=self.resolve_target,
                    on_bytes=count,
                    on_open=on_open,
                    carried=self._carried,
                )
        except (TunnelFailed, trio.TooSlowError, OSError) as exc:
            log.info("tunnel for %s did not open: %s", invite.from_, exc)
        finally:
            if self._joining.get(invite.request_id) is not None:
                self._joining.pop(invite.request_id, None)
            self._owners.release(tunnel_id)
            self._owner_scopes.pop(tunnel_id, None)
            if counts != [0, 0]:
                self._emit(
                    "tunnel-closed",
                    peer_id=invite.from_,
                    route="relay",
                    bytes_in=counts[0],
                    bytes_out=counts[1],
                    duration_s=round(trio.current_time() - start, 3),
                )

    # -- as requester ------------------------------------------------------------

    async def open(self, peer_id: str, target: OpenTarget) -> tuple[BulkTLSStream, bytes]:
        """A tunnel to *peer_id*'s *target*, fingerprint and pin checked; TunnelFailed otherwise."""
        return await self.join_relay(await self.request_invite(peer_id), target)

    async def request_invite(self, peer_id: str) -> TunnelInvite:
        """Ask the tracker for an introduction to *peer_id*; its invite, or TunnelFailed."""
        if len(self._pending) >= MAX_PENDING_REQUESTS:
            raise TunnelFailed("busy", "too many tunnels being set up")
        request_id = f"t{next(self._ids)}-{secrets.token_hex(4)}"
        send, receive = trio.open_memory_channel[TunnelInvite | TunnelErrorMessage](1)
        self._pending[request_id] = send
        try:
            if not self._send(TunnelRequest(request_id, peer_id)):
                raise TunnelFailed("tracker_unreachable", "the tracker link is not up")
            answer: TunnelInvite | TunnelErrorMessage | None = None
            with trio.move_on_after(INVITE_TIMEOUT_S):
                answer = await receive.receive()
            if answer is None:
                raise TunnelFailed("timeout", "the tracker did not answer the tunnel request")
        finally:
            self._pending.pop(request_id, None)
        if isinstance(answer, TunnelErrorMessage):
            raise TunnelFailed(answer.code, answer.message or f"tunnel refused ({answer.code})")
        if answer.from_ != peer_id:
            raise TunnelFailed("bad_invite", "the invite names another peer")
        return answer

    async def join_relay(
        self, invite: TunnelInvite, target: OpenTarget
    ) -> tuple[BulkTLSStream, bytes]:
        """The relay route of an introduction: join the tunnel port, then TLS and OPEN."""
        try:
            return await open_requester_end(
                host=invite.host,
                port=invite.port,
                key=invite.key,
                context=self._requester_context(),
                expected_fingerprint=invite.fingerprint,
                check_pin=lambda fingerprint: self._check_pin(invite.from_, fingerprint),
                target=target,
            )
        except trio.TooSlowError:
            raise TunnelFailed("timeout", "the tunnel took too long to set up") from None
        except (OSError, trio.BrokenResourceError) as exc:
            raise TunnelFailed("tunnel_failed", f"the tunnel broke: {exc}") from exc

    def check_pin(self, peer_id: str, fingerprint: str) -> None:
        """The pin rule alone (TunnelFailed on a mismatch), for a clear early refusal."""
        self._check_pin(peer_id, fingerprint)

    async def start_forward(self, peer_id: str, target: OpenTarget) -> int:
        """A local forward to *peer_id*'s *target* (an existing one is reused); its port.

        Each call opens a tunnel before the port is handed out (unless one
        opened for an earlier call still waits): an owner that refuses us
        (``forbidden``, §11) or a changed key is a TunnelFailed for the command
        that asked, not a connection that closes under it. The next connection
        then uses that tunnel, so the check costs no extra tunnel.
        """
        key = (peer_id, target)
        existing = self._forwards.get(key)
        if existing is not None and existing.spare is not None:
            return existing.port
        if self._nursery is None:
            raise TunnelFailed("stopped", "the daemon is shutting down")
        first = await self._open_route(peer_id, target)
        existing = self._forwards.get(key)
        if existing is not None:
            old = existing.take_spare()
            existing.set_spare(first)
            if old is not None:
                await discard(old)
            return existing.port
        try:
            port: int = await self._nursery.start(
                functools.partial(self.forward, peer_id, target, first=first)
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                await discard(first)
            raise
        return port

    @contextlib.contextmanager
    def hold(self, peer_id: str, target: OpenTarget) -> Iterator[None]:
        """Keep that forward open while the block runs (``flashback connect``)."""
        forward = self._forwards.get((peer_id, target))
        if forward is None:
            raise TunnelFailed("no_forward", "no forward is open to that peer")
        forward.holds += 1
        forward.touch()
        try:
            yield
        finally:
            forward.holds -= 1
            forward.touch()

    async def forward(
        self,
        peer_id: str,
        target: OpenTarget,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
        idle_timeout_s: float = FORWARD_IDLE_TIMEOUT_S,
        first: Tunnel | None = None,
    ) -> None:
        """Listen on 127.0.0.1 and carry every accepted connection on its own tunnel.

        Reports the port through *task_status*; ends after *idle_timeout_s*
        with no connection open and no hold, when the owner refuses us, or
        when cancelled. *first*: a tunnel already open, for the first connection.
        """
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = listeners[0]
        state = _Forward(listener.socket.getsockname()[1], first)
        key = (peer_id, target)
        self._forwards[key] = state
        try:
            async with listener, trio.open_nursery() as nursery:
                task_status.started(state.port)

                async def drop_stale_spare() -> None:
                    while True:
                        spare = state.spare
                        if spare is None:
                            await state.changed.wait()
                            continue
                        await trio.sleep_until(state.spare_expires)
                        if state.spare is spare:
                            state.spare = None
                            await discard(spare)

                async def carry(local: trio.SocketStream) -> None:
                    await self._carry(peer_id, target, local, state)

                async def close_when_idle() -> None:
                    while True:
                        if state.refused:
                            nursery.cancel_scope.cancel()
                            return
                        if not state.idle:  # in use: wait until that changes
                            await state.changed.wait()
                            continue
                        with trio.move_on_at(state.idle_since + idle_timeout_s):
                            await state.changed.wait()
                            continue
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(
                    partial(
                        serve_listener,
                        carry,
                        listener,
                        max_connections=MAX_FORWARD_CONNECTIONS,
                        name=f"forward to {peer_id}",
                    )
                )
                nursery.start_soon(close_when_idle)
                nursery.start_soon(drop_stale_spare)
        finally:
            spare = state.take_spare()
            if spare is not None:
                with trio.CancelScope(shield=True):
                    await discard(spare)
            if self._forwards.get(key) is state:
                del self._forwards[key]
            if self._on_forward_closed is not None:
                self._on_forward_closed(peer_id, target)

    async def _carry(
        self, peer_id: str, target: OpenTarget, local: trio.SocketStream, state: _Forward
    ) -> None:
        state.active += 1
        state.touch()
        start = trio.current_time()
        counts = (0, 0)
        route: Route = "relay"
        try:
            async with local:
                try:
                    way = state.take_spare() or await self._open_route(peer_id, target)
                except TunnelFailed as exc:
                    log.info("forward to %s: %s", peer_id, exc)
                    if exc.code in ("forbidden", "fingerprint_mismatch"):
                        state.refused = True
                        if target.kind == "peer-server":
                            await _answer_refused(local, exc)
                    return
                route = way.route
                self.opened(peer_id, way.route, way.address, punched=way.punched)
                try:
                    async with way.stream:
                        counts = await bridge(
                            way.stream,
                            local,
                            leftover_to_local=way.leftover,
                            idle_after_eof_s=DIRECT_IDLE_AFTER_EOF_S
                            if way.route == "direct"
                            else None,
                        )
                finally:
                    way.release()
        finally:
            state.active -= 1
            state.touch()
            if counts != (0, 0):
                self._emit(
                    "tunnel-closed",
                    peer_id=peer_id,
                    route=route,
                    bytes_in=counts[0],
                    bytes_out=counts[1],
                    duration_s=round(trio.current_time() - start, 3),
                )

    async def _open_route(self, peer_id: str, target: OpenTarget) -> Opened:
        if self.opener is not None:
            return await self.opener(peer_id, target)
        invite = await self.request_invite(peer_id)
        stream, leftover = await self.join_relay(invite, target)
        return Opened(stream, leftover, "relay", hostport(invite.host, invite.port), False)

    def status(self) -> dict[str, Any]:
        return {
            "owner_tunnels": len(self._owners),
            "pending_requests": len(self._pending),
            "forwards": len(self._forwards),
        }


async def _answer_refused(local: trio.SocketStream, exc: TunnelFailed) -> None:
    """Tell a local HTTP client why, as the peer server would (403 and a JSON error)."""
    body = FlashbackError(str(exc), code=exc.code).body()
    head = (
        REFUSED_STATUS
        + b"Content-Type: application/json\r\nConnection: close\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        # read what the client sent first: closing on unread bytes would be a reset
        # that loses the answer
        with trio.move_on_after(REFUSED_READ_S):
            await local.receive_some(REFUSED_READ_BYTES)
        await local.send_all(head + body)

"""The daemon's side of tunnels: answer invites as owner, open tunnels as requester.

One :class:`TunnelService` per daemon, run as a task of the root nursery;
every owner end and every forward is a task of *its* nursery, so shutdown
(cancelling that nursery) closes them all. The service talks to the tracker
only through two narrow seams -- *send* (queue a frame for the link's
writer) and :meth:`on_message` (the link hands over tunnel frames) -- so it
is tested without a websocket.

Bounds: at most :data:`MAX_OWNER_TUNNELS` owner ends at once (more invites
are declined with ``tunnel-error busy``) and :data:`MAX_PENDING_REQUESTS`
requests waiting for their invite; an invite nobody asked for is ignored.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import ssl
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Final

import trio

from flashback.daemon.tunnel_ends import (
    TunnelFailed,
    bridge,
    open_requester_end,
    serve_owner_end,
)
from flashback.http.accept import serve_listener
from flashback.protocol.messages import Message, TunnelErrorMessage, TunnelInvite, TunnelRequest
from flashback.protocol.tunnel import OpenTarget

log = logging.getLogger(__name__)

MAX_OWNER_TUNNELS: Final = 64
MAX_PENDING_REQUESTS: Final = 64
#: from tunnel-request to tunnel-invite (the tracker answers at once when it can)
INVITE_TIMEOUT_S: Final = 10.0
#: a local forward with no connection for this long closes
FORWARD_IDLE_TIMEOUT_S: Final = 300.0
#: connections one local forward carries at once (more wait in the backlog)
MAX_FORWARD_CONNECTIONS: Final = 64

Send = Callable[[Message], bool]
Emit = Callable[..., None]


class _Forward:
    """One local forward's listening port and what keeps it alive."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.active = 0  # connections being carried
        self.holds = 0  # `flashback connect` commands holding it open
        self.idle_since = trio.current_time()
        self.changed = trio.Event()

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
        authorize: Callable[[TunnelInvite, str | None], str | None],
        resolve_target: Callable[[OpenTarget], int | None],
        check_pin: Callable[[str, str], None],
        max_owner_tunnels: int = MAX_OWNER_TUNNELS,
        on_forward_closed: Callable[[str, OpenTarget], None] | None = None,
    ) -> None:
        """*check_pin(peer_id, fingerprint)* raises TunnelFailed to refuse an owner;
        *authorize(invite, requester_fingerprint)* returns an ``ERR`` code to refuse
        a requester (§11), None to serve it."""
        self._send = send
        self._emit = emit
        self._owner_context = owner_context
        self._requester_context = requester_context
        self._authorize = authorize
        self._resolve_target = resolve_target
        self._check_pin = check_pin
        self._max_owner = max_owner_tunnels
        self._owner_count = 0
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
        if self._nursery is None or self._owner_count >= self._max_owner:
            self._send(
                TunnelErrorMessage(
                    invite.request_id, "busy", "the owner has too many tunnels", to=invite.from_
                )
            )
            return
        self._owner_count += 1
        self._nursery.start_soon(self._owner_end, invite)

    async def _owner_end(self, invite: TunnelInvite) -> None:
        start = trio.current_time()
        counts = [0, 0]

        def count(down: int, up: int) -> None:
            counts[0] += down
            counts[1] += up

        try:
            await serve_owner_end(
                host=invite.host,
                port=invite.port,
                key=invite.key,
                context=self._owner_context(),
                authorize=lambda fingerprint: self._authorize(invite, fingerprint),
                resolve_target=self._resolve_target,
                on_bytes=count,
            )
        except (TunnelFailed, trio.TooSlowError, OSError) as exc:
            log.info("tunnel for %s did not open: %s", invite.from_, exc)
        finally:
            self._owner_count -= 1
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

    async def open(
        self, peer_id: str, target: OpenTarget
    ) -> tuple[trio.SSLStream[trio.SocketStream], bytes]:
        """A tunnel to *peer_id*'s *target*, fingerprint and pin checked; TunnelFailed otherwise."""
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
        try:
            return await open_requester_end(
                host=answer.host,
                port=answer.port,
                key=answer.key,
                context=self._requester_context(),
                expected_fingerprint=answer.fingerprint,
                check_pin=lambda fingerprint: self._check_pin(peer_id, fingerprint),
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
        """A local forward to *peer_id*'s *target* (an existing one is reused); its port."""
        key = (peer_id, target)
        existing = self._forwards.get(key)
        if existing is not None:
            return existing.port
        if self._nursery is None:
            raise TunnelFailed("stopped", "the daemon is shutting down")
        port: int = await self._nursery.start(self.forward, peer_id, target)
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
    ) -> None:
        """Listen on 127.0.0.1 and carry every accepted connection on its own tunnel.

        Reports the port through *task_status*; ends after *idle_timeout_s*
        with no connection open and no hold, or when cancelled.
        """
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        listener = listeners[0]
        state = _Forward(listener.socket.getsockname()[1])
        key = (peer_id, target)
        self._forwards[key] = state
        try:
            async with listener, trio.open_nursery() as nursery:
                task_status.started(state.port)

                async def carry(local: trio.SocketStream) -> None:
                    await self._carry(peer_id, target, local, state)

                async def close_when_idle() -> None:
                    while True:
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
        finally:
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
        try:
            async with local:
                try:
                    tunnel, leftover = await self.open(peer_id, target)
                except TunnelFailed as exc:
                    log.info("forward to %s: %s", peer_id, exc)
                    return
                self._emit("tunnel-opened", peer_id=peer_id, route="relay")
                async with tunnel:
                    counts = await bridge(tunnel, local, leftover_to_local=leftover)
        finally:
            state.active -= 1
            state.touch()
            if counts != (0, 0):
                self._emit(
                    "tunnel-closed",
                    peer_id=peer_id,
                    route="relay",
                    bytes_in=counts[0],
                    bytes_out=counts[1],
                    duration_s=round(trio.current_time() - start, 3),
                )

    def status(self) -> dict[str, Any]:
        return {
            "owner_tunnels": self._owner_count,
            "pending_requests": len(self._pending),
            "forwards": len(self._forwards),
        }

"""The direct endpoint (docs/INTERFACE.md §10.1): a TLS 1.3 listener beside the peer server.

It speaks what runs inside a tunnel (``tunnel_ends.serve_over``): mutual TLS,
the requester's fingerprint asked of the :class:`~flashback.daemon.gate.Gate`
before any ``OPEN`` line, then bytes to one of our own 127.0.0.1 listeners.
The first byte decides (``protocol/direct.py``): ``0x16`` is a plain dial;
``F`` an introduction's ``FLASHBACK-INTRO`` line, served only for an
introduction this daemon has pending; anything else, or silence for
:data:`HANDSHAKE_TIMEOUT_S`, is closed.

The listener is bound with ``SO_REUSEADDR`` + ``SO_REUSEPORT`` so the dials
an introduction sets off (:meth:`DirectEndpoint.punch`) and the reflection
(``daemon/reflect.py``) leave from the very port peers dial: that is what
lets two NATs that keep a port's mapping pass a TCP simultaneous open.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final

import trio

from flashback.daemon.carried import Carried
from flashback.daemon.endpoint_bind import (
    Replayed,
    bind_endpoint,
    close_abortively,
    close_when_acked,
    reusable_socket,
)
from flashback.daemon.gate import Gate
from flashback.daemon.tunnel_ends import TunnelFailed, read_plain_line, serve_over
from flashback.http.accept import serve_listener
from flashback.protocol.direct import (
    HANDSHAKE_TIMEOUT_S,
    MAX_INTRO_LINE_BYTES,
    DialPlan,
    classify_first_byte,
    hostport,
    intro_line,
    introduction_candidates,
    parse_intro_line,
)
from flashback.protocol.fairshare import FairShare
from flashback.protocol.messages import Candidate, TunnelInvite
from flashback.protocol.tunnel import OpenTarget, Route, TunnelError
from flashback.shutdown import Shutdown

log = logging.getLogger(__name__)

MAX_CONNECTIONS: Final = 256
PER_ADDRESS: Final = 32
#: an owner keeps an introduction's INTRO connections welcome this long
INTRO_TTL_S: Final = 10.0
MAX_PENDING_INTROS: Final = 128
#: of those, what one requester may have pending (its newest drops its own oldest)
PENDING_INTROS_PER_PEER: Final = 16
#: introductions an owner dials back at once, and per requester (a fair share)
MAX_DIALLING: Final = 32
DIALLING_PER_PEER: Final = 4
#: how often a running introduction looks for candidates learnt meanwhile
WATCH_S: Final = 0.1

Emit = Callable[..., None]


# -- introductions ----------------------------------------------------------------------


@dataclass
class Handoff:
    """An INTRO connection for one of our own requests, for the race to use."""

    stream: trio.SocketStream
    address: str
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class _OwnerIntro:
    invite: TunnelInvite
    expires_at: float


#: given a connection an introduction made; True when it keeps the stream (won a race)
Use = Callable[[trio.SocketStream, str], Awaitable[bool]]


def _remote(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "?"
    return hostport(str(name[0]), int(name[1]))


class DirectEndpoint:
    """One daemon's direct endpoint, its pending introductions and its dials."""

    def __init__(
        self,
        *,
        server_context: Callable[[], ssl.SSLContext],
        gate: Gate,
        resolve_target: Callable[[OpenTarget], int | None],
        emit: Emit,
        peer_of: Callable[[str | None], str | None] = lambda _fingerprint: None,
        candidates_of: Callable[[str], tuple[Candidate, ...]] = lambda _peer_id: (),
        carried: Carried | None = None,
    ) -> None:
        self._carried = carried
        self._server_context = server_context
        self.gate = gate
        self._resolve_target = resolve_target
        self._emit = emit
        self._peer_of = peer_of
        #: a peer's candidates as the tracker lists them now (the peer table)
        self.candidates_of = candidates_of
        self.port = 0
        self._bound: dict[socket.AddressFamily, str] = {}
        self._owner_intros: dict[str, _OwnerIntro] = {}
        self._intro_share: FairShare[str, str] = FairShare(
            MAX_PENDING_INTROS, PENDING_INTROS_PER_PEER
        )
        self._requester_intros: dict[str, trio.MemorySendChannel[Handoff]] = {}
        self._dialling: FairShare[str, str] = FairShare(MAX_DIALLING, DIALLING_PER_PEER)
        self._halts: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        #: told when a direct connection of an introduction authenticated (request id)
        self.on_direct_authenticated: Callable[[str], None] = lambda _request_id: None
        self.on_route: Callable[[str, Route], None] = lambda _request_id, _route: None

    async def run(
        self,
        host: str | None,
        port: int,
        data_dir: Path,
        *,
        stop: Shutdown | trio.Event | None = None,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until *stop* is set (the daemon's shutdown: its connections end
        with it, as tunnels do), or until cancelled."""
        listeners, self.port = await bind_endpoint(host, port, data_dir)
        self._bound = {
            listener.socket.family: str(listener.socket.getsockname()[0]) for listener in listeners
        }
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for listener in listeners:
                nursery.start_soon(
                    partial(
                        serve_listener,
                        self.handle,
                        listener,
                        max_connections=MAX_CONNECTIONS,
                        per_address=PER_ADDRESS,
                        name="direct endpoint",
                    )
                )
            task_status.started(self.port)
            try:
                if stop is None:
                    await trio.sleep_forever()
                await stop.wait()
                nursery.cancel_scope.cancel()
            finally:
                self._nursery = None

    # -- what arrives ------------------------------------------------------------------

    async def handle(self, stream: trio.SocketStream) -> None:
        deadline = trio.current_time() + HANDSHAKE_TIMEOUT_S
        first = b""
        with trio.move_on_at(deadline):
            with contextlib.suppress(OSError, trio.BrokenResourceError):
                first = await stream.receive_some(1)
        kind = classify_first_byte(first)
        if kind == "tls":
            await self._serve(
                Replayed(stream, first),
                _remote(stream),
                lambda fp: self.gate.check(fp, invite_peer=None, invite_fingerprint=None),
                punched=False,
                request_id=None,
                timeout_s=max(0.0, deadline - trio.current_time()),
                raw=stream,
            )
            return
        if kind != "intro":
            return
        try:
            with trio.fail_at(deadline):
                rest = await read_plain_line(stream, MAX_INTRO_LINE_BYTES - 1)
                request_id = parse_intro_line(first + rest)
        except (trio.TooSlowError, TunnelError, OSError, trio.BrokenResourceError):
            return
        owner = self._owner_intros.get(request_id)
        if owner is not None and trio.current_time() < owner.expires_at:
            with contextlib.suppress(OSError, trio.BrokenResourceError):
                await stream.send_all(intro_line(request_id))
                await self._serve_intro(stream, owner.invite, _remote(stream), deadline)
            return
        waiter = self._requester_intros.get(request_id)
        if waiter is None:
            return  # no introduction of ours: closed at once
        handoff = Handoff(stream, _remote(stream))
        try:
            await stream.send_all(intro_line(request_id))
            waiter.send_nowait(handoff)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        await handoff.done.wait()  # the race uses the stream; we only keep it open

    async def _serve_intro(
        self,
        stream: trio.SocketStream,
        invite: TunnelInvite,
        address: str,
        deadline: float,
    ) -> None:
        def authorize(fingerprint: str | None) -> str | None:
            refusal = self.gate.check(
                fingerprint, invite_peer=invite.from_, invite_fingerprint=invite.peer_fingerprint
            )
            if refusal is None:
                self.on_direct_authenticated(invite.request_id)
            return refusal

        await self._serve(
            stream,
            address,
            authorize,
            punched=True,
            request_id=invite.request_id,
            peer_id=invite.from_,
            timeout_s=max(0.0, deadline - trio.current_time()),
            raw=stream,
        )

    async def _serve(
        self,
        stream: trio.abc.HalfCloseableStream,
        address: str,
        authorize: Callable[[str | None], str | None],
        *,
        punched: bool,
        request_id: str | None,
        peer_id: str | None = None,
        timeout_s: float,
        raw: trio.SocketStream | None = None,
    ) -> None:
        """The owner's part, with ``tunnel-opened``/``tunnel-closed`` for this route;
        *raw* is the TCP connection under *stream*, closed abortively once acked."""
        start = trio.current_time()
        counts = [0, 0]
        who: list[str | None] = [peer_id]

        def check(fingerprint: str | None) -> str | None:
            if who[0] is None:
                who[0] = self._peer_of(fingerprint)
            return authorize(fingerprint)

        def count(down: int, up: int) -> None:
            counts[0] += down
            counts[1] += up

        def on_open() -> None:
            self._emit(
                "tunnel-opened", peer_id=who[0], route="direct", address=address, punched=punched
            )
            if request_id is not None:
                self.on_route(request_id, "direct")

        await serve_over(
            stream,
            context=self._server_context(),
            authorize=check,
            resolve_target=self._resolve_target,
            on_bytes=count,
            on_open=on_open,
            timeout_s=timeout_s,
            before_close=partial(close_when_acked, raw) if raw is not None else None,
            carried=self._carried,
        )
        if counts != [0, 0]:
            self._emit(
                "tunnel-closed",
                peer_id=who[0],
                route="direct",
                bytes_in=counts[0],
                bytes_out=counts[1],
                duration_s=round(trio.current_time() - start, 3),
            )

    # -- introductions we take part in -------------------------------------------------

    def owner_invite(self, invite: TunnelInvite) -> None:
        """As the owner: welcome this introduction's INTRO connections for a while and
        dial the requester's candidates from our port."""
        if self._nursery is None:
            return
        now = trio.current_time()
        for request_id in [r for r, i in self._owner_intros.items() if i.expires_at <= now]:
            del self._owner_intros[request_id]
            self._intro_share.release(request_id)
        try:
            intro_line(invite.request_id)
        except ValueError:
            return  # a request id we cannot put on the line: relay only
        # a fair share by requester: a flood of invites pushes out its own oldest
        # (or the heaviest requester's), never another requester's pending one
        pushed = self._intro_share.admit(invite.from_ or "", invite.request_id).evicted
        if pushed is not None:
            self._owner_intros.pop(pushed[1], None)
        self._owner_intros[invite.request_id] = _OwnerIntro(invite, now + INTRO_TTL_S)
        candidates = introduction_candidates(invite.candidates, tunnel_host=invite.host)
        # a fair share of the dialling: a requester's introductions past its share stop
        # dialling (the oldest first), never another requester's
        halt = trio.Event()
        evicted = self._dialling.admit(invite.from_, invite.request_id).evicted
        if evicted is not None and evicted[1] in self._halts:
            self._halts.pop(evicted[1]).set()
        self._halts[invite.request_id] = halt
        self._nursery.start_soon(self._owner_punch, invite, candidates, halt)

    async def _owner_punch(
        self, invite: TunnelInvite, candidates: tuple[Candidate, ...], halt: trio.Event
    ) -> None:
        async def use(stream: trio.SocketStream, address: str) -> bool:
            deadline = trio.current_time() + HANDSHAKE_TIMEOUT_S
            await self._serve_intro(stream, invite, address, deadline)
            return False

        def more() -> tuple[Candidate, ...]:
            return introduction_candidates(
                self.candidates_of(invite.from_), tunnel_host=invite.host
            )

        try:
            await self.punch(invite.request_id, candidates, use, more, halt=halt)
        finally:
            if self._halts.get(invite.request_id) is halt:
                del self._halts[invite.request_id]
                self._dialling.release(invite.request_id)

    @contextlib.asynccontextmanager
    async def expect(self, request_id: str) -> AsyncIterator[trio.MemoryReceiveChannel[Handoff]]:
        """As the requester: INTRO connections for *request_id* arrive on the channel."""
        send, receive = trio.open_memory_channel[Handoff](8)
        self._requester_intros[request_id] = send
        try:
            yield receive
        finally:
            self._requester_intros.pop(request_id, None)
            send.close()
            async for left in receive:  # never used: let their handlers close them
                left.done.set()

    async def punch(
        self,
        request_id: str,
        candidates: tuple[Candidate, ...],
        use: Use,
        more: Callable[[], Iterable[Candidate]] | None = None,
        *,
        halt: trio.Event | None = None,
    ) -> tuple[Candidate, ...]:
        """Dial every candidate from our port at once, retrying per the plan; each connection
        exchanges INTRO lines and is then given to *use* (True: it kept the stream).
        *more* is asked every :data:`WATCH_S` for candidates learnt meanwhile (the other
        side's fresh reflexive address); once *halt* is set no new dial starts. Returns
        every candidate the plan dialled."""
        plan = DialPlan(candidates, trio.current_time())
        line = intro_line(request_id)
        changed = trio.Event()

        async def attempt(candidate: Candidate) -> None:
            nonlocal changed
            stream: trio.SocketStream | None = None
            try:
                with trio.move_on_at(plan.deadline):
                    stream = await self.dial_from(candidate)
                if stream is not None:
                    with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                        await stream.send_all(line)
                        if await read_plain_line(stream, MAX_INTRO_LINE_BYTES) + b"\n" != line:
                            raise TunnelError("bad_line", "another introduction")
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, TunnelError):
                if stream is not None:
                    close_abortively(stream)  # no TIME_WAIT on our only port pair
                    await trio.aclose_forcefully(stream)
                stream = None
            if stream is None:
                plan.failed(candidate, trio.current_time())
                changed.set()
                return
            plan.succeeded()
            changed.set()
            kept = False
            try:
                kept = await use(stream, hostport(candidate.host, candidate.port))
            except TunnelFailed as exc:
                log.info("direct connection to %s failed: %s", candidate.host, exc)
            finally:
                if not kept:
                    await trio.aclose_forcefully(stream)

        async with trio.open_nursery() as nursery:
            while True:
                now = trio.current_time()
                if halt is not None and halt.is_set():
                    plan.succeeded()  # no more dials (the ones under way end on their own)
                if more is not None and not plan.done and now < plan.deadline:
                    plan.add(more(), now)
                for candidate in plan.due(now):
                    nursery.start_soon(attempt, candidate)
                wake = plan.next_wake(now)
                if wake is None:
                    if more is None or plan.done or now >= plan.deadline:
                        break
                    wake = plan.deadline
                if more is not None:
                    wake = min(wake, now + WATCH_S)
                with trio.move_on_at(max(wake, now + 0.01)):
                    await changed.wait()
                changed = trio.Event()
        return plan.candidates

    def can_dial(self, host: str) -> bool:
        """Whether the endpoint listens in *host*'s address family."""
        return (socket.AF_INET6 if ":" in host else socket.AF_INET) in self._bound

    async def dial_from(self, candidate: Candidate) -> trio.SocketStream:
        """A TCP connection to *candidate* leaving from the endpoint's own port."""
        family = socket.AF_INET6 if ":" in candidate.host else socket.AF_INET
        host = self._bound.get(family)
        if host is None:
            raise OSError(errno.EAFNOSUPPORT, "no endpoint for that address family")
        sock = reusable_socket(family)
        try:
            await sock.bind((host, self.port))
            await sock.connect((candidate.host, candidate.port))
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

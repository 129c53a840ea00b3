"""The tracker's tunnel port (INTERFACE §6.2): pair two joiners, then pump.

Each accepted TCP connection is one task in the listener's nursery. It has
:data:`JOIN_TIMEOUT_S` to send ``FLASHBACK-TUNNEL 1 <key>``; the rules for
keys live in :class:`~flashback.protocol.tunnel.SessionTable`. The first side
of a session waits (until its keys expire); the second side's task answers
``OK`` to both and runs the pump, while the first waits for it to finish --
so each socket still has exactly one owner task, and closing happens there.

The port also answers ``FLASHBACK-REFLECT 1 <token>`` (§10.2) with the
source address it saw, ``ADDR <host> <port>``, and hands that address to the
tracker (:attr:`TunnelRelay.reflector`) as the peer's reflexive address.

Strangers are bounded too: at most :data:`MAX_UNJOINED_CONNECTIONS`
connections may be in the join phase (before a valid join or REFLECT line
was answered) at once, shared fairly by source address
(:func:`~flashback.protocol.fairshare.share_address`: an IPv4 address or an
IPv6 /64) with :class:`~flashback.protocol.fairshare.FairShare`: one source
holds at most :data:`MAX_UNJOINED_PER_SOURCE`, and when the phase is full the
heaviest source's *oldest* connection is closed to make room -- never the
newcomer, so a slowloris from one address cannot lock out everyone else.
A first line costs the tracker at most 128 bytes and 5 seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Literal

import trio

from flashback.http.accept import serve_listener
from flashback.protocol.fairshare import FairShare, share_address
from flashback.protocol.messages import Candidate
from flashback.protocol.token_bucket import TokenBucket
from flashback.protocol.tunnel import (
    IDLE_TIMEOUT_S,
    JOIN_TIMEOUT_S,
    MAX_JOIN_LINE_BYTES,
    OK_LINE,
    Joined,
    LineReader,
    Reflect,
    Role,
    Session,
    SessionTable,
    TunnelError,
    addr_line,
    err_line,
    parse_first_line,
    source_candidate,
)
from flashback.tracker.pump import SPLICE_AVAILABLE, PumpStats, pump

log = logging.getLogger(__name__)

#: connections that have not joined a session yet; past this, new ones are closed
MAX_UNJOINED_CONNECTIONS: Final = 512
#: of those, what one source address (IPv4) or /64 (IPv6) may hold
MAX_UNJOINED_PER_SOURCE: Final = 64
#: how long sending our OK/ERR line may take before the peer counts as gone
LINE_SEND_TIMEOUT_S: Final = 5.0
#: after an ERR line, unread input is drained this long / this much before closing
LINGER_S: Final = 1.0
LINGER_MAX_BYTES: Final = 64 * 1024

Outcome = Literal["completed", "idle", "reset", "expired", "refused", "timeout", "busy"]

#: the tracker's half of a REFLECT: record *seen* for the peer with this token;
#: returns None when done, else the ERR code to answer (``unauthorized``...)
Reflector = Callable[[str, Candidate], Awaitable[str | None]]


@dataclass
class TunnelCounters:
    """What ``/metrics`` shows of the tunnel port; the service reads it."""

    sessions_by_outcome: dict[str, int] = field(default_factory=dict)
    bytes_copied: int = 0
    active: int = 0
    #: sessions that copied through a buffer: the kernel would not grow a pipe
    #: (an unprivileged tracker past fs.pipe-user-pages-soft), ~9x the CPU
    copy_fallbacks: int = 0
    #: REFLECT lines answered with ADDR
    reflections: int = 0
    on_outcome: Callable[[str], None] | None = None

    def count(self, outcome: Outcome) -> None:
        self.sessions_by_outcome[outcome] = self.sessions_by_outcome.get(outcome, 0) + 1
        if self.on_outcome is not None:
            self.on_outcome(outcome)


@dataclass(eq=False)
class _Waiter:
    """The first side of a session, parked until its partner joins."""

    sock: trio.socket.SocketType
    leftover: bytes
    partner_arrived: trio.Event = field(default_factory=trio.Event)
    #: set (with partner_arrived) when the session was called off instead
    refusal: str | None = None
    finished: trio.Event = field(default_factory=trio.Event)


class TunnelRelay:
    """One per tracker process: the session table, the waiting sides, the counters."""

    def __init__(
        self,
        *,
        max_sessions: int,
        rate_bytes_per_s: float | None = None,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        join_timeout_s: float = JOIN_TIMEOUT_S,
        max_unjoined: int = MAX_UNJOINED_CONNECTIONS,
        max_unjoined_per_source: int = MAX_UNJOINED_PER_SOURCE,
        use_splice: bool = SPLICE_AVAILABLE,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.table = SessionTable(max_sessions)
        self.rate_bytes_per_s = rate_bytes_per_s
        self.idle_timeout_s = idle_timeout_s
        self.join_timeout_s = join_timeout_s
        self.max_unjoined = max_unjoined
        self.use_splice = use_splice
        self.counters = TunnelCounters()
        self._clock = clock
        self._waiting: dict[int, _Waiter] = {}
        # connections in the join phase, by source; each closable by its scope
        self._unjoined: FairShare[str, int] = FairShare(max_unjoined, max_unjoined_per_source)
        self._unjoined_scopes: dict[int, trio.CancelScope] = {}
        self._connection_ids = itertools.count()
        #: set by the tracker; without it a REFLECT line is answered ERR disabled
        self.reflector: Reflector | None = None

    @property
    def unjoined(self) -> int:
        """Connections in the join phase now."""
        return len(self._unjoined)

    @property
    def sessions_active(self) -> int:
        return len(self.table)

    def invite(
        self,
        *,
        request_id: str,
        client_peer: str,
        server_peer: str,
        client_address: str | None = None,
    ) -> Session:
        """A new session with two fresh keys; TunnelError ``busy`` when full.
        *client_address*: the requester's link's share address (its paired share)."""
        try:
            session = self.table.open(
                request_id=request_id,
                client_peer=client_peer,
                server_peer=server_peer,
                now=self._clock(),
                client_address=client_address,
            )
        except TunnelError:
            self.counters.count("busy")
            raise
        evicted = self.table.evicted
        if evicted is not None:  # the heaviest requester's oldest pending one made room
            self.counters.count("busy")
            self._call_off(evicted, "busy")
        return session

    def decline(self, *, request_id: str, client_peer: str, server_peer: str) -> bool:
        """The owner said no: end the session; a side already waiting hears ``ERR refused``."""
        session = self.table.find(request_id, client_peer)
        if session is None or session.server_peer != server_peer or session.paired:
            return False
        self.table.close(session, code="refused")
        self._call_off(session, "refused")
        return True

    def _call_off(self, session: Session, code: str) -> None:
        """A side already waiting in *session* (now closed) hears ``ERR <code>``."""
        waiter = self._waiting.get(session.session_id)
        if waiter is not None:
            waiter.refusal = code
            waiter.partner_arrived.set()

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one accepted connection to the end, and close it."""
        sock = stream.socket
        try:
            first = await self._join_phase(sock)
            if first is None:
                return
            joined, leftover = first
            if joined.paired:
                await self._run_paired(joined.session, joined.role, sock, leftover)
            else:
                await self._wait_for_partner(joined.session, sock, leftover)
        finally:
            sock.close()

    async def _join_phase(self, sock: trio.socket.SocketType) -> tuple[Joined, bytes] | None:
        """Read and answer the first line, inside this source's share of the phase.

        None: the connection is done (refused, reflected, or closed to make
        room for a newer one). Eviction cancels the oldest connection of the
        heaviest source; the newcomer always gets its turn.
        """
        source = _peer_address(sock)
        connection_id = next(self._connection_ids)
        admitted = self._unjoined.admit(share_address(source[0]), connection_id)
        if admitted.evicted is not None:
            self.counters.count("busy")
            self._unjoined_scopes.pop(admitted.evicted[1]).cancel()
        scope = self._unjoined_scopes[connection_id] = trio.CancelScope()
        try:
            with scope:
                try:
                    request, leftover = await self._read_first_line(sock)
                    if isinstance(request, Reflect):
                        await self._reflect(sock, request, source)
                        return None
                    return self.table.join(request, now=self._clock()), leftover
                except TunnelError as exc:
                    self.counters.count("timeout" if exc.code == "timeout" else "refused")
                    await _refuse(sock, exc.line)
            return None  # evicted: closed without a word, like a full backlog
        finally:
            self._unjoined_scopes.pop(connection_id, None)
            self._unjoined.release(connection_id)

    async def _read_first_line(self, sock: trio.socket.SocketType) -> tuple[str | Reflect, bytes]:
        reader = LineReader(MAX_JOIN_LINE_BYTES)
        with trio.move_on_after(self.join_timeout_s):
            while True:
                try:
                    data = await sock.recv(MAX_JOIN_LINE_BYTES)
                except OSError as exc:
                    raise TunnelError("bad_line", "connection failed") from exc
                line = reader.receive_data(data)
                if line is not None:
                    return parse_first_line(line), reader.leftover
        raise TunnelError("timeout", f"no join line within {self.join_timeout_s:g} s")

    async def _reflect(
        self, sock: trio.socket.SocketType, request: Reflect, source: tuple[str, int]
    ) -> None:
        """Answer ``ADDR`` with the source address, once the tracker took it."""
        seen = source_candidate(*source)
        if self.reflector is None:
            raise TunnelError("disabled", "this tracker records no reflexive addresses")
        if seen is None:
            raise TunnelError("bad_source", "this connection's source is no usable address")
        refusal = await self.reflector(request.token, seen)
        if refusal is not None:
            raise TunnelError(refusal, f"reflection refused ({refusal})")
        self.counters.reflections += 1
        await _send_line(sock, addr_line(seen))
        # the peer closes after reading; a lingering close keeps the line from a reset
        await _refuse(sock, b"")

    async def _wait_for_partner(
        self, session: Session, sock: trio.socket.SocketType, leftover: bytes
    ) -> None:
        waiter = _Waiter(sock, leftover)
        self._waiting[session.session_id] = waiter
        try:
            with trio.move_on_at(session.expires_at):
                await waiter.partner_arrived.wait()
            if not waiter.partner_arrived.is_set():
                self.table.close(session)
                self.counters.count("expired")
                await _refuse(sock, err_line("expired"))
                return
            if waiter.refusal is not None:
                self.counters.count("refused")
                await _refuse(sock, err_line(waiter.refusal))
                return
            # the partner's task pumps our socket; it stays ours to close afterwards
            await waiter.finished.wait()
        finally:
            self._waiting.pop(session.session_id, None)

    async def _run_paired(
        self, session: Session, role: Role, sock: trio.socket.SocketType, leftover: bytes
    ) -> None:
        waiter = self._waiting.get(session.session_id)
        if waiter is None:  # the first side gave up at this very moment
            self.table.close(session)
            await _refuse(sock, err_line("expired"))
            return
        waiter.partner_arrived.set()
        self.counters.active += 1
        try:
            for target in (sock, waiter.sock):
                await _send_line(target, OK_LINE)
            # bytes a side sent right behind its join line belong to the other side
            await _send_all(waiter.sock, leftover)
            await _send_all(sock, waiter.leftover)
            client, server = (sock, waiter.sock) if role == "client" else (waiter.sock, sock)
            stats = await pump(
                client,
                server,
                idle_timeout_s=self.idle_timeout_s,
                bucket=self._bucket(),
                on_bytes=self._count_bytes,
                use_splice=self.use_splice,
                stats=PumpStats(),
            )
            if stats.splice_refused:
                self.counters.copy_fallbacks += 1
            if stats.idle_closed:
                self.counters.count("idle")
            elif stats.error is not None:
                self.counters.count("reset")
            else:
                self.counters.count("completed")
        except OSError:
            self.counters.count("reset")
        finally:
            self.counters.active -= 1
            self.table.close(session)
            waiter.finished.set()

    def _bucket(self) -> TokenBucket | None:
        if self.rate_bytes_per_s is None:
            return None
        return TokenBucket(rate_per_s=self.rate_bytes_per_s, burst=self.rate_bytes_per_s)

    def _count_bytes(self, n: int) -> None:
        self.counters.bytes_copied += n


def _peer_address(sock: trio.socket.SocketType) -> tuple[str, int]:
    try:
        address = sock.getpeername()
    except OSError:
        return "", 0
    return str(address[0]), int(address[1])


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view) :]


async def _send_line(sock: trio.socket.SocketType, line: bytes) -> None:
    """Best effort: a peer that does not take 10 bytes in 5 s is simply closed."""
    with trio.move_on_after(LINE_SEND_TIMEOUT_S), contextlib.suppress(OSError):
        await _send_all(sock, line)


async def _refuse(sock: trio.socket.SocketType, line: bytes) -> None:
    """Send ``ERR`` and close so that the peer can read it.

    Closing a socket with unread input makes the kernel send RST, which can
    destroy our ERR line before the peer reads it; so half-close first and
    drain a bounded amount for a bounded time (a "lingering close").
    """
    await _send_line(sock, line)
    with trio.move_on_after(LINGER_S), contextlib.suppress(OSError):
        sock.shutdown(trio.socket.SHUT_WR)
        drained = 0
        while drained < LINGER_MAX_BYTES:
            chunk = await sock.recv(4096)
            if not chunk:
                break
            drained += len(chunk)


async def serve_tunnel_port(
    relay: TunnelRelay,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on host:port and hand every connection to *relay*; started() with the port."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:  # the runner prints strerror: say which port of ours it was
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        reason = (exc.strerror or str(exc)).lower()
        raise OSError(exc.errno, f"tunnel port {where}: {reason}") from None
    bound = listeners[0].socket.getsockname()[1]
    log.info("tunnel port listening on %s:%d", host, bound)
    # The relay shares out the join phase itself; the loop's cap only keeps
    # the descriptors in hand: every joining side plus both sides of each session.
    cap = relay.max_unjoined + 2 * relay.table.max_sessions
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            await nursery.start(
                partial(
                    serve_listener, relay.handle, listener, max_connections=cap, name="tunnel port"
                )
            )
        task_status.started(bound)

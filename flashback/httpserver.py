"""Hypercorn's trio worker, with every connection bounded and contained.

Hypercorn's own ``serve`` runs each connection in one shared nursery, so one
exception from one connection ends the server (and our root nursery with it),
and it has no deadline on a stalled send nor on a body that never comes. This
module is the same accept loop and connection class with those holes closed:

* a connection's exception ends that connection only (logged once, short);
* the request head and keep-alive idle are bounded by ``keep_alive_timeout``
  (Hypercorn's idle timer runs until a head is complete); a request body by
  :attr:`ConnectionLimits.body_timeout_s` between two reads; every send by
  :attr:`ConnectionLimits.write_timeout_s` (a client that never reads is dropped)
  and, once shutdown is set, by its deadline (:class:`ShieldedSends`);
* at most :attr:`ConnectionLimits.max_connections` at once, so we never run
  into EMFILE, as a fair share by client address
  (:class:`~flashback.protocol.fairshare.FairShare`, an IPv6 /64 as one
  address): an address past its share (a quarter) closes its own oldest
  connection, a full server the heaviest address's oldest -- the newcomer
  is served, so one address keeping connections open locks no one out;
* an exhausted ``accept`` (EMFILE, ENFILE, ...) is logged once per interval;
* a body the app sends as ASGI's ``http.response.zerocopysend`` (a file
  descriptor, offset and count) is framed by h11 and written by
  ``os.sendfile``: no byte of a downloaded file passes through Python. Each
  connection advertises the extension in ``scope["extensions"]``; a body
  cut short (the client stalls past the write deadline, goes away, the file
  shrinks, or the task is cancelled) closes the connection, as the response
  can no longer be completed;
* h2c (prior knowledge or ``Upgrade: h2c``) is refused: the connection is
  closed. Our clients speak HTTP/1.1 only, and Hypercorn's h2 streams do not
  back-pressure the app against a zero flow-control window: 10 streams of a
  large download grew a peer server by gigabytes. Refusing h2c is the smaller,
  safer change than auditing Hypercorn's h2 buffering.

Upstream bug (pgjones/hypercorn 0.18.0), reported here in its style:

    Title: LocalProtocolError "Can't send data when our state is ERROR" escapes
    serve() after a websocket upgrade request followed by one byte

    Reproduction (any ASGI app with a websocket route or none)::

        s = socket.create_connection(("127.0.0.1", PORT))
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: Upgrade\\r\\n"
                  b"Upgrade: websocket\\r\\nSec-WebSocket-Version: 13\\r\\n"
                  b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\nX")

    Expected: that connection is closed. Actual: h11 moves to ERROR on the
    trailing byte, the websocket stream's reject/accept response then raises
    ``h11.LocalProtocolError`` inside the connection's TaskGroup, and since
    every TCPServer runs in the worker's shared ``server_nursery`` the error
    ends ``serve()`` -- one packet stops the whole server. Suggested fix:
    catch exceptions per connection in ``TCPServer.run`` (and/or guard
    ``_send_h11_event`` on ``our_state is ERROR``).

We depend on Hypercorn internals (``TCPServer``, ``ProtocolWrapper``,
``WorkerContext``): the version is pinned to 0.18.x in pyproject.toml.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from math import inf
from typing import Any, Final

import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError, H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, Framework
from hypercorn.utils import parse_socket_addr, repr_socket_addr, wrap_app

from flashback.logs import is_protocol_error
from flashback.protocol.fairshare import FairShare, share_address
from flashback.shutdown import Shutdown
from flashback.zerocopy import BodyLength, SendProgress, frame_file_body, sendfile_range

log = logging.getLogger(__name__)

#: the ASGI extension (asgi.readthedocs.io, "Zero Copy Send") our connections offer
ZERO_COPY_SEND: Final = "http.response.zerocopysend"
DEFAULT_BODY_TIMEOUT_S: Final = 30.0
DEFAULT_WRITE_TIMEOUT_S: Final = 60.0
DEFAULT_IDLE_TIMEOUT_S: Final = 5.0
MAX_CONNECTIONS_CEILING: Final = 16_384
PER_ADDRESS_DIVISOR: Final = 4
WANTED_OPEN_FILES: Final = 1_048_576
DESCRIPTOR_RESERVE: Final = 64  # files, sockets to the tracker, the control socket
ACCEPT_ERROR_LOG_INTERVAL_S: Final = 60.0
ACCEPT_RETRY_S: Final = 0.1
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def raise_open_file_limit() -> None:
    """Each connection is a file descriptor; 1024 (a systemd user unit's soft limit) is too few."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = WANTED_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
        target = min(target, WANTED_OPEN_FILES)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("could not raise the open-file limit: %s", exc)


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "")
    try:
        value = float(text) if text else default
    except ValueError:
        return default
    return value if 0 < value < inf else default


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-process bounds on connections; ``from_env`` reads the FLASHBACK_HTTP_* settings."""

    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS_CEILING

    @property
    def per_address(self) -> int:
        """What one client address may hold: a quarter (the tracker's links per
        address, 1024 by default, fit in a quarter of the ceiling)."""
        return max(1, self.max_connections // PER_ADDRESS_DIVISOR)

    @classmethod
    def from_env(cls) -> ConnectionLimits:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        by_descriptors = MAX_CONNECTIONS_CEILING
        if soft != resource.RLIM_INFINITY:
            by_descriptors = max(1, min(MAX_CONNECTIONS_CEILING, soft - DESCRIPTOR_RESERVE))
        max_connections = by_descriptors
        text = os.environ.get("FLASHBACK_HTTP_MAX_CONNECTIONS", "")
        if text.isdigit() and int(text) > 0:
            max_connections = min(int(text), by_descriptors)
        return cls(
            idle_timeout_s=_env_float("FLASHBACK_HTTP_IDLE_TIMEOUT_S", DEFAULT_IDLE_TIMEOUT_S),
            body_timeout_s=_env_float("FLASHBACK_HTTP_BODY_TIMEOUT_S", DEFAULT_BODY_TIMEOUT_S),
            write_timeout_s=_env_float("FLASHBACK_HTTP_WRITE_TIMEOUT_S", DEFAULT_WRITE_TIMEOUT_S),
            max_connections=max_connections,
        )


class _H1OnlyProtocol(ProtocolWrapper):
    """Hypercorn's protocol switch, minus the switch to h2c: such a connection is closed."""

    async def handle(self, event: Event) -> None:
        try:
            return await self.protocol.handle(event)
        except (H2ProtocolAssumedError, H2CProtocolRequiredError):
            log.debug("h2c refused: closing the connection")
            await self.send(Closed())


class _ZeroCopyApp:
    """One connection's view of the app: offers the zero-copy send and carries it out."""

    __slots__ = ("_app", "_connection")

    def __init__(self, app: AppWrapper, connection: _BoundedConnection) -> None:
        self._app = app
        self._connection = connection

    async def __call__(
        self,
        scope: Any,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send, sync_spawn, call_soon)
            return
        scope["extensions"][ZERO_COPY_SEND] = {}
        head_only = scope["method"] == "HEAD"

        async def send_or_sendfile(message: Any) -> None:
            if message["type"] != ZERO_COPY_SEND:
                await send(message)
                return
            count = message["count"]
            if not head_only and count > 0:
                fd = message["file"].fileno()
                await self._connection.send_file_range(fd, message.get("offset", 0), count)
            if not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self._app(scope, receive, send_or_sendfile, sync_spawn, call_soon)


class ShieldedSends:
    """The deadlines of every send in flight on one server.

    Hypercorn shields each send from cancellation (half a frame would
    corrupt the stream), so its graceful deadline cannot end a send to a
    client that stopped reading. Each send here runs in a shielded scope
    that ends at the write timeout; :meth:`cut_at` (the shutdown's deadline)
    pulls every such scope, running or still to come, in to that deadline.
    """

    def __init__(self) -> None:
        self._scopes: set[trio.CancelScope] = set()
        self._deadline = inf

    @contextlib.contextmanager
    def bounded(self, timeout_s: float) -> Iterator[trio.CancelScope]:
        scope = trio.CancelScope(
            shield=True, deadline=min(trio.current_time() + timeout_s, self._deadline)
        )
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)

    def cut_at(self, deadline: float) -> None:
        self._deadline = min(self._deadline, deadline)
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, self._deadline)

    def past_shutdown_deadline(self) -> bool:
        return trio.current_time() >= self._deadline


class _BoundedConnection(TCPServer):
    """One connection: contained, with a body read timeout and a write deadline."""

    limits: ConnectionLimits
    sends: ShieldedSends

    async def run(self) -> None:
        try:
            await self._run_h1()
        except trio.Cancelled:
            raise
        except Exception as exc:  # one connection's bug ends that connection only
            if is_protocol_error(exc):
                log.debug("connection ended: h11 error state (a malformed client)")
            else:
                log.warning("connection ended by an error: %r", exc)
            with trio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _run_h1(self) -> None:
        """TCPServer.run for plain sockets, building our ProtocolWrapper instead of its own."""
        socket = self.stream.socket
        try:
            client = parse_socket_addr(socket.family, socket.getpeername())
            server = parse_socket_addr(socket.family, socket.getsockname())
            async with TaskGroup() as task_group:
                self._task_group = task_group
                self.protocol = _H1OnlyProtocol(
                    _ZeroCopyApp(self.app, self),
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    False,
                    client,
                    server,
                    self.protocol_send,
                    "http/1.1",
                )
                await self.protocol.initiate()
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                await self._read_data()
                # The client is gone: do not hold the descriptor for the rest of
                # the keep-alive timer (Hypercorn's idle task outlives the read).
                await self.idle_task.stop()
        except OSError:
            pass
        finally:
            await self._close()

    async def _close(self) -> None:
        """Hypercorn's ``send_eof`` checkpoints first: cancelled there, the socket leaked."""
        try:
            await super()._close()
        finally:
            await self.stream.aclose()

    def _awaiting_body(self) -> bool:
        inner = getattr(self.protocol, "protocol", None)
        return isinstance(inner, H11Protocol) and inner.connection.their_state is h11.SEND_BODY

    async def _read_data(self) -> None:
        while True:
            timeout = self.limits.body_timeout_s if self._awaiting_body() else inf
            try:
                with trio.fail_after(timeout):
                    data = await self.stream.receive_some(2**16)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
            await self.protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
        await self.protocol.handle(Closed())

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated):
            # Hypercorn sends "idle again" from the app's task, which Quart cancels
            # as the response ends (http.disconnect): unshielded, the restart of
            # the keep-alive timer was cut every time, and an idle connection
            # held its slot of the connection cap forever.
            with trio.CancelScope(shield=True):
                await super().protocol_send(event)
            return
        if not isinstance(event, RawData):
            return await super().protocol_send(event)
        async with self.send_lock:
            try:
                with self.sends.bounded(self.limits.write_timeout_s) as scope:
                    await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
                return
            if scope.cancelled_caught:
                if self.sends.past_shutdown_deadline():
                    log.info("shutdown deadline: dropped a client still being sent to")
                else:
                    log.info(
                        "client stopped reading for %.0f s: dropped", self.limits.write_timeout_s
                    )
                await self.stream.aclose()
                await self.protocol.handle(Closed())

    async def send_file_range(self, fd: int, offset: int, count: int) -> None:
        """*count* bytes of *fd* from *offset* as response body: h11 frames, sendfile sends."""
        inner = self.protocol.protocol
        if not isinstance(inner, H11Protocol) or not isinstance(inner.connection, h11.Connection):
            raise RuntimeError("a zero-copy body on a connection that is not HTTP/1.1")
        framed = frame_file_body(inner.connection, count)
        async with self.send_lock:
            try:
                for piece in framed:
                    if isinstance(piece, BodyLength):
                        await sendfile_range(
                            self.stream.socket,
                            fd,
                            offset,
                            count,
                            SendProgress(),
                            stall_timeout_s=self.limits.write_timeout_s,
                        )
                    else:
                        with trio.fail_after(self.limits.write_timeout_s):
                            await self.stream.send_all(piece)
                return
            except trio.TooSlowError:
                log.info("client stopped reading for %.0f s: dropped", self.limits.write_timeout_s)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                # the client went away, or the file shrank under us (FileShrunk)
                log.debug("file body cut short: %r", exc)
            except BaseException:
                # cancelled mid-body: the response cannot be completed any more
                with trio.CancelScope(shield=True):
                    await self.stream.aclose()
                raise
            await self.stream.aclose()
            await self.protocol.handle(Closed())


class _AcceptErrorLog:
    """Say that accept is exhausted once per interval, with a count, not per attempt."""

    def __init__(self) -> None:
        self._next_s = -inf
        self._suppressed = 0

    def report(self, exc: OSError) -> None:
        now = trio.current_time()
        if now < self._next_s:
            self._suppressed += 1
            return
        log.error(
            "accept failed: %s (%d more since the last report); retrying",
            os.strerror(exc.errno or 0),
            self._suppressed,
        )
        self._suppressed = 0
        self._next_s = now + ACCEPT_ERROR_LOG_INTERVAL_S


def _client_host(stream: trio.SocketStream) -> str | None:
    """The client's IP address; None for a Unix socket (each such client counts alone)."""
    try:
        name = stream.socket.getpeername()
    except OSError:
        return None
    return str(name[0]) if isinstance(name, tuple) else None


async def _accept_loop(
    listener: trio.SocketListener,
    handlers: trio.Nursery,
    make_connection: Callable[[trio.SocketStream], _BoundedConnection],
    limits: ConnectionLimits,
) -> None:
    errors = _AcceptErrorLog()
    share: FairShare[str, trio.CancelScope] = FairShare(limits.max_connections, limits.per_address)

    async def handle(stream: trio.SocketStream) -> None:
        scope = trio.CancelScope()
        host = _client_host(stream)
        holder = share_address(host) if host is not None else f"local:{id(scope)}"
        evicted = share.admit(holder, scope).evicted
        if evicted is not None:
            evicted[1].cancel()  # its connection closes; this one is served
        try:
            with scope:
                await make_connection(stream).run()
        finally:
            share.release(scope)
            await trio.aclose_forcefully(stream)

    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            errors.report(exc)
            await trio.sleep(ACCEPT_RETRY_S)
            continue
        handlers.start_soon(handle, stream)


async def serve_bounded(
    app: Framework,
    config: Config,
    *,
    limits: ConnectionLimits | None = None,
    shutdown: Shutdown | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Hypercorn's ``worker_serve`` for plain-TCP/Unix binds, with the bounds above.

    *shutdown* is Hypercorn's ``shutdown_trigger`` and its graceful deadline in
    one: when it is set we stop accepting, and every connection -- its
    shielded sends included -- is over by its deadline. Without one (or when
    cancelled) the grace is ``config.graceful_timeout``, Hypercorn's own.
    """
    raise_open_file_limit()
    limits = limits or ConnectionLimits.from_env()
    config.keep_alive_timeout = limits.idle_timeout_s
    config.set_statsd_logger_class(StatsdLogger)
    asgi = wrap_app(app, config.wsgi_max_body_size, None)
    lifespan_state: dict[str, object] = {}
    lifespan = Lifespan(asgi, config, lifespan_state)
    context = WorkerContext(None)
    sends = ShieldedSends()

    def make_connection(stream: trio.SocketStream) -> _BoundedConnection:
        connection = _BoundedConnection(
            asgi,
            config,
            context,
            ConnectionState(lifespan_state.copy()),
            stream,  # type: ignore[arg-type]  # hypercorn annotates SSLStream; its worker_serve passes SocketStream too
        )
        connection.limits = limits
        connection.sends = sends
        return connection

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as handlers:
            try:
                sockets = config.create_sockets()
            except OSError as exc:  # the runner prints strerror: say which address
                where = ", ".join(config.bind)
                reason = (exc.strerror or str(exc)).lower()
                raise OSError(exc.errno, f"{where}: {reason}") from None
            if sockets.secure_sockets or sockets.quic_sockets:  # never silently unserved
                raise ValueError("serve_bounded serves plain TCP and Unix binds only")
            listeners = []
            binds = []
            for sock in sockets.insecure_sockets:
                sock.listen(config.backlog)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            task_status.started(binds)
            try:
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(
                            _accept_loop, listener, handlers, make_connection, limits
                        )
                    if shutdown is not None:
                        await shutdown.wait()
                    else:
                        await trio.sleep_forever()
                    acceptors.cancel_scope.cancel()
            finally:
                for listener in listeners:
                    with trio.CancelScope(shield=True):
                        await listener.aclose()
                await context.terminated.set()
                if shutdown is not None and shutdown.is_set():
                    grace_ends = shutdown.deadline
                else:
                    grace_ends = trio.current_time() + config.graceful_timeout
                handlers.cancel_scope.deadline = grace_ends
                sends.cut_at(grace_ends)
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()

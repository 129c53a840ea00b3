"""Both ends of a tunnel through the tracker (INTERFACE §6.2), over TLS (``bulk_tls``).

The tracker only pairs two outbound TCP connections and copies bytes; what
runs inside is TLS 1.3 (ALPN ``flashback/1``) between the two daemons:

- the **owner** (role ``server``) presents its own certificate, learns the
  requester's fingerprint from the requester's client certificate and asks
  *authorize* about it before it answers anything (``ERR forbidden``), reads
  one ``OPEN`` line and relays to one of its own 127.0.0.1 listeners -- only
  a port it opened itself (the peer server, or a stream port it handed out);
- the **requester** (role ``client``) presents its client certificate,
  checks the owner's fingerprint against the invite and its pin *before
  sending a single byte* inside the tunnel, then sends ``OPEN`` and carries
  one local TCP connection.

How fingerprints are proven in both directions is :mod:`flashback.daemon.peer_tls`.
The same two ends serve the direct endpoint: only the way the TCP connection
is made differs.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from flashback.daemon.bulk_tls import BulkTLSStream
from flashback.daemon.carried import Carried
from flashback.daemon.peer_tls import ALPN, owner_fingerprint, requester_fingerprint
from flashback.protocol.tunnel import (
    MAX_OPEN_LINE_BYTES,
    OK_LINE,
    LineReader,
    OpenTarget,
    Route,
    TunnelError,
    err_line,
    join_line,
    parse_open_line,
)

#: dialling the tracker, joining, and the TLS handshake together
SETUP_TIMEOUT_S: Final = 10.0
#: how long the owner waits for the requester's OPEN line after the handshake
OPEN_TIMEOUT_S: Final = 10.0
COPY_CHUNK_BYTES: Final = 256 * 1024


#: who may connect: the requester's proven fingerprint (None: it showed none)
#: -> None to accept, or the ``ERR`` code to refuse with (``forbidden``)
Authorize = Callable[[str | None], str | None]


@dataclass(frozen=True)
class Opened:
    """A carried connection's way to the peer: authenticated, target opened."""

    stream: BulkTLSStream
    leftover: bytes
    route: Route
    address: str
    punched: bool
    #: called once the connection is done with (an endpoint handler waits for it)
    release: Callable[[], None] = lambda: None


class TunnelFailed(Exception):
    """A tunnel that could not be set up; :attr:`code` is for events and one-line errors."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


async def read_plain_line(stream: trio.abc.ReceiveStream, max_bytes: int) -> bytes:
    """One line, read byte by byte: what follows belongs to TLS and must stay unread."""
    reader = LineReader(max_bytes)
    while True:
        line = reader.receive_data(await stream.receive_some(1))
        if line is not None:
            return line


async def join_tunnel(host: str, port: int, key: str) -> trio.SocketStream:
    tcp = await trio.open_tcp_stream(host, port)
    try:
        await tcp.send_all(join_line(key))
        answer = await read_plain_line(tcp, 64)
    except (OSError, trio.BrokenResourceError, TunnelError) as exc:
        await tcp.aclose()
        raise TunnelFailed("tracker_unreachable", f"tunnel port {host}:{port}: {exc}") from exc
    except BaseException:  # cancelled (a direct route won, a fair share cut it)
        await trio.aclose_forcefully(tcp)
        raise
    if answer + b"\n" != OK_LINE:
        await tcp.aclose()
        code = answer.removeprefix(b"ERR ").decode("ascii", "replace")[:32] or "refused"
        raise TunnelFailed(code, f"the tracker refused the tunnel ({code})")
    return tcp


async def open_requester_end(
    *,
    host: str,
    port: int,
    key: str,
    context: ssl.SSLContext,
    expected_fingerprint: str,
    check_pin: Callable[[str], None],
    target: OpenTarget,
) -> tuple[BulkTLSStream, bytes]:
    """Join, handshake, prove the owner, open *target*; returns the stream and any
    bytes that arrived behind the owner's ``OK``.

    *check_pin* raises (e.g. ``fingerprint_mismatch``) to refuse an owner; it
    runs before anything is sent inside the tunnel.
    """
    with trio.fail_after(SETUP_TIMEOUT_S):
        tcp = await join_tunnel(host, port, key)
        return await open_over(
            tcp,
            context=context,
            expected_fingerprint=expected_fingerprint,
            check_pin=check_pin,
            target=target,
        )


async def open_over(
    tcp: trio.abc.Stream,
    *,
    context: ssl.SSLContext,
    expected_fingerprint: str,
    check_pin: Callable[[str], None],
    target: OpenTarget,
) -> tuple[BulkTLSStream, bytes]:
    """The requester's TLS part on a connection already made (a tunnel or a direct dial).

    The caller bounds the time; the stream is closed on every failure.
    """
    stream = BulkTLSStream(tcp, context, server_hostname=None)
    try:
        await stream.do_handshake()
        actual = owner_fingerprint(stream.getpeercert(binary_form=True))
        if actual != expected_fingerprint:
            raise TunnelFailed(
                "fingerprint_mismatch",
                f"the owner presented {actual}, the invite said {expected_fingerprint}",
            )
        check_pin(actual)
        if stream.selected_alpn_protocol() != ALPN:
            raise TunnelFailed("bad_alpn", "the owner does not speak flashback/1")
        await stream.send_all(target.line())
        reader = LineReader(MAX_OPEN_LINE_BYTES)
        line = None
        while line is None:
            line = reader.receive_data(await stream.receive_some(MAX_OPEN_LINE_BYTES))
        if line + b"\n" != OK_LINE:
            code = line.removeprefix(b"ERR ").decode("ascii", "replace")[:32] or "refused"
            if code == "forbidden":
                raise TunnelFailed(code, "the owner does not share with this peer")
            raise TunnelFailed(code, f"the owner refused {target.line().decode().strip()}")
    except (trio.BrokenResourceError, ssl.SSLError, TunnelError) as exc:
        await trio.aclose_forcefully(stream)
        raise TunnelFailed("tls_failed", f"tunnel handshake failed: {exc}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, reader.leftover


async def serve_owner_end(
    *,
    host: str,
    port: int,
    key: str,
    context: ssl.SSLContext,
    authorize: Authorize,
    resolve_target: Callable[[OpenTarget], int | None],
    on_bytes: Callable[[int, int], None] | None = None,
    on_open: Callable[[], None] | None = None,
    carried: Carried | None = None,
) -> None:
    """Join as the owner, serve TLS, and relay the one ``OPEN``ed target until done.

    *resolve_target* maps a target to one of our own 127.0.0.1 ports, or None
    to refuse it (``ERR not_allowed``): the requester can never name an
    arbitrary local port.
    """
    with trio.fail_after(SETUP_TIMEOUT_S):
        tcp = await join_tunnel(host, port, key)
    await serve_over(
        tcp,
        context=context,
        authorize=authorize,
        resolve_target=resolve_target,
        on_bytes=on_bytes,
        on_open=on_open,
        carried=carried,
    )


async def serve_over(
    tcp: trio.abc.Stream,
    *,
    context: ssl.SSLContext,
    authorize: Authorize,
    resolve_target: Callable[[OpenTarget], int | None],
    on_bytes: Callable[[int, int], None] | None = None,
    on_open: Callable[[], None] | None = None,
    timeout_s: float = OPEN_TIMEOUT_S,
    before_close: Callable[[], Awaitable[None]] | None = None,
    carried: Carried | None = None,
) -> None:
    """The owner's TLS part on a connection already made; closes *tcp* when done.

    The requester's certificate is checked before its ``OPEN`` line is read:
    a refused requester gets ``ERR <code>`` and nothing else. The handshake
    and the ``OPEN`` line together get *timeout_s*; *on_open* runs once the
    target answered and ``OK`` went out; *before_close* once the relayed
    connection is over (the direct endpoint makes its close abortive there).
    While the relay runs, *carried* names the requester's proven fingerprint by
    the local connection's address (``POST /api/stream`` asks it who came).
    """
    stream = BulkTLSStream(tcp, context, server_side=True)
    try:
        with trio.fail_after(timeout_s):
            await stream.do_handshake()
            if stream.selected_alpn_protocol() != ALPN:
                return  # not a flashback/1 ClientHello: closed, never served
            presented = requester_fingerprint(stream.getpeercert(binary_form=True))
            refusal = authorize(presented)
            if refusal is not None:
                await stream.send_all(err_line(refusal))
                return
            reader = LineReader(MAX_OPEN_LINE_BYTES)
            line = None
            while line is None:
                line = reader.receive_data(await stream.receive_some(MAX_OPEN_LINE_BYTES))
        try:
            target = parse_open_line(line)
        except TunnelError as exc:
            await stream.send_all(exc.line)
            return
        local_port = resolve_target(target)
        if local_port is None:
            await stream.send_all(err_line("not_allowed"))
            return
        try:
            local = await trio.open_tcp_stream("127.0.0.1", local_port)
        except OSError:
            await stream.send_all(err_line("unavailable"))
            return
        async with local:
            with contextlib.ExitStack() as naming:
                if carried is not None and presented is not None:
                    name = local.socket.getsockname()
                    naming.enter_context(carried.carrying((str(name[0]), int(name[1])), presented))
                await stream.send_all(OK_LINE)
                if on_open is not None:
                    on_open()
                await bridge(
                    stream,
                    local,
                    leftover_to_local=reader.leftover,
                    local_is_server=True,
                    on_bytes=on_bytes,
                )
        if before_close is not None:
            await before_close()
    except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, TunnelError, OSError):
        pass  # the requester went away or spoke nonsense: this tunnel ends, nothing else
    finally:
        await trio.aclose_forcefully(stream)


async def bridge(
    tunnel: trio.abc.Stream,
    local: trio.SocketStream,
    *,
    leftover_to_local: bytes = b"",
    local_is_server: bool = False,
    on_bytes: Callable[[int, int], None] | None = None,
    idle_after_eof_s: float | None = None,
) -> tuple[int, int]:
    """Copy between a TLS tunnel and a local TCP connection; returns (to local, to tunnel).

    TLS gives us no half-close to pass on, so EOF is read by role: on the
    owner's side the local end is a server, and its EOF means the answer is
    complete (*local_is_server*: the bridge ends and the tunnel closes); on
    the requester's side the local end is a client, whose half-close only
    stops the upward copy while its answer still comes down. The tunnel's
    EOF becomes a TCP half-close and ends the bridge. A broken side ends both.
    With *idle_after_eof_s*, once the local client sent EOF the bridge also ends
    when nothing came down for that long (a direct route holds the only port
    pair two endpoints have: it must not wait for the owner's keep-alive).
    """
    counts = [0, 0]
    idle: list[trio.CancelScope | None] = [None]

    async def down() -> None:
        if leftover_to_local:
            await local.send_all(leftover_to_local)
            counts[0] += len(leftover_to_local)
        while data := await tunnel.receive_some(COPY_CHUNK_BYTES):
            await local.send_all(data)
            counts[0] += len(data)
            if idle[0] is not None and idle_after_eof_s is not None:
                idle[0].deadline = trio.current_time() + idle_after_eof_s
            if on_bytes is not None:
                on_bytes(len(data), 0)
        await local.send_eof()

    async def up() -> None:
        while data := await local.receive_some(COPY_CHUNK_BYTES):
            await tunnel.send_all(data)
            counts[1] += len(data)
            if on_bytes is not None:
                on_bytes(0, len(data))

    async with trio.open_nursery() as nursery:

        async def down_then_stop() -> None:
            try:
                await down()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                nursery.cancel_scope.cancel()

        async def up_until_eof() -> None:
            try:
                await up()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                nursery.cancel_scope.cancel()
            if local_is_server:
                nursery.cancel_scope.cancel()
            elif idle_after_eof_s is not None:
                # every chunk that comes down pushes this deadline on (see down())
                waiting = idle[0] = trio.CancelScope(
                    deadline=trio.current_time() + idle_after_eof_s
                )
                with waiting:
                    await trio.sleep_forever()
                nursery.cancel_scope.cancel()

        nursery.start_soon(down_then_stop)
        nursery.start_soon(up_until_eof)
    return counts[0], counts[1]

"""Binding the direct endpoint (the same port for listening, dialling and reflecting),
closing its connections without TIME_WAIT, and the stream that gives back the
byte it peeked at.

Every socket on the endpoint's port has ``SO_REUSEADDR`` + ``SO_REUSEPORT``
(Linux lets a dialling socket share a listener's port only when all of them
ask). With ``--direct-port 0`` the OS chooses once; the port is kept in the
data directory and bound again on the next start when it is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import socket
import struct
import termios
from pathlib import Path
from typing import Final

import trio

from flashback.daemon.keys import write_private

log = logging.getLogger(__name__)

PORT_FILE: Final = "direct-port"
#: after serving, how long the owner waits for its last bytes to be acknowledged
ACKED_WAIT_S: Final = 5.0


def reusable_socket(family: socket.AddressFamily) -> trio.socket.SocketType:
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


async def _free_port(family: socket.AddressFamily, host: str, port: int) -> int:
    """*port* (0: one the OS picks) if nobody listens there -- checked by a bind without
    ``SO_REUSEPORT``, which fails beside any listener, ours or another daemon's: two
    endpoints must never share a port and split each other's connections."""
    probe = trio.socket.socket(family, socket.SOCK_STREAM)
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await probe.bind((host, port))
        return int(probe.getsockname()[1])


async def _bind_listeners(hosts: list[str], port: int) -> list[trio.SocketListener]:
    listeners: list[trio.SocketListener] = []
    try:
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = reusable_socket(family)
            try:
                port = await _free_port(family, host, port)
                await sock.bind((host, port))
                sock.listen(128)
            except OSError:
                sock.close()
                if family == socket.AF_INET6 and len(hosts) > 1:
                    continue  # no IPv6 here: IPv4 alone
                raise
            port = sock.getsockname()[1]
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


def _saved_port(data_dir: Path) -> int:
    try:
        value = int((data_dir / PORT_FILE).read_text().strip())
    except (OSError, ValueError):
        return 0
    return value if 1 <= value <= 65535 else 0


async def bind_endpoint(
    host: str | None, port: int, data_dir: Path
) -> tuple[list[trio.SocketListener], int]:
    """The endpoint's listeners and port: *port*, else the one kept in *data_dir* when
    free, else the OS's choice (then kept)."""
    hosts = [host] if host else ["0.0.0.0", "::"]
    if port == 0 and (saved := _saved_port(data_dir)):
        try:
            listeners = await _bind_listeners(hosts, saved)
        except OSError as exc:
            log.info("direct port %d is taken (%s): letting the OS choose", saved, exc)
        else:
            return listeners, saved
    try:
        listeners = await _bind_listeners(hosts, port)
    except OSError as exc:
        raise OSError(exc.errno, f"direct endpoint {host or '*'}:{port}: {exc.strerror}") from exc
    bound = listeners[0].socket.getsockname()[1]
    if port == 0:
        with contextlib.suppress(OSError):
            write_private(data_dir / PORT_FILE, f"{bound}\n".encode())
    return listeners, bound


_SIOCGIFADDR: Final = 0x8915


def _ipv4_addresses() -> list[str]:
    import fcntl
    import struct

    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _index, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue  # no IPv4 address on that interface
            out.append(socket.inet_ntoa(answer[20:24]))
    return out


def _ipv6_addresses() -> list[str]:
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[3] == "00":  # scope: global
            raw = fields[0]
            out.append(":".join(raw[i : i + 4] for i in range(0, 32, 4)))
    return out


def local_candidates(host: str | None, port: int) -> list[tuple[str, int]]:
    """Where other machines may dial the endpoint: *port* on each non-loopback local
    address (IPv4 and global IPv6), or on *host* when bound to one address."""
    if host and host not in ("0.0.0.0", "::"):
        hosts = [host]
    else:
        try:
            hosts = _ipv4_addresses()
        except OSError:
            hosts = []
        if host != "0.0.0.0":
            hosts += _ipv6_addresses()
    seen: list[tuple[str, int]] = []
    for text in hosts:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.is_loopback or address.is_link_local or address.is_unspecified:
            continue
        if (address.compressed, port) not in seen:
            seen.append((address.compressed, port))
    return seen[:8]


# -- a stream that gives back what the endpoint peeked ---------------------------------------------


class Replayed(trio.abc.HalfCloseableStream):
    """*stream* with *prefix* (the first byte the endpoint read to decide) put back."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self._stream, self._prefix = stream, prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


def close_abortively(stream: trio.SocketStream) -> None:
    """Make closing *stream* send RST, not FIN: the side that closes a TCP connection
    first keeps its 4-tuple in TIME_WAIT for a minute, and a direct route's 4-tuple
    (endpoint port to endpoint port, through NATs) must stay free to punch again."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def close_when_acked(stream: trio.SocketStream) -> None:
    """Wait until the peer acknowledged every byte we sent (``TIOCOUTQ``, bounded by
    :data:`ACKED_WAIT_S`), then make the close abortive: nothing is lost by the RST."""
    with trio.move_on_after(ACKED_WAIT_S):
        while True:
            try:
                unacked = struct.unpack(
                    "i", fcntl.ioctl(stream.socket.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
                )[0]
            except OSError:
                return  # closed already
            if unacked == 0:
                close_abortively(stream)
                return
            await trio.sleep(0.01)

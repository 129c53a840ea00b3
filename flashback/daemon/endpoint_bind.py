"""Binding the direct endpoint: the same port for listening, dialling and reflecting.

Every socket on the endpoint's port has ``SO_REUSEADDR`` + ``SO_REUSEPORT``
(Linux lets a dialling socket share a listener's port only when all of them
ask). With ``--direct-port 0`` the OS chooses once; the port is kept in the
data directory and bound again on the next start when it is free.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Final

import trio

from flashback.daemon.keys import write_private

log = logging.getLogger(__name__)

PORT_FILE: Final = "direct-port"


def reusable_socket(family: socket.AddressFamily) -> trio.socket.SocketType:
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


async def _bind_listeners(hosts: list[str], port: int) -> list[trio.SocketListener]:
    listeners: list[trio.SocketListener] = []
    try:
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = reusable_socket(family)
            try:
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

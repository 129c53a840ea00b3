"""Cutting a client's TCP connection from the app, when the server cannot.

Hypercorn 0.17 shields its ``send_all`` from cancellation (see
:func:`~flashback.tracker.serve.bound_unread_sends`), so ending a link
whose peer does not read leaves its frame pinned until the kernel gives up
on the socket (``TCP_USER_TIMEOUT`` = ``send_timeout_s``). When the send
budget must make room *now* (:mod:`.sendshare`), the tracker finds that
socket among its own descriptors by its two addresses (the ASGI scope's
``client`` and ``server``) and shuts it down: the blocked send fails at
once, Hypercorn closes the connection, and the frame's memory is free.

Linux only (``/proc/self/fd``); elsewhere :meth:`SocketAborter.abort` says
False and the frame drains when the kernel gives up. Found descriptors are
remembered, and a remembered one is checked again before use (numbers are
reused), so a full scan happens only for a connection not seen before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

FD_DIR: Final = Path("/proc/self/fd")

Address = tuple[str, int]


def _addresses(fd: int) -> tuple[Address, Address] | None:
    """(peer, local) of the TCP socket *fd*, or None (not one, or gone)."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return None
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        if probe.type != socket.SOCK_STREAM or probe.family not in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            return None
        peer, local = probe.getpeername(), probe.getsockname()
        return _address(peer), _address(local)
    except OSError:
        return None
    finally:
        probe.close()  # closes the duplicate only


def _address(raw: tuple[object, ...]) -> Address:
    # an IPv4 client of a dual-stack socket shows as ::ffff:a.b.c.d
    return str(raw[0]).removeprefix("::ffff:"), int(str(raw[1]))


def _same(a: Address, b: Address) -> bool:
    return _address(a) == _address(b)


class SocketAborter:
    def __init__(self) -> None:
        self._known: dict[Address, int] = {}  # peer address -> descriptor
        self.aborted = 0

    def abort(self, client: Address | None, server: Address | None) -> bool:
        """Shut down this process's TCP connection from *client* to *server*."""
        if client is None or server is None or not FD_DIR.is_dir():
            return False
        fd = self._find(client, server)
        if fd is None:
            return False
        try:
            shut = socket.socket(fileno=os.dup(fd))
        except OSError:
            return False
        try:
            # a reset, not a FIN queued behind data the peer will never take:
            # the kernel's buffers go too once the server closes its descriptor
            shut.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            shut.shutdown(socket.SHUT_RDWR)  # the socket itself, every descriptor of it
        except OSError:
            return False
        finally:
            shut.close()
        self._known.pop(_address(client), None)
        self.aborted += 1
        return True

    def _find(self, client: Address, server: Address) -> int | None:
        fd = self._known.get(_address(client))
        if fd is not None and self._matches(fd, client, server):
            return fd
        self._known.clear()
        found: int | None = None
        with contextlib.suppress(OSError):
            for entry in os.listdir(FD_DIR):
                number = int(entry)
                addresses = _addresses(number)
                if addresses is None:
                    continue
                self._known[addresses[0]] = number
                if _same(addresses[0], client) and _same(addresses[1], server):
                    found = number
        return found

    @staticmethod
    def _matches(fd: int, client: Address, server: Address) -> bool:
        addresses = _addresses(fd)
        return addresses is not None and _same(addresses[0], client) and _same(addresses[1], server)

"""Copy bytes both ways between two paired tunnel sockets, as fast as the kernel can.

On Linux each direction is ``os.splice`` socket -> pipe -> socket: the bytes
move between kernel buffers and never enter Python (the tracker could not
read them anyway: TLS runs end to end inside the tunnel). Everything stays
non-blocking and is driven by trio's ``wait_readable``/``wait_writable``, so
one slow peer only parks its own task. Elsewhere (or when splice is refused)
the portable path is ``recv_into`` a fixed buffer and ``send`` it on.

Memory per session is bounded by design: one pipe (or one buffer) per
direction, and a direction reads nothing more until what it read has been
written, so a peer that never reads only fills kernel buffers and then the
idle timeout ends the session.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from flashback.protocol.token_bucket import TokenBucket
from flashback.protocol.tunnel import IDLE_TIMEOUT_S

#: bytes per read (splice or recv_into); also the pipe size asked for
CHUNK_BYTES: Final = 1024 * 1024
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ: Final = getattr(fcntl, "F_GETPIPE_SZ", 1032)
#: a pipe smaller than this (the kernel refused to grow it) is not worth splicing through
MIN_PIPE_BYTES: Final = 256 * 1024
SPLICE_AVAILABLE: Final = hasattr(os, "splice")
_SPLICE_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


@dataclass(slots=True)
class PumpStats:
    """What one session moved, and when it last moved anything (trio time)."""

    client_to_server: int = 0
    server_to_client: int = 0
    last_activity: float = 0.0
    #: the session ended because nothing moved for the idle timeout
    idle_closed: bool = False
    #: the session ended because a side reset or the kernel refused a copy
    error: OSError | None = None
    #: the kernel would not grow a pipe (user quota), so a direction used the buffer path
    splice_refused: bool = False

    @property
    def total(self) -> int:
        return self.client_to_server + self.server_to_client


class _Direction:
    """Book-keeping shared by both copy loops: counters, idle clock, rate limit."""

    def __init__(
        self,
        stats: PumpStats,
        forward: bool,
        bucket: TokenBucket | None,
        on_bytes: Callable[[int], None] | None,
    ) -> None:
        self.stats = stats
        self.forward = forward
        self.bucket = bucket
        self.on_bytes = on_bytes

    async def moved(self, n: int) -> None:
        if self.forward:
            self.stats.client_to_server += n
        else:
            self.stats.server_to_client += n
        now = trio.current_time()
        self.stats.last_activity = now
        if self.on_bytes is not None:
            self.on_bytes(n)
        if self.bucket is not None:
            delay = self.bucket.charge(now, n)
            if delay > 0:
                await trio.sleep(delay)
                self.stats.last_activity = trio.current_time()


def _shutdown_write(sock: trio.socket.SocketType) -> None:
    """Forward a half-close; the other side may already be gone, which is fine."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        if exc.errno not in (errno.ENOTCONN, errno.EPIPE, errno.ECONNRESET):
            raise


async def _splice_one_way(
    src: trio.socket.SocketType, dst: trio.socket.SocketType, book: _Direction
) -> None:
    # No pipe until bytes come: an idle session holds none of the user's pipe quota.
    await trio.lowlevel.wait_readable(src)
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        # An unprivileged process may hold only fs.pipe-user-pages-soft (64 MiB) of
        # pipes; past it the kernel refuses to grow one and leaves it at 8 KiB,
        # where every chunk costs a trip through the event loop (~9x slower,
        # measured). Then this direction copies through a buffer instead.
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, CHUNK_BYTES)
        if fcntl.fcntl(write_end, _F_GETPIPE_SZ) < MIN_PIPE_BYTES:
            book.stats.splice_refused = True
            await _copy_one_way(src, dst, book)
            return
        src_fd, dst_fd = src.fileno(), dst.fileno()
        # A wait is a checkpoint; a chunk that needed none gets one, so a fast
        # peer still lets other tasks run -- but not two scheduler passes per chunk.
        waited = True
        while True:
            try:
                n = os.splice(src_fd, write_end, CHUNK_BYTES, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(src)
                waited = True
                continue
            if n == 0:
                break
            left = n
            while left:
                try:
                    left -= os.splice(read_end, dst_fd, left, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst)
                    waited = True
            await book.moved(n)
            if not waited:
                await trio.lowlevel.checkpoint()
            waited = False
        _shutdown_write(dst)
    finally:
        os.close(read_end)
        os.close(write_end)


async def _copy_one_way(
    src: trio.socket.SocketType, dst: trio.socket.SocketType, book: _Direction
) -> None:
    # The buffer comes with the first bytes: idle sessions cost no memory.
    await trio.lowlevel.wait_readable(src)
    buffer = bytearray(CHUNK_BYTES)
    view = memoryview(buffer)
    while True:
        n = await src.recv_into(buffer)
        if n == 0:
            break
        sent = 0
        while sent < n:
            sent += await dst.send(view[sent:n])
        await book.moved(n)
    _shutdown_write(dst)


async def pump(
    client: trio.socket.SocketType,
    server: trio.socket.SocketType,
    *,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    bucket: TokenBucket | None = None,
    on_bytes: Callable[[int], None] | None = None,
    use_splice: bool = SPLICE_AVAILABLE,
    stats: PumpStats | None = None,
) -> PumpStats:
    """Copy until both directions have ended (half-close is forwarded) or the
    session is idle for *idle_timeout_s*. The caller owns and closes the sockets.

    A side that resets ends both directions; that is an ordinary outcome of a
    tunnel, so it is recorded in :attr:`PumpStats.error`, not raised.
    """
    stats = stats if stats is not None else PumpStats()
    stats.last_activity = trio.current_time()
    one_way = _splice_one_way if use_splice else _copy_one_way
    async with trio.open_nursery() as nursery:

        async def one_direction(
            src: trio.socket.SocketType, dst: trio.socket.SocketType, forward: bool
        ) -> None:
            try:
                await one_way(src, dst, _Direction(stats, forward, bucket, on_bytes))
            except OSError as exc:
                stats.error = exc
                nursery.cancel_scope.cancel()

        async def both_ways() -> None:
            async with trio.open_nursery() as inner:
                inner.start_soon(one_direction, client, server, True)
                inner.start_soon(one_direction, server, client, False)
            nursery.cancel_scope.cancel()

        async def idle_watchdog() -> None:
            while True:
                deadline = stats.last_activity + idle_timeout_s
                await trio.sleep_until(deadline)
                if trio.current_time() >= stats.last_activity + idle_timeout_s:
                    stats.idle_closed = True
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(both_ways)
        nursery.start_soon(idle_watchdog)
    return stats

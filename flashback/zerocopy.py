"""Zero-copy file bodies: ``os.sendfile`` on trio's non-blocking sockets.

Both HTTP paths that send files use it: the stream ports (§4) and the peer
server's file routes (through :mod:`flashback.httpserver`). h11 still frames
the body -- it is handed a :class:`BodyLength` in place of the bytes, so it
counts them against Content-Length (or writes the chunk header) and keeps its
state right -- and the bytes themselves go by ``sendfile``.

The kernel moves pages from the page cache to the socket; no byte of the
file passes through Python. A non-blocking socket takes only what fits in
its send buffer, so each call may send less than asked (a partial send) or
raise ``BlockingIOError`` (EAGAIN); then we park on
``trio.lowlevel.wait_writable`` until the client has drained some. After a
successful call we still pass a checkpoint, because a fast client keeps the
socket writable and the loop would otherwise never let other tasks run.

Reads of cold pages happen inside ``sendfile`` and block the event loop for
that call -- the same trade nginx makes with ``sendfile on`` and no aio.

A file system that cannot ``sendfile`` (some FUSE and network mounts answer
EINVAL or EOPNOTSUPP) gets the same bytes by ``pread`` in a worker thread and
``send``: slower, but never a body cut short for a reason the client cannot see.
"""

from __future__ import annotations

import errno
import os
from typing import Final, cast

import h11
import trio

#: one sendfile call at most; bounds the time between two checkpoints
MAX_CALL_BYTES: Final = 8 * 1024 * 1024
#: a client that takes nothing for this long is dropped (frees the port)
SEND_STALL_TIMEOUT_S: Final = 30.0
#: what sendfile answers for a file it cannot send from (not a client error)
NO_SENDFILE_ERRNOS: Final = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
#: bytes per read when copying instead
COPY_CHUNK_BYTES: Final = 1024 * 1024


class BodyLength:
    """Stands in for a body in h11's Data event: only its length is framed."""

    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


def frame_file_body(conn: h11.Connection, count: int) -> list[bytes | BodyLength]:
    """What to write for a *count*-byte body: framing bytes, and a :class:`BodyLength`
    where the file's bytes go (by :func:`sendfile_range`)."""
    # h11 declares bytes-only data; its passthrough hands our placeholder back.
    framed = conn.send_with_data_passthrough(h11.Data(data=BodyLength(count)))  # type: ignore[arg-type]
    assert framed is not None, "h11 returns None only for ConnectionClosed"
    return cast("list[bytes | BodyLength]", framed)


class FileShrunk(OSError):
    """The file ended before the announced size: the response cannot be completed."""


class SendProgress:
    """Bytes handed to the kernel so far; still readable after a failure."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = 0


async def sendfile_range(
    sock: trio.socket.SocketType,
    fd: int,
    offset: int,
    count: int,
    progress: SendProgress,
    *,
    stall_timeout_s: float = SEND_STALL_TIMEOUT_S,
) -> None:
    """Send *count* bytes of *fd* from *offset*; *progress* counts what left.

    Raises :class:`FileShrunk` if the file is shorter than promised, OSError
    (EPIPE, ECONNRESET) if the client went away, ``trio.TooSlowError`` if it
    stalled for *stall_timeout_s*.
    """
    out = sock.fileno()
    while progress.sent < count:
        try:
            sent = os.sendfile(
                out, fd, offset + progress.sent, min(count - progress.sent, MAX_CALL_BYTES)
            )
        except BlockingIOError:
            with trio.fail_after(stall_timeout_s):
                await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as exc:
            if exc.errno not in NO_SENDFILE_ERRNOS:
                raise
            await _copy_range(sock, fd, offset, count, progress, stall_timeout_s)
            return
        if sent == 0:
            raise FileShrunk(f"file ended {count - progress.sent} bytes early")
        progress.sent += sent
        await trio.lowlevel.checkpoint()


async def _copy_range(
    sock: trio.socket.SocketType,
    fd: int,
    offset: int,
    count: int,
    progress: SendProgress,
    stall_timeout_s: float,
) -> None:
    """:func:`sendfile_range` for a file sendfile refuses: pread, then send."""
    while progress.sent < count:
        want = min(count - progress.sent, COPY_CHUNK_BYTES)
        data = await trio.to_thread.run_sync(os.pread, fd, want, offset + progress.sent)
        if not data:
            raise FileShrunk(f"file ended {count - progress.sent} bytes early")
        view = memoryview(data)
        while view:
            with trio.fail_after(stall_timeout_s):
                sent = await sock.send(view)
            progress.sent += sent
            view = view[sent:]

"""File responses: validators, conditional requests, ranges, streaming.

Quart's own ``send_file`` is not used: it ignores Range unless asked, reads
8 KiB at a time through two thread hops, and werkzeug's range handling is
wrong on suffix ranges, ends past EOF and multiple ranges. Here the HTTP
decisions are :func:`flashback.protocol.file_plan.plan_file` (the stream
ports' too), and the body
is :class:`FileBody`, which ``os.pread``s 2 MiB per worker-thread hop so a
download of any size streams in constant memory at disk speed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

import trio
from quart import Response

from flashback.errors import NotFound, file_plan_error
from flashback.protocol.conditional import content_disposition, make_etag, sandbox_policy
from flashback.protocol.file_plan import FileFacts, plan_file
from flashback.protocol.paths import UnsafePath, open_under_root
from flashback.protocol.ranges import ByteRange
from flashback.web import FileRangesBody, error_response

# Chunks grow with what the client has taken ("slow start"): a client that
# never reads pins one first chunk (450 stalled clients ~110 MB), one that
# reads fast soon gets 2 MiB reads, where the per-chunk cost of a thread hop
# and a send no longer dominates (256 KiB throughout measured ~450 MB/s,
# 2 MiB ~1,150 MB/s on the same machine and file).
FIRST_CHUNK_BYTES: Final = 256 * 1024
CHUNK_SIZE_BYTES: Final = 2 * 1024 * 1024


Segment = bytes | ByteRange


class FileBody(FileRangesBody):
    """Streams byte ranges of an open file descriptor, interleaved with literal bytes.

    The body owns the descriptor: it is closed when Quart leaves the body's
    context, whether the download finished or the client went away.
    """

    def __init__(self, fd: int, segments: Sequence[Segment], *, chunk_size: int = CHUNK_SIZE_BYTES):
        self._fd: int | None = fd
        self._segments = segments
        self._chunk_size = chunk_size
        self._sent = 0
        self._index = 0
        first = segments[0] if segments else None
        self._offset = first.first if isinstance(first, ByteRange) else 0

    async def aclose(self) -> None:
        self.close()

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("the body's file is closed")
        return self._fd

    def pieces(self) -> Iterator[bytes | ByteRange]:
        return iter(self._segments)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def __anext__(self) -> bytes:
        # A plain iterator rather than an async generator: a client that goes
        # away mid-download leaves no suspended generator for the GC to finalize.
        while self._index < len(self._segments):
            segment = self._segments[self._index]
            if isinstance(segment, bytes):
                self._advance()
                return segment
            remaining = segment.last + 1 - self._offset
            if remaining <= 0 or self._fd is None:
                self._advance()
                continue
            # the next read is at most what the client has already taken (and at
            # least the first chunk): the server holds more only for fast readers
            chunk = min(self._chunk_size, max(FIRST_CHUNK_BYTES, self._sent))
            data = await trio.to_thread.run_sync(
                os.pread, self._fd, min(chunk, remaining), self._offset
            )
            if not data:  # the file shrank under us: end this part rather than spin
                self._advance()
                continue
            self._offset += len(data)
            self._sent += len(data)
            return data
        raise StopAsyncIteration

    def _advance(self) -> None:
        self._index += 1
        if self._index < len(self._segments):
            segment = self._segments[self._index]
            if isinstance(segment, ByteRange):
                self._offset = segment.first


def open_file(root: Path, raw_path: str, *, show_hidden: bool = False) -> OpenedFile:
    """Open *raw_path* under the real *root*. Blocking.

    Anything that is not a regular file safely inside it is :class:`NotFound`.
    The caller owns the descriptor (``build_file_response`` hands it to the body).
    """
    try:
        relative, fd, info = open_under_root(root, raw_path, show_hidden=show_hidden)
    except UnsafePath:
        raise NotFound(f"no such file: {raw_path}") from None
    return OpenedFile(relative, fd, info)


@dataclass(frozen=True)
class OpenedFile:
    relative: str
    fd: int
    info: os.stat_result


def build_file_response(
    opened: OpenedFile,
    *,
    method: str,
    headers: dict[str, str],
    attachment: bool,
    inline_csp: bool = True,
    repr_digest: str | None = None,
) -> Response:
    """The whole HTTP answer for a file request (GET or HEAD); takes over the descriptor.

    *headers* are the request headers with lower-case names; *repr_digest*
    the ``Repr-Digest`` value when the digest is known.
    """
    try:
        name = PurePosixPath(opened.relative).name
        return _build_response(
            opened.fd, opened.info, name, method, headers, attachment, inline_csp, repr_digest
        )
    except BaseException:
        os.close(opened.fd)
        raise


def file_response(
    root: Path,
    raw_path: str,
    *,
    method: str,
    headers: dict[str, str],
    attachment: bool,
    show_hidden: bool = False,
    inline_csp: bool = True,
) -> Response:
    """:func:`open_file` then :func:`build_file_response`, without a digest. Blocking."""
    opened = open_file(root, raw_path, show_hidden=show_hidden)
    return build_file_response(
        opened, method=method, headers=headers, attachment=attachment, inline_csp=inline_csp
    )


def _build_response(
    fd: int,
    info: os.stat_result,
    name: str,
    method: str,
    headers: dict[str, str],
    attachment: bool,
    inline_csp: bool,
    repr_digest: str | None = None,
) -> Response:
    facts = FileFacts(
        name=name,
        size=info.st_size,
        etag=make_etag(info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns),
        mtime_s=int(info.st_mtime),
    )
    extra = [("X-Content-Type-Options", "nosniff")]
    if attachment:
        extra.append(("Content-Disposition", content_disposition("attachment", name)))
    elif inline_csp and (policy := sandbox_policy(facts.content_type)) is not None:
        # Files from other peers are untrusted: an HTML file must not run script.
        extra.append(("Content-Security-Policy", policy))
    plan = plan_file(
        method,
        headers,
        facts,
        extra=extra,
        repr_digest=repr_digest,
        boundary=secrets.token_hex(16),
    )
    error = file_plan_error(plan, facts.size)
    if error is not None:
        os.close(fd)
        response = error_response(error)
        response.headers.update(dict(plan.headers))
        return response
    if method == "GET" and plan.status != 304:
        response = Response(FileBody(fd, plan.pieces), status=plan.status)
        # Quart would otherwise cut a slow multi-GB download after 60 s.
        response.timeout = None
    else:
        os.close(fd)
        response = Response(b"", status=plan.status)
    if plan.status == 304:
        # no body, so none of the body's headers (Quart sets a default type)
        response.headers.pop("Content-Type", None)
        response.headers.pop("Content-Length", None)
    response.headers.update(dict(plan.headers))
    return response

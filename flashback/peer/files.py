"""File responses: validators, conditional requests, ranges, streaming.

Quart's own ``send_file`` is not used: it ignores Range unless asked, reads
8 KiB at a time through two thread hops, and werkzeug's range handling is
wrong on suffix ranges, ends past EOF and multiple ranges. Here the HTTP
decisions are the pure functions of :mod:`flashback.protocol`, and the body
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

from flashback.errors import FlashbackError, NotFound, RangeNotSatisfiable
from flashback.protocol.conditional import (
    Precondition,
    content_disposition,
    content_type_for,
    evaluate_preconditions,
    http_date,
    if_range_allows,
    make_etag,
    sandbox_policy,
)
from flashback.protocol.paths import UnsafePath, open_under_root
from flashback.protocol.ranges import ByteRange, Unsatisfiable, parse_range, plan_multipart
from flashback.web import FileRangesBody

# Chunks grow with what the client has taken ("slow start"): a client that
# never reads pins one first chunk (450 stalled clients ~110 MB), one that
# reads fast soon gets 2 MiB reads, where the per-chunk cost of a thread hop
# and a send no longer dominates (256 KiB throughout measured ~450 MB/s,
# 2 MiB ~1,150 MB/s on the same machine and file).
FIRST_CHUNK_BYTES: Final = 256 * 1024
CHUNK_SIZE_BYTES: Final = 2 * 1024 * 1024


class PreconditionFailed(FlashbackError):
    status = 412
    default_code = "precondition_failed"


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
    size = info.st_size
    etag = make_etag(info.st_ino, size, info.st_mtime_ns, info.st_ctime_ns)
    last_modified_s = int(info.st_mtime)
    content_type = content_type_for(name)
    common = {
        "ETag": etag,
        "Last-Modified": http_date(last_modified_s),
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
    }
    if attachment:
        common["Content-Disposition"] = content_disposition("attachment", name)
    elif inline_csp and (policy := sandbox_policy(content_type)) is not None:
        # Files from other peers are untrusted: an HTML file must not run script.
        common["Content-Security-Policy"] = policy

    outcome = evaluate_preconditions(
        method,
        etag=etag,
        last_modified_s=last_modified_s,
        if_match=headers.get("if-match"),
        if_unmodified_since=headers.get("if-unmodified-since"),
        if_none_match=headers.get("if-none-match"),
        if_modified_since=headers.get("if-modified-since"),
    )
    if outcome is Precondition.FAILED:
        raise PreconditionFailed("the file does not match the request's preconditions")
    if outcome is Precondition.NOT_MODIFIED:
        os.close(fd)
        response = Response(b"", status=304)
        response.headers.update(common)
        response.headers.pop("Content-Length", None)
        return response

    ranges = None
    if method == "GET" and if_range_allows(
        headers.get("if-range"), etag=etag, last_modified_s=last_modified_s
    ):
        ranges = parse_range(headers.get("range"), size)
    if isinstance(ranges, Unsatisfiable):
        raise RangeNotSatisfiable(size)

    segments: list[Segment]
    if ranges is None:
        status, length, media_type = 200, size, content_type
        segments = [ByteRange(0, size - 1)] if size else []
    elif len(ranges) == 1:
        status, length, media_type = 206, ranges[0].length, content_type
        common["Content-Range"] = ranges[0].content_range(size)
        segments = [ranges[0]]
    else:
        plan = plan_multipart(ranges, size, content_type, secrets.token_hex(16))
        status, length, media_type = 206, plan.content_length, plan.media_type
        segments = [item for head, r in plan.parts for item in (head, r)]
        segments.append(plan.closing)

    if method == "HEAD":
        os.close(fd)
        response = Response(b"", status=status)
    else:
        response = Response(FileBody(fd, segments), status=status)
        # Quart would otherwise cut a slow multi-GB download after 60 s.
        response.timeout = None
    response.headers.update(common)
    if repr_digest is not None:
        # RFC 9530: the digest of the whole representation, on 206 too.
        response.headers["Repr-Digest"] = repr_digest
    response.headers["Content-Type"] = media_type
    response.headers["Content-Length"] = str(length)
    return response

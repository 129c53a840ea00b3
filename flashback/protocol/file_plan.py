"""How one file is answered over HTTP, decided without I/O (sans-IO).

The peer server's file routes and the stream ports both call
:func:`plan_file`, so their rules cannot drift apart: given the method, the
request headers and the facts of the file, it decides the status, the
headers and the body as *pieces* -- literal bytes and byte ranges of the
file, never the file's bytes themselves. The server sends the pieces its own
way (``pread`` in worker threads, or ``sendfile``).

Order of decisions (RFC 9110):

1. preconditions (§13.2.2): ``If-Match`` / ``If-Unmodified-Since`` failing
   -> 412, ``If-None-Match`` / ``If-Modified-Since`` matching -> 304;
2. Range, for GET only (§14.2: GET is the one method range handling is
   defined for, so HEAD answers as for the whole file), honoured only while
   ``If-Range`` still matches strongly (§13.1.5): none satisfiable -> 416;
   one range -> 206; several -> ``multipart/byteranges`` when the caller
   gives a boundary, else the header is ignored and the whole file is sent
   (200, which §14.2 allows: a stream port sends by ``sendfile`` only);
3. otherwise 200 with the whole file.

A 412 or 416 plan carries the validators (and ``Content-Range: bytes */N``
on 416) but no body: the caller renders its one JSON error envelope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flashback.protocol.conditional import (
    Precondition,
    content_type_for,
    evaluate_preconditions,
    http_date,
    if_range_allows,
)
from flashback.protocol.ranges import ByteRange, Unsatisfiable, parse_range, plan_multipart

Header = tuple[str, str]
Piece = bytes | ByteRange


@dataclass(frozen=True)
class FileFacts:
    """What the server knows about the file it answers with."""

    name: str
    size: int
    etag: str
    mtime_s: int

    @property
    def content_type(self) -> str:
        return content_type_for(self.name)


@dataclass(frozen=True)
class FilePlan:
    status: int
    headers: tuple[Header, ...]
    #: the body in order: literal bytes and ranges of the file (empty for HEAD, 304, 412, 416)
    pieces: tuple[Piece, ...] = ()

    @property
    def is_error(self) -> bool:
        """412 or 416: the caller adds a JSON error body (and its Content-Type/Length)."""
        return self.status >= 400

    @property
    def body_length(self) -> int:
        return sum(len(p) if isinstance(p, bytes) else p.length for p in self.pieces)

    @property
    def file_range(self) -> ByteRange | None:
        """The one range of the file the body is, or None (no body, or multipart)."""
        if len(self.pieces) == 1 and isinstance(self.pieces[0], ByteRange):
            return self.pieces[0]
        return None

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for n, v in self.headers if n.lower() == wanted), None)


def plan_file(
    method: str,
    headers: Mapping[str, str],
    facts: FileFacts,
    *,
    extra: Sequence[Header] = (),
    repr_digest: str | None = None,
    boundary: str | None = None,
) -> FilePlan:
    """The answer to a GET or HEAD for the file of *facts*.

    *headers* maps lower-case request header names to values; *extra* are
    the server's own headers for the representation (on 200, 206 and 304);
    *repr_digest* is the ``Repr-Digest`` value once known (on 200 and 206,
    HEAD too: it is the digest of the whole file, RFC 9530); *boundary*, when
    given, lets several ranges be answered as ``multipart/byteranges``.
    """
    size = facts.size
    validators: tuple[Header, ...] = (
        ("ETag", facts.etag),
        ("Last-Modified", http_date(facts.mtime_s)),
        ("Accept-Ranges", "bytes"),
    )
    outcome = evaluate_preconditions(
        method,
        etag=facts.etag,
        last_modified_s=facts.mtime_s,
        if_match=headers.get("if-match"),
        if_unmodified_since=headers.get("if-unmodified-since"),
        if_none_match=headers.get("if-none-match"),
        if_modified_since=headers.get("if-modified-since"),
    )
    if outcome is Precondition.FAILED:
        return FilePlan(412, validators)
    if outcome is Precondition.NOT_MODIFIED:
        return FilePlan(304, (*validators, *extra))
    ranges = None
    if method == "GET" and if_range_allows(
        headers.get("if-range"), etag=facts.etag, last_modified_s=facts.mtime_s
    ):
        ranges = parse_range(headers.get("range"), size)
    if isinstance(ranges, Unsatisfiable):
        return FilePlan(416, (*validators, ("Content-Range", ranges.content_range)))
    representation = (
        *validators,
        *extra,
        *((("Repr-Digest", repr_digest),) if repr_digest is not None else ()),
    )
    content_type = facts.content_type
    pieces: tuple[Piece, ...]
    if ranges is not None and len(ranges) == 1:
        (only,) = ranges
        status, media_type, pieces = 206, content_type, (only,)
        ranged: tuple[Header, ...] = (("Content-Range", only.content_range(size)),)
    elif ranges is not None and boundary is not None:
        multipart = plan_multipart(ranges, size, content_type, boundary)
        status, media_type, ranged = 206, multipart.media_type, ()
        pieces = (*(p for head, r in multipart.parts for p in (head, r)), multipart.closing)
    else:
        status, media_type, ranged = 200, content_type, ()
        pieces = (ByteRange(0, size - 1),) if size else ()
    length = sum(len(p) if isinstance(p, bytes) else p.length for p in pieces)
    plan_headers = (
        *representation,
        ("Content-Type", media_type),
        *ranged,
        ("Content-Length", str(length)),
    )
    return FilePlan(status, plan_headers, pieces if method == "GET" else ())

"""HTTP Range requests (RFC 9110 §14) as pure functions.

:func:`parse_range` answers one of three things for a ``Range`` header and a
representation of ``size`` bytes:

* ``None``: ignore the header and send the whole file (no header, another
  unit, or invalid syntax: RFC 9110 §14.2 says a server *may* ignore it);
* a non-empty tuple of :class:`ByteRange`: send 206;
* :class:`Unsatisfiable`: send 416 with ``Content-Range: bytes */size``.

Overlapping or adjacent ranges are coalesced and too many ranges make the
header ignored, so one request cannot ask for the same bytes a thousand
times (§14.3 allows both).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

MAX_RANGES: Final = 100


@dataclass(frozen=True, order=True)
class ByteRange:
    """Inclusive byte positions, as in ``Content-Range: bytes first-last/size``."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.first}-{self.last}/{size}"


@dataclass(frozen=True)
class Unsatisfiable:
    size: int

    @property
    def content_range(self) -> str:
        return f"bytes */{self.size}"


MAX_POSITION_DIGITS: Final = 18  # 10**18 bytes is an exabyte: no file is longer
BEYOND_ANY_FILE: Final = 10**MAX_POSITION_DIGITS  # what an overlong position stands for


def _digits(text: str) -> int | None:
    """A byte position, or None when it is not ASCII digits.

    A syntactically valid position of more than 18 digits is beyond the end of
    any file: it stands for :data:`BEYOND_ANY_FILE` rather than being parsed
    (``int()`` of thousands of digits raises in Python 3.11+ and costs CPU), so
    ``bytes=99999999999999999999999999-`` is unsatisfiable (416), as it must be.
    """
    text = text.strip(" \t")
    if not text or not text.isascii() or not text.isdigit():
        return None
    if len(text.lstrip("0")) > MAX_POSITION_DIGITS:
        return BEYOND_ANY_FILE
    return int(text)


def parse_range(header: str | None, size: int) -> tuple[ByteRange, ...] | Unsatisfiable | None:
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip(" \t").lower() != "bytes":
        return None
    specs = [s for s in (part.strip(" \t") for part in spec.split(",")) if s]
    if not specs or len(specs) > MAX_RANGES:
        return None
    ranges: list[ByteRange] = []
    for item in specs:
        first_text, dash, last_text = item.partition("-")
        if not dash:
            return None
        if first_text.strip(" \t") == "":
            suffix = _digits(last_text)
            if suffix is None:
                return None
            if suffix > 0 and size > 0:
                ranges.append(ByteRange(max(0, size - suffix), size - 1))
            continue
        first = _digits(first_text)
        if first is None:
            return None
        if last_text.strip(" \t") == "":
            last = size - 1
        else:
            last_or_none = _digits(last_text)
            if last_or_none is None or last_or_none < first:
                return None
            last = min(last_or_none, size - 1)
        if first < size:
            ranges.append(ByteRange(first, last))
    if not ranges:
        return Unsatisfiable(size)
    return coalesce(ranges)


def coalesce(ranges: Sequence[ByteRange]) -> tuple[ByteRange, ...]:
    """Merge overlapping or adjacent ranges; keep request order when none touch."""
    ordered = sorted(ranges)
    if all(a.last + 1 < b.first for a, b in itertools.pairwise(ordered)):
        return tuple(ranges)
    merged: list[ByteRange] = [ordered[0]]
    for current in ordered[1:]:
        previous = merged[-1]
        if current.first <= previous.last + 1:
            merged[-1] = ByteRange(previous.first, max(previous.last, current.last))
        else:
            merged.append(current)
    return tuple(merged)


@dataclass(frozen=True)
class MultipartPlan:
    """The exact bytes around each part of a ``multipart/byteranges`` body."""

    boundary: str
    content_type: str
    parts: tuple[tuple[bytes, ByteRange], ...]
    closing: bytes

    @property
    def content_length(self) -> int:
        return sum(len(head) + r.length for head, r in self.parts) + len(self.closing)

    @property
    def media_type(self) -> str:
        return f"multipart/byteranges; boundary={self.boundary}"


def plan_multipart(
    ranges: Sequence[ByteRange], size: int, content_type: str, boundary: str
) -> MultipartPlan:
    """RFC 9110 §14.6: each part has its own Content-Type and Content-Range."""
    parts = []
    for index, byte_range in enumerate(ranges):
        lead = b"" if index == 0 else b"\r\n"
        head = (
            f"--{boundary}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Range: {byte_range.content_range(size)}\r\n\r\n"
        ).encode("ascii")
        parts.append((lead + head, byte_range))
    closing = f"\r\n--{boundary}--\r\n".encode("ascii")
    return MultipartPlan(boundary, content_type, tuple(parts), closing)

"""Validators and conditional requests (RFC 9110 §8.8, §13) as pure functions."""

from __future__ import annotations

import enum
import mimetypes
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Final
from urllib.parse import quote


def make_etag(inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """A strong validator: it changes whenever the bytes can have changed. The
    ctime too: an edit whose mtime is put back (``touch -r``) still moves it."""
    return f'"{inode:x}-{size:x}-{mtime_ns:x}-{ctime_ns:x}"'


def http_date(timestamp: float) -> str:
    return format_datetime(datetime.fromtimestamp(int(timestamp), UTC), usegmt=True)


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch, or None for anything that is not an HTTP-date."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None  # (since Python 3.10 a bad date raises instead of returning None)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def rfc3339_seconds(timestamp: float) -> str:
    """UTC to the second (a listing's ``mtime``); the tracker's PEER times are
    :func:`flashback.protocol.registry.rfc3339_millis`."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _split_etags(header: str) -> list[str]:
    """The entity-tags of an If-Match / If-None-Match list (quoted; commas inside allowed)."""
    tags: list[str] = []
    i, n = 0, len(header)
    while i < n:
        while i < n and header[i] in " \t,":
            i += 1
        if i >= n:
            break
        start = i
        if header.startswith("W/", i):
            i += 2
        if i < n and header[i] == '"':
            end = header.find('"', i + 1)
            if end == -1:
                return tags
            i = end + 1
        else:
            while i < n and header[i] not in ",":
                i += 1
        tags.append(header[start:i].strip())
    return tags


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def etag_matches(header: str, etag: str, *, weak: bool) -> bool:
    """Does the list in *header* match *etag* (weak or strong comparison)?"""
    if header.strip() == "*":
        return True
    for tag in _split_etags(header):
        if weak:
            if _opaque(tag) == _opaque(etag):
                return True
        elif tag == etag and not tag.startswith("W/"):
            return True
    return False


class Precondition(enum.Enum):
    PROCEED = "proceed"
    NOT_MODIFIED = "not_modified"
    FAILED = "precondition_failed"


def evaluate_preconditions(
    method: str,
    *,
    etag: str,
    last_modified_s: int,
    if_match: str | None = None,
    if_unmodified_since: str | None = None,
    if_none_match: str | None = None,
    if_modified_since: str | None = None,
) -> Precondition:
    """RFC 9110 §13.2.2, in its order of evaluation, for GET and HEAD."""
    if if_match is not None:
        if not etag_matches(if_match, etag, weak=False):
            return Precondition.FAILED
    elif if_unmodified_since is not None:
        since = parse_http_date(if_unmodified_since)
        if since is not None and last_modified_s > since:
            return Precondition.FAILED
    if if_none_match is not None:
        if etag_matches(if_none_match, etag, weak=True):
            return Precondition.NOT_MODIFIED if method in ("GET", "HEAD") else Precondition.FAILED
    elif if_modified_since is not None and method in ("GET", "HEAD"):
        since = parse_http_date(if_modified_since)
        if since is not None and last_modified_s <= since:
            return Precondition.NOT_MODIFIED
    return Precondition.PROCEED


def if_range_allows(if_range: str | None, *, etag: str, last_modified_s: int) -> bool:
    """RFC 9110 §13.1.5: honour Range only if the validator still matches (strongly)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return not value.startswith("W/") and value == etag
    since = parse_http_date(value)
    return since is not None and since == last_modified_s


_COMPRESSED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
}


def content_type_for(name: str) -> str:
    """The media type from the file name; text is declared UTF-8 (RFC 6657 default is ASCII)."""
    media_type, encoding = mimetypes.guess_type(name, strict=False)
    if encoding is not None:
        return _COMPRESSED_TYPES.get(encoding, "application/octet-stream")
    if media_type is None:
        return "application/octet-stream"
    if media_type.startswith("text/"):
        return f"{media_type}; charset=utf-8"
    return media_type


#: image types that can carry script when opened as a document (SVG is XML with <script>)
_SCRIPTABLE_IMAGE_TYPES: Final = frozenset({"image/svg+xml"})


def sandbox_policy(content_type: str) -> str | None:
    """The ``Content-Security-Policy`` for showing a shared file inline, or None.

    A file from another peer must never run script on our origin, so
    everything gets ``sandbox``, except audio, video and raster images: their
    documents cannot run script, and a sandboxed one (a ``null`` origin)
    makes Chromium's own media player fail its CORS check, so the video does
    not play. SVG is XML that can hold ``<script>``: it stays sandboxed.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    kind = media_type.partition("/")[0]
    if kind in ("audio", "video"):
        return None
    if kind == "image" and media_type not in _SCRIPTABLE_IMAGE_TYPES:
        return None
    return "sandbox"


def mime_for_listing(name: str) -> str:
    return content_type_for(name).split(";", 1)[0]


def content_disposition(kind: str, filename: str) -> str:
    """RFC 6266: an ASCII ``filename`` fallback plus ``filename*`` when needed."""
    fallback = "".join(
        ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\%' else "_" for ch in filename
    )
    header = f'{kind}; filename="{fallback}"'
    if fallback != filename:
        header += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return header

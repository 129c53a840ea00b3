"""How the file view shows a file, and how its bytes are served, from its name alone (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Final

from flashback.protocol.conditional import mime_for_listing

MARKDOWN_SUFFIXES: Final = frozenset({".md", ".markdown", ".mdown"})
TEXT_TYPES: Final = frozenset(
    {"application/json", "application/xml", "application/javascript", "application/toml"}
)
TEXT_SUFFIXES: Final = frozenset({".yaml", ".yml", ".toml", ".ini", ".cfg", ".log", ".rst"})

#: raster images the UI shows inline (SVG is XML that can hold <script>: not here)
INLINE_IMAGE_TYPES: Final = frozenset(
    {"image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp"}
)
#: a document that can load nothing and run nothing, in a unique origin
SANDBOX_CSP: Final = "default-src 'none'; sandbox"
#: a media document: the file itself (same origin, so Chromium's player passes its
#: CORS check, which a sandbox's null origin fails), and nothing else, no script
MEDIA_CSP: Final = "default-src 'none'; img-src 'self'; media-src 'self'"
OCTET_STREAM: Final = "application/octet-stream"
TEXT_PLAIN: Final = "text/plain; charset=utf-8"


def view_kind(name: str) -> str:
    """One of ``markdown``, ``image``, ``audio``, ``video``, ``text``, ``other``."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in MARKDOWN_SUFFIXES:
        return "markdown"
    mime = mime_for_listing(name)
    kind = mime.partition("/")[0]
    if kind in ("image", "audio", "video"):
        return kind
    if kind == "text" or mime in TEXT_TYPES or suffix in TEXT_SUFFIXES:
        return "text"
    return "other"


@dataclass(frozen=True)
class Served:
    """The headers the UI's proxy sets for a peer's file: never the peer's own."""

    content_type: str
    csp: str
    attachment: bool


def served_as(name: str) -> Served:
    """The UI's own choice for the file *name*: an allow-listed media type or plain
    text inline, anything else an ``application/octet-stream`` attachment.

    A peer's ``Content-Type`` is never passed on: a list such as
    ``image/png, text/html`` is read by Chromium as its last member, and an
    HTML document on the UI's origin could read every share the user can.
    """
    kind = view_kind(name)
    mime = mime_for_listing(name)
    if kind in ("audio", "video") or mime in INLINE_IMAGE_TYPES:
        return Served(mime, MEDIA_CSP, attachment=False)
    if kind == "markdown" or mime == "text/plain":
        return Served(TEXT_PLAIN, SANDBOX_CSP, attachment=False)
    return Served(OCTET_STREAM, SANDBOX_CSP, attachment=True)

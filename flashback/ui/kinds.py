"""How the file view shows a file, from its name alone (pure)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Final

from flashback.protocol.conditional import mime_for_listing

MARKDOWN_SUFFIXES: Final = frozenset({".md", ".markdown", ".mdown"})
TEXT_TYPES: Final = frozenset(
    {"application/json", "application/xml", "application/javascript", "application/toml"}
)
TEXT_SUFFIXES: Final = frozenset({".yaml", ".yml", ".toml", ".ini", ".cfg", ".log", ".rst"})


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

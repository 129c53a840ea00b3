"""How a listing is shown to people: sizes, dates, kinds, order, filter (pure).

Text in, text out -- no request, no clock but the one passed in -- so the
rules are tested with plain values. The exact value always stays at hand
(the templates put it in a ``title``): ``1.5 MiB`` is ``1,572,864 bytes``,
``2 Dec 2026 22:28`` is ``2026-12-02T22:28:51Z``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Final

from flashback.protocol.conditional import mime_for_listing
from flashback.ui.kinds import INLINE_IMAGE_TYPES, view_kind

UNITS: Final = ("KiB", "MiB", "GiB", "TiB", "PiB")
SORT_KEYS: Final = ("name", "size", "mtime")
ARCHIVE_SUFFIXES: Final = frozenset(
    {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".iso", ".deb"}
)
CODE_SUFFIXES: Final = frozenset(
    {".py", ".js", ".ts", ".rs", ".go", ".c", ".h", ".cpp", ".java", ".sh", ".json", ".toml"}
)
MAX_FILTER_CHARS: Final = 200
FINGERPRINT_SHOWN: Final = 16  # hex digits after "sha256:"


def human_size(size: int) -> str:
    """``512 B``, ``30.0 KiB``, ``500 MiB`` (binary units; three significant digits)."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in UNITS:
        value /= 1024
        if value < 1024 or unit == UNITS[-1]:
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def exact_size(size: int) -> str:
    return f"{size:,} bytes"


def parse_time(rfc3339: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def human_date(rfc3339: str, now: datetime) -> str:
    """``22:28`` today, ``2 Dec 22:28`` this year, ``2 Dec 2025`` before (UTC);
    what cannot be read is shown as it came (cut)."""
    when = parse_time(rfc3339)
    if when is None:
        return rfc3339[:40]
    if when.date() == now.date():
        return when.strftime("%H:%M")
    if when.year == now.year:
        return f"{when.day} {when:%b %H:%M}"
    return f"{when.day} {when:%b %Y}"


def human_ago(rfc3339: str, now: datetime) -> str:
    """``just now``, ``12 s ago``, ``3 min ago``, ``2 h ago``, else the date."""
    when = parse_time(rfc3339)
    if when is None:
        return rfc3339[:40] or "-"
    seconds = int((now - when).total_seconds())
    if seconds < 2:
        return "just now"
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return human_date(rfc3339, now)


def icon_for(name: str, *, folder: bool) -> str:
    """The icon's name in the page's sprite: folder, image, video, audio, doc,
    text, code, archive or file."""
    if folder:
        return "folder"
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in ARCHIVE_SUFFIXES:
        return "archive"
    if suffix in CODE_SUFFIXES:
        return "code"
    kind = view_kind(name)
    return {"markdown": "doc", "image": "image", "video": "video", "audio": "audio"}.get(
        kind, "text" if kind == "text" else "file"
    )


def has_thumbnail(name: str) -> bool:
    """A raster image the UI's proxy serves inline (so an ``<img>`` may show it)."""
    return mime_for_listing(name) in INLINE_IMAGE_TYPES


def sort_spec(sort: str | None, order: str | None) -> tuple[str, bool]:
    """(key, descending) from the query; anything unknown is by name, ascending."""
    key = sort if sort in SORT_KEYS else "name"
    return key, order == "desc"


def sorted_entries(
    entries: Iterable[Mapping[str, Any]], key: str, descending: bool
) -> list[Mapping[str, Any]]:
    """By *key*, ties by name (code-point order, as the peer sends them)."""

    def rank(entry: Mapping[str, Any]) -> tuple[Any, str]:
        return (entry[key] if key != "name" else "", entry["name"])

    return sorted(entries, key=rank, reverse=descending)


def filter_text(raw: str | None) -> str:
    return (raw or "").strip()[:MAX_FILTER_CHARS]


def matches(name: str, needle: str) -> bool:
    """Case-insensitive substring; an empty filter keeps everything."""
    return not needle or needle.casefold() in name.casefold()


def short_fingerprint(fingerprint: str | None) -> str:
    """``sha256:1a2b3c4d5e6f7a8b…`` (the whole one goes in a title)."""
    if not fingerprint:
        return "-"
    algorithm, _, digest = fingerprint.partition(":")
    if not digest:
        return fingerprint[:FINGERPRINT_SHOWN] + "…"
    return f"{algorithm}:{digest[:FINGERPRINT_SHOWN]}…"

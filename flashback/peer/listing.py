"""Directory listings with stable, opaque cursors.

A page costs one ``os.listdir`` (names only) plus a sort, then an
``lstat`` for each entry *on that page*: a 100,000-entry directory is paged
without stat-ing the other 99,000. Entries that a request would refuse
(hidden names, symlinks leaving the root, sockets, FIFOs, names that are not
UTF-8) are never listed.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

from flashback.errors import BadRequest
from flashback.protocol.conditional import mime_for_listing, rfc3339_seconds
from flashback.protocol.paths import UnsafePath, is_servable_name, resolve_under_root

DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 10_000
_CURSOR_PREFIX: Final = b"after:"


def encode_cursor(name: str) -> str:
    raw = _CURSOR_PREFIX + name.encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The name a page ended with; anything we did not issue is a 400."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii"))
        if not raw.startswith(_CURSOR_PREFIX):
            raise ValueError("not a cursor")
        return raw[len(_CURSOR_PREFIX) :].decode("utf-8")
    except (ValueError, binascii.Error, UnicodeError):
        raise BadRequest("cursor is not one this server issued", code="bad_cursor") from None


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if len(raw) > 6 or not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequest(f"limit must be an integer from 1 to {MAX_LIMIT}", code="bad_limit")
    return int(raw)


@dataclass(frozen=True)
class ListingPage:
    path: str
    entries: list[dict[str, Any]]
    next_cursor: str | None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "entries": self.entries, "next_cursor": self.next_cursor}


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # surrogate-escaped bytes from a non-UTF-8 name
        return False
    return True


def _entry(
    root: Path, rel_parts: tuple[str, ...], dir_fd: int, name: str, show_hidden: bool
) -> dict[str, Any] | None:
    """The listing entry, or None when a request for it would be refused."""
    try:
        info = os.lstat(name, dir_fd=dir_fd)
        if stat.S_ISLNK(info.st_mode):
            target = resolve_under_root(root, (*rel_parts, name), show_hidden=show_hidden)
            info = target.stat()
        if not os.access(name, os.R_OK, dir_fd=dir_fd):
            return None  # listed but unreadable would be a 404 on request
    except (OSError, UnsafePath):
        return None
    if stat.S_ISDIR(info.st_mode):
        kind, size, mime = "dir", 0, None
    elif stat.S_ISREG(info.st_mode):
        kind, size, mime = "file", info.st_size, mime_for_listing(name)
    else:
        return None
    return {
        "name": name,
        "path": str(PurePosixPath(*rel_parts, name)),
        "type": kind,
        "size": size,
        "mtime": rfc3339_seconds(info.st_mtime),
        "mime": mime,
    }


def list_directory(
    root: Path,
    rel_parts: tuple[str, ...],
    dir_fd: int,
    *,
    limit: int = DEFAULT_LIMIT,
    after: str | None = None,
    show_hidden: bool = False,
) -> ListingPage:
    """One page of the directory open as *dir_fd* (opened safely under *root*). Blocking.

    Working from the descriptor, not a path, means a directory swapped for a
    symlink after it was checked cannot make us list somewhere else.
    """
    # Names only (no DirEntry objects), sorted as plain strings: the cheapest
    # way to order 100,000 entries; only the page's entries are stat-ed.
    names = sorted(
        name
        for name in os.listdir(dir_fd)
        if is_servable_name(name, show_hidden=show_hidden) and (name.isascii() or _is_utf8(name))
    )
    start = 0 if after is None else bisect.bisect_right(names, after)
    entries: list[dict[str, Any]] = []
    next_cursor = None
    for index in range(start, len(names)):
        entry = _entry(root, rel_parts, dir_fd, names[index], show_hidden)
        if entry is None:
            continue
        entries.append(entry)
        if len(entries) == limit:
            if index + 1 < len(names):
                next_cursor = encode_cursor(entry["name"])
            break
    return ListingPage(str(PurePosixPath(*rel_parts)) if rel_parts else "", entries, next_cursor)

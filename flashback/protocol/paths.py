"""Safe resolution of a request path under a shared root.

The request path arrives already percent-decoded by the ASGI server, so it
is *never* decoded again here: decoding twice is what turns ``%252e%252e``
into ``..``. A path is refused when it contains a NUL byte, a backslash, a
``.`` or ``..`` component, is absolute or starts with a drive letter, names a
hidden (dot) component while hidden files are not shown, or resolves
(symlinks included) to anything outside the real root. Refusals raise
:class:`UnsafePath`, which servers answer exactly like a missing file (404),
so a client cannot tell "forbidden" from "absent".
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Final

_DRIVE_LETTER: Final = re.compile(r"^[A-Za-z]:")


class UnsafePath(ValueError):
    """The path is outside the root, hidden, or malformed (answered as 404)."""


def is_hidden_name(name: str) -> bool:
    return name.startswith(".")


def split_request_path(raw: str, *, show_hidden: bool = False) -> tuple[str, ...]:
    """Validate a decoded, root-relative request path and return its components.

    Empty components (``a//b``, a trailing slash) are dropped; an empty path
    means the root itself.
    """
    if "\x00" in raw:
        raise UnsafePath("NUL byte in path")
    if "\\" in raw:
        raise UnsafePath("backslash in path")
    if raw.startswith("/"):
        raise UnsafePath("absolute path")
    if _DRIVE_LETTER.match(raw):
        raise UnsafePath("drive-letter path")
    parts = tuple(part for part in raw.split("/") if part)
    for part in parts:
        if part in (".", ".."):
            raise UnsafePath("dot segment in path")
        if not show_hidden and is_hidden_name(part):
            raise UnsafePath("hidden path")
    return parts


def real_root(root: str | os.PathLike[str]) -> Path:
    """The root with every symlink resolved: the reference for containment."""
    return Path(os.path.realpath(root))


def resolve_under_root(root: Path, parts: tuple[str, ...], *, show_hidden: bool = False) -> Path:
    """Resolve *parts* (from :func:`split_request_path`) inside *root*.

    *root* must already be real (:func:`real_root`). The result is the real
    path of an existing entry, guaranteed to lie inside *root* and, unless
    *show_hidden*, to have no hidden component after symlink resolution
    either (a visible link to a hidden file is refused too).
    """
    candidate = root.joinpath(*parts)
    try:
        resolved = Path(os.path.realpath(candidate, strict=True))
    except (OSError, ValueError) as exc:
        raise UnsafePath("no such entry") from exc
    if not resolved.is_relative_to(root):
        raise UnsafePath("resolves outside the root")
    if not show_hidden and any(is_hidden_name(part) for part in resolved.relative_to(root).parts):
        raise UnsafePath("resolves to a hidden entry")
    return resolved


def safe_resolve(root: Path, raw: str, *, show_hidden: bool = False) -> tuple[str, Path]:
    """Both steps at once: returns the normalised relative path and the real path."""
    parts = split_request_path(raw, show_hidden=show_hidden)
    return str(PurePosixPath(*parts)) if parts else "", resolve_under_root(
        root, parts, show_hidden=show_hidden
    )

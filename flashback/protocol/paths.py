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
import stat
from pathlib import Path, PurePosixPath
from typing import Final

_DRIVE_LETTER: Final = re.compile(r"^[A-Za-z]:")


class UnsafePath(ValueError):
    """The path is outside the root, hidden, or malformed (answered as 404)."""


def is_hidden_name(name: str) -> bool:
    return name.startswith(".")


def is_servable_name(name: str, *, show_hidden: bool = False) -> bool:
    """Could a request name this one path component? (Listings use the same rule.)"""
    if not name or name in (".", "..") or "\\" in name or "\x00" in name:
        return False
    if name[1:2] == ":" and name[:1].isascii() and name[:1].isalpha():
        return False  # "C:..." -- a drive letter on Windows, refused everywhere
    return show_hidden or not is_hidden_name(name)


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
        if not is_servable_name(part, show_hidden=show_hidden):
            raise UnsafePath("dot segment, hidden or drive-letter component")
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


def _opened_path(fd: int) -> Path | None:
    """Where the kernel says an open descriptor lives (Linux ``/proc``), if it can tell."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def verify_opened(root: Path, fd: int, *, show_hidden: bool = False) -> None:
    """Re-check containment on what was *actually* opened.

    Checking a path and then opening it by name leaves a window in which
    someone who can write inside the root swaps a directory for a symlink
    leading out. The descriptor cannot lie: we ask the kernel where it
    points and refuse it unless it is inside the root (and not hidden).
    """
    opened = _opened_path(fd)
    if opened is None:
        return  # no /proc: the path checks above are all we have
    if not opened.is_relative_to(root):
        raise UnsafePath("opened outside the root (the tree changed under us)")
    if not show_hidden and any(is_hidden_name(p) for p in opened.relative_to(root).parts):
        raise UnsafePath("opened a hidden entry (the tree changed under us)")


_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0)


def open_under_root(
    root: Path, raw: str, *, show_hidden: bool = False, directory: bool = False
) -> tuple[str, int, os.stat_result]:
    """Resolve *raw*, open it without following a final symlink, verify the descriptor.

    Returns the normalised relative path, the open descriptor (the caller
    closes it) and its ``fstat``. Only a regular file is accepted, or a
    directory when *directory* is true; anything else -- missing, outside,
    hidden, a FIFO (``O_NONBLOCK`` keeps its open from hanging) -- raises
    :class:`UnsafePath`.
    """
    relative, real = safe_resolve(root, raw, show_hidden=show_hidden)
    flags = _OPEN_FLAGS | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        raise UnsafePath("cannot open") from exc
    try:
        info = os.fstat(fd)
        wanted = stat.S_ISDIR if directory else stat.S_ISREG
        if not wanted(info.st_mode):
            raise UnsafePath("not a regular file" if not directory else "not a directory")
        verify_opened(root, fd, show_hidden=show_hidden)
    except BaseException:
        os.close(fd)
        raise
    return relative, fd, info


def safe_resolve(root: Path, raw: str, *, show_hidden: bool = False) -> tuple[str, Path]:
    """Both steps at once: returns the normalised relative path and the real path."""
    parts = split_request_path(raw, show_hidden=show_hidden)
    return str(PurePosixPath(*parts)) if parts else "", resolve_under_root(
        root, parts, show_hidden=show_hidden
    )


def resolve_relative(base_dir: tuple[str, ...], target: str) -> tuple[str, ...]:
    """Resolve a decoded link *target* against the folder *base_dir*, never leaving the root.

    Pure: what a link in a shared file (``../b.md``, ``/docs/``) names, as
    root-relative components. A leading ``/`` means the root; ``..`` above
    the root, a backslash, NUL, a drive letter or a hidden component raise
    :class:`UnsafePath`, so a link can only name what a request could.
    """
    if "\x00" in target or "\\" in target:
        raise UnsafePath("NUL or backslash in link")
    parts: list[str] = [] if target.startswith("/") else list(base_dir)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UnsafePath("link leaves the root")
            parts.pop()
            continue
        if not is_servable_name(part):
            raise UnsafePath("hidden or drive-letter component in link")
        parts.append(part)
    return tuple(parts)

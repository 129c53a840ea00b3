"""Mirroring a peer's directory (INTERFACE §8): the rules, with no I/O at all.

A folder ``get`` walks listings a peer wrote, so every name in them is
untrusted. Three things are decided here, on plain values, so they can be
tested with plain values:

- :func:`check_entry`: may this listing entry become a file or directory
  under OUT? The entry's ``path`` goes through the server's own rules
  (:func:`~flashback.protocol.paths.split_request_path`) and must be exactly
  the listed directory plus its ``name``; hidden names are never fetched;
  a name listed twice, or (on a case-insensitive disk) differing only in
  case from a sibling, is refused -- it would overwrite that sibling.
- :func:`decide_file`: fetch, skip, or compare digests first, from what is
  on the local disk and what the listing says.
- :class:`DirListing` and :class:`WalkBudget`: the walk's bounds. Pages per
  directory, entries per directory and in the tree, directories, depth and
  cursors are all bounded, so a listing that never ends, or points into
  itself, ends the walk instead of growing it.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, Literal

from flashback.protocol.paths import UnsafePath, is_hidden_name, split_request_path

#: the longest name Linux file systems take (NAME_MAX)
MAX_NAME_BYTES: Final = 255
#: PATH_MAX: a longer relative path could not be opened anyway
MAX_PATH_BYTES: Final = 4096
MAX_DEPTH: Final = 64
#: entries per listing page asked of the peer (its default page size, §3)
PAGE_ENTRIES: Final = 1000
MAX_DIR_PAGES: Final = 1000
MAX_DIR_ENTRIES: Final = 200_000
MAX_TREE_ENTRIES: Final = 1_000_000
MAX_TREE_DIRS: Final = 100_000
MAX_CURSOR_CHARS: Final = 1024

_RFC3339: Final = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(?:Z|\+00:00)$"
)


class UnsafeEntry(ValueError):
    """This entry must not be written (the warning says why); the walk goes on."""


class HiddenEntry(UnsafeEntry):
    """A dot name: not fetched, like the server does not serve it by default."""


class BadListing(ValueError):
    """The peer's listing cannot be followed (malformed, endless, too big): the get stops."""


class SkipDirectory(ValueError):
    """This directory is not walked (a link back, too deep); the rest of the walk goes on."""


@dataclass(frozen=True)
class RemoteEntry:
    name: str
    #: root-relative path on the peer, as components (ours, not the peer's string)
    parts: tuple[str, ...]
    kind: Literal["file", "dir"]
    size: int
    #: the listing's mtime in nanoseconds since the epoch, None if it sent none we can read
    mtime_ns: int | None

    @property
    def path(self) -> str:
        return "/".join(self.parts)


def parse_mtime_ns(value: Any) -> int | None:
    """An RFC 3339 UTC time (``2026-01-01T00:00:00Z``, optional fraction) in ns, or None."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    match = _RFC3339.match(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    fraction = (match.group(7) or "").ljust(9, "0")
    seconds = int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds())
    return seconds * 1_000_000_000 + int(fraction)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass
class SiblingNames:
    """The names already accepted in one directory (across all of its pages)."""

    case_insensitive: bool
    exact: set[str] = field(default_factory=set)
    folded: dict[str, str] = field(default_factory=dict)

    def claim(self, name: str) -> None:
        if name in self.exact:
            raise UnsafeEntry("listed twice")
        if self.case_insensitive:
            # disks that ignore case mostly ignore Unicode normalization too (APFS, HFS+)
            key = unicodedata.normalize("NFC", name.casefold())
            other = self.folded.get(key)
            if other is not None:
                raise UnsafeEntry(
                    f"differs only in case from {other!r} (this disk ignores case; "
                    "it would overwrite it)"
                )
            self.folded[key] = name
        self.exact.add(name)


def check_entry(dir_parts: tuple[str, ...], raw: Any, siblings: SiblingNames) -> RemoteEntry:
    """The entry as something we may write under OUT, or :class:`UnsafeEntry`.

    *dir_parts* is the directory whose listing this came from (our own
    walk's components). The entry must say it lies directly inside it.
    """
    if not isinstance(raw, dict):
        raise UnsafeEntry("not an object")
    name, path, kind, size = raw.get("name"), raw.get("path"), raw.get("type"), raw.get("size")
    if not isinstance(name, str) or not isinstance(path, str):
        raise UnsafeEntry("no name or path")
    if kind not in ("file", "dir"):
        raise UnsafeEntry("neither a file nor a directory")
    if kind == "file" and not _is_count(size):
        raise UnsafeEntry("a file without a size")
    if "/" in name:
        raise UnsafeEntry("a name with a slash in it")
    try:
        parts = split_request_path(path, show_hidden=True)
        name_bytes = len(name.encode("utf-8"))
        path_bytes = len(path.encode("utf-8"))
    except UnsafePath as exc:
        raise UnsafeEntry(f"not a plain relative path ({exc})") from None
    except UnicodeEncodeError:
        raise UnsafeEntry("not valid UTF-8") from None
    if parts != (*dir_parts, name) or path != "/".join(parts):
        raise UnsafeEntry(f"its path is not {'/'.join((*dir_parts, name))!r}")
    if name_bytes > MAX_NAME_BYTES or path_bytes > MAX_PATH_BYTES:
        raise UnsafeEntry("name or path too long for the disk")
    if is_hidden_name(name):
        raise HiddenEntry("hidden")
    siblings.claim(name)
    return RemoteEntry(
        name=name,
        parts=parts,
        kind=kind,
        size=size if kind == "file" and isinstance(size, int) else 0,
        mtime_ns=parse_mtime_ns(raw.get("mtime")),
    )


class Action(Enum):
    FETCH = "fetch"  # missing or different: download it
    SKIP = "skip"  # same size and mtime as listed: it is what we verified last time
    COMPARE = "compare"  # same size, other mtime: compare digests before fetching
    CONFLICT = "conflict"  # a directory, symlink or device is in the way: leave it alone


@dataclass(frozen=True)
class LocalFile:
    """What ``lstat`` says about the local path (None for missing)."""

    kind: Literal["file", "dir", "symlink", "other"]
    size: int = 0
    mtime_ns: int = 0


#: the local mtime may differ from the listed one by less than this (rounding)
MTIME_TOLERANCE_NS: Final = 1000


def decide_file(local: LocalFile | None, remote: RemoteEntry) -> Action:
    """Whether a second run fetches the file again (size + mtime, else the digest).

    After a verified download the local mtime is set to the listed one, so
    equal size and mtime mean "the bytes we checked then"; a file changed
    locally gets a new mtime and has its digest compared.
    """
    if local is None:
        return Action.FETCH
    if local.kind != "file":
        return Action.CONFLICT
    if local.size != remote.size:
        return Action.FETCH
    if remote.mtime_ns is not None and abs(local.mtime_ns - remote.mtime_ns) < MTIME_TOLERANCE_NS:
        return Action.SKIP
    return Action.COMPARE


def decide_dir(local: LocalFile | None) -> Action:
    """A listed directory: create it (FETCH), walk into it (SKIP), or CONFLICT."""
    if local is None:
        return Action.FETCH
    return Action.SKIP if local.kind == "dir" else Action.CONFLICT


def listing_fingerprint(entries: list[Any]) -> str:
    """What identifies a directory's contents without its path (name, type, size, mtime)."""
    rows = [
        [e.get("name"), e.get("type"), e.get("size"), e.get("mtime")]
        for e in entries
        if isinstance(e, dict)
    ]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=True).encode()).hexdigest()


@dataclass
class WalkBudget:
    """Tree-wide bounds: past one, the peer's tree is refused as a whole."""

    entries: int = 0
    dirs: int = 0

    def add_entries(self, n: int) -> None:
        self.entries += n
        if self.entries > MAX_TREE_ENTRIES:
            raise BadListing(f"the peer's tree has over {MAX_TREE_ENTRIES} entries")

    def add_dir(self) -> None:
        self.dirs += 1
        if self.dirs > MAX_TREE_DIRS:
            raise BadListing(f"the peer's tree has over {MAX_TREE_DIRS} directories")


@dataclass(frozen=True)
class PendingDir:
    parts: tuple[str, ...]
    #: (path, first-page fingerprint) of each directory above it, from the top
    ancestors: tuple[tuple[str, str], ...] = ()


class DirListing:
    """Sans-IO: the pages of one directory, checked as they come.

    ``cursor`` is None for the first page, then the next page's cursor, and
    ``done`` once a page had none. :meth:`add_page` returns the accepted
    entries and the refused ones as (name, reason).
    """

    def __init__(self, pending: PendingDir, budget: WalkBudget, *, case_insensitive: bool) -> None:
        if len(pending.parts) > MAX_DEPTH:
            raise SkipDirectory(f"deeper than {MAX_DEPTH} levels")
        self.pending = pending
        self.budget = budget
        self.siblings = SiblingNames(case_insensitive)
        self.cursor: str | None = None
        self.pages = 0
        self.entries = 0
        self.fingerprint = ""
        self._seen: set[str] = set()
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    @property
    def path(self) -> str:
        return "/".join(self.pending.parts)

    def add_page(self, page: Any) -> tuple[list[RemoteEntry], list[tuple[str, str]]]:
        if not isinstance(page, dict) or not isinstance(page.get("entries"), list):
            raise BadListing(f"the peer sent a listing of {self.path!r} without an entries list")
        if page.get("path") != self.path:
            raise BadListing(f"the peer answered a listing of {self.path!r} with another one")
        entries: list[Any] = page["entries"]
        cursor = page.get("next_cursor")
        if cursor is not None and (
            not isinstance(cursor, str) or not 1 <= len(cursor) <= MAX_CURSOR_CHARS
        ):
            raise BadListing(f"the peer sent a malformed next_cursor for {self.path!r}")
        self.pages += 1
        self.entries += len(entries)
        if self.entries > MAX_DIR_ENTRIES:
            raise BadListing(
                f"the peer's listing of {self.path!r} has over {MAX_DIR_ENTRIES} entries"
            )
        self.budget.add_entries(len(entries))
        if self.pages == 1:
            self._check_not_a_link_back(entries)
        if cursor is None:
            self._done = True
        elif cursor in self._seen:
            raise BadListing(
                f"the peer's listing of {self.path!r} repeats a cursor (it would never end)"
            )
        elif self.pages >= MAX_DIR_PAGES:
            raise BadListing(
                f"the peer's listing of {self.path!r} goes on for over {MAX_DIR_PAGES} pages"
            )
        else:
            self._seen.add(cursor)
            self.cursor = cursor
        accepted: list[RemoteEntry] = []
        refused: list[tuple[str, str]] = []
        for raw in entries:
            try:
                accepted.append(check_entry(self.pending.parts, raw, self.siblings))
            except HiddenEntry:
                continue
            except UnsafeEntry as exc:
                refused.append((self._shown(raw), str(exc)))
        return accepted, refused

    def _shown(self, raw: Any) -> str:
        """How a refused entry is named in its warning: the path it claimed, if any."""
        if isinstance(raw, dict) and isinstance(raw.get("path"), str):
            return str(raw["path"])[:200]
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            return "/".join((*self.pending.parts, str(raw["name"])[:200]))
        return json.dumps(raw, ensure_ascii=True)[:80]

    def _check_not_a_link_back(self, entries: list[Any]) -> None:
        """A directory listing exactly what an ancestor lists, files included, is that
        ancestor seen again (a symlink to it, or a peer pointing a listing into
        itself): walking it would never end. A listing of directories only is
        not judged (``mkdir -p a/a/a`` looks like that); MAX_DEPTH bounds those."""
        self.fingerprint = listing_fingerprint(entries)
        has_file = any(isinstance(e, dict) and e.get("type") == "file" for e in entries)
        if not has_file:
            return
        for path, fingerprint in self.pending.ancestors:
            if fingerprint == self.fingerprint:
                raise SkipDirectory(
                    f"lists the same entries as {path or '(the top)'!r}: a link back"
                )

    def child(self, entry: RemoteEntry) -> PendingDir:
        self.budget.add_dir()
        return PendingDir(entry.parts, (*self.pending.ancestors, (self.path, self.fingerprint)))


def part_name(name: str) -> str:
    """The resume file of *name* next to it: hidden, so no listed name can be it
    (hidden names are never fetched); hashed when ``.NAME.part.json`` would be too long.

    The hashed form starts with two dots and the plain form never does (a
    fetched name never starts with a dot), so no sibling's part can be it: a
    file literally named ``flashback-<hash>`` once shared its part with the
    long name that hashed to it, and both downloads wrote one file.
    """
    if len(name.encode("utf-8")) + len("..part.json") <= MAX_NAME_BYTES:
        return f".{name}.part"
    return "..flashback-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:32] + ".part"

"""Downloading a whole directory from a peer (INTERFACE §8): ``get PEER DIR``.

One nursery holds one walker and N workers (``--jobs``). The walker pages
through every listing, depth first, checks every entry with the pure rules
of :mod:`flashback.protocol.folder`, creates the directories (empty ones
too) and decides per file whether it must be fetched; what must be goes
into a bounded channel, so a 100,000-file tree never has more than a few
jobs waiting and the walker simply waits while the workers are busy. Each
worker fetches a file with :func:`~flashback.transfer.download` -- resume
from its part file, verification, block repair -- then sets its mtime to
the listed one, which is how the next run knows it is unchanged.

Nothing is written outside OUT: every path under it is built from names
that passed :func:`~flashback.protocol.folder.check_entry` (which uses the
server's own path rules), and every directory is held open (a
:class:`DirHandle`) from the moment it was made or found to be a real
directory: it is entered by name from its parent's descriptor with
``O_DIRECTORY | O_NOFOLLOW``, and its files are made, renamed and touched by
name inside it (``dir_fd``), so a directory swapped for a symlink afterwards
(by another writer in OUT) cannot send a write elsewhere.

A file that fails is reported and the others go on (run again to finish);
past MAX_FAILED_FILES failures, or when a listing cannot be followed, the
whole get stops.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import trio

from flashback.client.local import Local, part_paths, sha256_of
from flashback.client.progress import byte_bar
from flashback.errors import ConfigError, FlashbackError
from flashback.protocol.folder import (
    PAGE_ENTRIES,
    Action,
    BadListing,
    DirListing,
    LocalFile,
    PendingDir,
    RemoteEntry,
    SkipDirectory,
    WalkBudget,
    decide_dir,
    decide_file,
    part_name,
)
from flashback.protocol.rate_floor import RateFloor
from flashback.protocol.strict_json import loads_strict
from flashback.terminal import printable
from flashback.transfer import (
    DownloadResult,
    TransferFailed,
    at,
    body_chunks,
    download,
    fetch_manifest,
    floored,
    peer_get,
    resume_key,
)

DEFAULT_JOBS: Final = 4
MAX_JOBS: Final = 64
MAX_PAGE_BYTES: Final = 8 * 1024 * 1024
#: one directory's pages, all of them, within this (a peer that trickles is cut off)
DIR_LIST_DEADLINE_S: Final = 120.0
MAX_FAILED_FILES: Final = 20
REQUEST_TIMEOUT_S: Final = 30.0
#: a smaller file keeps no resume record: fetching it again costs less than writing one
RESUME_MIN_BYTES: Final = 1024 * 1024


class FolderFailed(TransferFailed):
    """The folder get stopped (exit status 1); what it fetched stays, parts too."""


@dataclass
class FolderResult:
    path: Path
    files: int = 0  # fetched (one download-complete each)
    bytes: int = 0  # fetched
    skipped: int = 0  # already there and unchanged
    refused: int = 0  # untrusted names, conflicts, links back: never written
    failed: int = 0
    dirs: int = 0  # walked, the top included
    pages: int = 0  # listing pages read
    first_failure: str = ""


#: how a directory of OUT is entered: never through a symlink
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class DirHandle:
    """A directory of OUT, held open for the walk and for the jobs of its files
    (and the walk of its subdirectories); closed when the last one lets go."""

    def __init__(self, fd: int, path: Path, opened: set[DirHandle]) -> None:
        self.fd, self.path, self.refs = fd, path, 1
        self._opened = opened
        opened.add(self)

    def retain(self) -> DirHandle:
        self.refs += 1
        return self

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._opened.discard(self)


@dataclass(frozen=True)
class FileJob:
    entry: RemoteEntry
    dest: Path
    compare: bool  # same size, other mtime: compare digests before fetching
    directory: DirHandle  # dest's directory, retained for this job


def _lstat(path: Path, dir_fd: int | None = None) -> LocalFile | None:
    try:
        if dir_fd is None:
            info = os.lstat(path)
        else:
            info = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        return LocalFile("symlink")
    if stat.S_ISDIR(info.st_mode):
        return LocalFile("dir")
    if stat.S_ISREG(info.st_mode):
        return LocalFile("file", info.st_size, info.st_mtime_ns)
    return LocalFile("other")


def is_case_insensitive(directory: Path) -> bool:
    """Does the disk under *directory* fold case (macOS, Windows, ext4 +F)? Asked of
    the disk itself: a probe file is created and looked up by its upper-case name."""
    probe = directory / f".flashback-case-probe-{os.getpid()}"
    try:
        probe.touch()
        try:
            return os.path.exists(directory / probe.name.upper())
        finally:
            probe.unlink(missing_ok=True)
    except OSError:
        return False


class FolderProgress:
    """One bar over the bytes to fetch (its total grows as the walk finds files),
    with the files done beside it; on stderr when it is a terminal, else silent."""

    def __init__(self, label: str, *, enabled: bool | None = None) -> None:
        self._bar: Any = byte_bar(label, total=0, enabled=enabled)
        self.files_done = 0
        self.files_queued = 0

    def add_total(self, size: int) -> None:
        self.files_queued += 1
        if self._bar is not None:
            self._bar.total += size
            self._bar.refresh()

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def file_done(self) -> None:
        self.files_done += 1
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.files_done}/{self.files_queued} files")

    def warn(self, line: str) -> None:
        text = printable(line)
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class FolderFetch:
    """One ``get`` of a directory; :meth:`run` does it all inside one nursery."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base: httpx.URL,
        remote_dir: str,
        out: Path,
        *,
        owner: str,
        jobs: int = DEFAULT_JOBS,
        on_complete: Callable[[DownloadResult], None] | None = None,
        progress: FolderProgress | None = None,
        case_insensitive: bool | None = None,
        page_entries: int = PAGE_ENTRIES,
    ) -> None:
        self.http, self.base, self.out, self.owner = http, base, out, owner
        self.top = tuple(part for part in remote_dir.split("/") if part)
        self.jobs = max(1, min(jobs, MAX_JOBS))
        self.on_complete = on_complete
        self.progress = progress or FolderProgress(out.name, enabled=False)
        self.case_insensitive = case_insensitive
        self.page_entries = page_entries
        self.result = FolderResult(out)
        self.budget = WalkBudget()
        self._opened: set[DirHandle] = set()

    def warn(self, message: str) -> None:
        self.progress.warn(f"flashback: warning: {message}")

    async def run(self) -> FolderResult:
        """Walk and fetch; a FolderFailed (or the first error) if the get had to stop."""
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"{self.out} exists and is not a directory; give another -o")
        if self.case_insensitive is None:
            # OUT itself is made once its listing is accepted: ask the disk it will be on
            self.case_insensitive = is_case_insensitive(
                self.out if self.out.is_dir() else self.out.parent
            )
        try:
            async with trio.open_nursery() as nursery:
                send, receive = trio.open_memory_channel[FileJob](self.jobs * 2)
                async with receive:
                    for _ in range(self.jobs):
                        nursery.start_soon(self._work, receive.clone())
                nursery.start_soon(self._walk, send)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        finally:
            self.progress.close()
            for handle in list(self._opened):  # jobs a stop left in the channel
                handle.close()
        return self.result

    # -- the walk ------------------------------------------------------------------------

    async def _walk(self, send: trio.MemorySendChannel[FileJob]) -> None:
        async with send:
            # each pending directory with its parent's handle (None: OUT itself)
            stack: list[tuple[PendingDir, DirHandle | None]] = [(PendingDir(self.top), None)]
            while stack:
                pending, parent = stack.pop()
                try:
                    try:
                        listing = DirListing(
                            pending, self.budget, case_insensitive=bool(self.case_insensitive)
                        )
                    except SkipDirectory as exc:
                        self._refuse("/".join(pending.parts), str(exc))
                        continue
                    self.result.dirs += 1
                    local_dir = self.out.joinpath(*pending.parts[len(self.top) :])
                    subdirs, handle = await self._walk_dir(listing, local_dir, parent, send)
                finally:
                    if parent is not None:
                        parent.release()
                if handle is not None:
                    # depth first, in name order; each child keeps this directory open
                    stack.extend((child, handle.retain()) for child in reversed(subdirs))
                    handle.release()

    def _open_dir(self, local_dir: Path, parent: DirHandle | None) -> DirHandle | None:
        """*local_dir* made if missing and held open; None when something else is there."""
        if parent is None:  # OUT itself: the user's own path, a link to a directory is fine
            if not self.out.is_dir():
                os.mkdir(self.out)
            fd = os.open(self.out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            return DirHandle(fd, self.out, self._opened)
        with contextlib.suppress(FileExistsError):
            os.mkdir(local_dir.name, dir_fd=parent.fd)  # empty directories too
        try:
            fd = os.open(local_dir.name, DIR_FLAGS, dir_fd=parent.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                return None
            raise
        return DirHandle(fd, local_dir, self._opened)

    async def _walk_dir(
        self,
        listing: DirListing,
        local_dir: Path,
        parent: DirHandle | None,
        send: trio.MemorySendChannel[FileJob],
    ) -> tuple[list[PendingDir], DirHandle | None]:
        """The subdirectories to walk and this directory, held open (None: refused).

        A stop (FolderFailed, cancel) leaves the handle to :meth:`run`, which
        closes whatever is still open."""
        subdirs: list[PendingDir] = []
        handle: DirHandle | None = None
        listing_s = 0.0  # time spent waiting for this directory's pages (not for workers)
        while not listing.done:
            started = trio.current_time()
            with trio.move_on_after(DIR_LIST_DEADLINE_S - listing_s) as deadline:
                page = await self._fetch_page(listing)
            if deadline.cancelled_caught:
                raise FolderFailed(
                    f"the peer took over {DIR_LIST_DEADLINE_S:.0f} s to list {listing.path!r}"
                )
            listing_s += trio.current_time() - started
            self.result.pages += 1
            try:
                accepted, refused = listing.add_page(page)
            except SkipDirectory as exc:
                self._refuse(listing.path, str(exc))
                if handle is not None:
                    handle.release()
                return [], None
            except BadListing as exc:
                raise FolderFailed(str(exc)) from None
            if handle is None:  # the first page: made only once it is walked
                handle = self._open_dir(local_dir, parent)
                if handle is None:
                    # checked when its parent was listed; something was put there since
                    self._refuse(listing.path, f"{local_dir} is in the way (not a directory)")
                    return [], None
            for shown, reason in refused:
                self._refuse(shown, reason)
            for entry in accepted:
                dest = local_dir / entry.name
                local = _lstat(dest, handle.fd)
                if entry.kind == "dir":
                    action = decide_dir(local)
                    if action is Action.CONFLICT:
                        self._refuse(entry.path, f"{dest} is in the way (not a directory)")
                        continue
                    subdirs.append(listing.child(entry))
                    continue
                action = decide_file(local, entry)
                if action is Action.SKIP:
                    self.result.skipped += 1
                elif action is Action.CONFLICT:
                    self._refuse(entry.path, f"{dest} is in the way (not a regular file)")
                else:
                    self.progress.add_total(entry.size)
                    job = FileJob(entry, dest, action is Action.COMPARE, handle.retain())
                    try:
                        await send.send(job)
                    except BaseException:
                        handle.release()
                        raise
        return subdirs, handle

    def _refuse(self, path: str, reason: str) -> None:
        self.result.refused += 1
        self.warn(f"skipped {path!r}: {reason}")

    async def _fetch_page(self, listing: DirListing) -> Any:
        """One listing page as parsed JSON, never more than MAX_PAGE_BYTES of it."""
        path = listing.path
        url = at(self.base, "/api/files/" + path if path else "/api/files")
        params = {"limit": str(self.page_entries)}
        if listing.cursor is not None:
            params["cursor"] = listing.cursor
        try:
            async with peer_get(self.http, url, params=params, error=FolderFailed) as response:
                if response.status_code != 200:
                    raise FolderFailed(
                        f"the peer answered HTTP {response.status_code} to the listing of {path!r}"
                    )
                body = bytearray()
                floor = RateFloor()

                def too_slow() -> FolderFailed:
                    return FolderFailed(
                        f"the peer sends the listing of {path!r} at under "
                        f"{floor.min_bytes // 1024} KiB in {floor.window_s:.0f} s"
                    )

                async with (
                    body_chunks(response) as raw,
                    aclosing(floored(raw, floor, too_slow)) as chunks,
                ):
                    async for chunk in chunks:
                        body += chunk
                        if len(body) > MAX_PAGE_BYTES:
                            raise FolderFailed(
                                f"the peer sent a listing page of {path!r} over "
                                f"{MAX_PAGE_BYTES // (1024 * 1024)} MiB"
                            )
        except httpx.HTTPError as exc:
            raise FolderFailed(
                f"the peer does not answer the listing of {path!r}: {exc.__class__.__name__}"
            ) from exc
        try:
            return loads_strict(bytes(body))
        except ValueError:
            raise FolderFailed(f"the peer sent a listing of {path!r} that is not JSON") from None

    # -- the workers ---------------------------------------------------------------------

    async def _work(self, receive: trio.MemoryReceiveChannel[FileJob]) -> None:
        async with receive:
            async for job in receive:
                try:
                    await self._fetch_file(job)
                except (FlashbackError, OSError) as exc:
                    self._failed(job, exc)
                finally:
                    job.directory.release()

    def _failed(self, job: FileJob, exc: Exception) -> None:
        if isinstance(exc, FlashbackError):
            message = exc.message
        else:
            message = getattr(exc, "strerror", None) or str(exc)
        self.result.failed += 1
        self.result.first_failure = self.result.first_failure or f"{job.entry.path}: {message}"
        self.warn(f"{job.entry.path!r} failed: {message}")
        if self.result.failed > MAX_FAILED_FILES:
            raise FolderFailed(
                f"over {MAX_FAILED_FILES} files failed (first: {self.result.first_failure}); "
                "stopped"
            )

    async def _fetch_file(self, job: FileJob) -> None:
        entry, dest, dir_fd = job.entry, job.dest, job.directory.fd
        digest_url = at(self.base, "/api/digest/" + entry.path)
        if job.compare:
            manifest = await fetch_manifest(self.http, digest_url, entry.size)
            if manifest.sha256 == await sha256_of(dest, Local(dir_fd)):
                self._set_mtime(dest, entry, dir_fd)
                self.result.skipped += 1
                self.progress.update(entry.size)
                return
        part = dest.with_name(part_name(dest.name))
        for leftover in part_paths(dest, part):
            if (found := _lstat(leftover, dir_fd)) is not None and found.kind == "symlink":
                os.unlink(leftover.name, dir_fd=dir_fd)  # never write through a link in OUT
        fetched_before = 0

        def started(event: str, fields: dict[str, Any]) -> None:
            nonlocal fetched_before
            if event == "download-started":
                fetched_before = int(fields.get("offset") or 0)
                self.progress.update(fetched_before)

        result = await download(
            self.http,
            at(self.base, "/download/" + entry.path),
            dest,
            label=dest.name,
            on_event=started,
            resume_key=resume_key(self.owner, entry.path),
            manifest_url=digest_url,
            expected_size=entry.size,
            part=part,
            progress=self.progress.update,
            resume_min_bytes=RESUME_MIN_BYTES,
            dir_fd=dir_fd,
        )
        self._set_mtime(dest, entry, dir_fd)
        self.result.files += 1
        self.result.bytes += result.bytes
        self.progress.file_done()
        if self.on_complete is not None:
            self.on_complete(result)

    @staticmethod
    def _set_mtime(dest: Path, entry: RemoteEntry, dir_fd: int) -> None:
        if entry.mtime_ns is not None:
            ns = (entry.mtime_ns, entry.mtime_ns)
            os.utime(dest.name, ns=ns, dir_fd=dir_fd, follow_symlinks=False)


async def is_remote_directory(http: httpx.AsyncClient, base: httpx.URL, path: str) -> bool:
    """Does *path* name a directory on the peer? (Its listing answers 200; a file's is 404.)"""
    path = path.strip("/")
    url = at(base, "/api/files/" + path if path else "/api/files")
    try:
        async with peer_get(http, url, params={"limit": "1"}, error=FolderFailed) as response:
            return response.status_code == 200
    except httpx.HTTPError as exc:
        raise FolderFailed(f"the peer does not answer: {exc.__class__.__name__}") from exc


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a nursery's group: the first of ours, else the first.

    One worker's FolderFailed cancels the others; their Cancelled never shows."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        else:
            leaves.append(error)

    collect(group)
    ours = [error for error in leaves if isinstance(error, FlashbackError)]
    return (ours or leaves)[0]

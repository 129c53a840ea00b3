"""The digest service: cached SHA-256 manifests of shared files (INTERFACE §7).

Keyed by (st_dev, st_ino, size, mtime_ns, ctime_ns): a file rewritten in
place gets a new key even when its mtime is put back (``touch -r``), because
no user can set the ctime; the ETag (:func:`~flashback.protocol.conditional.make_etag`)
carries it for the same reason. Each key is hashed at most once at a time (an
in-flight event that later askers wait on), in a worker thread, 4 MiB per
thread hop under a CapacityLimiter, so cancelling (shutdown) stops a hash
between two reads and two big files cannot take every core. The hash tasks
belong to the service's nursery, which lives as long as the server.

Files up to ``wait_limit_bytes`` (64 MiB) are hashed before their first
response; larger ones only start hashing, and their responses carry the
digest once it is known. ``/api/digest`` always waits.

The cache is SQLite: a file in the daemon's data directory (survives
restarts), or ``:memory:`` for ``flashback serve``, which leaves nothing
behind, like ``python -m http.server``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Final

import trio

from flashback.protocol.digest import (
    MIN_BLOCK_BYTES,
    READ_BYTES,
    BlockHasher,
    Manifest,
    block_count,
    block_size_for,
)

log = logging.getLogger(__name__)

WAIT_LIMIT_BYTES: Final = 64 * 1024 * 1024
#: concurrent hashing threads (the machine's cores are shared with serving)
HASH_THREADS: Final = 2
#: rows kept in the cache; past this the least recently stored go
MAX_CACHE_ROWS: Final = 100_000
DIGEST_BYTES: Final = 32
MAX_UNSAVED: Final = 1024
#: files hashing (or queued to) at once; more are not started until one ends
MAX_INFLIGHT: Final = 64
#: manifests just made, kept in memory too: a request whose cache lookup (in a
#: thread) began before the hash ended must find it, not hash the file again
MAX_RECENT: Final = 64

Key = tuple[int, int, int, int, int]
#: the table of this key's shape (an older cache's table, without ctime, is dropped)
TABLE: Final = "digests_v2"


def key_of(info: os.stat_result) -> Key:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class DigestCache:
    """(dev, ino, size, mtime_ns, ctime_ns) -> Manifest, in SQLite. Calls block: use a thread."""

    def __init__(self, path: Path | None = None, *, max_rows: int = MAX_CACHE_ROWS) -> None:
        self._lock = threading.Lock()
        self._max_rows = max_rows
        try:
            self._db = self._open(path)
        except sqlite3.Error as exc:
            # A damaged cache is only lost speed: hash again, in memory.
            log.warning("digest cache %s unusable (%s); keeping digests in memory", path, exc)
            self._db = self._open(None)

    @staticmethod
    def _open(path: Path | None) -> sqlite3.Connection:
        db = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False)
        try:
            with db:
                db.execute("DROP TABLE IF EXISTS digests")
                db.execute(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                    " dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,"
                    " sha256 BLOB NOT NULL, block_size INTEGER NOT NULL, blocks BLOB NOT NULL,"
                    " PRIMARY KEY (dev, ino, size, mtime_ns, ctime_ns))"
                )
        except BaseException:
            db.close()
            raise
        return db

    def get(self, key: Key) -> Manifest | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT sha256, block_size, blocks FROM {TABLE}"
                " WHERE dev=? AND ino=? AND size=? AND mtime_ns=? AND ctime_ns=?",
                key,
            ).fetchone()
        if row is None:
            return None
        sha, block_size, blob = row
        size = key[2]
        if len(blob) != DIGEST_BYTES * block_count(size, block_size):
            return None  # a damaged row is a miss, not a wrong answer
        blocks = tuple(blob[i : i + DIGEST_BYTES].hex() for i in range(0, len(blob), DIGEST_BYTES))
        return Manifest(size, bytes(sha).hex(), block_size, blocks)

    def put(self, key: Key, manifest: Manifest) -> None:
        blob = b"".join(bytes.fromhex(b) for b in manifest.blocks)
        with self._lock, self._db:
            # Other versions of the same inode are stale now.
            self._db.execute(f"DELETE FROM {TABLE} WHERE dev=? AND ino=?", key[:2])
            self._db.execute(
                f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*key, bytes.fromhex(manifest.sha256), manifest.block_size, blob),
            )
            self._db.execute(
                f"DELETE FROM {TABLE} WHERE rowid <= (SELECT MAX(rowid) FROM {TABLE}) - ?",
                (self._max_rows,),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


class DigestUnavailable(Exception):
    """The file changed or vanished while it was hashed."""


class DigestService:
    def __init__(
        self,
        cache: DigestCache | None = None,
        *,
        min_block: int = MIN_BLOCK_BYTES,
        wait_limit_bytes: int = WAIT_LIMIT_BYTES,
        read_bytes: int = READ_BYTES,
        threads: int = HASH_THREADS,
        max_inflight: int = MAX_INFLIGHT,
    ) -> None:
        self.max_inflight = max_inflight
        self.cache = cache or DigestCache()
        self.min_block = min_block
        self.wait_limit_bytes = wait_limit_bytes
        self.read_bytes = read_bytes
        self._limiter = trio.CapacityLimiter(threads)
        self._inflight: dict[Key, trio.Event] = {}
        #: digests the cache could not store (disk full, say), bounded
        self._unsaved: dict[Key, Manifest] = {}
        self._recent: OrderedDict[Key, Manifest] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._closed = False
        #: hash passes started (tests: concurrent first requests hash once)
        self.passes = 0

    async def run(
        self, *, task_status: trio.TaskStatus[DigestService] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the hashing tasks until cancelled; then close the cache."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._closed = True
            self.cache.close()

    async def _lookup(self, key: Key) -> Manifest | None:
        if key in self._unsaved:
            return self._unsaved[key]
        if (recent := self._recent.get(key)) is not None:
            return recent
        if self._closed:
            return None
        try:
            manifest = await trio.to_thread.run_sync(self.cache.get, key)
        except sqlite3.Error as exc:
            log.warning("digest cache read failed: %s", exc)
            return None
        if manifest is not None and manifest.block_size != block_size_for(
            key[2], min_block=self.min_block
        ):
            return None
        return manifest

    def _start(self, key: Key, fd: int) -> trio.Event:
        event = self._inflight.get(key)
        if event is not None:
            return event
        event = trio.Event()
        if key in self._recent:
            # hashed while the caller's cache lookup was in its thread: not again
            event.set()
            return event
        own_fd = -1
        nursery = self._nursery
        if nursery is not None and len(self._inflight) < self.max_inflight:
            try:
                own_fd = os.dup(fd)
            except OSError as exc:  # out of descriptors: serve without a digest
                log.warning("cannot hash now: %s", exc)
        if nursery is None or own_fd < 0:
            # Shutting down, too many files hashing at once (each holds a
            # descriptor), or none to spare: no hashing now; a later request may.
            event.set()
            return event
        self._inflight[key] = event
        self.passes += 1
        nursery.start_soon(self._hash, key, own_fd, event)
        return event

    async def _hash(self, key: Key, fd: int, event: trio.Event) -> None:
        try:
            size = key[2]
            job = BlockHasher(
                fd, size, block_size_for(size, min_block=self.min_block), self.read_bytes
            )
            while not await trio.to_thread.run_sync(job.step, limiter=self._limiter):
                pass
            if key_of(os.fstat(fd)) != key:
                raise OSError("the file changed while it was hashed")
            manifest = job.manifest()
            self._recent[key] = manifest
            while len(self._recent) > MAX_RECENT:
                self._recent.popitem(last=False)
            try:
                await trio.to_thread.run_sync(self.cache.put, key, manifest)
            except sqlite3.Error as exc:  # disk full, say: serve this one from memory
                log.warning("digest cache write failed: %s", exc)
                if len(self._unsaved) >= MAX_UNSAVED:
                    self._unsaved.clear()
                self._unsaved[key] = manifest
        except OSError as exc:
            log.info("no digest for inode %d: %s", key[1], exc)
        finally:
            os.close(fd)
            del self._inflight[key]
            event.set()

    async def for_response(self, fd: int, info: os.stat_result) -> Manifest | None:
        """The manifest if known; waits only for a file up to wait_limit_bytes."""
        key = key_of(info)
        manifest = await self._lookup(key)
        if manifest is not None:
            return manifest
        event = self._start(key, fd)
        if info.st_size > self.wait_limit_bytes:
            return None
        await event.wait()
        return await self._lookup(key)

    async def wait(self, fd: int, info: os.stat_result) -> Manifest:
        """The manifest, hashing first if needed (``/api/digest``)."""
        key = key_of(info)
        manifest = await self._lookup(key)
        if manifest is None:
            await self._start(key, fd).wait()
            manifest = await self._lookup(key)
        if manifest is None:
            raise DigestUnavailable(
                "no digest now (the file changed while it was hashed, or the server"
                " is busy hashing others); ask again"
            )
        return manifest

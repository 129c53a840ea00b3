"""The peer book on disk: ``book.json`` in this identity instance's directory (§12).

:meth:`PeerBook.record` is the seam: whatever reaches a peer (the router,
after a route's TLS check proved the fingerprint) or accepts one (an owner
end whose requester passed §11's checks) calls it. It is synchronous and
cheap -- it changes the book in memory and marks it dirty; :meth:`PeerBook.run`,
one task of the daemon's nursery, writes the file at most every
:data:`FLUSH_INTERVAL_S` and once more at shutdown (within the one deadline).

Written atomically (a temporary file, ``fsync``, ``os.replace``; mode 0600).
A file that is too large or damaged is moved aside to ``book.json.damaged``
with one warning and the daemon starts with an empty book: the book only
remembers, it decides nothing that the tracker, the LAN or §11 cannot
decide again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import trio

from flashback.daemon.keys import write_private
from flashback.protocol.book import MAX_BOOK_FILE_BYTES, Book, BookDamaged, BookEntry
from flashback.protocol.messages import Candidate, PeerInfo
from flashback.shutdown import Shutdown

log = logging.getLogger(__name__)

BOOK_FILE: Final = "book.json"
FLUSH_INTERVAL_S: Final = 2.0
#: the last write at shutdown is small (at most 1 MiB); it may not hold the exit longer
FINAL_FLUSH_S: Final = 1.0


def read_book(path: Path) -> Book:
    """The book in *path*; empty when there is none, or (with a warning) when it is damaged."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return Book()
    except OSError as exc:
        log.warning("cannot read the peer book %s (%s); starting with an empty one", path, exc)
        return Book()
    with os.fdopen(fd, "rb") as file:
        raw = file.read(MAX_BOOK_FILE_BYTES + 1)
    try:
        return Book.loads(raw)
    except BookDamaged as exc:
        aside = path.with_name(path.name + ".damaged")
        try:
            os.replace(path, aside)
        except OSError as move:
            log.warning("the peer book %s is damaged (%s) and stays: %s", path, exc, move)
            return Book()
        log.warning("the peer book %s is damaged (%s); moved it to %s", path, exc, aside.name)
        return Book()


class PeerBook:
    def __init__(
        self, path: Path, book: Book | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.book = book if book is not None else Book()
        self._clock = clock
        self._dirty = trio.Event()

    @classmethod
    def in_directory(cls, directory: Path) -> PeerBook:
        path = directory / BOOK_FILE
        return cls(path, read_book(path))

    # -- the seam --------------------------------------------------------------------

    def record(
        self,
        fingerprint: str,
        *,
        name: str,
        peer_id: str | None = None,
        candidates: tuple[Candidate, ...] = (),
        vouched: bool = False,
        reached: bool = True,
    ) -> None:
        """The peer with *fingerprint* was reached (else: accepted) just now; *vouched*:
        the tracker, linked, listed that fingerprint (§11: a ``tracker``-mode owner
        serves it later with the tracker down). Never for what the LAN says."""
        try:
            self.book.record(
                fingerprint,
                name=name,
                peer_id=peer_id,
                candidates=candidates,
                now=self._clock(),
                vouched=vouched,
                reached=reached,
            )
        except ValueError as exc:  # a name or id no book may hold: remember nothing
            log.debug("not recording %s in the peer book: %s", fingerprint, exc)
            return
        self._dirty.set()

    def record_peer(self, peer: PeerInfo, *, vouched: bool) -> None:
        """A tracker peer was reached: what its table row says (if it has a fingerprint);
        *vouched* when that row is the linked tracker's word, not a stale list."""
        if peer.fingerprint is not None:
            self.record(
                peer.fingerprint,
                name=peer.name,
                peer_id=peer.peer_id,
                candidates=peer.candidates,
                vouched=vouched,
            )

    def knows(self, fingerprint: str) -> bool:
        return fingerprint in self.book

    def vouched(self) -> frozenset[str]:
        return self.book.vouched()

    def entries(self) -> list[BookEntry]:
        return self.book.entries()

    # -- the file --------------------------------------------------------------------

    async def flush(self) -> None:
        """Write the book now if it changed since the last write."""
        if not self._dirty.is_set():
            return
        self._dirty = trio.Event()
        data = self.book.dumps()  # a snapshot, taken in trio's thread
        try:
            await trio.to_thread.run_sync(write_private, self.path, data)
        except OSError as exc:
            log.warning("cannot write the peer book %s: %s", self.path, exc)
            self._dirty.set()

    async def run(
        self, shutdown: Shutdown, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Write changes at most every FLUSH_INTERVAL_S until shutdown, then once more."""
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                while True:
                    await self._dirty.wait()
                    await self.flush()
                    await trio.sleep(FLUSH_INTERVAL_S)

            nursery.start_soon(writer)
            task_status.started()
            await shutdown.wait()
            nursery.cancel_scope.cancel()
        with shutdown.shielded(FINAL_FLUSH_S):
            await self.flush()

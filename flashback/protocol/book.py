"""The peer book as a pure structure: who this daemon reached or accepted (§12).

Keyed by certificate fingerprint, because that is the one thing that is a
peer with or without a tracker: a daemon that never saw a tracker has no
peer id, and a peer id is only the tracker's word. Each entry keeps the
last peer id and name seen with that key, its last direct candidates,
when it was last seen (seconds, a parameter: no clock here) and whether the
tracker **vouched** for it: listed that fingerprint, while linked, when this
daemon reached or served the peer. That mark is what lets an owner in
``tracker`` mode serve the peer with the tracker down (docs/INTERFACE.md §11,
§12); a peer known only from the LAN never gets it, however it was reached.

Bounded: at most :data:`MAX_BOOK_ENTRIES`. Entries are of two kinds: peers
this daemon *reached* (its user's own doing) and peers that only connected
to it (any key the tracker lists may). The kinds are a
:class:`~flashback.protocol.fairshare.FairShare`: recording one more evicts
the least recently seen of the kind that holds more, so strangers
connecting once each cannot push out the peers we reached. The file form
is one JSON object; :meth:`Book.loads` refuses (with :class:`BookDamaged`)
anything over :data:`MAX_BOOK_FILE_BYTES`, not JSON, or with a malformed
entry -- the caller decides whether that is an error or a warning. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from flashback.protocol.fairshare import FairShare
from flashback.protocol.fingerprint import is_fingerprint
from flashback.protocol.messages import (
    MAX_CANDIDATES,
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    Candidate,
    ProtocolError,
    read_candidates,
)
from flashback.protocol.strict_json import loads_strict

BOOK_VERSION: Final = 1
MAX_BOOK_ENTRIES: Final = 512
# 512 entries of at most ~1.2 KiB each (8 candidates, a 64-character name, ids), with room
MAX_BOOK_FILE_BYTES: Final = 1024 * 1024


class BookDamaged(ValueError):
    """The book's file is not a book: too large, not JSON, or an entry is malformed."""


@dataclass(frozen=True)
class BookEntry:
    fingerprint: str
    peer_id: str | None
    name: str
    candidates: tuple[Candidate, ...]
    last_seen: float
    vouched: bool = False
    #: we reached it (else it only connected to us); once reached, always
    reached: bool = True

    def dump(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "peer_id": self.peer_id,
            "name": self.name,
            "candidates": [c.dump() for c in self.candidates],
            "last_seen": self.last_seen,
            "vouched": self.vouched,
            "reached": self.reached,
        }

    @classmethod
    def parse(cls, data: Any) -> BookEntry:
        if not isinstance(data, dict):
            raise BookDamaged("an entry is not an object")
        fingerprint: Any = data.get("fingerprint")
        peer_id: Any = data.get("peer_id")
        name: Any = data.get("name")
        last_seen = data.get("last_seen")
        vouched = data.get("vouched", False)  # absent in books written before the mark
        if not isinstance(vouched, bool):
            raise BookDamaged(f"entry {fingerprint!r:.80} has a non-boolean vouched mark")
        reached = data.get("reached", True)  # a book from before the kinds: as reached
        if not isinstance(reached, bool):
            raise BookDamaged("an entry's 'reached' is not true or false")
        if not is_fingerprint(fingerprint):
            raise BookDamaged("an entry has no valid fingerprint")
        if not is_peer_name(name):
            raise BookDamaged(f"entry {fingerprint} has no valid name")
        if peer_id is not None and not is_peer_id(peer_id):
            raise BookDamaged(f"entry {fingerprint} has an invalid peer id")
        if isinstance(last_seen, bool) or not isinstance(last_seen, int | float):
            raise BookDamaged(f"entry {fingerprint} has no last_seen time")
        try:
            candidates = read_candidates(data, "candidates")
        except ProtocolError as exc:
            raise BookDamaged(f"entry {fingerprint}: {exc.message}") from None
        return cls(
            fingerprint,
            peer_id,
            name,
            candidates,
            float(last_seen),
            vouched=vouched,
            reached=reached,
        )


def is_peer_name(value: Any) -> bool:
    """A name as registration takes it: 1-64 printable characters."""
    return isinstance(value, str) and 1 <= len(value) <= MAX_NAME_CHARS and value.isprintable()


def is_peer_id(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS and value.isprintable()


class Book:
    """Entries in order of last seen (oldest first); :meth:`record` keeps it bounded."""

    def __init__(self, capacity: int = MAX_BOOK_ENTRIES) -> None:
        if capacity < 1:
            raise ValueError("capacity is at least 1")
        self.capacity = capacity
        self._entries: OrderedDict[str, BookEntry] = OrderedDict()
        # by kind (reached or not): the heavier kind's least recently seen goes
        self._share: FairShare[bool, str] = FairShare(capacity, capacity)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._entries

    def get(self, fingerprint: str) -> BookEntry | None:
        return self._entries.get(fingerprint)

    def entries(self) -> list[BookEntry]:
        """Oldest seen first."""
        return list(self._entries.values())

    def record(
        self,
        fingerprint: str,
        *,
        name: str,
        now: float,
        peer_id: str | None = None,
        candidates: tuple[Candidate, ...] = (),
        vouched: bool = False,
        reached: bool = True,
    ) -> list[BookEntry]:
        """Note that the peer with *fingerprint* was reached (else: it connected to
        us, *reached* False) at *now*; *vouched*: the tracker listed this
        fingerprint then.

        An empty *candidates* or a None *peer_id* keeps what the entry had (a
        relay reach says nothing about the endpoint; a LAN peer may have no
        id), and a vouched entry stays vouched. Returns the entries evicted to
        make room (the least recently seen of the kind that holds more).
        """
        if not is_fingerprint(fingerprint):
            raise ValueError("not a fingerprint")
        if not is_peer_name(name):
            raise ValueError("not a peer name")
        if peer_id is not None and not is_peer_id(peer_id):
            raise ValueError("not a peer id")
        old = self._entries.pop(fingerprint, None)
        if old is not None:
            peer_id = peer_id if peer_id is not None else old.peer_id
            candidates = candidates or old.candidates
            vouched = vouched or old.vouched
            reached = reached or old.reached
        entry = BookEntry(
            fingerprint,
            peer_id,
            name,
            tuple(candidates[:MAX_CANDIDATES]),
            now,
            vouched=vouched,
            reached=reached,
        )
        return self._put(entry)

    def vouched(self) -> frozenset[str]:
        """The fingerprints the tracker vouched for when they were reached or served."""
        return frozenset(e.fingerprint for e in self._entries.values() if e.vouched)

    def forget(self, fingerprint: str) -> BookEntry | None:
        self._share.release(fingerprint)
        return self._entries.pop(fingerprint, None)

    def _put(self, entry: BookEntry) -> list[BookEntry]:
        self._entries.pop(entry.fingerprint, None)
        self._entries[entry.fingerprint] = entry
        pushed = self._share.admit(entry.reached, entry.fingerprint).evicted
        if pushed is None:
            return []
        return [self._entries.pop(pushed[1])]

    def find(self, text: str) -> list[BookEntry]:
        """The entry of fingerprint *text*, else those of peer id *text*, else of name *text*
        (most recently seen first)."""
        if text in self._entries:
            return [self._entries[text]]
        newest_first = list(reversed(self._entries.values()))
        by_id = [e for e in newest_first if e.peer_id == text]
        return by_id or [e for e in newest_first if e.name == text]

    # -- the file form -------------------------------------------------------------

    def dumps(self) -> bytes:
        data = {"version": BOOK_VERSION, "peers": [e.dump() for e in self._entries.values()]}
        return json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8")

    @classmethod
    def loads(cls, raw: bytes, *, capacity: int = MAX_BOOK_ENTRIES) -> Book:
        if len(raw) > MAX_BOOK_FILE_BYTES:
            raise BookDamaged(f"over {MAX_BOOK_FILE_BYTES // 1024} KiB")
        try:
            data = loads_strict(raw)
        except (ValueError, UnicodeDecodeError):
            raise BookDamaged("not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("peers"), list):
            raise BookDamaged("no 'peers' list")
        if data.get("version") != BOOK_VERSION:
            raise BookDamaged(f"version {data.get('version')!r}, not {BOOK_VERSION}")
        book = cls(capacity)
        # the file lists entries in the order they were seen, as record() keeps them
        entries = [BookEntry.parse(item) for item in data["peers"]]
        for entry in entries[-capacity:]:  # a hand-grown file keeps its newest
            book._put(entry)
        return book

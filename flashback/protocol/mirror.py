"""A copy of a peer list that someone else numbers: the follower side of the feed.

When several trackers share one Redis, the changes are made (and numbered)
there, and each tracker follows them in ``seq`` order to serve its own
websockets. :class:`FeedMirror` is that follower as a pure state machine:
:meth:`apply` takes the next numbered change and refuses a gap (the caller
then reloads everything with :meth:`reset`); the order and the backlog are
:mod:`flashback.protocol.feed`'s. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from flashback.protocol.feed import ChangeLog, place
from flashback.protocol.messages import Change, PeerInfo, PeerLeft, Snapshot


class FeedMirror:
    def __init__(self, backlog_changes: int) -> None:
        self.peers: dict[str, PeerInfo] = {}
        self._log = ChangeLog(backlog_changes)

    @property
    def seq(self) -> int:
        return self._log.seq

    def reset(self, seq: int, peers: Iterable[PeerInfo], history: Iterable[Change] = ()) -> None:
        """Start over at *seq* with *peers* (see :meth:`ChangeLog.reset
        <flashback.protocol.feed.ChangeLog.reset>` for what *history* keeps)."""
        self.peers = {peer.peer_id: peer for peer in peers}
        self._log.reset(seq, history)

    def apply(self, change: Change) -> bool:
        """Take the change after :attr:`seq`; False for a gap (the caller resyncs).

        A change at or below :attr:`seq` was already applied and is ignored.
        """
        placement = place(self.seq, change.seq)
        if placement != "next":
            return placement == "repeat"
        if isinstance(change, PeerLeft):
            self.peers.pop(change.peer_id, None)
        else:
            self.peers[change.peer.peer_id] = change.peer
        self._log.append(change)
        return True

    def snapshot(self) -> Snapshot:
        return Snapshot(seq=self.seq, peers=tuple(self.peers.values()))

    def changes_since(self, last_seq: int | None) -> list[Change] | None:
        return self._log.changes_since(last_seq)

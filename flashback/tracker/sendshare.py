"""The websocket send budget: a per-address share of the bytes in flight.

Every frame the tracker hands to a websocket stays in memory until the
client reads it. Frames in flight are a
:class:`~flashback.protocol.byteshare.ByteShare` by client address:
``max_send_bytes`` in all, a quarter of it per address (at least one
largest snapshot). A frame that does not fit ends the **heaviest address's
longest-blocked** link (its socket is shut, :mod:`.abort`, so its frame's
memory is back at once) and waits for that -- the newcomer is never the one
refused while another address holds as much. A frame still waits when
the victims cannot be cut at once (not Linux): at most ``wait_s``, then its
own link ends (1013).
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from flashback.protocol.byteshare import ByteShare
from flashback.protocol.messages import MAX_SNAPSHOT_BYTES
from flashback.tracker.abort import SocketAborter
from flashback.tracker.hub import CLOSE_TRY_AGAIN_LATER, Connection, Hub

log = logging.getLogger(__name__)

SHARE_DIVISOR: Final = 4


class SendBudget:
    def __init__(self, capacity: int, *, wait_s: float, hub: Hub) -> None:
        per_address = max(capacity // SHARE_DIVISOR, min(capacity, MAX_SNAPSHOT_BYTES + 1024))
        self.share: ByteShare[str, Connection] = ByteShare(capacity, per_address)
        self.wait_s = wait_s
        self.hub = hub
        self.aborter = SocketAborter()
        self._changed = trio.Event()

    @property
    def in_flight(self) -> int:
        return self.share.in_use

    async def acquire(self, connection: Connection, size: int) -> bool:
        """Room for *size* bytes of *connection*'s next frame; False: its link must end."""
        admission = self.share.admit(connection.address or "unknown", connection, size)
        for _, victim in admission.victims:
            self._evict(victim)
        if admission.victims:
            self._notify()
        if admission.refused:
            return False
        try:
            with trio.move_on_after(self.wait_s):
                while self.share.state(connection) == "pending":
                    changed = self._changed
                    await changed.wait()
        except BaseException:
            self.release(connection)
            raise
        if self.share.state(connection) == "live":
            return True
        self.release(connection)  # timed out waiting, or chosen to go while waiting
        return False

    def release(self, connection: Connection) -> None:
        """*connection*'s frame left (sent, or its send failed)."""
        if self.share.release(connection) is not None:
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _evict(self, connection: Connection) -> None:
        """End a link to make room, and cut its socket so its frame is freed now."""
        log.info("send budget full: closing a blocked link (peer %s)", connection.peer_id)
        connection.end(CLOSE_TRY_AGAIN_LATER, "tracker busy; reconnect later")
        self.hub.evict(connection)
        if self.share.state(connection) == "condemned":
            self.aborter.abort(connection.client, connection.server)

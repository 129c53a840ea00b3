"""How many websocket links the tracker keeps, and whose go when it is full.

Links cost a file descriptor, a queue and a snapshot each, and a stranger
may open them without registering. They are a
:class:`~flashback.protocol.fairshare.FairShare` by client address: an
address past ``RELAY_MAX_LINKS_PER_ADDRESS`` closes its own oldest link,
and past ``RELAY_MAX_LINKS`` the heaviest address's oldest link closes
(1013) -- never the newcomer's. (An office behind one NAT address is many
daemons: the per-address share is at least the peers one address may have.)
"""

from __future__ import annotations

from flashback.protocol.fairshare import FairShare
from flashback.tracker.hub import CLOSE_TRY_AGAIN_LATER, Connection, Hub


class LinkShare:
    def __init__(self, hub: Hub, *, capacity: int, per_address: int) -> None:
        self.hub = hub
        self.share: FairShare[str, Connection] = FairShare(capacity, per_address)

    def admit(self, connection: Connection) -> None:
        """Count *connection*; close the link that makes room for it, if any."""
        victim = self.share.admit(connection.address or "unknown", connection).evicted
        if victim is not None:
            link = victim[1]
            link.end(CLOSE_TRY_AGAIN_LATER, "too many links; the oldest ones close")
            self.hub.evict(link)

    def release(self, connection: Connection) -> None:
        self.share.release(connection)

"""Who may connect to me (docs/INTERFACE.md §11): the seam every owner end asks.

Tunnels, the direct endpoint's plain dials and introductions all ask one
:class:`Gate` after the TLS handshake and before any ``OPEN`` line.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, Protocol

from flashback.protocol.peer_table import PeerTable


class Gate(Protocol):
    """Who may connect to me (§11): None to serve, else the ``ERR`` code to refuse with.

    *presented* is the fingerprint the requester's certificate proved (None: it
    showed none); *invite_peer*/*invite_fingerprint* are the invite's (a tunnel or
    an introduction), both None for a plain dial of the direct endpoint.
    """

    def check(
        self, presented: str | None, *, invite_peer: str | None, invite_fingerprint: str | None
    ) -> str | None: ...


#: fingerprints a TrackerGate remembers having served (for plain dials later)
MAX_ACCEPTED: Final = 1024


class TrackerGate:
    """``tracker`` mode (§11): with an invite, the certificate must be the one the
    tracker lists for the invite's peer; a plain dial must present a fingerprint
    the tracker lists for some online peer, or one this daemon served before."""

    def __init__(self, table: PeerTable) -> None:
        self._table = table
        self._accepted: OrderedDict[str, None] = OrderedDict()

    def check(
        self, presented: str | None, *, invite_peer: str | None, invite_fingerprint: str | None
    ) -> str | None:
        if presented is None:
            return "forbidden"
        if invite_peer is not None or invite_fingerprint is not None:
            if presented != invite_fingerprint:
                return "forbidden"
        elif presented not in self._accepted and not any(
            peer.fingerprint == presented for peer in self._table.peers.values()
        ):
            return "forbidden"
        self._accepted[presented] = None
        self._accepted.move_to_end(presented)
        while len(self._accepted) > MAX_ACCEPTED:
            self._accepted.popitem(last=False)
        return None

    def peer_of(self, fingerprint: str | None) -> str | None:
        return peer_of(self._table, fingerprint)


def peer_of(table: PeerTable, fingerprint: str | None) -> str | None:
    """The online peer id the tracker lists *fingerprint* for (for events), if any."""
    for peer in table.peers.values():
        if fingerprint is not None and peer.fingerprint == fingerprint:
            return peer.peer_id
    return None

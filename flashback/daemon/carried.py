"""Who is on a connection our own owner end carried to the peer server.

An owner end (the direct endpoint, or a tunnel's) relays a requester's bytes
to one of our 127.0.0.1 listeners over a TCP connection it opens itself, after
the requester proved a fingerprint in the TLS handshake (§10.1). While that
connection lasts, its local address -- what the peer server sees as the
client -- names that fingerprint here. ``POST /api/stream`` uses it: the
stream-port manager's fair share is kept per proven fingerprint, and a
connection that no owner end carried (anything else on 127.0.0.1) is no
requester at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

Address = tuple[str, int]


class Carried:
    def __init__(self) -> None:
        self._by_address: dict[Address, str] = {}

    @contextlib.contextmanager
    def carrying(self, local: Address, fingerprint: str) -> Iterator[None]:
        """*local* (the connection's own end, as the listener sees its client) is
        *fingerprint*'s for as long as the block runs."""
        self._by_address[local] = fingerprint
        try:
            yield
        finally:
            if self._by_address.get(local) == fingerprint:
                del self._by_address[local]

    def who(self, client: object) -> str | None:
        """The fingerprint whose carried connection comes from *client* (an ASGI
        ``scope["client"]``: a (host, port) pair), or None."""
        if not isinstance(client, tuple | list) or len(client) != 2:
            return None
        host, port = client
        if not isinstance(host, str) or not isinstance(port, int):
            return None
        return self._by_address.get((host, port))

    def __len__(self) -> int:
        return len(self._by_address)

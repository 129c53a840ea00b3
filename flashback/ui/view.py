"""What the UI reads from the daemon it runs in -- the seam, and nothing more.

The daemon serves the UI, but the UI sits below it (packages depend
downwards only: ``ui`` <- ``daemon``), so the UI names no daemon class.
:class:`DaemonView` lists the few things it reads: this daemon's name, id
and server address, the tracker link's state, the online peers, the
local event fan-out, the route it last used to each peer, every peer it
knows of (tracker, LAN, book: :meth:`DaemonView.known_peers`), and the
daemon's one way to reach a peer's server (:meth:`DaemonView.reach` for a
tracker peer,
:meth:`DaemonView.reach_known` for a LAN or book peer -- the routes ``ls``
and ``get`` use too).
``flashback.daemon.context.DaemonContext`` matches it structurally (mypy
checks that where the daemon hands itself over).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import httpx
import trio

from flashback.protocol.directory import KnownPeer
from flashback.protocol.messages import PeerInfo
from flashback.ui.access import AccessView
from flashback.web import BoundAddress


class NamedSettings(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def tracker_url(self) -> str | None: ...


class OwnIdentity(Protocol):
    @property
    def peer_id(self) -> str: ...


class OnlinePeers(Protocol):
    @property
    def peers(self) -> Mapping[str, PeerInfo]: ...

    def sorted_peers(self) -> list[PeerInfo]: ...


class EventSource(Protocol):
    """A bounded subscription per live view; the source drops one that falls behind."""

    def subscribe(self) -> trio.MemoryReceiveChannel[dict[str, Any]]: ...

    def unsubscribe_closed(self) -> None: ...


class ReachedServer(Protocol):
    @property
    def url(self) -> httpx.URL:
        """The peer server's origin (its registered address, or a local forward)."""

    @property
    def route(self) -> str: ...


class DaemonView(Protocol):
    @property
    def config(self) -> NamedSettings: ...

    @property
    def identity(self) -> OwnIdentity | None: ...

    @property
    def address(self) -> BoundAddress | None:
        """Where this daemon's own peer server listens (None until it does)."""

    @property
    def tracker_connected(self) -> bool: ...

    @property
    def table(self) -> OnlinePeers: ...

    @property
    def hub(self) -> EventSource: ...

    @property
    def access(self) -> AccessView | None:
        """Who may connect (§11): the gate's lists and recent refusals, if any."""

    async def reach(self, peer: PeerInfo) -> ReachedServer:
        """*peer*'s server, proven to be that peer (or through a tunnel whose TLS
        proves it); a :class:`~flashback.errors.FlashbackError` when it cannot be."""
        ...

    def last_route(self, key: str) -> str | None:
        """The route last used to reach *key* (``direct``/``relay``), None if never."""
        ...

    def last_reached(self, fingerprint: str) -> float | None:
        """When the peer book last recorded reaching *fingerprint* (epoch s), or None."""
        ...

    def known_peers(self) -> list[KnownPeer]:
        """Tracker, LAN and book peers merged, one row per fingerprint, each with its
        ``source`` (tracker rows only while the link is up)."""
        ...

    async def reach_known(self, known: KnownPeer) -> ReachedServer:
        """A LAN or book peer's server by its direct candidates, the TLS proving its
        fingerprint; a :class:`~flashback.errors.FlashbackError` when it cannot be."""
        ...

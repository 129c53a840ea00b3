"""What the daemon's tasks share: settings, identity, peer table, link state."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from flashback.config import DaemonConfig
from flashback.daemon.access import AccessControl
from flashback.daemon.book import PeerBook
from flashback.daemon.carried import Carried
from flashback.daemon.hub import EventHub
from flashback.daemon.identity import Identity
from flashback.daemon.keys import KeyPair
from flashback.daemon.routes import Reached, Router
from flashback.daemon.tunnel_ends import TunnelFailed
from flashback.daemon.tunnels import TunnelService
from flashback.errors import BackendUnavailable, FlashbackError, PeerUnreachable
from flashback.peer.app import LocalInfo
from flashback.protocol.directory import KnownPeer, merge
from flashback.protocol.lan import LanTable
from flashback.protocol.messages import (
    Candidate,
    FileStreamReady,
    Message,
    PeerInfo,
    StreamError,
    StreamRequest,
)
from flashback.protocol.peer_table import PeerTable
from flashback.protocol.tunnel import OpenTarget
from flashback.terminal import printable
from flashback.web import BoundAddress

log = logging.getLogger(__name__)

OUTGOING_BUFFER = 64


class NoDirectEndpoint(FlashbackError):
    """A LAN or book peer can only be reached directly, and it left no address to dial."""

    status = 502
    default_code = "no_direct_endpoint"


class KeyChanged(FlashbackError):
    status = 403
    default_code = "fingerprint_mismatch"


class NotShared(FlashbackError):
    """The owner refused our certificate (§11): one line naming it, and our fingerprint."""

    status = 403
    default_code = "forbidden"


def not_shared_line(name: str, peer_id: str | None, own_fingerprint: str | None) -> str:
    who = f"{name} ({peer_id})" if peer_id else name
    return (
        f"peer {who} does not share with this peer; this peer's fingerprint "
        f"is {own_fingerprint or '(none)'} -- send it to {name}'s owner (not through the "
        f"tracker) to be allowed"
    )


@dataclass
class DaemonContext:
    config: DaemonConfig
    hub: EventHub
    local: LocalInfo
    table: PeerTable = field(default_factory=PeerTable)
    address: BoundAddress | None = None
    # what other peers are told to dial (the bound host, unless a wildcard)
    announce_host: str | None = None
    identity: Identity | None = None
    # this instance's key pair and certificate (INTERFACE §6.1): a TLS server
    # loads keys.path with SSLContext.load_cert_chain
    keys: KeyPair | None = None
    instance_name: str | None = None
    tracker_connected: bool = False
    # why the tracker is not connected (the last failure, for status and peers),
    # and whether it ever was since start
    tracker_reason: str | None = None
    tracker_ever_connected: bool = False
    # tunnels through the tracker (§6.2) and the routes that use them (§6.3)
    tunnels: TunnelService | None = None
    router: Router | None = None
    # who may connect to me (§11): the gate, its lists and counters
    access: AccessControl | None = None
    # the direct endpoint's port (§10.1; None: off) and the address the tracker saw it at
    direct_port: int | None = None
    direct: tuple[Candidate, ...] = ()
    reflexive: Candidate | None = None
    # the tracker's tunnel port as its registration answer named it (host: the
    # tracker URL's), so the endpoint reflects at start, before any invite
    tracker_tunnel: tuple[str, int] | None = None
    # the web UI's URL, access token included (told only over the control socket)
    ui_url: str | None = None
    # who this daemon reached or accepted (§12), and who the LAN announces (None: --lan off)
    book: PeerBook | None = None
    lan: LanTable | None = None
    # who is on each connection our owner ends carry to the peer server (POST /api/stream)
    carried: Carried = field(default_factory=Carried)
    _identity_changed: trio.Event = field(default_factory=trio.Event)
    # set by the link when the tracker answers hello with unknown_peer (it
    # restarted, say), so the session registers at once instead of waiting
    # for the next heartbeat's 404
    reregister: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        # Frames for the tracker (stream requests and answers) queue here and
        # the live link's writer sends them; bounded so a dead link cannot
        # make the daemon hoard memory.
        self.outgoing_send, self.outgoing_receive = trio.open_memory_channel[Message](
            OUTGOING_BUFFER
        )
        # stream-requests from other peers, for the stream-port manager
        self.stream_requests_send, self.stream_requests_receive = trio.open_memory_channel[
            StreamRequest
        ](OUTGOING_BUFFER)
        # answers (file-stream-ready / stream-error) awaited by local requesters
        self.stream_waiters: dict[str, trio.MemorySendChannel[Message]] = {}

    @property
    def fingerprint(self) -> str | None:
        return self.keys.fingerprint if self.keys else None

    def deliver_stream_answer(self, answer: FileStreamReady | StreamError) -> bool:
        waiter = self.stream_waiters.pop(answer.request_id, None)
        if waiter is None:
            return False
        try:
            waiter.send_nowait(answer)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def send_to_tracker(self, message: Message) -> bool:
        """Queue a frame for the link's writer; False when the link cannot take it now."""
        if not self.tracker_connected:
            return False
        try:
            self.outgoing_send.send_nowait(message)
        except trio.WouldBlock:
            return False
        return True

    async def reach(self, peer: PeerInfo) -> Reached:
        """The URL of *peer*'s server by the routes of §6.3: direct only if the
        registered address proves to be that peer (``/api/info``), else a tunnel
        whose TLS proves the owner. ``ls``, ``get`` and the UI all come here."""
        if self.router is None:
            raise BackendUnavailable("no tracker connection", code="no_tracker")
        try:
            if self.tunnels is not None and peer.fingerprint:
                # Trust on first use by id and by name, whatever the route: the
                # fingerprint the tracker lists must be the one pinned (a tunnel's
                # TLS then proves the owner holds it); refused before any dialling.
                self.tunnels.check_pin(peer.peer_id, peer.fingerprint)
            reached = await self.router.reach(peer.peer_id, peer.host, peer.port)
        except TunnelFailed as exc:
            raise reach_error(exc, peer.name, peer.peer_id, self.fingerprint) from exc
        except httpx.InvalidURL:  # the tracker relayed a host no URL can carry
            raise PeerUnreachable(f"peer {peer.name!r} announced an unusable address") from None
        if self.book is not None:  # reached: the book remembers it for a day without the tracker
            self.book.record_peer(peer, vouched=self.tracker_connected)
        return reached

    def last_route(self, key: str) -> str | None:
        """The route last used to reach *key* (a peer id, or a LAN or book peer's
        fingerprint), as ``peers`` shows it; None if never."""
        return self.router.last(key)[0] if self.router is not None else None

    def last_reached(self, fingerprint: str) -> float | None:
        """When the peer book last recorded reaching *fingerprint* (epoch s), or None."""
        if self.book is None:
            return None
        return next(
            (e.last_seen for e in self.book.entries() if e.fingerprint == fingerprint), None
        )

    def known_peers(self) -> list[KnownPeer]:
        """Tracker, LAN and book peers, one row per fingerprint (this daemon's own
        tracker row included, as ``peers`` always listed it).

        The tracker's rows count only while the link is up: with the tracker
        away they are a stale list, and a peer we reached stays as its book row.
        """
        rows = merge(
            self.table.sorted_peers() if self.tracker_connected else (),
            self.lan.peers() if self.lan is not None else (),
            self.book.entries() if self.book is not None else (),
        )
        own = self.fingerprint
        return [row for row in rows if row.source == "tracker" or row.fingerprint != own]

    async def reach_known(self, known: KnownPeer, target: OpenTarget | None = None) -> Reached:
        """The URL of *known*'s server (or a stream port of it) by its direct
        candidates (§10.1, §12), with mutual TLS and its fingerprint checked,
        through a local forward like every other route.

        The one door from a LAN or book peer to the routing layer; whatever
        reaches it records it in the peer book (its fingerprint is what the TLS
        check proved). ``ls``, ``get``, ``connect`` and the UI all come here.
        """
        if known.fingerprint is None or not known.candidates:
            raise NoDirectEndpoint(
                f"peer '{printable(known.name)}' ({known.fingerprint}) is known from the "
                f"{known.source} only, with no direct address to reach it by"
            )
        if self.router is None:
            raise BackendUnavailable("the daemon's routes are not up yet")
        key = known.peer_id or known.fingerprint
        try:
            reached = await self.router.reach_known(
                key, known.fingerprint, known.candidates, target or OpenTarget("peer-server")
            )
        except TunnelFailed as exc:
            raise reach_error(exc, known.name, known.peer_id, self.fingerprint) from exc
        if self.book is not None:
            self.book.record(
                known.fingerprint,
                name=known.name,
                peer_id=known.peer_id,
                candidates=known.candidates,
            )
        return reached

    def registration_lost(self) -> None:
        """The link heard the tracker does not know us: register again now."""
        self.reregister.set()

    def set_identity(self, identity: Identity | None) -> None:
        if identity != self.identity:
            self.identity = identity
            self.local.peer_id = identity.peer_id if identity else None
            self._identity_changed.set()
            self._identity_changed = trio.Event()

    async def wait_identity(self) -> Identity:
        while self.identity is None:
            await self._identity_changed.wait()
        return self.identity

    async def wait_identity_change(self) -> None:
        await self._identity_changed.wait()

    def set_connected(self, connected: bool) -> None:
        if connected == self.tracker_connected:
            return
        self.tracker_connected = connected
        if connected:
            self.tracker_ever_connected = True
            self.tracker_reason = None
        url = self.config.tracker_url
        self.hub.emit("tracker-connected" if connected else "tracker-disconnected", url=url)

    def tracker_failed(self, reason: str) -> None:
        """The link or the registration failed: what ``status`` and ``peers`` tell."""
        self.tracker_reason = reason

    def tracker_status(self) -> dict[str, Any]:
        """``{"url", "connected"}``, plus ``reason`` and ``ever_connected`` (INTERFACE §5)."""
        return {
            "url": self.config.tracker_url,
            "connected": self.tracker_connected,
            "reason": None if self.tracker_connected else self.tracker_reason,
            "ever_connected": self.tracker_ever_connected or self.tracker_connected,
        }

    def status(self) -> dict[str, Any]:
        address = self.address
        return {
            "peer_id": self.identity.peer_id if self.identity else None,
            "name": self.config.name,
            "host": address.host if address else None,
            "port": address.port if address else None,
            "url": address.url if address else None,
            "root": str(self.config.root),
            "fingerprint": self.fingerprint,
            "identity": self.instance_name,
            "direct": {
                "port": self.direct_port,
                "reflexive": None if self.reflexive is None else self.reflexive.dump(),
            },
            "tracker": self.tracker_status(),
            "access": self.access.status() if self.access is not None else None,
            "watchers": self.hub.subscribers,
        }


def reach_error(
    exc: TunnelFailed, name: str, peer_id: str | None, own_fingerprint: str | None
) -> FlashbackError:
    """A tunnel's failure as the error a command or the UI shows."""
    if exc.code == "fingerprint_mismatch":
        return KeyChanged(str(exc))
    if exc.code == "forbidden":
        return NotShared(not_shared_line(name, peer_id, own_fingerprint))
    return PeerUnreachable(f"cannot reach peer {name!r}: {exc}")

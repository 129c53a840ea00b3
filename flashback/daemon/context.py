"""What the daemon's tasks share: settings, identity, peer table, link state."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from flashback.config import DaemonConfig
from flashback.daemon.hub import EventHub
from flashback.daemon.identity import Identity
from flashback.daemon.keys import KeyPair
from flashback.daemon.routes import Router
from flashback.daemon.tunnels import TunnelService
from flashback.peer.app import LocalInfo
from flashback.protocol.messages import (
    Candidate,
    FileStreamReady,
    Message,
    StreamError,
    StreamRequest,
)
from flashback.protocol.peer_table import PeerTable
from flashback.web import BoundAddress

log = logging.getLogger(__name__)

OUTGOING_BUFFER = 64


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
    # this instance's key pair and certificate (CONTRACT §6.1): a TLS server
    # loads keys.path with SSLContext.load_cert_chain
    keys: KeyPair | None = None
    instance_name: str | None = None
    tracker_connected: bool = False
    # tunnels through the tracker (§6.2) and the routes that use them (§6.3)
    tunnels: TunnelService | None = None
    router: Router | None = None
    # the direct endpoint's port (§10.1; None: off) and the address the tracker saw it at
    direct_port: int | None = None
    direct: tuple[Candidate, ...] = ()
    reflexive: Candidate | None = None
    # the web UI's URL, access token included (told only over the control socket)
    ui_url: str | None = None
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
        url = self.config.tracker_url
        self.hub.emit("tracker-connected" if connected else "tracker-disconnected", url=url)

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
            "tracker": {"url": self.config.tracker_url, "connected": self.tracker_connected},
        }

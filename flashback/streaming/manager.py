"""The stream-port manager: requests in, ``file-stream-ready`` / ``stream-error`` out.

One task in the daemon's root nursery. It owns a nursery in which every
open port is a task; leaving the manager (daemon shutdown) cancels them all,
each closing its listener and reporting ``stream-closed`` with reason
``shutdown``. Answers go to the requester through the tracker link, or back
to the local control API for a request this daemon made to itself.

Events (stdout, INTERFACE §5) -- the token never appears in them::

    {"event": "file-stream-ready", "request_id", "peer_id", "host", "port",
     "path", "size", "expires_in"}          (peer_id: the requester)
    {"event": "stream-closed", "request_id", "peer_id", "port", "path",
     "bytes_sent", "duration_s", "reason": "completed"|"expired"|"shutdown"|"evicted"}
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio

from flashback.digests import DigestService
from flashback.errors import NotFound
from flashback.protocol.fairshare import FairShare
from flashback.protocol.messages import FileStreamReady, StreamError, StreamRequest
from flashback.protocol.paths import real_root
from flashback.streaming.port import StreamPort, open_listener
from flashback.streaming.source import StreamSource, open_source

log = logging.getLogger(__name__)

MAX_PORTS: Final = 16
# A fair share (flashback.protocol.fairshare): a requester's fifth port closes
# its own oldest, and when all MAX_PORTS are open the heaviest requester's
# oldest port closes (reason "evicted") -- never the newcomer's request, so
# peer ids that cost nothing cannot lock an honest requester out.
MAX_PORTS_PER_PEER: Final = 4
EXPIRES_IN_S: Final = 60.0
TOKEN_BYTES: Final = 32

Answer = FileStreamReady | StreamError
Emit = Callable[..., None]


@dataclass(frozen=True)
class StreamSettings:
    root: Path
    host: str  # where the ports listen
    show_hidden: bool = False
    max_ports: int = MAX_PORTS
    max_ports_per_peer: int = MAX_PORTS_PER_PEER
    expires_in_s: float = EXPIRES_IN_S
    announce_host: str | None = None  # what file-stream-ready tells (default: host)

    @property
    def public_host(self) -> str:
        return self.announce_host or self.host


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


class StreamManager:
    """Opens, tracks and closes the ports; :meth:`run` is the owning task."""

    def __init__(
        self, settings: StreamSettings, emit: Emit, digests: DigestService | None = None
    ) -> None:
        self._digests = digests
        self.settings = settings
        self._root = real_root(settings.root)
        self._emit = emit
        self._nursery: trio.Nursery | None = None
        self.open_ports: set[StreamPort] = set()
        self._share: FairShare[str | None, StreamPort] = FairShare(
            settings.max_ports, settings.max_ports_per_peer
        )
        self._scopes: dict[StreamPort, trio.CancelScope] = {}

    async def run(
        self,
        requests: trio.abc.ReceiveChannel[StreamRequest],
        reply: Callable[[Answer], None],
        *,
        task_status: trio.TaskStatus[StreamManager] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer every request from *requests* through *reply*, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self)
            try:
                async for request in requests:
                    reply(await self.handle(request))
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    async def handle(self, request: StreamRequest) -> Answer:
        """Open a port for *request*, or say why not (not_found, busy, unavailable)."""
        requester = request.from_
        if self._nursery is None:
            raise RuntimeError("StreamManager.handle() outside run()")
        try:
            # In the event loop, not a thread: realpath + open + fstat of a
            # local file take microseconds, and O_NONBLOCK keeps a FIFO from
            # hanging us (see source.py).
            source = open_source(self._root, request.path, show_hidden=self.settings.show_hidden)
        except NotFound as exc:
            return StreamError(request.request_id, "not_found", exc.message, to=requester)
        try:
            sock = await open_listener(self.settings.host)
        except OSError as exc:
            source.close()
            log.warning("cannot open a streaming port on %s: %s", self.settings.host, exc)
            return StreamError(
                request.request_id, "unavailable", "cannot open a streaming port", to=requester
            )
        token = secrets.token_urlsafe(TOKEN_BYTES)
        port = StreamPort(
            sock, source, token, expires_in_s=self.settings.expires_in_s, digests=self._digests
        )
        self.open_ports.add(port)
        scope = self._scopes[port] = trio.CancelScope()
        victim = self._share.admit(requester, port).evicted
        if victim is not None:
            self._evict(victim[1])
        self._nursery.start_soon(self._run_port, request, port, source, scope)
        expires_in = _number(self.settings.expires_in_s)
        fields: dict[str, Any] = {
            "request_id": request.request_id,
            "peer_id": requester,
            "host": self.settings.public_host,
            "port": port.port,
            "path": source.path,
            "size": source.size,
            "expires_in": expires_in,
        }
        self._emit("file-stream-ready", **fields)
        return FileStreamReady(
            request.request_id,
            host=self.settings.public_host,
            port=port.port,
            token=token,
            path=source.path,
            size=source.size,
            expires_in=expires_in,
            to=requester,
        )

    def _evict(self, port: StreamPort) -> None:
        """Close *port* to make room (its task reports ``evicted``)."""
        scope = self._scopes.get(port)
        if scope is not None:
            scope.cancel()

    async def _run_port(
        self,
        request: StreamRequest,
        port: StreamPort,
        source: StreamSource,
        scope: trio.CancelScope,
    ) -> None:
        started = trio.current_time()
        reason = "shutdown"
        try:
            with scope:
                reason = await port.serve()
            if scope.cancelled_caught:
                reason = "evicted"
        finally:
            source.close()
            self.open_ports.discard(port)
            self._share.release(port)
            self._scopes.pop(port, None)
            self._emit(
                "stream-closed",
                request_id=request.request_id,
                peer_id=request.from_,
                port=port.port,
                path=source.path,
                bytes_sent=port.bytes_sent,
                duration_s=round(trio.current_time() - started, 3),
                reason=reason,
            )

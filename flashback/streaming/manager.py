"""The stream-port manager: requests in, ``file-stream-ready`` / ``stream-error`` out.

One task in the daemon's root nursery. It owns a nursery in which every
open port is a task; leaving the manager (daemon shutdown) cancels them all,
each closing its listener and reporting ``stream-closed`` with reason
``shutdown``. Answers go to the requester through the tracker link, or back
to the local control API for a request this daemon made to itself.

Events (stdout, CONTRACT §5) -- the token never appears in them::

    {"event": "file-stream-ready", "request_id", "peer_id", "host", "port",
     "path", "size", "expires_in"}          (peer_id: the requester)
    {"event": "stream-closed", "request_id", "peer_id", "port", "path",
     "bytes_sent", "duration_s", "reason": "completed"|"expired"|"shutdown"}
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
from flashback.protocol.messages import FileStreamReady, StreamError, StreamRequest
from flashback.protocol.paths import real_root
from flashback.streaming.port import StreamPort, open_listener
from flashback.streaming.source import StreamSource, open_source

log = logging.getLogger(__name__)

MAX_PORTS: Final = 16
# One requester may hold this many ports at once, so no single peer can take
# all MAX_PORTS and lock everyone else out (renewing them every minute).
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
        self._ports_of: dict[str | None, int] = {}  # requester -> open ports

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
        if len(self.open_ports) >= self.settings.max_ports:
            return StreamError(
                request.request_id,
                "busy",
                f"{self.settings.max_ports} streaming ports are open; try again later",
                to=requester,
            )
        if (
            requester is not None
            and self._ports_of.get(requester, 0) >= self.settings.max_ports_per_peer
        ):
            return StreamError(
                request.request_id,
                "busy",
                f"you already hold {self.settings.max_ports_per_peer} streaming ports here;"
                " finish or let one expire first",
                to=requester,
            )
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
        self._ports_of[requester] = self._ports_of.get(requester, 0) + 1
        self._nursery.start_soon(self._run_port, request, port, source)
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

    async def _run_port(
        self, request: StreamRequest, port: StreamPort, source: StreamSource
    ) -> None:
        started = trio.current_time()
        reason = "shutdown"
        try:
            reason = await port.serve()
        finally:
            source.close()
            self.open_ports.discard(port)
            left = self._ports_of.get(request.from_, 0) - 1
            if left > 0:
                self._ports_of[request.from_] = left
            else:
                self._ports_of.pop(request.from_, None)
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

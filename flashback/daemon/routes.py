"""Direct first, else a tunnel (INTERFACE §6.3): how this daemon reaches a peer's server.

The direct route is used only when the peer's registered ``peer_server``
answers ``GET /api/info`` with that peer's id within :data:`PROBE_TIMEOUT_S`
(an address that answers for somebody else -- a NAT's other host, a stale
port -- is not the peer). Otherwise a local forward carries each connection
through the tracker on its own tunnel. What worked is remembered for a while
(:class:`~flashback.protocol.tunnel.RouteMemory`), so a command does not
probe again every time; a forward is reused while it lives.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import httpx
import trio

from flashback.daemon.tunnel_ends import TunnelFailed
from flashback.protocol.direct import RouteBook, hostport
from flashback.protocol.messages import Candidate
from flashback.protocol.strict_json import loads_strict
from flashback.protocol.tunnel import OpenTarget, Route, RouteMemory, direct_probe_accepts

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S: Final = 0.5
MAX_INFO_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class Reached:
    """Where to send HTTP for a peer, and by which route."""

    peer_id: str
    url: httpx.URL
    route: Route
    #: a local forward (its connections race the direct endpoint and the relay)
    forwarded: bool = False


def origin(host: str, port: int) -> httpx.URL:
    """An http origin from parsed parts (an IPv6 literal gets its brackets from httpx)."""
    return httpx.URL(scheme="http", host=host, port=port, path="/")


async def probe_direct(
    http: httpx.AsyncClient,
    host: str,
    port: int,
    peer_id: str,
    *,
    timeout_s: float = PROBE_TIMEOUT_S,
) -> bool:
    """Whether host:port is *peer_id*'s server, answering within *timeout_s*."""
    url = origin(host, port).copy_with(path="/api/info")
    with trio.move_on_after(timeout_s):
        try:
            async with http.stream("GET", url, timeout=timeout_s) as response:
                if response.status_code != 200:
                    return False
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_INFO_BYTES:
                        return False
            return direct_probe_accepts(loads_strict(body), peer_id)
        except (httpx.HTTPError, ValueError, UnicodeDecodeError):
            return False
    return False


OpenForward = Callable[[str, OpenTarget], Awaitable[int]]
#: teach the route race a peer the tracker does not list: (key, fingerprint, candidates)
Know = Callable[[str, str, tuple[Candidate, ...]], None]


class Router:
    """Chooses and remembers routes; *open_forward(peer_id, target)* returns a local port."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        open_forward: OpenForward,
        *,
        memory: RouteMemory | None = None,
        book: RouteBook | None = None,
        know: Know | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._http = http
        self._open_forward = open_forward
        self._know = know
        self.memory = memory or RouteMemory()
        # what the forwards' connections used (direct endpoint or relay, §10.3)
        self.book = book or RouteBook()
        self._clock = clock
        self._forwards: dict[tuple[str, OpenTarget], int] = {}
        self._probed_address: dict[str, str] = {}

    async def route_for(self, peer_id: str, host: str, port: int) -> Route:
        """Direct if the peer's server at host:port proves to be that peer, else relay."""
        if self.memory.recall(peer_id, self._clock()) == "direct":
            return "direct"
        route: Route = "direct" if await probe_direct(self._http, host, port, peer_id) else "relay"
        self.memory.remember(peer_id, route, self._clock())
        self._probed_address[peer_id] = hostport(host, port)
        return route

    async def reach(self, peer_id: str, host: str, port: int) -> Reached:
        """The URL of *peer_id*'s peer server (registered at host:port)."""
        if await self.route_for(peer_id, host, port) == "direct":
            return Reached(peer_id, origin(host, port), "direct")
        return await self._relayed(peer_id, OpenTarget("peer-server"))

    async def reach_stream(
        self, peer_id: str, host: str, port: int, stream_host: str, stream_port: int
    ) -> Reached:
        """The URL of a stream port the peer opened for us: by the peer server's route
        (a stream port has no ``/api/info``; its token proves the rest)."""
        if await self.route_for(peer_id, host, port) == "direct":
            return Reached(peer_id, origin(stream_host, stream_port), "direct")
        return await self._relayed(peer_id, OpenTarget("stream", stream_port))

    async def reach_known(
        self, peer_key: str, fingerprint: str, candidates: tuple[Candidate, ...], target: OpenTarget
    ) -> Reached:
        """A peer known from the LAN or the peer book only (§12): a forward whose
        connections dial *candidates* plainly and accept only *fingerprint*."""
        if self._know is None:
            raise TunnelFailed("no_endpoint", "this daemon cannot dial direct endpoints")
        self._know(peer_key, fingerprint, candidates)
        return await self._relayed(peer_key, target)

    async def _relayed(self, peer_id: str, target: OpenTarget) -> Reached:
        """A local forward whose every connection races the direct endpoint and the
        relay; its route is the one its connections last took (relay before any).

        Asked every time: the forward is reused, but a way is opened now so that an
        owner that refuses us (§11) says so to this command, in words."""
        forward_port = await self._open_forward(peer_id, target)
        self._forwards[(peer_id, target)] = forward_port
        carried = self.book.last(peer_id)
        route: Route = carried.route if carried is not None else "relay"
        return Reached(peer_id, origin("127.0.0.1", forward_port), route, forwarded=True)

    def forward_closed(self, peer_id: str, target: OpenTarget) -> None:
        """A forward ended (idle, or its peer left): the next reach opens a new one."""
        self._forwards.pop((peer_id, target), None)

    def last_route(self, peer_id: str) -> Route | None:
        return self.last(peer_id)[0]

    def last(self, peer_id: str) -> tuple[Route | None, str | None]:
        """The route last used to reach *peer_id* and the address it used (``peers``)."""
        probed = self.memory.last_used(peer_id)
        carried = self.book.last(peer_id)
        if probed == "direct" or carried is None:
            return probed, self._probed_address.get(peer_id) if probed == "direct" else None
        return carried.route, carried.address

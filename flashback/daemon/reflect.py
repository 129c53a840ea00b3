"""Reflection (docs/INTERFACE.md §10.2): learn the endpoint's address as the tracker sees it.

From the direct endpoint's own port (``SO_REUSEPORT``) the daemon sends
``FLASHBACK-REFLECT 1 <token>`` to the tracker's tunnel port and keeps the
``ADDR`` it hears; the tracker records it as this peer's ``reflexive``
candidate. It does so as soon as it knows the tunnel port (the registration
answer names it, on the tracker URL's host; an invite names it too and is
followed from then on), every :data:`REFLECT_INTERVAL_S` while linked (so the
NAT keeps the mapping), and right before it punches.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from flashback.daemon.context import DaemonContext
from flashback.daemon.direct import DirectEndpoint
from flashback.daemon.endpoint_bind import close_abortively
from flashback.daemon.tunnel_ends import read_plain_line
from flashback.protocol.direct import (
    MAX_REFLECT_LINE_BYTES,
    REFLECT_INTERVAL_S,
    parse_addr_line,
    reflect_line,
)
from flashback.protocol.messages import Candidate, TunnelInvite
from flashback.protocol.tunnel import TunnelError

log = logging.getLogger(__name__)

REFLECT_TIMEOUT_S: Final = 5.0


class Reflector:
    def __init__(self, ctx: DaemonContext, endpoint: DirectEndpoint) -> None:
        self._ctx = ctx
        self._endpoint = endpoint
        self.tunnel: tuple[str, int] | None = None
        self._known = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._one_at_a_time = trio.Lock()

    def before_punch(self, invite: TunnelInvite) -> None:
        """An invite names the tunnel port: reflect now (and from then on)."""
        self.tunnel = (invite.host, invite.port)
        self._known.set()
        if self._nursery is not None:
            self._nursery.start_soon(self.reflect_once)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._wait_tunnel()
                # at start: registered (the token works) even if the link is not up yet
                await self.reflect_once()
                while True:
                    await trio.sleep(REFLECT_INTERVAL_S)
                    if self._ctx.tracker_connected:
                        await self.reflect_once()
            finally:
                self._nursery = None

    async def _wait_tunnel(self) -> None:
        """Until the registration answer or an invite named the tunnel port."""
        while self.tunnel is None:
            if self._ctx.tracker_tunnel is not None and self._ctx.identity is not None:
                self.tunnel = self._ctx.tracker_tunnel
                return
            async with trio.open_nursery() as waiting:

                async def until(event: Callable[[], Awaitable[object]]) -> None:
                    await event()
                    waiting.cancel_scope.cancel()

                waiting.start_soon(until, self._known.wait)
                waiting.start_soon(until, self._ctx.wait_identity_change)

    async def reflect_once(self) -> Candidate | None:
        identity = self._ctx.identity
        if self.tunnel is None or identity is None:
            return None
        host, port = self.tunnel
        try:
            with trio.fail_after(REFLECT_TIMEOUT_S):
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                ip = str(infos[0][4][0])
                async with self._one_at_a_time:  # one 4-tuple: one reflection at once
                    stream = await self._endpoint.dial_from(Candidate(ip, port))
                    # no TIME_WAIT: the next reflection leaves from the same port
                    close_abortively(stream)
                    async with stream:
                        await stream.send_all(reflect_line(identity.token))
                        line = await read_plain_line(stream, MAX_REFLECT_LINE_BYTES)
                answer = parse_addr_line(line)
        except (
            OSError,
            trio.TooSlowError,
            trio.BrokenResourceError,
            TunnelError,
            ValueError,
            IndexError,
        ) as exc:
            log.info("reflection through %s:%d failed: %s", host, port, exc)
            return None
        self._ctx.reflexive = answer
        return answer

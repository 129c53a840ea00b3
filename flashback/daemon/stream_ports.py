"""Wiring the stream-port manager into the daemon (owner side).

``run_stream_ports`` is the task ``daemon_main`` starts: it feeds the
manager the ``stream-request``s the tracker link queues on the context and
routes each answer -- to the tracker for a remote requester, or straight
back to the control API for a request this daemon made to itself
(``flashback stream <own name> PATH``, which needs no tracker). It also
opens the peer server's :class:`~flashback.peer.app.StreamDoor`: a
requester that reached us over the direct endpoint (a LAN or book peer,
the tracker down) asks ``POST /api/stream`` there, and the fingerprint it
proved to our owner end is its ``from`` -- its fair share of the ports. On
shutdown it cancels the manager, which closes every open port.
"""

from __future__ import annotations

import logging
import secrets
from typing import Final

import trio

from flashback.daemon.context import DaemonContext
from flashback.digests import DigestService
from flashback.peer.app import StreamDoor
from flashback.protocol.messages import StreamError, StreamRequest
from flashback.shutdown import Shutdown
from flashback.streaming.manager import Answer, StreamManager, StreamSettings

log = logging.getLogger(__name__)

#: the ``from`` of a request the local control API hands to our own manager;
#: tracker peer ids never contain parentheses, so it cannot name a real peer
LOCAL_REQUESTER: Final = "(local)"


def settings_for(ctx: DaemonContext) -> StreamSettings:
    host = ctx.address.host if ctx.address is not None else ctx.config.host
    return StreamSettings(
        root=ctx.config.root,
        host=host,
        show_hidden=ctx.config.show_hidden,
        announce_host=ctx.announce_host,
    )


def route_answer(ctx: DaemonContext, answer: Answer) -> None:
    if answer.to == LOCAL_REQUESTER:
        if not ctx.deliver_stream_answer(answer):
            log.info("the local requester of stream %s stopped waiting", answer.request_id)
        return
    try:
        ctx.outgoing_send.send_nowait(answer)
    except trio.WouldBlock:
        # The link is down and its queue full; the requester times out and
        # the port expires on its own.
        log.warning("tracker queue full; dropping %s for %s", answer.TYPE, answer.request_id)


async def answer_carried(
    ctx: DaemonContext, manager: StreamManager, path: str, client: object
) -> Answer:
    """``POST /api/stream``: a port for the requester our owner end carried here,
    or ``forbidden`` for any connection no owner end carried (no proven requester)."""
    request_id = secrets.token_urlsafe(12)
    fingerprint = ctx.carried.who(client)
    if fingerprint is None:
        message = "only a peer that reached this daemon's endpoint may ask for a stream port"
        return StreamError(request_id, "forbidden", message)
    return await manager.handle(StreamRequest(request_id, path, from_=fingerprint))


async def run_stream_ports(
    ctx: DaemonContext,
    shutdown: Shutdown,
    *,
    settings: StreamSettings | None = None,
    digests: DigestService | None = None,
    door: StreamDoor | None = None,
    task_status: trio.TaskStatus[StreamManager] = trio.TASK_STATUS_IGNORED,
) -> None:
    manager = StreamManager(settings or settings_for(ctx), ctx.hub.emit, digests)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            manager.run, ctx.stream_requests_receive, lambda answer: route_answer(ctx, answer)
        )
        if door is not None:
            door.open = lambda path, client: answer_carried(ctx, manager, path, client)
        task_status.started(manager)
        try:
            await shutdown.wait()
        finally:
            if door is not None:
                door.open = None
            nursery.cancel_scope.cancel()

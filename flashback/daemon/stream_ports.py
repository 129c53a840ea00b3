"""Wiring the stream-port manager into the daemon (owner side).

``run_stream_ports`` is the task ``daemon_main`` starts: it feeds the
manager the ``stream-request``s the tracker link queues on the context and
routes each answer -- to the tracker for a remote requester, or straight
back to the control API for a request this daemon made to itself
(``flashback stream <own name> PATH``, which needs no tracker). On
shutdown it cancels the manager, which closes every open port.
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from flashback.daemon.context import DaemonContext
from flashback.digests import DigestService
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


async def run_stream_ports(
    ctx: DaemonContext,
    shutdown: Shutdown,
    *,
    settings: StreamSettings | None = None,
    digests: DigestService | None = None,
    task_status: trio.TaskStatus[StreamManager] = trio.TASK_STATUS_IGNORED,
) -> None:
    manager = StreamManager(settings or settings_for(ctx), ctx.hub.emit, digests)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            manager.run, ctx.stream_requests_receive, lambda answer: route_answer(ctx, answer)
        )
        task_status.started(manager)
        await shutdown.wait()
        nursery.cancel_scope.cancel()

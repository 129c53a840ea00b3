"""Running the tracker: the root nursery, signals, the ready line, exit codes.

``serve_tracker`` is the trio-style service (reports its bound address once
it listens); ``run_tracker`` is what ``flashback tracker`` calls: it opens
the store, serves until SIGINT/SIGTERM, and returns the exit code.

Shutdown order matters: every websocket is closed with 1001 first (otherwise
Hypercorn's graceful shutdown waits its full timeout for links that never
end on their own, then aborts them), then Hypercorn stops listening and
finishes in-flight requests, then the reaper is cancelled and ``seq`` saved.
All of it fits in the one deadline the signal fixed (:mod:`flashback.shutdown`):
the servers are cut :data:`SEQ_SAVE_RESERVE_S` before it, whatever a client
does, so saving ``seq`` always has that long; if it still does not complete,
the exit status says so (1).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from functools import partial
from typing import Final

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets

from flashback.config import TrackerConfig
from flashback.events import emit
from flashback.protocol.registry import clock_seq
from flashback.runner import run_service
from flashback.sdnotify import Notifier, run_watchdog, watchdog_interval_s
from flashback.shutdown import Shutdown
from flashback.tracker.app import create_asgi_app
from flashback.tracker.presence import LocalPresence
from flashback.tracker.service import Tracker
from flashback.tracker.store import (
    IdentityStore,
    check_database_url,
    is_redis_url,
    open_store,
)
from flashback.tracker.tunnels import serve_tunnel_port
from flashback.tracker.validate import MAX_BODY_BYTES
from flashback.web import BoundAddress, hypercorn_config, serve_quart

log = logging.getLogger(__name__)

LISTEN_BACKLOG: Final = 4096  # reconnect storms: thousands of daemons at once
WEBSOCKET_CLOSE_TIMEOUT_S: Final = 2.0
#: saving seq and closing the store, when not inside a shutdown (cancelled)
STORE_CLOSE_TIMEOUT_S: Final = 3.0
#: what the servers leave of the shutdown's budget to saving seq (SQLite: ms)
SEQ_SAVE_RESERVE_S: Final = 1.0


@dataclass(frozen=True)
class TrackerAddress(BoundAddress):
    """Where the tracker's HTTP server listens, and its tunnel port (None: off)."""

    tunnel_port: int | None = None


def bound_unread_sends(hc: HypercornConfig, timeout_s: float) -> None:
    """Have the kernel drop a connection whose peer stops reading for *timeout_s*.

    Hypercorn 0.17 shields ``send_all`` from cancellation (trio/tcp_server.py,
    ``protocol_send``), so no deadline in the app can end a send to a client
    that never reads: the frame (a whole snapshot) stays pinned forever.
    ``TCP_USER_TIMEOUT`` (inherited by accepted sockets) makes Linux reset
    such a connection once its unacknowledged data or zero-window probes
    have waited that long; the send then fails and the link ends.
    """
    create_sockets = hc.create_sockets
    timeout_ms = max(1, int(timeout_s * 1000))

    def with_user_timeout() -> Sockets:
        sockets = create_sockets()
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, timeout_ms)
        return sockets

    # Hypercorn has no socket-option hook: wrapping its factory is the seam it leaves.
    hc.create_sockets = with_user_timeout  # type: ignore[method-assign]


async def serve_tracker_instance(
    tracker: Tracker,
    *,
    shutdown: Shutdown | None = None,
    task_status: trio.TaskStatus[TrackerAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an already built :class:`Tracker` until cancelled, or until
    *shutdown* is set and its deadline minus :data:`SEQ_SAVE_RESERVE_S`."""
    config = tracker.config
    hc = hypercorn_config(config.host, config.port, backlog=LISTEN_BACKLOG)
    hc.websocket_max_message_size = MAX_BODY_BYTES
    bound_unread_sends(hc, config.send_timeout_s)
    # The HTTP server's own stage of the shutdown: set once the websockets are
    # closed, with the deadline that leaves saving seq its reserve.
    stop_listening = Shutdown()
    app = create_asgi_app(tracker)

    async with trio.open_nursery() as nursery:

        async def stop_on(shutdown: Shutdown) -> None:
            await shutdown.wait()
            servers_end = shutdown.deadline_minus(SEQ_SAVE_RESERVE_S)
            log.info("shutting down: closing %d websocket(s)", len(tracker.hub))
            left_s = max(0.0, servers_end - trio.current_time())
            await tracker.hub.close_all(timeout_s=min(WEBSOCKET_CLOSE_TIMEOUT_S, left_s))
            stop_listening.set(deadline=servers_end)

        async def serve(*, task_status: trio.TaskStatus[BoundAddress]) -> None:
            await serve_quart(
                app,  # type: ignore[arg-type]  # serve_quart is typed for Quart; this is its ASGI wrapper
                hc,
                shutdown=stop_listening,
                task_status=task_status,
            )
            nursery.cancel_scope.cancel()  # the reaper and the stopper go with it

        await tracker.identities.load()
        await nursery.start(tracker.follow)
        nursery.start_soon(tracker.reap_forever)
        if tracker.tunnels is not None and config.tunnel_port is not None:
            tracker.tunnel_port = await nursery.start(
                serve_tunnel_port, tracker.tunnels, config.host, config.tunnel_port
            )
        if shutdown is not None:
            nursery.start_soon(stop_on, shutdown)
        address: BoundAddress = await nursery.start(serve)
        task_status.started(TrackerAddress(address.host, address.port, tracker.tunnel_port))


async def serve_tracker(
    config: TrackerConfig,
    *,
    store: IdentityStore | None = None,
    shutdown: Shutdown | None = None,
    task_status: trio.TaskStatus[TrackerAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Open the store (unless given), serve, and close the store on the way out.

    Saving ``seq`` is the shutdown's must-finish step: if its deadline cuts
    it, or the store fails, *shutdown* records it and the process exits 1.
    """
    if store is None and is_redis_url(config.database_url):
        from flashback.tracker.redis import open_redis_backend  # coredis is optional

        async with open_redis_backend(config.database_url, config) as (presence, identities):
            shared = Tracker(config, identities, presence)
            await serve_tracker_instance(shared, shutdown=shutdown, task_status=task_status)
        return
    if store is None:
        store = await open_store(config.database_url)
    tracker: Tracker | None = None
    try:
        start_seq = max(clock_seq(), await store.load_seq() + 1)
        tracker = Tracker(config, store, LocalPresence.for_config(config, start_seq=start_seq))
        await serve_tracker_instance(tracker, shutdown=shutdown, task_status=task_status)
    finally:
        # Shielded and bounded: the seq must be saved even when we were
        # cancelled; inside a shutdown, by its deadline.
        steps = shutdown if shutdown is not None else Shutdown()
        with steps.must_finish("saving seq", STORE_CLOSE_TIMEOUT_S):
            try:
                if tracker is not None:
                    await store.save_seq(tracker.presence.seq)
                    log.info("saved seq %d", tracker.presence.seq)
            finally:
                await store.aclose()


def run_tracker(config: TrackerConfig) -> int:
    """``flashback tracker``: serve in the foreground; SIGINT/SIGTERM -> exit 0.

    Under systemd (``NOTIFY_SOCKET``) it reports ``READY=1`` once listening,
    ``STATUS=``, ``WATCHDOG=1`` from the event loop and ``STOPPING=1``.
    """
    check_database_url(config.database_url)

    async def main(shutdown: Shutdown) -> None:
        # Opened before serving so a bad database is a plain ConfigError (exit 2).
        store = None if is_redis_url(config.database_url) else await open_store(config.database_url)
        notifier = Notifier.from_env(os.environ)
        watchdog_scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            address: TrackerAddress = await nursery.start(
                partial(serve_tracker, config, store=store, shutdown=shutdown)
            )
            if address.listens_everywhere:
                log.info(
                    "tracker listening on all addresses (%s) port %d; on this machine: %s",
                    address.host or "*",
                    address.port,
                    address.url,
                )
            else:
                log.info("tracker listening on %s", address.url)
            emit(
                "tracker-ready",
                host=address.host,
                port=address.port,
                url=address.url,
                tunnel_port=address.tunnel_port,
            )
            await notifier.notify({"READY": 1, "STATUS": f"tracker on port {address.port}"})
            interval = watchdog_interval_s(os.environ)
            if interval is not None:

                async def watchdog() -> None:
                    with watchdog_scope:
                        await run_watchdog(notifier, interval)

                nursery.start_soon(watchdog)
            await shutdown.wait()
            await notifier.notify({"STOPPING": 1})
            watchdog_scope.cancel()

    return run_service(main)

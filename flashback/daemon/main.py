"""``flashback daemon``: one root nursery for the whole peer.

Start order: bind the peer server (its port comes from ``task_status``),
announce ``peer-server-ready``, open the local control socket, start the web
UI on 127.0.0.1 (announce ``ui-ready`` with its tokened URL), tell systemd
we are ready, then -- only if a tracker is configured -- keep registered,
heartbeat and hold the live link. None of the tracker tasks can delay or take
down the peer server: they retry on their own. SIGTERM/SIGINT fixes one
deadline (:mod:`flashback.shutdown`); inside it the servers drain, the link
closes and we unregister (shielded, at most :data:`UNREGISTER_TIMEOUT_S`);
whatever is left at the deadline is cut, and we exit 0. Any task that crashes
takes the whole daemon down (exit 1) -- never a half-alive process.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Final

import httpx
import trio

from flashback.config import DaemonConfig, ensure_private_dir
from flashback.daemon.access import AccessControl
from flashback.daemon.announce import announce_host
from flashback.daemon.book import PeerBook
from flashback.daemon.context import DaemonContext
from flashback.daemon.control import create_control_app
from flashback.daemon.control_socket import control_socket_path, refuse_if_running
from flashback.daemon.direct import DirectEndpoint
from flashback.daemon.endpoint_bind import local_candidates
from flashback.daemon.hub import EventHub
from flashback.daemon.identity import IdentityStore, Instance, claim_instance
from flashback.daemon.lan import run_lan
from flashback.daemon.link import run_link
from flashback.daemon.peer_tls import PeerTLS
from flashback.daemon.pins import PinStore
from flashback.daemon.reach import (
    BookedGate,
    Gate,
    candidates_of,
    local_target_port,
    peer_of,
    pin_checker,
    run_routes,
)
from flashback.daemon.reflect import Reflector
from flashback.daemon.session import maintain_registration, unregister
from flashback.daemon.stream_ports import run_stream_ports
from flashback.daemon.tracker_api import REQUEST_TIMEOUT_S, HTTPTrackerAPI, TrackerAPI
from flashback.digests import DigestCache, DigestService
from flashback.errors import FlashbackError
from flashback.peer.app import LocalInfo, ShareSettings
from flashback.peer.serve import serve_peer
from flashback.protocol.lan import LanTable
from flashback.protocol.messages import Candidate
from flashback.runner import run_service
from flashback.sdnotify import Notifier, run_watchdog, watchdog_interval_s
from flashback.shutdown import Shutdown
from flashback.streaming.manager import StreamManager
from flashback.ui.serve import serve_ui
from flashback.web import hypercorn_config, serve_quart

log = logging.getLogger(__name__)

#: the digest cache file in the data directory (INTERFACE §7)
DIGEST_CACHE_NAME: Final = "digests.sqlite3"


async def run_tracker_tasks(
    ctx: DaemonContext, api: TrackerAPI, store: IdentityStore, shutdown: Shutdown
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(maintain_registration, ctx, api, store)
        nursery.start_soon(run_link, ctx, shutdown)


def _status_line(ctx: DaemonContext) -> str:
    assert ctx.address is not None
    if not ctx.config.tracker_url:
        tracker = "no tracker"
    else:
        state = "connected" if ctx.tracker_connected else "not connected"
        tracker = f"tracker {ctx.config.tracker_url} {state}"
    return f"peer server on port {ctx.address.port}; {tracker}"


async def report_status(ctx: DaemonContext, notifier: Notifier) -> None:
    """Keep systemd's STATUS= current as the tracker link comes and goes."""
    with ctx.hub.subscribe() as events:
        async for event in events:
            if event["event"] in ("tracker-connected", "tracker-disconnected"):
                await notifier.notify({"STATUS": _status_line(ctx)})


async def run_digests(
    data_dir: Path,
    shutdown: Shutdown,
    *,
    task_status: trio.TaskStatus[DigestService] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The digest service with its cache in the data directory (kept across
    restarts), until shutdown; hashing then stops between two reads."""
    path = ensure_private_dir(data_dir) / DIGEST_CACHE_NAME
    cache = await trio.to_thread.run_sync(DigestCache, path)
    async with trio.open_nursery() as nursery:
        task_status.started(await nursery.start(DigestService(cache).run))
        await shutdown.wait()
        nursery.cancel_scope.cancel()


def lan_port(ctx: DaemonContext) -> int:
    """The port our LAN announcement carries (the SRV port): the direct endpoint's
    (§12); with ``--direct-port off`` the peer server's, which only a ``--host``
    other than 127.0.0.1 makes reachable."""
    if ctx.direct_port is not None:
        return ctx.direct_port
    assert ctx.address is not None
    return ctx.address.port


async def run_lan_for(ctx: DaemonContext, instance: Instance, shutdown: Shutdown) -> None:
    """LAN discovery for this daemon: its table on the context, its events on the hub."""
    ctx.lan = LanTable(instance.fingerprint)
    await run_lan(
        name=ctx.config.name,
        fingerprint=instance.fingerprint,
        port=lan_port(ctx),
        table=ctx.lan,
        shutdown=shutdown,
        emit=ctx.hub.emit,
        peer_id=lambda: ctx.identity.peer_id if ctx.identity else None,
        peer_id_changed=ctx.wait_identity_change,
    )


async def daemon_main(
    config: DaemonConfig,
    shutdown: Shutdown,
    *,
    hub: EventHub | None = None,
    task_status: trio.TaskStatus[DaemonContext] = trio.TASK_STATUS_IGNORED,
) -> None:
    state_dir = ensure_private_dir(config.state_dir)
    socket_path = control_socket_path(state_dir)
    refuse_if_running(socket_path)
    # Held (locked) until the daemon exits: no other daemon can be us meanwhile.
    # In a thread: the first start generates a key.
    instance = await trio.to_thread.run_sync(
        claim_instance, config.data_dir, config.name, config.identity
    )
    with instance:
        log.info("identity %r, fingerprint %s", instance.name, instance.fingerprint)
        if instance.name != config.name and config.identity is None:
            log.warning(
                "another daemon here uses identity %r: this one is identity %r, with its "
                "own key (fingerprint %s); peers list both as %r, told apart by fingerprint "
                "(give this one another --name to avoid that)",
                config.name,
                instance.name,
                instance.fingerprint[:19],
                config.name,
            )
        await _run_daemon_tasks(config, shutdown, socket_path, hub, instance, task_status)


async def _run_daemon_tasks(
    config: DaemonConfig,
    shutdown: Shutdown,
    socket_path: Path,
    hub: EventHub | None,
    instance: Instance,
    task_status: trio.TaskStatus[DaemonContext],
) -> None:
    notifier = Notifier.from_env(os.environ)
    local = LocalInfo(name=config.name)
    ctx = DaemonContext(
        config=config,
        hub=hub or EventHub(),
        local=local,
        keys=instance.keys,
        instance_name=instance.name,
    )
    ctx.access = access = AccessControl.open(
        instance.directory,
        config.share_with,
        emit=ctx.hub.emit,
        # the tracker vouches only while linked: with it down its last list is stale
        online=lambda: ctx.table.peers.values() if ctx.tracker_connected else (),
        # what the tracker vouched for before, kept in the book (§12), with it down too
        booked=lambda: ctx.book.vouched() if ctx.book is not None else (),
    )
    settings = ShareSettings(config.root, config.show_hidden, local)

    ctx.book = await trio.to_thread.run_sync(PeerBook.in_directory, instance.directory)

    async with trio.open_nursery() as nursery:
        digests = await nursery.start(run_digests, config.data_dir, shutdown)
        await nursery.start(ctx.book.run, shutdown)
        ctx.address = await nursery.start(
            partial(
                serve_peer,
                settings,
                config.host,
                config.port,
                shutdown=shutdown,
                digests=digests,
            )
        )
        ctx.announce_host = await trio.to_thread.run_sync(
            announce_host, ctx.address.host, config.tracker_url
        )
        await nursery.start(
            partial(
                serve_quart,
                create_control_app(ctx),
                hypercorn_config(f"unix:{socket_path}", 0),
                shutdown=shutdown,
            )
        )
        ctx.ui_url = await _start_ui(nursery, ctx, config.ui_port, shutdown)
        # Ready once every port a user names is bound: a taken --ui-port is one
        # line and exit 1, never a "ready" that lies a moment before the exit.
        ctx.hub.emit(
            "peer-server-ready", host=ctx.address.host, port=ctx.address.port, url=ctx.address.url
        )
        ctx.hub.emit("ui-ready", url=ctx.ui_url)
        # Stream ports close as soon as shutdown is set (INTERFACE §5).
        streams = await nursery.start(
            partial(run_stream_ports, ctx, shutdown, digests=digests, door=settings.streams)
        )
        tls = PeerTLS(instance.keys)
        gate = BookedGate(ctx, access)
        endpoint = await start_direct_endpoint(nursery, ctx, tls, gate, streams, shutdown)
        if config.lan:  # announces the endpoint's port, so only once it listens
            nursery.start_soon(run_lan_for, ctx, instance, shutdown)
        await notifier.notify({"READY": 1, "STATUS": _status_line(ctx)})
        # systemd's status and watchdog end at shutdown, not with the nursery's
        # deadline: left running they would hold the daemon for the whole budget
        systemd_scope = trio.CancelScope()

        async def talk_to_systemd() -> None:
            with systemd_scope:
                async with trio.open_nursery() as tasks:
                    if notifier.enabled:
                        tasks.start_soon(report_status, ctx, notifier)
                    interval = watchdog_interval_s(os.environ)
                    if interval is not None:
                        tasks.start_soon(run_watchdog, notifier, interval)

        nursery.start_soon(talk_to_systemd)

        # Routes to other peers (tunnels, the direct race, forwards) run with or
        # without a tracker: LAN and book peers are reached by the endpoint alone
        # (§12). They end when shutdown starts, as the tracker link does.
        tracker_scope = trio.CancelScope()
        api: TrackerAPI | None = None
        reflector = Reflector(ctx, endpoint) if endpoint else None
        pins = PinStore.in_data_dir(config.data_dir)
        async with httpx.AsyncClient(
            base_url=config.tracker_url or "http://tracker.invalid", timeout=REQUEST_TIMEOUT_S
        ) as http:
            if config.tracker_url:
                api = HTTPTrackerAPI(http, auth_token=os.environ.get("FLASHBACK_TRACKER_TOKEN"))
                store = instance.identity_store(config.tracker_url)

            async def peer_tasks() -> None:
                with tracker_scope:
                    async with trio.open_nursery() as tasks:
                        await tasks.start(
                            partial(
                                run_routes,
                                ctx,
                                tls=tls,
                                check_pin=pin_checker(pins, ctx),
                                streams=streams,
                                endpoint=endpoint,
                                gate=gate,
                                reflect_before_punch=(
                                    reflector.before_punch if reflector else lambda _i: None
                                ),
                            )
                        )
                        if api is not None:
                            if reflector is not None:
                                tasks.start_soon(reflector.run)
                            await run_tracker_tasks(ctx, api, store, shutdown)

            nursery.start_soon(peer_tasks)
            task_status.started(ctx)
            await shutdown.wait()
            log.info("shutting down")
            await notifier.notify({"STOPPING": 1})
            systemd_scope.cancel()
            tracker_scope.cancel()
            if api is not None:
                await unregister(ctx, api, shutdown)
        # The servers got the same shutdown and drain until its deadline (their
        # shielded sends included); whatever is left then is cut.
        nursery.cancel_scope.deadline = shutdown.deadline
        ctx.set_connected(False)


async def _start_ui(
    nursery: trio.Nursery, ctx: DaemonContext, port: int, shutdown: Shutdown
) -> str:
    """The web UI's tokened URL once it listens; a port it cannot bind is one line."""
    try:
        url: str = await nursery.start(partial(serve_ui, ctx, port, shutdown=shutdown))
    except (OSError, BaseExceptionGroup) as exc:
        error = _only_os_error(exc)
        if error is None:
            raise
        reason = error.strerror or str(error)
        raise FlashbackError(
            f"cannot open the web UI on port {port} (--ui-port): {reason.rpartition(': ')[2]}",
            code="ui_port",
        ) from None
    return url


def _only_os_error(exc: BaseException) -> OSError | None:
    """The OSError *exc* is, or that its nested groups hold alone; else None."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


async def start_direct_endpoint(
    nursery: trio.Nursery,
    ctx: DaemonContext,
    tls: PeerTLS,
    gate: Gate,
    streams: StreamManager,
    shutdown: Shutdown,
) -> DirectEndpoint | None:
    """The direct endpoint (§10.1) unless ``--direct-port off``; announces ``direct-ready``."""
    config = ctx.config
    if config.direct_port is None:
        return None
    endpoint = DirectEndpoint(
        server_context=tls.server_context,
        gate=gate,
        resolve_target=lambda target: local_target_port(ctx, streams, target),
        emit=ctx.hub.emit,
        peer_of=lambda fingerprint: peer_of(ctx.table, fingerprint),
        candidates_of=lambda peer_id: candidates_of(ctx, peer_id),
        carried=ctx.carried,
    )
    ctx.direct_port = await nursery.start(
        partial(
            endpoint.run, config.direct_host, config.direct_port, config.data_dir, stop=shutdown
        )
    )
    ctx.direct = tuple(
        Candidate(host, port)
        for host, port in local_candidates(config.direct_host, ctx.direct_port)
        if endpoint.can_dial(host)
    )
    ctx.hub.emit("direct-ready", host=config.direct_host or "0.0.0.0", port=ctx.direct_port)
    return endpoint


def run_daemon(config: DaemonConfig) -> int:
    return run_service(lambda shutdown: daemon_main(config, shutdown))

"""``serve_peer``: the peer server as a trio service, and ``flashback serve``."""

from __future__ import annotations

from dataclasses import replace

import trio

from flashback.config import ServeConfig
from flashback.digests import DigestService
from flashback.events import emit
from flashback.peer.app import LocalInfo, ShareSettings, create_peer_app
from flashback.peer.index_md import ensure_index_md
from flashback.protocol.hosts import WILDCARDS, is_ip_literal
from flashback.runner import run_service
from flashback.shutdown import Shutdown
from flashback.web import BoundAddress, hypercorn_config, serve_quart


async def serve_peer(
    settings: ShareSettings,
    host: str,
    port: int,
    *,
    shutdown: Shutdown | None = None,
    digests: DigestService | None = None,
    task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *settings.root* until cancelled, or until *shutdown* and its deadline.

    Reports the bound address (the OS's port when *port* is 0) once listening.
    Without a running *digests* service (the daemon shares one with its
    stream ports), the server runs its own with an in-memory cache. A bind
    *host* that is a name is one of the names it serves (``Host``).
    """
    if not is_ip_literal(host) and host not in WILDCARDS:
        settings = replace(settings, host_names=settings.host_names | {host.lower()})
    await trio.to_thread.run_sync(
        lambda: ensure_index_md(settings.root, show_hidden=settings.show_hidden)
    )
    async with trio.open_nursery() as nursery:
        if digests is None:
            digests = await nursery.start(DigestService().run)
        await serve_quart(
            create_peer_app(settings, digests),
            hypercorn_config(host, port),
            shutdown=shutdown,
            task_status=task_status,
        )
        nursery.cancel_scope.cancel()


def announce_peer_server(address: BoundAddress) -> None:
    emit("peer-server-ready", host=address.host, port=address.port, url=address.url)


def run_serve(config: ServeConfig) -> int:
    settings = ShareSettings(config.root, config.show_hidden, LocalInfo(name=config.name))

    async def main(shutdown: Shutdown) -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                lambda task_status: serve_peer(
                    settings,
                    config.host,
                    config.port,
                    shutdown=shutdown,
                    task_status=task_status,
                )
            )
            announce_peer_server(address)

    return run_service(main)

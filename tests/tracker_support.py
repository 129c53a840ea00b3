"""Shared helpers for the tracker's integration tests: a real tracker on
loopback port 0, an httpx client, and trio-websocket links that always close
their TCP socket (trio-websocket 0.12.2's client leaves it open when the
server closes first, which ``-W error`` blames on a later test)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, cast

import httpx
import trio
from trio_websocket import WebSocketConnection, connect_websocket_url

from flashback.config import TrackerConfig
from flashback.protocol.registry import clock_seq
from flashback.shutdown import Shutdown
from flashback.tracker.presence import LocalPresence
from flashback.tracker.serve import serve_tracker_instance
from flashback.tracker.service import Tracker
from flashback.tracker.store import IdentityStore, MemoryStore
from flashback.web import BoundAddress

RECEIVE_TIMEOUT_S: Final = 5.0


def tracker_config(**overrides: Any) -> TrackerConfig:
    """Loopback, port 0, nothing on disk, a rate limit no test trips by accident."""
    base = TrackerConfig(
        host="127.0.0.1",
        port=0,
        database_url="memory://",
        register_rate_per_s=10_000.0,
        register_burst=10_000,
    )
    return dataclasses.replace(base, **overrides)


@dataclass
class Endpoint:
    """Where a tracker listens (one started elsewhere, or by a test's own nursery)."""

    address: BoundAddress

    @property
    def url(self) -> str:
        return self.address.url

    @property
    def ws_url(self) -> str:
        return self.address.url.replace("http://", "ws://", 1) + "/api/peers/ws"


@dataclass
class RunningTracker(Endpoint):
    tracker: Tracker


@asynccontextmanager
async def open_tracker(
    config: TrackerConfig | None = None,
    *,
    store: IdentityStore | None = None,
    shutdown: Shutdown | None = None,
) -> AsyncIterator[RunningTracker]:
    config = config or tracker_config()
    presence = LocalPresence.for_config(config, start_seq=clock_seq())
    tracker = Tracker(config, store or MemoryStore(), presence)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(partial(serve_tracker_instance, tracker, shutdown=shutdown))
        yield RunningTracker(address, tracker)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_client(running: Endpoint) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=running.url, timeout=RECEIVE_TIMEOUT_S) as client:
        yield client


@asynccontextmanager
async def open_link(
    url: str, *, message_queue_size: int = 1000
) -> AsyncIterator[WebSocketConnection]:
    async with trio.open_nursery() as nursery:
        ws = await connect_websocket_url(nursery, url, message_queue_size=message_queue_size)
        try:
            yield ws
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await ws.aclose()
                await ws._stream.aclose()  # the workaround described above
            nursery.cancel_scope.cancel()


async def send(ws: WebSocketConnection, message: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(message))


async def receive(
    ws: WebSocketConnection, *, timeout_s: float = RECEIVE_TIMEOUT_S
) -> dict[str, Any]:
    with trio.fail_after(timeout_s):
        return cast(dict[str, Any], json.loads(await ws.get_message()))


async def hello(
    ws: WebSocketConnection,
    *,
    last_seq: int | None = None,
    peer: dict[str, Any] | None = None,
) -> None:
    message: dict[str, Any] = {"type": "hello", "last_seq": last_seq}
    if peer is not None:
        message.update(peer_id=peer["peer_id"], token=peer["token"])
    await send(ws, message)


def registration(name: str = "laptop", port: int = 8000, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "peer_server": {"host": "127.0.0.1", "port": port},
        "capabilities": {"stream": True},
        **extra,
    }


async def register(client: httpx.AsyncClient, name: str = "laptop", **extra: Any) -> dict[str, Any]:
    response = await client.post("/api/peers/register", json=registration(name, **extra))
    assert response.status_code == 201, response.text
    return cast(dict[str, Any], response.json())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_json_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    if code is not None:
        assert body["error"]["code"] == code, body

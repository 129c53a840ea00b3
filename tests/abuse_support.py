"""Helpers for the abuse tests: real processes attacked from outside.

Memory is read from ``/proc/PID/status`` (VmRSS); a watcher that never
reads is a raw socket with a tiny receive buffer that sends its upgrade and
``hello`` in one go and then never calls ``recv``.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final, cast

import httpx
import trio

from flashback.web import hypercorn_config, serve_quart
from tests.procs import Proc, event_is, start

#: a 253-character host that is a valid RFC 1123 name (3 x 63 + 61 + dots)
LONG_HOST: Final = ".".join(["a" * 63] * 3 + ["b" * 61])
#: capabilities of 4,088 encoded bytes (the tracker allows 4,096)
BIG_CAPABILITIES: Final = {"x": "c" * 4080}
PROBE_TIMEOUT_S: Final = 2.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


async def start_tracker_proc(
    stack: AsyncExitStack, nursery: trio.Nursery, base: Path, env: dict[str, str]
) -> tuple[Proc, str]:
    full_env = {"DATABASE_URL": "memory://", "RELAY_REGISTER_BURST": "10000", **env}
    proc = await stack.enter_async_context(
        start(
            nursery, ["tracker", "--host", "127.0.0.1", "--port", "0"], env=full_env, name="tracker"
        )
    )
    ready = await proc.wait_event(event_is("tracker-ready"))
    return proc, ready["url"]


async def probe(url: str) -> dict[str, Any]:
    """The tracker answers its status within PROBE_TIMEOUT_S (the process is alive)."""
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as http:
        response = await http.get(url + "/api/relay/status")
    assert response.status_code == 200, response.text
    return cast(dict[str, Any], response.json())


def big_registration(index: int, *, big: bool = True) -> dict[str, Any]:
    return {
        "name": f"peer-{index:05d}",
        "peer_server": {"host": LONG_HOST if big else "127.0.0.1", "port": 1000 + index},
        "capabilities": BIG_CAPABILITIES if big else {},
    }


async def register_from(
    url: str, bodies: list[dict[str, Any]], sources: list[str]
) -> list[httpx.Response]:
    """POST each registration, round-robin over loopback source addresses."""
    clients = [
        httpx.AsyncClient(
            base_url=url, timeout=10, transport=httpx.AsyncHTTPTransport(local_address=source)
        )
        for source in sources
    ]
    answers: list[httpx.Response] = []
    try:
        for index, body in enumerate(bodies):
            client = clients[index % len(clients)]
            answers.append(await client.post("/api/peers/register", json=body))
    finally:
        for client in clients:
            await client.aclose()
    return answers


def _masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def silent_watcher(
    host: str, port: int, hello: dict[str, Any], *, source: str | None = None
) -> trio.socket.SocketType:
    """A websocket client that says hello and never reads a byte after the 101.

    (It waits for the 101 first: data before it is a different attack.)
    *source*: the loopback address it connects from.
    """
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    if source is not None:
        await sock.bind((source, 0))
    await sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        "GET /api/peers/ws HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    await sock.send(request)
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:  # the 101, then never another recv
            chunk = await sock.recv(1)
            assert chunk, "the tracker closed during the handshake"
            head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    await sock.send(_masked_text_frame(json.dumps(hello)))
    return sock


async def register_fake_peer(
    nursery: trio.Nursery,
    tracker_url: str,
    app: Any,
    me: dict[str, Any],
    *,
    seen_by: Proc,
    name: str = "evil",
) -> str:
    """Serve the attacker's *app* on loopback and register it as peer *name*.

    Returns its peer id (also put in *me*, which the app reads) once *seen_by*
    (a daemon on the same tracker) has it in its peer table.
    """
    server = await nursery.start(serve_quart, app, hypercorn_config("127.0.0.1", 0))
    async with httpx.AsyncClient(base_url=tracker_url) as http:
        body = {"name": name, "peer_server": {"host": "127.0.0.1", "port": server.port}}
        response = await http.post("/api/peers/register", json=body)
        assert response.status_code == 201, response.text
    me["peer_id"] = peer_id = response.json()["peer_id"]
    await seen_by.wait_event(
        lambda e: e.get("event") == "peer-joined" and e["peer"]["name"] == name
    )
    return str(peer_id)


def queued_bytes(sock: trio.socket.SocketType) -> int:
    """Bytes waiting in *sock*'s receive queue (the server has begun to answer)."""
    import array
    import fcntl
    import termios

    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    return buf[0]


async def silent_get(
    host: str, port: int, path: str, *, source: str | None = None
) -> trio.socket.SocketType:
    """An HTTP client that sends one GET and never reads the answer."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    if source is not None:
        await sock.bind((source, 0))
    await sock.connect((host, port))
    await sock.send(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    return sock

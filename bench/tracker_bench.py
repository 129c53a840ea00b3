"""Tracker benchmark: heartbeat throughput and websocket fan-out latency.

One run measures, on loopback only, each server in its own process:

1. heartbeat POSTs per second with 50 keep-alive connections, against the
   tracker and against a bare Hypercorn ASGI app that answers ``{}`` (the
   ceiling for this stack); target >= 0.9x;
2. with 1,000 and 5,000 websocket watchers: the time from a registration
   to the *last* watcher's ``peer-joined``, p50/p99 over several rounds,
   against a minimal quart-trio broadcast server; target p99 <= 1.2x;
3. the tracker's RSS with 5,000 watchers connected.

The load generator is plain trio on raw sockets (pre-encoded requests, a
minimal websocket frame reader) so the client costs as little as possible;
both servers are measured with the same client. Usage::

    .venv/bin/python bench/tracker_bench.py [--duration-s 5] [--watchers 1000,5000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import trio

HOST: Final = "127.0.0.1"
CONNECTIONS: Final = 50
CONNECT_BATCH: Final = 200
ROUND_TIMEOUT_S: Final = 30.0
STARTUP_TIMEOUT_S: Final = 15.0
#: every client of a bench comes from one loopback address: lift the
#: per-address shares (docs/INTERFACE.md §2.1) that would close its links
UNSHARED: Final = {
    "RELAY_MAX_LINKS": "1000000",
    "RELAY_MAX_LINKS_PER_ADDRESS": "1000000",
    "RELAY_MAX_PEERS_PER_ADDRESS": "1000000",
}


# -- the baseline servers (run as subprocesses of this script) ---------------------


async def _serve_baseline_http() -> None:
    """A bare ASGI app answering ``{}``: Hypercorn's ceiling on this machine."""
    from flashback.tracker.serve import LISTEN_BACKLOG
    from flashback.web import hypercorn_config, serve_quart

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    config = hypercorn_config(HOST, 0, backlog=LISTEN_BACKLOG)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_quart, app, config)
        _ready(address.port)


async def _serve_baseline_ws() -> None:
    """A minimal quart-trio broadcast server: register -> one frame to everyone."""
    from quart import request, websocket
    from quart_trio import QuartTrio

    from flashback.tracker.serve import LISTEN_BACKLOG
    from flashback.web import hypercorn_config, serve_quart

    app = QuartTrio(__name__)
    channels: set[trio.MemorySendChannel[str]] = set()
    seq = 0

    @app.post("/api/peers/register")
    async def register() -> dict[str, Any]:
        nonlocal seq
        seq += 1
        body = await request.get_json()
        text = json.dumps({"type": "peer-joined", "seq": seq, "peer": body})
        for channel in list(channels):
            try:
                channel.send_nowait(text)
            except trio.WouldBlock:
                channels.discard(channel)
        return {"peer_id": str(seq)}

    @app.websocket("/api/peers/ws")
    async def ws() -> None:
        await websocket.receive()  # the hello
        send, receive = trio.open_memory_channel[str](1024)
        channels.add(send)
        await websocket.send('{"type": "snapshot", "seq": 0, "peers": []}')
        try:
            async for text in receive:
                await websocket.send(text)
        finally:
            channels.discard(send)

    config = hypercorn_config(HOST, 0, backlog=LISTEN_BACKLOG)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_quart, app, config)
        _ready(address.port)


def _ready(port: int) -> None:
    print(json.dumps({"event": "tracker-ready", "port": port}), flush=True)


# -- starting a server ----------------------------------------------------------------


@dataclass
class Server:
    process: trio.Process
    port: int

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


async def start_server(kind: str, nursery: trio.Nursery) -> Server:
    if kind == "tracker":
        command = [sys.executable, "-m", "flashback", "tracker", "--host", HOST, "--port", "0",
                   "--database-url", "memory://"]  # fmt: skip
    else:
        command = [sys.executable, __file__, "--serve", kind]
    env = {**os.environ, "RELAY_REGISTER_RATE": "100000", "RELAY_REGISTER_BURST": "100000",
           **UNSHARED}  # fmt: skip
    run = partial(
        trio.run_process, command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=env, check=False,
    )  # fmt: skip
    process = await nursery.start(run)
    line = b""
    with trio.fail_after(STARTUP_TIMEOUT_S):
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise RuntimeError(f"{kind} server exited early")
            line += chunk
    return Server(process, json.loads(line)["port"])


async def stop_server(server: Server) -> None:
    server.process.terminate()
    with trio.move_on_after(5):
        await server.process.wait()
    if server.process.returncode is None:
        server.process.kill()
        await server.process.wait()
    assert server.process.stdout is not None
    await server.process.stdout.aclose()


# -- a tiny HTTP/1.1 keep-alive client --------------------------------------------------


class HTTPConnection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, port: int) -> HTTPConnection:
        return cls(await trio.open_tcp_stream(HOST, port))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        await self.stream.send_all(raw)
        while b"\r\n\r\n" not in self.buffer:
            await self._fill()
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        self.buffer = bytearray(rest)
        while len(self.buffer) < length:
            await self._fill()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return status, body

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buffer += data


def http_request(method: str, path: str, body: bytes = b"", token: str | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Content-Length: {len(body)}",
             "Content-Type: application/json"]  # fmt: skip
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def registration_body(name: str) -> bytes:
    body = {"name": name, "peer_server": {"host": HOST, "port": 8000}, "capabilities": {}}
    return json.dumps(body).encode()


# -- 1. heartbeat throughput --------------------------------------------------------------


async def heartbeat_rate(port: int, *, duration_s: float, register: bool) -> float:
    """Requests per second with CONNECTIONS keep-alive connections for *duration_s*."""
    connections = [await HTTPConnection.open(port) for _ in range(CONNECTIONS)]
    requests: list[bytes] = []
    for i, connection in enumerate(connections):
        if register:
            raw = http_request("POST", "/api/peers/register", registration_body(f"hb{i}"))
            status, body = await connection.request(raw)
            assert status == 201, body
            peer = json.loads(body)
            beat = json.dumps({"peer_id": peer["peer_id"]}).encode()
            requests.append(http_request("POST", "/api/peers/heartbeat", beat, peer["token"]))
        else:
            requests.append(http_request("POST", "/api/peers/heartbeat", b'{"peer_id": "x"}', "t"))
    return await hammer_rate(connections, requests, duration_s=duration_s)


async def hammer_rate(
    connections: list[HTTPConnection], requests: list[bytes], *, duration_s: float
) -> float:
    """Requests/s with each connection sending its request back to back; closes them."""
    done = 0

    async def hammer(connection: HTTPConnection, raw: bytes) -> None:
        nonlocal done
        while True:
            status, _ = await connection.request(raw)
            assert status == 200, status
            done += 1

    start = trio.current_time()
    with trio.move_on_after(duration_s):
        async with trio.open_nursery() as nursery:
            for connection, raw in zip(connections, requests, strict=True):
                nursery.start_soon(hammer, connection, raw)
    elapsed = trio.current_time() - start
    for connection in connections:
        await connection.stream.aclose()
    return done / elapsed


# -- 2. websocket fan-out -----------------------------------------------------------------


class Watcher:
    """A raw websocket client that only notes when a ``peer-joined`` arrives."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def connect(cls, port: int) -> Watcher:
        stream = await trio.open_tcp_stream(HOST, port)
        handshake = (
            f"GET /api/peers/ws HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await stream.send_all(handshake.encode())
        watcher = cls(stream)
        while b"\r\n\r\n" not in watcher.buffer:
            await watcher._fill()
        head, _, rest = bytes(watcher.buffer).partition(b"\r\n\r\n")
        assert b" 101 " in head.split(b"\r\n")[0], head
        watcher.buffer = bytearray(rest)
        await stream.send_all(_masked_text_frame(b'{"type": "hello", "last_seq": null}'))
        await watcher.next_frame()  # the snapshot
        return watcher

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise ConnectionError("server closed the websocket")
        self.buffer += data

    async def next_frame(self) -> bytes:
        while True:
            buffer = self.buffer
            if len(buffer) >= 2:
                length, offset = buffer[1] & 0x7F, 2
                if length == 126:
                    length, offset = int.from_bytes(buffer[2:4], "big"), 4
                elif length == 127:
                    length, offset = int.from_bytes(buffer[2:10], "big"), 10
                if len(buffer) >= offset and len(buffer) >= offset + length:
                    payload = bytes(buffer[offset : offset + length])
                    del buffer[: offset + length]
                    return payload
            await self._fill()

    async def watch(self, arrivals: Callable[[bytes, float], None]) -> None:
        while True:
            frame = await self.next_frame()
            arrivals(frame, trio.current_time())


def _masked_text_frame(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def _nothing() -> None:
    pass


async def fan_out(
    ports: list[int],
    *,
    watchers: int,
    rounds: int,
    on_connected: Callable[[], Awaitable[None]] = _nothing,
) -> list[float]:
    """Seconds from each registration (sent to ports[0]) to its last watcher's
    ``peer-joined``; the watchers are spread over *ports* round-robin."""
    connected: list[Watcher] = []

    async def connect_one(port: int) -> None:
        connected.append(await Watcher.connect(port))

    for start in range(0, watchers, CONNECT_BATCH):
        async with trio.open_nursery() as nursery:
            for i in range(start, min(start + CONNECT_BATCH, watchers)):
                nursery.start_soon(connect_one, ports[i % len(ports)])
    await on_connected()

    latencies: list[float] = []
    pending = 0
    last_arrival = 0.0
    all_arrived = trio.Event()

    def arrived(frame: bytes, when: float) -> None:
        nonlocal pending, last_arrival
        if b'"peer-joined"' in frame:
            pending -= 1
            last_arrival = max(last_arrival, when)
            if pending == 0:
                all_arrived.set()

    poster = await HTTPConnection.open(ports[0])
    async with trio.open_nursery() as nursery:
        for watcher in connected:
            nursery.start_soon(watcher.watch, arrived)
        for r in range(-1, rounds):  # round -1 warms both sides up, not counted
            pending, all_arrived = watchers, trio.Event()
            raw = http_request("POST", "/api/peers/register", registration_body(f"fan{r}"))
            sent = trio.current_time()
            with trio.fail_after(ROUND_TIMEOUT_S):
                status, _ = await poster.request(raw)
                assert status in (200, 201), status
                await all_arrived.wait()
            if r >= 0:
                latencies.append(last_arrival - sent)
            await trio.sleep(0.05)  # let both sides settle between rounds
        nursery.cancel_scope.cancel()
    await poster.stream.aclose()
    for watcher in connected:
        await watcher.stream.aclose()
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# -- the run --------------------------------------------------------------------------------


async def run(duration_s: float, watcher_counts: list[int], rounds: int) -> dict[str, Any]:
    from flashback.httpserver import raise_open_file_limit

    raise_open_file_limit()
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        for kind in ("baseline-http", "tracker"):
            server = await start_server(kind, nursery)
            await heartbeat_rate(server.port, duration_s=1.0, register=kind == "tracker")  # warm
            results[f"heartbeat_rps_{kind}"] = await heartbeat_rate(
                server.port, duration_s=duration_s, register=kind == "tracker"
            )
            await stop_server(server)
        for count in watcher_counts:
            for kind in ("baseline-ws", "tracker"):
                server = await start_server(kind, nursery)

                async def note_rss(
                    server: Server = server, kind: str = kind, count: int = count
                ) -> None:
                    await trio.sleep(0.5)
                    results[f"rss_mib_{kind}_{count}"] = round(server.rss_mib(), 1)

                latencies = await fan_out(
                    [server.port], watchers=count, rounds=rounds, on_connected=note_rss
                )
                results[f"fanout_{kind}_{count}_p50_ms"] = round(
                    percentile(latencies, 0.5) * 1e3, 1
                )
                results[f"fanout_{kind}_{count}_p99_ms"] = round(
                    percentile(latencies, 0.99) * 1e3, 1
                )
                results[f"fanout_{kind}_{count}_mean_ms"] = round(
                    statistics.fmean(latencies) * 1e3, 1
                )
                await stop_server(server)
    results["heartbeat_ratio"] = round(
        results["heartbeat_rps_tracker"] / results["heartbeat_rps_baseline-http"], 3
    )
    for count in watcher_counts:
        results[f"fanout_p99_ratio_{count}"] = round(
            results[f"fanout_tracker_{count}_p99_ms"]
            / results[f"fanout_baseline-ws_{count}_p99_ms"],
            3,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", choices=["baseline-http", "baseline-ws"], help=argparse.SUPPRESS)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--watchers", default="1000,5000")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    if args.serve == "baseline-http":
        trio.run(_serve_baseline_http)
        return
    if args.serve == "baseline-ws":
        from flashback.httpserver import raise_open_file_limit

        raise_open_file_limit()
        trio.run(_serve_baseline_ws)
        return
    counts = [int(n) for n in args.watchers.split(",") if n]
    results = trio.run(run, args.duration_s, counts, args.rounds)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

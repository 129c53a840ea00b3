"""Tracker on Redis: does a second instance add capacity?

One run, loopback only, a private ``redis-server`` (no persistence) and real
``flashback tracker`` processes with ``DATABASE_URL=redis://...``:

1. heartbeat POSTs per second with 50 keep-alive connections, all to one
   instance, then split 25/25 over two instances sharing the Redis;
2. push latency: the time from a registration (posted to instance 1) to the
   *last* of 2,000 watchers' ``peer-joined``, with all watchers on one instance
   vs 1,000 on each of two; p50/p99 over several rounds.

The load generator is the one of ``bench/tracker_bench.py`` (raw trio sockets).
Everything shares this machine's cores: the client, Redis and the trackers.
Usage::

    .venv/bin/python bench/tracker_redis_bench.py [--duration-s 5] [--watchers 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tracker_bench import (
    CONNECTIONS,
    HOST,
    STARTUP_TIMEOUT_S,
    UNSHARED,
    HTTPConnection,
    Server,
    fan_out,
    hammer_rate,
    http_request,
    percentile,
    registration_body,
    stop_server,
)

TRACKERS: Final = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def start_redis(nursery: trio.Nursery, directory: str) -> tuple[trio.Process, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian package: redis-server)")
    port = free_port()
    command = [binary, "--port", str(port), "--bind", HOST, "--dir", directory,
               "--save", "", "--appendonly", "no"]  # fmt: skip
    run = partial(trio.run_process, command, stdout=subprocess.DEVNULL, check=False)
    process = await nursery.start(run)
    with trio.fail_after(5):
        while True:
            try:
                stream = await trio.open_tcp_stream(HOST, port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            break
    return process, f"redis://{HOST}:{port}/0"


async def start_tracker(nursery: trio.Nursery, url: str) -> Server:
    command = [sys.executable, "-m", "flashback", "tracker", "--host", HOST, "--port", "0",
               "--database-url", url]  # fmt: skip
    env = {**os.environ, "RELAY_REGISTER_RATE": "100000", "RELAY_REGISTER_BURST": "100000",
           "RELAY_PEER_TTL": "600", **UNSHARED}  # fmt: skip
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
                raise RuntimeError("tracker exited early")
            line += chunk
    return Server(process, json.loads(line)["port"])


async def heartbeat_rate(ports: list[int], *, duration_s: float) -> float:
    """Heartbeats/s with CONNECTIONS keep-alive connections spread over *ports*."""
    connections = [await HTTPConnection.open(ports[i % len(ports)]) for i in range(CONNECTIONS)]
    requests: list[bytes] = []
    for i, connection in enumerate(connections):
        raw = http_request("POST", "/api/peers/register", registration_body(f"hb{i}"))
        status, body = await connection.request(raw)
        assert status == 201, body
        peer = json.loads(body)
        beat = json.dumps({"peer_id": peer["peer_id"]}).encode()
        requests.append(http_request("POST", "/api/peers/heartbeat", beat, peer["token"]))
    return await hammer_rate(connections, requests, duration_s=duration_s)


async def run(duration_s: float, watchers: int, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as directory:
        async with trio.open_nursery() as nursery:
            redis, url = await start_redis(nursery, directory)
            trackers = [await start_tracker(nursery, url) for _ in range(TRACKERS)]
            ports = [t.port for t in trackers]
            one = await heartbeat_rate(ports[:1], duration_s=duration_s)
            two = await heartbeat_rate(ports, duration_s=duration_s)
            results["heartbeats_per_s"] = {"1 instance": round(one), "2 instances": round(two),
                                           "scaling": round(two / one, 2)}  # fmt: skip
            for label, subset in (("1 instance", ports[:1]), ("2 instances", ports)):
                latencies = await fan_out(subset, watchers=watchers, rounds=rounds)
                results[f"push_{watchers}_watchers_ms {label}"] = {
                    "p50": round(percentile(latencies, 0.5) * 1000, 1),
                    "p99": round(percentile(latencies, 0.99) * 1000, 1),
                }
            for tracker in trackers:
                await stop_server(tracker)
            redis.terminate()
            await redis.wait()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--watchers", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    results = trio.run(run, args.duration_s, args.watchers, args.rounds)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Heartbeats under wrk: the real ``flashback tracker`` process vs a bare Hypercorn app.

The load arrives the way a user's does: ``wrk`` (C, keep-alive, 50
connections by default) POSTs ``/api/peers/heartbeat`` with a JSON body and a
bearer token. A Lua script cycles through 50 registered peers (one request
each in turn), so the tracker does its real work: token check, presence
update, metrics, JSON answer.

Servers, each its own process on a free loopback port:

* ``tracker`` -- ``python -m flashback tracker --database-url memory://``
  exactly as a user starts it (default logging, tunnel port on);
* ``hypercorn`` -- stock Hypercorn (``hypercorn.trio.serve``, default
  config: no access log) serving a bare ASGI app that reads the body and
  answers with the bytes the tracker answered;
* ``bare+web`` -- the same bare app served the way flashback serves apps
  (``flashback.web.hypercorn_config`` + ``serve_quart``: the bounded
  connection class of ``flashback/httpserver.py`` and the access-log
  settings), which tells the server stack's share of a loss from the
  tracker app's.

Runs are interleaved and the order rotates each round; one warm-up run per
server is not counted; figures are medians. "server CPU" is user+sys of the
server process per request (from /proc). Every run must be all
2xx: a 401 is cheaper than a heartbeat, so an error would flatter. Usage::

    PYTHONPATH=. .venv/bin/python bench/bench_tracker_heartbeat.py [--runs 3] [--duration-s 5]
        [--before TREE]   # also the tracker of another checkout, e.g. the commit before a fix

Exit status 2 if wrk is missing (``apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Final

from proc_cpu import cpu_s

HOST: Final = "127.0.0.1"
PATH: Final = "/api/peers/heartbeat"
START_TIMEOUT_S: Final = 20.0
SCRIPT: Final = os.path.abspath(__file__)
#: the tracker as a bench needs it: every client is 127.0.0.1, peers must not expire
TRACKER_ENV: Final = {
    "RELAY_REGISTER_RATE": "100000",
    "RELAY_REGISTER_BURST": "100000",
    "RELAY_MAX_PEERS_PER_ADDRESS": "1000000",
    "RELAY_PEER_TTL": "3600",
    "FLASHBACK_LAN": "off",
}


# -- the baseline servers (this script with --serve) ----------------------------------


def bare_app(body: bytes, content_type: bytes) -> Any:
    """Read the whole request body, answer 200 with *body*: nothing else."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]

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
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def serve(kind: str, body: bytes, content_type: bytes) -> None:
    import trio

    app = bare_app(body, content_type)

    async def main() -> None:
        if kind == "hypercorn":
            from hypercorn.config import Config
            from hypercorn.trio import serve as hypercorn_serve

            config = Config()
            config.bind = [f"{HOST}:0"]
            config.backlog = 4096
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(hypercorn_serve, app, config)
                ready(int(binds[0].rsplit(":", 1)[1]))
        else:
            from flashback.tracker.serve import LISTEN_BACKLOG
            from flashback.web import hypercorn_config, serve_quart

            config = hypercorn_config(HOST, 0, backlog=LISTEN_BACKLOG)
            async with trio.open_nursery() as nursery:
                address = await nursery.start(serve_quart, app, config)
                ready(address.port)

    trio.run(main)


def ready(port: int) -> None:
    print(json.dumps({"event": "tracker-ready", "port": port}), flush=True)


# -- the bench --------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


def start(name: str, command: list[str], env: dict[str, str], cwd: str | None = None) -> Server:
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **env},
        cwd=cwd,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        event = json.loads(line)
        if event.get("event") == "tracker-ready":
            return Server(name, process, int(event["port"]))
    process.kill()
    raise RuntimeError(f"{name} did not start")


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def post(port: int, path: str, body: bytes, token: str | None = None) -> tuple[int, bytes, str]:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    answer = response.read()
    content_type = response.getheader("content-type", "")
    connection.close()
    return response.status, answer, content_type


def register_peers(port: int, count: int) -> list[tuple[str, str]]:
    peers = []
    for i in range(count):
        body = {"name": f"hb{i}", "peer_server": {"host": HOST, "port": 8000}, "capabilities": {}}
        status, answer, _ = post(port, "/api/peers/register", json.dumps(body).encode())
        if status != 201:
            raise RuntimeError(f"register answered {status}: {answer!r}")
        peer = json.loads(answer)
        peers.append((peer["peer_id"], peer["token"]))
    return peers


def lua_script(peers: list[tuple[str, str]]) -> str:
    """One prepared request per peer; each connection takes them in turn."""
    rows = ",\n".join(
        f'  {{{json.dumps(json.dumps({"peer_id": peer_id}))}, "Bearer {token}"}}'
        for peer_id, token in peers
    )
    return (
        "local peers = {\n" + rows + "\n}\n"
        "local requests = {}\n"
        "local i = 0\n"
        "function init(args)\n"
        "  for k, p in ipairs(peers) do\n"
        "    requests[k] = wrk.format('POST', '" + PATH + "',\n"
        "      {['Content-Type'] = 'application/json', ['Authorization'] = p[2]}, p[1])\n"
        "  end\n"
        "end\n"
        "function request()\n"
        "  i = i % #requests + 1\n"
        "  return requests[i]\n"
        "end\n"
    )


def run_wrk(
    server: Server, script: str, duration_s: float, connections: int, threads: int
) -> tuple[float, float]:
    cpu_before = cpu_s(server.process.pid)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", "-s", script,
         f"http://{HOST}:{server.port}{PATH}"],
        capture_output=True, text=True, check=True, timeout=duration_s + 30,
    ).stdout  # fmt: skip
    cpu = cpu_s(server.process.pid) - cpu_before
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise RuntimeError(f"{server.name}: wrk saw failures:\n{out}")
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]  # wrk always prints this line
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]  # wrk always prints this line
    return rps, cpu / total * 1e6


def start_tracker(name: str, tree: str | None = None) -> Server:
    """``flashback tracker`` from this tree, or from *tree* (another checkout's root)."""
    env = dict(TRACKER_ENV)
    if tree is not None:  # -m puts the working directory first on sys.path
        tree = os.path.abspath(tree)
        env["PYTHONPATH"] = tree
    command = [sys.executable, "-m", "flashback", "tracker", "--host", HOST, "--port", "0",
               "--tunnel-port", "0", "--database-url", "memory://"]  # fmt: skip
    return start(name, command, env, cwd=tree)


def bench(
    runs: int, duration_s: float, connections: int, threads: int, peers: int, before: str | None
) -> int:
    python = sys.executable
    servers = [start_tracker("tracker")]
    scripts: dict[str, str] = {}
    try:
        if before is not None:
            servers.append(start_tracker("before", before))
        for tracker in servers:  # its own peers: ids and tokens are per tracker
            registered = register_peers(tracker.port, peers)
            with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
                lua.write(lua_script(registered))
            scripts[tracker.name] = lua.name
            peer_id, token = registered[0]
            status, answer, content_type = post(
                tracker.port, PATH, json.dumps({"peer_id": peer_id}).encode(), token
            )
            if status != 200:
                raise RuntimeError(f"{tracker.name}: heartbeat answered {status}: {answer!r}")
        for kind in ("hypercorn", "bare+web"):
            servers.append(
                start(kind, [python, SCRIPT, "--serve", kind, answer.decode(), content_type], {})
            )
            scripts[kind] = scripts[servers[0].name]  # any body will do: it is not read
        for server in servers:  # warm-up, not counted
            run_wrk(server, scripts[server.name], 1.0, connections, threads)
        for index in range(runs):
            order = servers[index % len(servers) :] + servers[: index % len(servers)]
            line = []
            for server in order:
                rps, cpu = run_wrk(server, scripts[server.name], duration_s, connections, threads)
                server.rps.append(rps)
                server.cpu_us.append(cpu)
                line.append(f"{server.name} {rps:7.0f}")
            print(f"run {index + 1}: " + "   ".join(line) + "  requests/s", flush=True)
    finally:
        for server in servers:
            stop(server)
        for path in set(scripts.values()):
            os.unlink(path)

    print()
    print(
        f"POST {PATH} under wrk -t{threads} -c{connections} -d{duration_s:g}s, "
        f"{peers} peers in turn, {runs} interleaved runs each"
    )
    print(f"answer: {answer.decode().strip()} ({content_type})")
    if before is not None:
        print(f"before: the tracker from {before}")
    print(f"{'server':10} {'median req/s':>12} {'min':>7} {'max':>7} {'server CPU us/req':>18}")
    for server in servers:
        print(
            f"{server.name:10} {statistics.median(server.rps):12.0f} {min(server.rps):7.0f} "
            f"{max(server.rps):7.0f} {statistics.median(server.cpu_us):18.0f}"
        )
    reference = next(s for s in servers if s.name == "hypercorn")
    base, base_cpu = statistics.median(reference.rps), statistics.median(reference.cpu_us)
    for server in servers:
        if server.name != "hypercorn":
            ratio = statistics.median(server.rps) / base
            cpu_ratio = statistics.median(server.cpu_us) / base_cpu
            print(
                f"ratio {server.name}/hypercorn = {ratio:.2f}x requests/s, "
                f"{cpu_ratio:.2f}x CPU per request"
            )
    print()
    python_version = platform.python_version()
    print(f"machine: nproc {os.cpu_count()}, {platform.platform()}, Python {python_version}")
    version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    print(f"wrk: {(version.stdout or version.stderr).splitlines()[0].split(' [')[0]}")
    with open("/proc/loadavg") as loadavg:
        print(f"load average at end: {' '.join(loadavg.read().split()[:3])}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (-t)")
    parser.add_argument("--peers", type=int, default=50)
    parser.add_argument(
        "--before",
        metavar="TREE",
        help="also run the tracker of another checkout (its root, holding flashback/)",
    )
    parser.add_argument(
        "--serve", nargs=3, metavar=("KIND", "BODY", "TYPE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve:
        kind, body, content_type = args.serve
        serve(kind, body.encode(), content_type.encode())
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk); cannot compare", file=sys.stderr)
        return 2
    return bench(
        args.runs, args.duration_s, args.connections, args.threads, args.peers, args.before
    )


if __name__ == "__main__":
    sys.exit(main())

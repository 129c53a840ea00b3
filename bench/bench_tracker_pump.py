"""The real ``flashback tracker`` process's tunnel port vs socat, raw bytes both ends.

``bench_tunnel_pump.py`` drives the pump in a process that does nothing
else; this one measures what a user runs. The bench starts
``python -m flashback tracker`` (memory store, tunnel port on), registers an
owner (with a fingerprint) and a requester, links both over the websocket
with ``hello``, and for every run asks for a tunnel exactly as a daemon does
(``tunnel-request`` -> one ``tunnel-invite`` on each link, docs/INTERFACE.md
§6.2). Then two raw TCP sockets join with ``FLASHBACK-TUNNEL 1 <key>``, read
``OK``, and one sends ``--size-mib`` MiB to the other -- no TLS, so the
figures are the tracker's alone.

Compared in the same invocation, runs interleaved, order rotating each round,
one warm-up run each, medians:

* ``tracker``: the real process from this tree;
* ``before``: the real process from another checkout (``--before TREE``);
* ``pump alone``: ``bench_tunnel_pump.py --serve`` (the tunnel port and its
  pump in a process with nothing else);
* ``socat``: ``socat -b 1048576`` relaying between the same sender and receiver.

The sender and receiver are those of ``bench_tunnel_pump.py`` (blocking
``sendall``/``recv_into`` at C speed in worker threads). Besides MB/s the table
shows the relay's CPU per GiB and its context switches per MiB (voluntary =
the relay slept in ``epoll_wait`` and was woken: its wakeups; involuntary =
preempted), from ``/proc/PID/status`` and ``/proc/PID/stat``, and how often
the receiving client's thread was woken per MiB (each wakeup is a delivery
the relay's sends caused: fewer, larger pushes mean fewer). Usage::

    PYTHONPATH=. .venv/bin/python bench/bench_tracker_pump.py [--size-mib 1024] [--runs 3]
        [--before TREE]   # also the tracker of another checkout, e.g. the commit before a fix

Exit status 2 if socat is missing (``apt-get install -y socat``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import trio
from bench_tunnel_pump import (
    RECV_BUFFER_BYTES,
    RUN_TIMEOUT_S,
    SEND_BLOCK_BYTES,
    SOCAT_BUFFER_BYTES,
    free_port,
    is_listening,
    receive_blocking,
    send_blocking,
    socat_version,
    start_tracker,
    stop,
    tunnel_pair,
)
from proc_cpu import cpu_s
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

HOST: Final = "127.0.0.1"
START_TIMEOUT_S: Final = 20.0
INVITE_TIMEOUT_S: Final = 10.0
MiB: Final = 1024 * 1024
GiB: Final = 1024 * MiB
FINGERPRINT: Final = "sha256:" + "ab" * 32
TRACKER_ENV: Final = {
    "RELAY_REGISTER_RATE": "100000",
    "RELAY_REGISTER_BURST": "100000",
    "RELAY_MAX_PEERS_PER_ADDRESS": "1000000",
    "RELAY_PEER_TTL": "3600",
    "FLASHBACK_LAN": "off",
}


def context_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of *pid*'s main thread so far."""
    counts = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if "ctxt_switches" in line:
                name, value = line.split(":")
                counts[name] = int(value)
    return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]


@dataclass
class Sample:
    mb_s: float
    cpu_s_per_gib: float
    wakeups_per_mib: float
    preempted_per_mib: float
    #: how often the receiving client's thread was woken per MiB
    receiver_wakeups_per_mib: float = 0.0


def thread_switches(tid: int) -> int:
    """Voluntary context switches of this process's thread *tid*."""
    with open(f"/proc/self/task/{tid}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches"):
                return int(line.split(":")[1])
    raise KeyError(tid)


#: wakeups of the receiving thread in the last transfer
last_receiver_wakeups = 0


def receive_counting(sock: socket.socket, size_bytes: int, buffer: bytearray) -> float:
    """bench_tunnel_pump's receiver, counting how often its thread slept and woke."""
    global last_receiver_wakeups
    tid = threading.get_native_id()
    before = thread_switches(tid)
    done = receive_blocking(sock, size_bytes, buffer)
    last_receiver_wakeups = thread_switches(tid) - before
    return done


async def transfer(
    sender: socket.socket, receiver: socket.socket, size_bytes: int, block: memoryview
) -> float:
    """bench_tunnel_pump.timed_transfer, with the receiver's wakeups counted."""
    buffer = bytearray(RECV_BUFFER_BYTES)
    with trio.fail_after(RUN_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            start = time.perf_counter()
            nursery.start_soon(trio.to_thread.run_sync, send_blocking, sender, size_bytes, block)
            done = await trio.to_thread.run_sync(receive_counting, receiver, size_bytes, buffer)
    return done - start


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(cast(float, getattr(sample, name)) for sample in self.samples)


async def measured(pid: int, size_bytes: int, transfer: Callable[[], Awaitable[float]]) -> Sample:
    cpu_before, (voluntary, involuntary) = cpu_s(pid), context_switches(pid)
    seconds = await transfer()
    cpu = cpu_s(pid) - cpu_before
    voluntary_after, involuntary_after = context_switches(pid)
    mib = size_bytes / MiB
    return Sample(
        size_bytes / seconds / 1e6,
        cpu / (size_bytes / GiB),
        (voluntary_after - voluntary) / mib,
        (involuntary_after - involuntary) / mib,
        last_receiver_wakeups / mib,
    )


# -- the real tracker, and two linked peers --------------------------------------------


@dataclass
class Link:
    """One peer's websocket, with the invites it received by request id."""

    ws: WebSocketConnection
    invites: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrived: trio.Event = field(default_factory=trio.Event)

    async def read_forever(self) -> None:
        while True:
            try:
                message = json.loads(await self.ws.get_message())
            except ConnectionClosed:  # the tracker is stopping: the bench is done
                return
            if message.get("type") == "tunnel-invite":
                self.invites[message["request_id"]] = message
                self.arrived.set()
            elif message.get("type") == "tunnel-error":
                raise RuntimeError(f"tracker refused the tunnel: {message}")

    async def invite(self, request_id: str) -> dict[str, Any]:
        with trio.fail_after(INVITE_TIMEOUT_S):
            while request_id not in self.invites:
                self.arrived = trio.Event()
                await self.arrived.wait()
        return self.invites.pop(request_id)


@dataclass
class RealTracker:
    name: str
    process: trio.Process
    port: int
    tunnel_port: int
    owner: Link | None = None
    requester: Link | None = None
    owner_id: str = ""
    requests: int = 0

    async def pair(self) -> tuple[socket.socket, socket.socket]:
        """A tunnel as the daemons ask for one: (sender = requester, receiver = owner)."""
        assert self.owner is not None and self.requester is not None
        self.requests += 1
        request_id = f"bench{self.requests}"
        request = {"type": "tunnel-request", "request_id": request_id, "to": self.owner_id}
        await self.requester.ws.send_message(json.dumps(request))
        to_requester = await self.requester.invite(request_id)
        to_owner = await self.owner.invite(request_id)
        assert to_requester["port"] == to_owner["port"] == self.tunnel_port
        keys = (to_requester["key"], to_owner["key"])
        return await trio.to_thread.run_sync(tunnel_pair, self.tunnel_port, keys)


async def start_real_tracker(name: str, tree: str | None, nursery: trio.Nursery) -> RealTracker:
    env = {**os.environ, **TRACKER_ENV}
    if tree is not None:  # -m puts the working directory first on sys.path
        env["PYTHONPATH"] = tree
    command = [sys.executable, "-m", "flashback", "tracker", "--host", HOST, "--port", "0",
               "--tunnel-port", "0", "--database-url", "memory://"]  # fmt: skip
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=tree
    )
    assert process.stdout is not None
    buffer = b""
    with trio.fail_after(START_TIMEOUT_S):
        while True:
            while b"\n" not in buffer:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"{name}: the tracker ended early")
                buffer += chunk
            line, buffer = buffer.split(b"\n", 1)
            event = json.loads(line)
            if event.get("event") == "tracker-ready":
                break
    tracker = RealTracker(name, process, int(event["port"]), int(event["tunnel_port"]))
    owner_id, owner_token = await register(tracker.port, "owner", FINGERPRINT)
    requester_id, requester_token = await register(tracker.port, "requester", None)
    tracker.owner_id = owner_id
    tracker.owner = await link(tracker.port, owner_id, owner_token, nursery)
    tracker.requester = await link(tracker.port, requester_id, requester_token, nursery)
    return tracker


async def register(port: int, name: str, fingerprint: str | None) -> tuple[str, str]:
    import httpx

    body: dict[str, Any] = {
        "name": name,
        "peer_server": {"host": HOST, "port": 8000},
        "capabilities": {},
    }
    if fingerprint is not None:
        body["fingerprint"] = fingerprint
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://{HOST}:{port}/api/peers/register", json=body)
    if response.status_code != 201:
        raise RuntimeError(f"register answered {response.status_code}: {response.text}")
    answer = response.json()
    return answer["peer_id"], answer["token"]


async def link(port: int, peer_id: str, token: str, nursery: trio.Nursery) -> Link:
    """An identified websocket link, kept open (and read) in *nursery*."""

    async def hold(*, task_status: trio.TaskStatus[Link]) -> None:
        async with open_websocket_url(f"ws://{HOST}:{port}/api/peers/ws") as ws:
            hello = {"type": "hello", "peer_id": peer_id, "token": token, "last_seq": None}
            await ws.send_message(json.dumps(hello))
            first = json.loads(await ws.get_message())
            if first.get("type") != "snapshot":
                raise RuntimeError(f"the tracker answered the hello with {first}")
            task_status.started(Link(ws))
            await trio.sleep_forever()

    opened: Link = await nursery.start(hold)
    nursery.start_soon(opened.read_forever)
    return opened


async def stop_real(tracker: RealTracker) -> None:
    tracker.process.terminate()
    with trio.move_on_after(5):
        await tracker.process.wait()
        return
    tracker.process.kill()
    await tracker.process.wait()


# -- the bench ------------------------------------------------------------------------


async def bench(size_bytes: int, runs: int, before: str | None) -> int:
    block = memoryview(os.urandom(SEND_BLOCK_BYTES))
    results: dict[str, Results] = {}
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        trackers = {"tracker": await start_real_tracker("tracker", None, nursery)}
        if before is not None:
            trackers["before"] = await start_real_tracker("before", before, nursery)
        alone = await start_tracker(True)

        async def one(name: str) -> Sample:
            if name == "socat":
                return await socat_sample(size_bytes, block)
            if name == "pump alone":
                keys = (await alone.invite(1))[0]
                sender, receiver = await trio.to_thread.run_sync(tunnel_pair, alone.port, keys)
                pid = alone.process.pid
            else:
                sender, receiver = await trackers[name].pair()
                pid = trackers[name].process.pid
            with sender, receiver:
                return await measured(
                    pid, size_bytes, lambda: transfer(sender, receiver, size_bytes, block)
                )

        names = [*trackers, "pump alone", "socat"]
        for name in names:  # warm-up, not counted
            await one(name)
        for index in range(runs):
            order = names[index % len(names) :] + names[: index % len(names)]
            line = []
            for name in order:
                sample = await one(name)
                results.setdefault(name, Results()).samples.append(sample)
                line.append(f"{name} {sample.mb_s:6.0f}")
            print(f"run {index + 1}: " + "   ".join(line) + "  MB/s", flush=True)
        for tracker in trackers.values():
            await stop_real(tracker)
        await stop(alone.process)
        nursery.cancel_scope.cancel()

    print()
    print(
        f"{size_bytes / MiB:.0f} MiB one way, raw client -> relay -> raw client on loopback, "
        f"{runs} interleaved runs each (MB = 10^6 bytes)"
    )
    if before is not None:
        print(f"before: the tracker from {before}")
    print(
        f"{'relay':12} {'median MB/s':>11} {'min':>6} {'max':>6} {'CPU s/GiB':>10} "
        f"{'wakeups/MiB':>12} {'preempted/MiB':>14} {'receiver wakeups/MiB':>21}"
    )
    for name, result in results.items():
        mb_s = [sample.mb_s for sample in result.samples]
        print(
            f"{name:12} {statistics.median(mb_s):11.0f} {min(mb_s):6.0f} {max(mb_s):6.0f} "
            f"{result.median('cpu_s_per_gib'):10.2f} {result.median('wakeups_per_mib'):12.1f} "
            f"{result.median('preempted_per_mib'):14.1f} "
            f"{result.median('receiver_wakeups_per_mib'):21.1f}"
        )
    socat, socat_cpu = results["socat"].median("mb_s"), results["socat"].median("cpu_s_per_gib")
    for name in results:
        if name != "socat":
            ratio = results[name].median("mb_s") / socat
            cpu_ratio = results[name].median("cpu_s_per_gib") / socat_cpu
            print(f"ratio {name}/socat = {ratio:.2f}x MB/s, {cpu_ratio:.2f}x CPU per GiB")
    print()
    print(
        f"machine: nproc {os.cpu_count()}, {platform.platform()}, "
        f"Python {platform.python_version()}, trio {trio.__version__}"
    )
    print(f"socat: {socat_version()}, -b {SOCAT_BUFFER_BYTES}")
    print(f"load average at end: {load_average()}")
    print(f"wall time: {time.monotonic() - started:.0f} s")
    return 0


async def socat_sample(size_bytes: int, block: memoryview) -> Sample:
    """A fresh ``socat -b 1048576`` (one connection, no fork) relaying one transfer."""
    with socket.create_server((HOST, 0)) as sink:
        listen_port = free_port()
        process = await trio.lowlevel.open_process(
            ["socat", "-b", str(SOCAT_BUFFER_BYTES),
             f"TCP-LISTEN:{listen_port},reuseaddr,bind={HOST}",
             f"TCP:{HOST}:{sink.getsockname()[1]}"]
        )  # fmt: skip
        try:
            with trio.fail_after(START_TIMEOUT_S):
                while not is_listening(listen_port):  # noqa: ASYNC110 (another process)
                    await trio.sleep(0.01)
            sender = socket.create_connection((HOST, listen_port))
            receiver, _ = await trio.to_thread.run_sync(sink.accept)
            with sender, receiver:  # socat is still alive: it waits for our close
                return await measured(
                    process.pid,
                    size_bytes,
                    lambda: transfer(sender, receiver, size_bytes, block),
                )
        finally:
            await stop(process)


def load_average() -> str:
    with open("/proc/loadavg") as loadavg:
        return " ".join(loadavg.read().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--before",
        metavar="TREE",
        help="also run the tracker of another checkout (its root, holding flashback/)",
    )
    args = parser.parse_args()
    if shutil.which("socat") is None:
        print("socat is not installed (apt-get install -y socat); cannot compare", file=sys.stderr)
        return 2
    before = None if args.before is None else os.path.abspath(args.before)
    return trio.run(bench, args.size_mib * MiB, args.runs, before)


if __name__ == "__main__":
    sys.exit(main())

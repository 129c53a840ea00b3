"""Tracker tunnel port vs socat: raw TCP bytes relayed between two loopback clients.

The tunnel side is the real code path: a tracker-like process (this script
with ``--serve``) runs :func:`serve_tunnel_port` with a :class:`TunnelRelay`
and makes invites on request (keys live 30 s, so they are made right before
each run). Two plain TCP clients join with ``FLASHBACK-TUNNEL 1 <key>``, read
``OK``, and then one sends ``--size-mib`` MiB to the other. Two such
processes run side by side, one with ``use_splice=True`` and one with the
``recv_into`` fallback. socat (``-b 1048576``, one connection, no fork)
forwards the same bytes between the same two kinds of client: the sender
connects to socat, socat connects to the receiver's listener.

Sender and receiver are identical for every variant and run at C speed in
worker threads: blocking ``sendall`` of a preallocated 16 MiB buffer, and
blocking ``recv_into`` a 4 MiB buffer. The clock runs from the first send to
the last byte received (pairing and socat's start are not timed). Runs are
interleaved, the order rotating each round; figures are medians. "relay CPU"
is user+sys of the relaying process per GiB, read from /proc.

Second part: VmRSS of a fresh tunnel process with no session, then with
``--idle-sessions`` paired but idle sessions (two connected sockets each),
for splice and for recv_into. Usage::

    PYTHONPATH=. .venv/bin/python bench/bench_tunnel_pump.py [--size-mib 1024] [--runs 9]

Exit status 2 if socat is missing (``apt-get install -y socat``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Final, cast

import trio

from flashback.protocol.tunnel import OK_LINE, join_line
from flashback.tracker.pump import SPLICE_AVAILABLE
from flashback.tracker.tunnels import TunnelRelay, serve_tunnel_port

HOST: Final = "127.0.0.1"
SEND_BLOCK_BYTES: Final = 16 * 1024 * 1024
RECV_BUFFER_BYTES: Final = 4 * 1024 * 1024
SOCAT_BUFFER_BYTES: Final = 1024 * 1024
START_TIMEOUT_S: Final = 10.0
#: a run that takes longer than this is a hang, not a figure
RUN_TIMEOUT_S: Final = 120.0
SETTLE_S: Final = 1.0
MiB: Final = 1024 * 1024
GiB: Final = 1024 * MiB
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")
SCRIPT: Final = os.path.abspath(__file__)


# -- the tracker-like process (--serve) -----------------------------------------


async def serve(use_splice: bool) -> None:
    """Print ``{"port", "pid"}``; then answer each stdin line ``invite N`` with N key pairs."""
    relay = TunnelRelay(
        max_sessions=4096, max_unjoined=4096, idle_timeout_s=3600.0, use_splice=use_splice
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_tunnel_port, relay, HOST, 0)
        print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
        commands = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buffer = b""
        while chunk := await commands.receive_some(4096):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                count = int(line.split()[1])
                keys = [
                    relay.invite(request_id=f"b{i}", client_peer="c", server_peer="s").keys
                    for i in range(count)
                ]
                print(json.dumps([[k["client"], k["server"]] for k in keys]), flush=True)
        nursery.cancel_scope.cancel()  # stdin closed: the bench is done with us


# -- helpers for the bench process ---------------------------------------------


@dataclass
class Tracker:
    """A ``--serve`` child: its port, its pid, and a line channel to it."""

    process: trio.Process
    port: int = 0
    _buffer: bytes = b""

    async def read_line(self) -> bytes:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some(65536)
            if not chunk:
                raise RuntimeError("the tunnel process ended early")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    async def invite(self, count: int) -> list[tuple[str, str]]:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"invite %d\n" % count)
        return [tuple(pair) for pair in json.loads(await self.read_line())]


async def start_tracker(use_splice: bool, user: str | None = None) -> Tracker:
    command = [sys.executable, SCRIPT, "--serve"]
    if user is not None:  # as an ordinary user, bound by fs.pipe-user-pages-soft
        account = pwd.getpwnam(user)
        command[:0] = [
            "setpriv",
            f"--reuid={account.pw_uid}",
            f"--regid={account.pw_gid}",
            "--clear-groups",
        ]
    if not use_splice:
        command.append("--no-splice")
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    tracker = Tracker(process)
    with trio.fail_after(START_TIMEOUT_S):
        tracker.port = json.loads(await tracker.read_line())["port"]
    return tracker


async def stop(process: trio.Process) -> None:
    if process.stdin is not None:
        await process.stdin.aclose()
    with trio.move_on_after(5):
        await process.wait()
        return
    process.kill()
    await process.wait()


def read_proc(path: str) -> str:
    with open(path) as file:
        return file.read()


def cpu_s(pid: int) -> float:
    fields = read_proc(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def status_kib(pid: int, key: str) -> int:
    for line in read_proc(f"/proc/{pid}/status").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return cast(int, probe.getsockname()[1])


def is_listening(port: int) -> bool:
    """Without connecting: socat without ``fork`` serves exactly one connection."""
    with open("/proc/net/tcp") as table:
        for row in table.readlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if int(local.split(":")[1], 16) == port and state == "0A":
                return True
    return False


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


# -- the two clients (blocking, in worker threads) --------------------------------


def send_blocking(sock: socket.socket, size_bytes: int, block: memoryview) -> None:
    left = size_bytes
    while left:
        n = min(left, len(block))
        sock.sendall(block[:n])
        left -= n
    sock.shutdown(socket.SHUT_WR)


def receive_blocking(sock: socket.socket, size_bytes: int, buffer: bytearray) -> float:
    """Read *size_bytes*, return the time of the last one; then insist on EOF."""
    got = 0
    while got < size_bytes:
        n = sock.recv_into(buffer)
        if n == 0:
            raise RuntimeError(f"EOF after {got} of {size_bytes} bytes")
        got += n
    done = time.perf_counter()
    if got != size_bytes or sock.recv_into(buffer) != 0:
        raise RuntimeError("more bytes arrived than were sent")
    return done


async def timed_transfer(
    sender: socket.socket, receiver: socket.socket, size_bytes: int, block: memoryview
) -> float:
    buffer = bytearray(RECV_BUFFER_BYTES)
    with trio.fail_after(RUN_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            start = time.perf_counter()
            nursery.start_soon(trio.to_thread.run_sync, send_blocking, sender, size_bytes, block)
            done = await trio.to_thread.run_sync(receive_blocking, receiver, size_bytes, buffer)
    return done - start


def tunnel_pair(port: int, keys: tuple[str, str]) -> tuple[socket.socket, socket.socket]:
    """(sender = requester, receiver = owner), both joined and past ``OK``."""
    client_key, server_key = keys
    receiver = socket.create_connection((HOST, port))
    receiver.sendall(join_line(server_key))
    sender = socket.create_connection((HOST, port))
    sender.sendall(join_line(client_key))
    for sock in (sender, receiver):
        answer = recv_exactly(sock, len(OK_LINE))
        if answer != OK_LINE:
            raise RuntimeError(f"tunnel port answered {answer!r}")
    return sender, receiver


@dataclass
class Result:
    mb_s: list[float] = field(default_factory=list)
    cpu_s_per_gib: list[float] = field(default_factory=list)


async def run_tunnel(tracker: Tracker, size_bytes: int, block: memoryview) -> tuple[float, float]:
    keys = (await tracker.invite(1))[0]
    sender, receiver = await trio.to_thread.run_sync(tunnel_pair, tracker.port, keys)
    with sender, receiver:
        cpu_before = cpu_s(tracker.process.pid)
        seconds = await timed_transfer(sender, receiver, size_bytes, block)
        cpu = cpu_s(tracker.process.pid) - cpu_before
    return size_bytes / seconds / 1e6, cpu / (size_bytes / GiB)


async def run_socat(size_bytes: int, block: memoryview) -> tuple[float, float]:
    with socket.create_server((HOST, 0)) as sink:
        listen_port = free_port()
        process = await trio.lowlevel.open_process(
            [
                "socat",
                "-b",
                str(SOCAT_BUFFER_BYTES),
                f"TCP-LISTEN:{listen_port},reuseaddr,bind={HOST}",
                f"TCP:{HOST}:{sink.getsockname()[1]}",
            ]
        )
        try:
            with trio.fail_after(START_TIMEOUT_S):
                while not is_listening(listen_port):  # noqa: ASYNC110 (another process)
                    await trio.sleep(0.01)
            sender = socket.create_connection((HOST, listen_port))
            receiver, _ = await trio.to_thread.run_sync(sink.accept)
            with sender, receiver:
                seconds = await timed_transfer(sender, receiver, size_bytes, block)
                cpu = cpu_s(process.pid)  # socat is still alive: it waits for our close
        finally:
            await stop(process)
    return size_bytes / seconds / 1e6, cpu / (size_bytes / GiB)


# -- part 2: memory with idle sessions ----------------------------------------------


async def idle_rss(use_splice: bool, sessions: int) -> dict[str, float]:
    tracker = await start_tracker(use_splice)
    pid = tracker.process.pid
    try:
        await trio.sleep(SETTLE_S)
        before = status_kib(pid, "VmRSS")
        fds_before = fd_count(pid)
        keys = await tracker.invite(sessions)
        pairs = [await trio.to_thread.run_sync(tunnel_pair, tracker.port, k) for k in keys]
        await trio.sleep(SETTLE_S)
        during = status_kib(pid, "VmRSS")
        fds_during = fd_count(pid)
        for sender, receiver in pairs:
            sender.close()
            receiver.close()
        await trio.sleep(SETTLE_S)
        after = status_kib(pid, "VmRSS")
        hwm = status_kib(pid, "VmHWM")
    finally:
        await stop(tracker.process)
    return {
        "before_mib": before / 1024,
        "during_mib": during / 1024,
        "after_mib": after / 1024,
        "hwm_mib": hwm / 1024,
        "fds_before": fds_before,
        "fds_during": fds_during,
    }


# -- part 3: splice as an unprivileged user, past the pipe quota -------------------


async def unprivileged_splice(
    user: str, size_bytes: int, block: memoryview, runs: int, hold: int
) -> None:
    """One transfer with no other session, one with *hold* idle sessions open, alternating.

    Each splice session asks for two 1 MiB pipes; an unprivileged user past
    ``fs.pipe-user-pages-soft`` (64 MiB by default) is refused and, worse,
    gets new pipes of 2 pages only.
    """
    tracker = await start_tracker(True, user)
    alone: list[float] = []
    crowded: list[float] = []
    try:
        for _ in range(runs):
            alone.append((await run_tunnel(tracker, size_bytes, block))[0])
            keys = await tracker.invite(hold)
            pairs = [await trio.to_thread.run_sync(tunnel_pair, tracker.port, k) for k in keys]
            await trio.sleep(SETTLE_S)  # every pump has made its pipes
            crowded.append((await run_tunnel(tracker, size_bytes, block))[0])
            for sender, receiver in pairs:
                sender.close()
                receiver.close()
            await trio.sleep(SETTLE_S)  # ...and closed them again
    finally:
        await stop(tracker.process)
    soft = read_proc("/proc/sys/fs/pipe-user-pages-soft").strip()
    print()
    print(
        f"splice as user {user!r} (fs.pipe-user-pages-soft = {soft} pages), "
        f"{size_bytes / MiB:.0f} MiB, {runs} alternating runs each"
    )
    print(
        f"  no other session:       median {statistics.median(alone):6.0f} MB/s  "
        f"(min {min(alone):.0f}, max {max(alone):.0f})"
    )
    print(
        f"  {hold} idle sessions open: median {statistics.median(crowded):6.0f} MB/s  "
        f"(min {min(crowded):.0f}, max {max(crowded):.0f})"
    )


# -- the bench ---------------------------------------------------------------------


async def bench(size_bytes: int, runs: int, sessions: int, user: str | None, hold: int) -> int:
    block = memoryview(os.urandom(SEND_BLOCK_BYTES))
    results: dict[str, Result] = {}
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        trackers: dict[str, Tracker] = {}
        if SPLICE_AVAILABLE:
            trackers["tunnel splice"] = await start_tracker(True)
        trackers["tunnel recv_into"] = await start_tracker(False)

        async def one(name: str) -> tuple[float, float]:
            if name == "socat":
                return await run_socat(size_bytes, block)
            return await run_tunnel(trackers[name], size_bytes, block)

        names = [*trackers, "socat"]
        for name in names:  # warm-up, not counted
            await one(name)
        for index in range(runs):
            order = names[index % len(names) :] + names[: index % len(names)]
            line = []
            for name in order:
                mb_s, cpu = await one(name)
                results.setdefault(name, Result()).mb_s.append(mb_s)
                results[name].cpu_s_per_gib.append(cpu)
                line.append(f"{name} {mb_s:6.0f}")
            print(f"run {index + 1}: " + "   ".join(line) + "  MB/s", flush=True)
        for tracker in trackers.values():
            await stop(tracker.process)
        nursery.cancel_scope.cancel()

    print()
    print(
        f"{size_bytes / MiB:.0f} MiB one way, client -> relay -> client on loopback, "
        f"{runs} interleaved runs each (MB = 10^6 bytes)"
    )
    print(f"{'relay':18} {'median MB/s':>11} {'min':>6} {'max':>6} {'relay CPU s/GiB':>16}")
    for name, result in results.items():
        print(
            f"{name:18} {statistics.median(result.mb_s):11.0f} {min(result.mb_s):6.0f} "
            f"{max(result.mb_s):6.0f} {statistics.median(result.cpu_s_per_gib):16.2f}"
        )
    socat = statistics.median(results["socat"].mb_s)
    for name in trackers:
        print(f"ratio {name}/socat = {statistics.median(results[name].mb_s) / socat:.2f}x")

    print()
    print(f"Tunnel process VmRSS, fresh process, then {sessions} paired idle sessions")
    print(f"({2 * sessions} connected client sockets), then after they closed")
    modes = [True, False] if SPLICE_AVAILABLE else [False]
    for use_splice in modes:
        rss = await idle_rss(use_splice, sessions)
        name = "splice" if use_splice else "recv_into"
        print(
            f"  {name:9}  none: {rss['before_mib']:6.1f} MiB   {sessions} sessions: "
            f"{rss['during_mib']:6.1f} MiB "
            f"(+{(rss['during_mib'] - rss['before_mib']) * 1024 / sessions:.0f} KiB/session)   "
            f"after close: {rss['after_mib']:6.1f} MiB   "
            f"fds {rss['fds_before']} -> {rss['fds_during']}"
        )
    if user is not None:
        await unprivileged_splice(user, size_bytes, block, max(3, runs // 3), hold)
    print()
    print(
        f"machine: nproc {os.cpu_count()}, {platform.platform()}, "
        f"Python {platform.python_version()}, trio {trio.__version__}"
    )
    print(f"socat: {socat_version()}, -b {SOCAT_BUFFER_BYTES}")
    print(f"load average at end: {' '.join(read_proc('/proc/loadavg').split()[:3])}")
    print(f"wall time: {time.monotonic() - started:.0f} s")
    return 0


def socat_version() -> str:
    out = subprocess.run(["socat", "-V"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("socat version"):
            return line.split(" on ")[0]
    return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--idle-sessions", type=int, default=200)
    parser.add_argument(
        "--unprivileged-user",
        metavar="USER",
        help="also time splice run as USER (needs root) with --hold idle sessions open",
    )
    parser.add_argument("--hold", type=int, default=40)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-splice", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, not args.no_splice)
        return 0
    if shutil.which("socat") is None:
        print("socat is not installed (apt-get install -y socat); cannot compare", file=sys.stderr)
        return 2
    return trio.run(
        bench,
        args.size_mib * MiB,
        args.runs,
        args.idle_sessions,
        args.unprivileged_user,
        args.hold,
    )


if __name__ == "__main__":
    sys.exit(main())

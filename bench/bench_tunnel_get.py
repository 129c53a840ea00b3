"""``flashback get`` of one big file through a tunnel vs the same ``get`` direct.

Two complete setups run side by side, each with its own tracker and its own
pair of daemons (alice shares, bob gets):

- relay: the topology of ``tests/test_tunnel_system.py`` -- the tracker (with
  its tunnel port) in a relay namespace, alice in home A with a
  localhost-only peer server, bob in home B; no packet can go from one home
  to the other, so bob's ``get`` crosses the tunnel: bob's daemon (TLS client
  end) -> tracker tunnel port (byte pump) -> alice's daemon (TLS server end)
  -> alice's peer server in the same process.
- direct: tracker, alice (``--host 127.0.0.1``) and bob on the host's
  loopback, no namespace, so bob's ``get`` talks to alice's peer server.

Both alices share the same ``--size-mib`` MiB file of random bytes. One
untimed warm-up ``get`` per variant first (alice computes the file's digest
then; the output is checked with sha256), then ``--runs`` timed ``get``s per
variant, interleaved, the order alternating each round. After each ``get``
bob's ``flashback peers --json`` must show ``route`` ``relay`` resp.
``direct``, or the bench fails. The output and its ``.part`` files are
deleted between runs.

The time is the wall time of the whole ``flashback get`` process. CPU is
user+sys per GiB of every process involved: tracker, alice's daemon, bob's
daemon (from ``/proc/PID/stat`` before and after) and the ``get`` client
(``RUSAGE_CHILDREN`` of this process around it; ``ip netns exec`` execs, so
it is the client's own). Needs root and ``ip`` (network namespaces). Usage::

    PYTHONPATH=. .venv/bin/python bench/bench_tunnel_get.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio
from py_spy import profile_get
from timed_get import remove_output, timed_get

from tests.netns import (
    RELAY_ADDR_A,
    RELAY_ADDR_B,
    Topology,
    netns_unavailable_reason,
    two_homes_and_a_relay,
)
from tests.procs import Proc, daemon_env, event_is, run_cli, start

MiB: Final = 1024 * 1024
GiB: Final = 1024 * MiB
WRITE_BLOCK_BYTES: Final = 16 * MiB
READY_TIMEOUT_S: Final = 60.0
#: a get that takes longer than this is a hang, not a figure
GET_TIMEOUT_S: Final = 600.0
PROCESS_ROLES: Final = ("tracker", "alice", "bob", "client")


@dataclass
class Variant:
    name: str  # "relay" or "direct": also the route bob must report
    tracker: Proc
    alice: Proc
    bob: Proc
    bob_env: dict[str, str]
    prefix: list[str]
    times_s: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in PROCESS_ROLES})

    def pids(self) -> dict[str, int]:
        return {
            "tracker": self.tracker.process.pid,
            "alice": self.alice.process.pid,
            "bob": self.bob.process.pid,
        }


def check_measured_pids(v: Variant) -> None:
    """``ip netns exec`` execs: the pids measured are the Python processes themselves."""
    comm = {role: Path(f"/proc/{pid}/comm").read_text().strip() for role, pid in v.pids().items()}
    if not all(c.startswith("python") for c in comm.values()):
        raise SystemExit(f"{v.name}: not the Python processes: {comm}")


def make_file(path: Path, size_bytes: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size_bytes
        while left:
            block = os.urandom(min(WRITE_BLOCK_BYTES, left))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return digest.hexdigest()


async def get_once(v: Variant, out: Path) -> tuple[float, dict[str, float]]:
    """One timed ``get``; the route bob used must be the variant's."""
    elapsed, cpu = await timed_get(
        v.name,
        bob_env=v.bob_env,
        prefix=v.prefix,
        pids=v.pids(),
        roles=PROCESS_ROLES,
        out=out,
        timeout_s=GET_TIMEOUT_S,
    )
    peers = await run_cli(["peers", "--json"], env=v.bob_env, prefix=v.prefix)
    route = next(p.get("route") for p in json.loads(peers.stdout)["peers"] if p["name"] == "alice")
    if route != v.name:
        raise SystemExit(f"{v.name} get went by route {route!r}")
    return elapsed, cpu


async def wait_alice_seen(bob: Proc) -> None:
    await bob.wait_event(
        lambda e: e.get("event") in ("peer-joined", "peers-snapshot") and "alice" in json.dumps(e),
        timeout_s=READY_TIMEOUT_S,
    )


async def start_variant(
    stack: AsyncExitStack,
    nursery: trio.Nursery,
    name: str,
    base: Path,
    share: Path,
    tracker_host: str,
    tracker_addrs: tuple[str, str],
    prefixes: tuple[list[str], list[str], list[str]],
    alice_extra: Sequence[str] = (),
) -> Variant:
    in_tracker, in_alice, in_bob = prefixes
    tracker = await stack.enter_async_context(
        start(
            nursery,
            ["tracker", "--host", tracker_host, "--port", "0", "--tunnel-port", "0",
             "--database-url", "memory://"],
            env={"FLASHBACK_DATA_DIR": str(base / "tracker")},
            name=f"{name}-tracker",
            prefix=in_tracker,
        )
    )  # fmt: skip
    ready = await tracker.wait_event(event_is("tracker-ready"), timeout_s=READY_TIMEOUT_S)
    port = ready["port"]
    (base / "bob-share").mkdir(parents=True, exist_ok=True)
    alice_env, bob_env = daemon_env(base, "alice"), daemon_env(base, "bob")
    alice = await stack.enter_async_context(
        start(
            nursery,
            ["daemon", "--root", str(share), "--name", "alice", *alice_extra,
             "--tracker", f"http://{tracker_addrs[0]}:{port}"],
            env=alice_env,
            name=f"{name}-alice",
            prefix=in_alice,
        )
    )  # fmt: skip
    bob = await stack.enter_async_context(
        start(
            nursery,
            ["daemon", "--root", str(base / "bob-share"), "--name", "bob",
             "--tracker", f"http://{tracker_addrs[1]}:{port}"],
            env=bob_env,
            name=f"{name}-bob",
            prefix=in_bob,
        )
    )  # fmt: skip
    await alice.wait_event(event_is("tracker-connected"), timeout_s=READY_TIMEOUT_S)
    await wait_alice_seen(bob)
    return Variant(name, tracker, alice, bob, bob_env, in_bob)


async def bench(args: argparse.Namespace, topo: Topology, work: Path) -> None:
    size = args.size_mib * MiB
    share = work / "share"
    share.mkdir()
    t0 = time.perf_counter()
    expected = make_file(share / "big.bin", size)
    print(f"wrote {args.size_mib} MiB of random bytes in {time.perf_counter() - t0:.1f} s")
    in_relay = Topology.exec_prefix(topo.relay)
    in_a, in_b = Topology.exec_prefix(topo.home_a), Topology.exec_prefix(topo.home_b)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        relay = await start_variant(
            stack, nursery, "relay", work / "relay", share, "0.0.0.0",
            (RELAY_ADDR_A, RELAY_ADDR_B), (in_relay, in_a, in_b),
        )  # fmt: skip
        direct = await start_variant(
            stack, nursery, "direct", work / "direct", share, "127.0.0.1",
            ("127.0.0.1", "127.0.0.1"), ([], [], []), alice_extra=("--host", "127.0.0.1"),
        )  # fmt: skip
        for v in (relay, direct):
            check_measured_pids(v)
            out = work / f"{v.name}-out.bin"
            elapsed, _ = await get_once(v, out)
            got = await trio.to_thread.run_sync(lambda out=out: hashlib.file_digest(  # type: ignore[misc]  # binds the loop variable
                out.open("rb"), "sha256").hexdigest())  # fmt: skip
            if got != expected:
                raise SystemExit(f"{v.name}: sha256 of the output differs")
            print(f"warm-up {v.name:6} {elapsed:6.1f} s  route {v.name}, sha256 ok")
            remove_output(out)
        for run in range(args.runs):
            order = (relay, direct) if run % 2 == 0 else (direct, relay)
            line = []
            for v in order:
                elapsed, cpu = await get_once(v, work / f"{v.name}-out.bin")
                v.times_s.append(elapsed)
                for role, seconds in cpu.items():
                    v.cpu[role].append(seconds)
                line.append(f"{v.name} {size / elapsed / 1e6:6.0f} MB/s ({elapsed:5.1f} s)")
            print(f"run {run + 1}: " + "   ".join(line))
            remove_output(work / "relay-out.bin")
            remove_output(work / "direct-out.bin")
        if args.py_spy:
            for v in (relay, direct):
                await profile_get(
                    v.name,
                    py_spy=args.py_spy,
                    bob_env=v.bob_env,
                    prefix=v.prefix,
                    pids=v.pids(),
                    out=work / f"{v.name}-out.bin",
                    work=work,
                    timeout_s=GET_TIMEOUT_S,
                )
        if not args.runs:
            return
    report(args, relay, direct)


def report(args: argparse.Namespace, relay: Variant, direct: Variant) -> None:
    size = args.size_mib * MiB
    print(f"\n{args.size_mib} MiB `flashback get`, {args.runs} interleaved runs each "
          "(MB = 10^6 bytes, wall time of the get process)")  # fmt: skip
    print(f"{'variant':8} {'median MB/s':>11} {'min':>6} {'max':>6} {'median s':>9}")
    medians = {}
    for v in (relay, direct):
        rates = [size / t / 1e6 for t in v.times_s]
        medians[v.name] = statistics.median(rates)
        print(f"{v.name:8} {medians[v.name]:11.0f} {min(rates):6.0f} {max(rates):6.0f} "
              f"{statistics.median(v.times_s):9.1f}")  # fmt: skip
    print(f"ratio tunnel/direct = {medians['relay'] / medians['direct']:.2f}x (goal >= 0.3x)")
    print("\nCPU s per GiB moved (user+sys, median over the timed runs)")
    print(f"{'variant':8} " + " ".join(f"{r:>8}" for r in PROCESS_ROLES) + f" {'total':>8}")
    for v in (relay, direct):
        per = {r: statistics.median(v.cpu[r]) * GiB / size for r in PROCESS_ROLES}
        print(f"{v.name:8} " + " ".join(f"{per[r]:8.2f}" for r in PROCESS_ROLES)
              + f" {sum(per.values()):8.2f}")  # fmt: skip
    print(f"\nmachine: nproc {os.cpu_count()}, {platform.platform()}, "
          f"Python {platform.python_version()}, trio {trio.__version__}")  # fmt: skip
    print("load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--py-spy", metavar="PATH", help="after the runs, one profiled get per variant with py-spy"
    )
    args = parser.parse_args()
    if (reason := netns_unavailable_reason()) is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="fb-bench-get-") as tmp,
        two_homes_and_a_relay() as topo,
    ):
        trio.run(bench, args, topo, Path(tmp))
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``flashback get`` by the direct route vs the relay vs plain TCP, across a NAT.

The NAT lab of ``tests/nat_lab.py``: alice on an ``open`` home (a public
address, no NAT), bob behind a ``cone`` router (MASQUERADE, unsolicited
inbound dropped), the tracker on the internet namespace's address. Alice
shares one ``--size-mib`` MiB file of random bytes. Three variants:

- direct: both daemons with their direct endpoint (the default); bob's get
  reaches alice's endpoint over mutual TLS (docs/INTERFACE.md §10);
- relay: the same, but alice runs with ``--direct-port off``, so she has no
  endpoint and no candidates and bob's get goes through the tracker's tunnel
  port (TLS end to end inside it);
- socat: the same bytes over the same path with no TLS and no HTTP: ``socat``
  on alice's host sends the file to a ``socat`` on bob's, which writes it to
  disk as ``get`` does. The reference for what the wire and the disk allow.

Each flashback variant has its own tracker and pair of daemons. One untimed
warm-up per variant (output checked with sha256; alice hashes the file
then), then ``--runs`` timed runs, interleaved, the order rotating each
round. After each ``get`` bob's ``flashback peers --json`` must show the
variant's route, or the bench fails. Times are the wall time of the whole
``get`` (or receiving ``socat``) process. CPU is user+sys per GiB of every
process involved: tracker, alice's and bob's daemons and the ``get`` client
(from ``/proc/PID/stat`` and ``RUSAGE_CHILDREN``, see bench/proc_cpu.py);
the two ``socat`` processes from their own ``wait4`` rusage.

Then the time from ``flashback connect alice`` to the first byte, for direct
and relay (``--ttfb-runs`` times each, a fresh ``connect`` every time): the
time until ``connect`` prints its ``peer-url``, plus curl's
``time_starttransfer`` for one byte of the file through that URL.

Needs root, ``ip``, ``iptables``, ``conntrack``, ``socat`` (``make
bench-deps``) and ``curl``. Usage::

    PYTHONPATH=. .venv/bin/python bench/bench_direct.py [--size-mib 1024] [--runs 3]
        [--variants direct,relay,socat] [--ttfb-runs 5] [--py-spy PATH] [--base-tree DIR]

``--base-tree DIR`` also runs direct and relay from another source tree (e.g.
``git archive main | tar -x -C DIR``) as ``direct@base`` and ``relay@base``,
interleaved with the others, so a change is measured against what it changes
under the same load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
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

from tests.nat_lab import Home, NatLab, nat_lab, nat_lab_unavailable_reason
from tests.procs import Proc, daemon_env, event_is, run_cli, start

MiB: Final = 1024 * 1024
GiB: Final = 1024 * MiB
WRITE_BLOCK_BYTES: Final = 16 * MiB
READY_TIMEOUT_S: Final = 60.0
#: a transfer that takes longer than this is a hang, not a figure
GET_TIMEOUT_S: Final = 600.0
FLASHBACK_ROLES: Final = ("tracker", "alice", "bob", "client")
SOCAT_ROLES: Final = ("sender", "receiver")
VARIANTS: Final = ("direct", "relay", "socat")
GOAL_DIRECT_OVER_RELAY: Final = 1.5
GOAL_DIRECT_OVER_SOCAT: Final = 0.5
#: socat copies in blocks of this many bytes (its default, 8 KiB, costs a syscall per 8 KiB)
SOCAT_BLOCK: Final = str(256 * 1024)
FREE_PORT = "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"


@dataclass
class Result:
    name: str
    roles: Sequence[str]
    times_s: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def add(self, elapsed: float, cpu: dict[str, float]) -> None:
        self.times_s.append(elapsed)
        for role, seconds in cpu.items():
            self.cpu.setdefault(role, []).append(seconds)


@dataclass
class FlashbackSetup:
    name: str  # "direct" or "relay", "@base" added for --base-tree's
    tracker: Proc
    alice: Proc
    bob: Proc
    bob_env: dict[str, str]
    prefix: list[str]
    result: Result

    @property
    def route(self) -> str:
        """The route bob must report."""
        return self.name.removesuffix("@base")

    def pids(self) -> dict[str, int]:
        return {
            "tracker": self.tracker.process.pid,
            "alice": self.alice.process.pid,
            "bob": self.bob.process.pid,
        }


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


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- plain TCP: socat -------------------------------------------------------


def socat_once(alice: Home, bob: Home, source: Path, out: Path) -> tuple[float, dict[str, float]]:
    """One transfer alice -> bob with socat; wall time of the receiver, CPU of both."""
    remove_output(out)
    port = subprocess.run(
        [*alice.prefix, sys.executable, "-c", FREE_PORT],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    sender = subprocess.Popen(
        [*alice.prefix, "socat", "-u", "-b", SOCAT_BLOCK, f"OPEN:{source},rdonly",
         f"TCP-LISTEN:{port},bind={alice.host_addr},reuseaddr"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    t0 = time.perf_counter()
    receiver = subprocess.Popen(
        [*bob.prefix, "socat", "-u", "-b", SOCAT_BLOCK,
         f"TCP:{alice.host_addr}:{port},retry=100,interval=0.05", f"CREATE:{out}"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    _, receiver_status, receiver_usage = os.wait4(receiver.pid, 0)
    elapsed = time.perf_counter() - t0
    _, sender_status, sender_usage = os.wait4(sender.pid, 0)
    # reaped above by wait4 (for the rusage): tell the Popen objects
    receiver.returncode = os.waitstatus_to_exitcode(receiver_status)
    sender.returncode = os.waitstatus_to_exitcode(sender_status)
    for proc in (sender, receiver):
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if proc.returncode != 0:
            raise SystemExit(f"socat failed ({proc.returncode}): {err.strip()}")
    if out.stat().st_size != source.stat().st_size:
        raise SystemExit(f"socat wrote {out.stat().st_size} bytes of {source.stat().st_size}")
    cpu = {
        "sender": sender_usage.ru_utime + sender_usage.ru_stime,
        "receiver": receiver_usage.ru_utime + receiver_usage.ru_stime,
    }
    return elapsed, cpu


# --- flashback: direct and relay ---------------------------------------------


async def get_once(v: FlashbackSetup, out: Path) -> tuple[float, dict[str, float]]:
    """One timed ``get``; the route bob used must be the variant's."""
    elapsed, cpu = await timed_get(
        v.name,
        bob_env=v.bob_env,
        prefix=v.prefix,
        pids=v.pids(),
        roles=FLASHBACK_ROLES,
        out=out,
        timeout_s=GET_TIMEOUT_S,
    )
    await check_route(v)
    return elapsed, cpu


async def check_route(v: FlashbackSetup) -> None:
    peers = await run_cli(["peers", "--json"], env=v.bob_env, prefix=v.prefix)
    route = next(p.get("route") for p in json.loads(peers.stdout)["peers"] if p["name"] == "alice")
    if route != v.route:
        raise SystemExit(f"{v.name}: bob's get went by route {route!r}")


async def start_setup(
    stack: AsyncExitStack,
    nursery: trio.Nursery,
    name: str,
    base: Path,
    share: Path,
    lab: NatLab,
    alice: Home,
    bob: Home,
    alice_extra: Sequence[str] = (),
    tree: str | None = None,
) -> FlashbackSetup:
    """One tracker and two daemons; *tree*: run them (and bob's clients) from that
    source tree instead of this one."""
    code = {"PYTHONPATH": tree} if tree else {}
    tracker = await stack.enter_async_context(
        start(
            nursery,
            ["tracker", "--host", "0.0.0.0", "--port", "0", "--tunnel-port", "0",
             "--database-url", "memory://"],
            env={"FLASHBACK_DATA_DIR": str(base / "tracker"), **code},
            name=f"{name}-tracker",
            prefix=lab.internet_prefix,
        )
    )  # fmt: skip
    ready = await tracker.wait_event(event_is("tracker-ready"), timeout_s=READY_TIMEOUT_S)
    url = f"http://{lab.tracker_addr}:{ready['port']}"
    (base / "bob-share").mkdir(parents=True, exist_ok=True)
    alice_proc = await stack.enter_async_context(
        start(
            nursery,
            ["daemon", "--root", str(share), "--name", "alice", *alice_extra, "--tracker", url],
            env={**daemon_env(base, "alice"), **code},
            name=f"{name}-alice",
            prefix=alice.prefix,
        )
    )
    bob_env = {**daemon_env(base, "bob"), **code}
    bob_proc = await stack.enter_async_context(
        start(
            nursery,
            ["daemon", "--root", str(base / "bob-share"), "--name", "bob", "--tracker", url],
            env=bob_env,
            name=f"{name}-bob",
            prefix=bob.prefix,
        )
    )
    await alice_proc.wait_event(event_is("tracker-connected"), timeout_s=READY_TIMEOUT_S)
    await bob_proc.wait_event(
        lambda e: e.get("event") in ("peer-joined", "peers-snapshot") and "alice" in json.dumps(e),
        timeout_s=READY_TIMEOUT_S,
    )
    setup = FlashbackSetup(
        name, tracker, alice_proc, bob_proc, bob_env, bob.prefix, Result(name, FLASHBACK_ROLES)
    )
    check_measured_pids(setup)
    return setup


def check_measured_pids(v: FlashbackSetup) -> None:
    """``ip netns exec`` execs: the pids measured are the Python processes themselves."""
    comm = {role: Path(f"/proc/{pid}/comm").read_text().strip() for role, pid in v.pids().items()}
    if not all(c.startswith("python") for c in comm.values()):
        raise SystemExit(f"{v.name}: not the Python processes: {comm}")


async def first_byte_once(v: FlashbackSetup, nursery: trio.Nursery) -> tuple[float, float, float]:
    """A fresh ``connect``: seconds to its ``peer-url``, then curl's time to the first
    byte; first, the seconds of a ``peers --json`` (the CLI's floor: the process
    starting and one request to the daemon, no route opened)."""
    t0 = time.perf_counter()
    await run_cli(["peers", "--json"], env=v.bob_env, prefix=v.prefix)
    floor = time.perf_counter() - t0
    t0 = time.perf_counter()
    async with start(
        nursery, ["connect", "alice", "--json"], env=v.bob_env, name=f"{v.name}-connect",
        prefix=v.prefix,
    ) as connect:  # fmt: skip
        event = await connect.wait_event(event_is("peer-url"), timeout_s=READY_TIMEOUT_S)
        to_url = time.perf_counter() - t0
        if event.get("route") != v.route:
            raise SystemExit(f"{v.name}: connect reported route {event.get('route')!r}")
        curl = await trio.run_process(
            [*v.prefix, "curl", "-sf", "-o", "/dev/null", "-r", "0-0", "-w",
             "%{time_starttransfer}", event["url"] + "/download/big.bin"],
            capture_stdout=True, check=True,
        )  # fmt: skip
        connect.signal(signal.SIGINT)
        await connect.wait_exit(timeout_s=10)
    return floor, to_url, float(curl.stdout.decode())


# --- the run -----------------------------------------------------------------


async def bench(args: argparse.Namespace, lab: NatLab, work: Path) -> None:
    variants = args.variants
    size = args.size_mib * MiB
    share = work / "share"
    share.mkdir()
    t0 = time.perf_counter()
    source = share / "big.bin"
    expected = await trio.to_thread.run_sync(make_file, source, size)
    print(f"wrote {args.size_mib} MiB of random bytes in {time.perf_counter() - t0:.1f} s")
    alice, bob = lab["alice"], lab["bob"]
    print(f"alice: open home {alice.host_addr}; bob: cone home {bob.host_addr} "
          f"behind {bob.public_addr}; tracker {lab.tracker_addr}")  # fmt: skip
    results: dict[str, Result] = {}
    ttfb: dict[str, list[tuple[float, float, float]]] = {}
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        setups: dict[str, FlashbackSetup] = {}
        trees = [("", None)] + ([("@base", args.base_tree)] if args.base_tree else [])
        for suffix, tree in trees:
            for route in ("direct", "relay"):
                if route in variants:
                    name = route + suffix
                    extra = ("--direct-port", "off") if route == "relay" else ()
                    setups[name] = await start_setup(
                        stack, nursery, name, work / name, share, lab, alice, bob, extra, tree
                    )
                    results[name] = setups[name].result
        if "socat" in variants:
            results["socat"] = Result("socat", SOCAT_ROLES)

        async def one(name: str, out: Path) -> tuple[float, dict[str, float]]:
            if name == "socat":
                return await trio.to_thread.run_sync(socat_once, alice, bob, source, out)
            return await get_once(setups[name], out)

        for name in results:
            out = work / f"{name}-out.bin"
            elapsed, _ = await one(name, out)
            if await trio.to_thread.run_sync(file_sha256, out) != expected:
                raise SystemExit(f"{name}: sha256 of the output differs")
            print(f"warm-up {name:11} {elapsed:6.1f} s  sha256 ok")
            remove_output(out)
        names = list(results)
        for run in range(args.runs):
            order = names[run % len(names) :] + names[: run % len(names)]
            line = []
            for name in order:
                out = work / f"{name}-out.bin"
                elapsed, cpu = await one(name, out)
                results[name].add(elapsed, cpu)
                remove_output(out)
                line.append(f"{name} {size / elapsed / 1e6:6.0f} MB/s ({elapsed:5.1f} s)")
            print(f"run {run + 1}: " + "   ".join(line))
        if args.py_spy:
            for name, setup in setups.items():
                await profile_get(
                    name,
                    py_spy=args.py_spy,
                    bob_env=setup.bob_env,
                    prefix=setup.prefix,
                    pids=setup.pids(),
                    out=work / f"{name}-out.bin",
                    work=work,
                    timeout_s=GET_TIMEOUT_S,
                )
        for name, setup in setups.items():
            ttfb[name] = [await first_byte_once(setup, nursery) for _ in range(args.ttfb_runs)]
            await check_route(setup)
    report(args, results, ttfb)


def report(
    args: argparse.Namespace,
    results: dict[str, Result],
    ttfb: dict[str, list[tuple[float, float, float]]],
) -> None:
    size = args.size_mib * MiB
    medians: dict[str, float] = {}
    if args.runs:
        print(f"\n{args.size_mib} MiB across the NAT lab (open home -> cone home), "
              f"{args.runs} interleaved runs each (MB = 10^6 bytes, wall time of the "
              "receiving process)")  # fmt: skip
        print(f"{'variant':11} {'median MB/s':>11} {'min':>6} {'max':>6} {'median s':>9}")
        for name, r in results.items():
            rates = [size / t / 1e6 for t in r.times_s]
            medians[name] = statistics.median(rates)
            print(f"{name:11} {medians[name]:11.0f} {min(rates):6.0f} {max(rates):6.0f} "
                  f"{statistics.median(r.times_s):9.1f}")  # fmt: skip
        if "direct" in medians and "relay" in medians:
            print(f"ratio direct/relay = {medians['direct'] / medians['relay']:.2f}x "
                  f"(goal >= {GOAL_DIRECT_OVER_RELAY}x)")  # fmt: skip
        if "direct" in medians and "socat" in medians:
            print(f"ratio direct/socat = {medians['direct'] / medians['socat']:.2f}x "
                  f"(goal >= {GOAL_DIRECT_OVER_SOCAT}x)")  # fmt: skip
        if "direct@base" in medians and "relay@base" in medians:
            print(f"ratio direct@base/relay@base = "
                  f"{medians['direct@base'] / medians['relay@base']:.2f}x")  # fmt: skip
        for route in ("direct", "relay"):
            if route in medians and f"{route}@base" in medians:
                print(f"ratio {route}/{route}@base = "
                      f"{medians[route] / medians[route + '@base']:.2f}x")  # fmt: skip
        print("\nCPU s per GiB moved (user+sys, median over the timed runs)")
        for name, r in results.items():
            per = {role: statistics.median(r.cpu[role]) * GiB / size for role in r.roles}
            cells = "  ".join(f"{role} {per[role]:5.2f}" for role in r.roles)
            print(f"{name:11} {cells}  total {sum(per.values()):5.2f}")
    if ttfb and args.ttfb_runs:
        print(f"\n`flashback connect alice` to the first byte, median of {args.ttfb_runs} "
              "(to peer-url + curl time_starttransfer through it; `peers --json` alone:\n"
              "the CLI's own floor, a process start and one request to the daemon)")  # fmt: skip
        firsts, through = {}, {}
        for name, samples in ttfb.items():
            floor = statistics.median(s[0] for s in samples)
            to_url = statistics.median(s[1] for s in samples)
            through[name] = statistics.median(s[2] for s in samples)
            firsts[name] = statistics.median(s[1] + s[2] for s in samples)
            print(f"{name:11} {firsts[name] * 1000:7.1f} ms  (peer-url {to_url * 1000:6.1f} ms"
                  f" + first byte {through[name] * 1000:6.1f} ms;"
                  f" peers --json {floor * 1000:6.1f} ms)")  # fmt: skip
        if "direct" in firsts and "relay" in firsts:
            verdict = "met" if firsts["direct"] <= firsts["relay"] else "missed"
            print(f"direct first byte <= relay first byte: {verdict}")
            # the peer-url part is mostly the connect process starting (Python imports)
            verdict = "met" if through["direct"] <= through["relay"] else "missed"
            print(f"  through the forward alone (after peer-url): {verdict}")
    print(f"\nmachine: nproc {os.cpu_count()}, {platform.platform()}, "
          f"Python {platform.python_version()}, trio {trio.__version__}")  # fmt: skip
    print("load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ttfb-runs", type=int, default=5)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated, from direct, relay, socat (default: all three)",
    )
    parser.add_argument(
        "--base-tree",
        metavar="DIR",
        help="also run direct and relay from this source tree (PYTHONPATH), interleaved",
    )
    parser.add_argument(
        "--py-spy", metavar="PATH", help="after the runs, one profiled get per variant with py-spy"
    )
    args = parser.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown or not args.variants:
        print(f"--variants: choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    if (reason := nat_lab_unavailable_reason()) is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    tools = ["socat"] if "socat" in args.variants else []
    tools += ["curl"] if {"direct", "relay"} & set(args.variants) else []
    if missing := [t for t in tools if shutil.which(t) is None]:
        print(f"cannot run: missing {', '.join(missing)} (make bench-deps)", file=sys.stderr)
        return 2
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="fb-bench-direct-") as tmp,
        nat_lab({"alice": "open", "bob": "cone"}) as lab,
    ):
        trio.run(bench, args, lab, Path(tmp))
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

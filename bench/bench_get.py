"""``flashback get`` of one big file vs ``curl -o`` of the same URL, on loopback.

One setup: a tracker (``memory://``), alice's daemon sharing one file of
``--size-mib`` MiB of random bytes, and bob's daemon. ``get`` runs as bob's
user would run it (``flashback get alice big.bin -o OUT``): bob's daemon
finds the route (direct, same machine) and the client talks to alice's peer
server, verifies the SHA-256 and renames the part into place. ``curl -o``
fetches alice's ``/download/big.bin`` from the same server, untouched by
any check. One untimed warm-up each (alice hashes the file then; the page
cache is warm; both outputs are compared with the share), then ``--runs``
rounds, interleaved, the order alternating; OUT is removed before every run.
The time is the wall time of the client process; CPU is user+sys of the
client (``RUSAGE_CHILDREN``) and of alice's daemon (``/proc/PID/stat``).
Usage::

    PYTHONPATH=. .venv/bin/python bench/bench_get.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Final

import httpx
import trio
from proc_cpu import children_cpu_s, cpu_s  # bench/, this script's directory

from tests.procs import daemon_env, event_is, run_cli, start

MiB: Final = 1024 * 1024
READY_TIMEOUT_S: Final = 60.0
RUN_TIMEOUT_S: Final = 900.0
VARIANTS: Final = ("flashback get", "curl -o")


def make_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(size // MiB):
            block = os.urandom(MiB)
            out.write(block)
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


async def run_variant(
    variant: str, out: Path, bob_env: dict[str, str], url: httpx.URL, curl: str
) -> None:
    await trio.Path(out).unlink(missing_ok=True)
    if variant == "curl -o":
        await trio.run_process([curl, "-sS", "-o", str(out), str(url)], check=True)
        return
    got = await run_cli(["get", "alice", "big.bin", "-o", str(out)], env=bob_env,
                        timeout_s=RUN_TIMEOUT_S)  # fmt: skip
    if got.returncode != 0:
        raise SystemExit(f"get failed: {got.stderr.decode(errors='replace')[-2000:]}")


async def bench(args: argparse.Namespace, work: Path, curl: str) -> None:
    share = work / "share"
    share.mkdir()
    expected = make_file(share / "big.bin", args.size_mib * MiB)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        tracker = await stack.enter_async_context(
            start(
                nursery,
                ["tracker", "--host", "127.0.0.1", "--port", "0", "--tunnel-port", "0",
                 "--database-url", "memory://"],
                env={"FLASHBACK_DATA_DIR": str(work / "tracker")},
                name="tracker",
            )
        )  # fmt: skip
        tracker_url = (
            await tracker.wait_event(event_is("tracker-ready"), timeout_s=READY_TIMEOUT_S)
        )["url"]
        (work / "bob-share").mkdir()
        alice = await stack.enter_async_context(
            start(nursery, ["daemon", "--root", str(share), "--name", "alice", "--tracker",
                            tracker_url], env=daemon_env(work, "alice"), name="alice")
        )  # fmt: skip
        bob_env = daemon_env(work, "bob")
        await stack.enter_async_context(
            start(nursery, ["daemon", "--root", str(work / "bob-share"), "--name", "bob",
                            "--tracker", tracker_url], env=bob_env, name="bob")
        )  # fmt: skip
        ready = await alice.wait_event(event_is("peer-server-ready"), timeout_s=READY_TIMEOUT_S)
        url = httpx.URL(ready["url"]).copy_with(path="/download/big.bin")
        out = work / "out.bin"
        for variant in VARIANTS:  # warm-up: alice hashes the file; both outputs checked
            for attempt in range(60):
                try:
                    await run_variant(variant, out, bob_env, url, curl)
                    break
                except SystemExit:
                    if attempt == 59:
                        raise
                    await trio.sleep(0.5)  # bob has not seen alice yet
            if sha256_file(out) != expected:
                raise SystemExit(f"{variant}: the output differs from the share")
        print("warm-up done; both outputs match the share's SHA-256")
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu: dict[str, dict[str, list[float]]] = {v: {"client": [], "alice": []} for v in VARIANTS}
        for run in range(args.runs):
            order = VARIANTS if run % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                client0, alice0 = children_cpu_s(), cpu_s(alice.process.pid)
                t0 = time.perf_counter()
                await run_variant(variant, out, bob_env, url, curl)
                times[variant].append(time.perf_counter() - t0)
                cpu[variant]["client"].append(children_cpu_s() - client0)
                cpu[variant]["alice"].append(cpu_s(alice.process.pid) - alice0)
            print(f"run {run + 1}: " + "   ".join(f"{v} {times[v][-1]:.2f} s" for v in order))
        size = args.size_mib * MiB
        print(f"\n{args.size_mib} MiB, {args.runs} interleaved runs (MB = 10^6 bytes)")
        print(
            f"{'variant':14} {'MB/s':>7} {'min':>7} {'max':>7}   CPU s: {'client':>6} {'alice':>6}"
        )
        rates = {v: [size / t / 1e6 for t in times[v]] for v in VARIANTS}
        for v in VARIANTS:
            print(f"{v:14} {statistics.median(rates[v]):7.0f} {min(rates[v]):7.0f} "
                  f"{max(rates[v]):7.0f}          {statistics.median(cpu[v]['client']):6.2f} "
                  f"{statistics.median(cpu[v]['alice']):6.2f}")  # fmt: skip
        ratio = statistics.median(rates["flashback get"]) / statistics.median(rates["curl -o"])
        print(f"ratio get/curl MB/s = {ratio:.2f}x (goal >= 0.7x)")
        print(f"machine: nproc {os.cpu_count()}, {platform.platform()}, "
              f"Python {platform.python_version()}; load average at end: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()))  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    curl = shutil.which("curl")
    if curl is None:
        print("cannot run: curl is missing", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fb-bench-get-") as tmp:
        trio.run(bench, args, Path(tmp), curl)
    return 0


if __name__ == "__main__":
    sys.exit(main())

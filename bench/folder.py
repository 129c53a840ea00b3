"""``flashback get`` of a folder of many small files vs one file of the same size vs aria2c.

One setup on the host's loopback: a tracker (``memory://``), alice's daemon
sharing the files and bob's daemon; every ``get`` runs as bob's user would
run it (``flashback get alice many -o OUT``), so it goes through bob's
daemon for the route (direct here) and then talks to alice's peer server.

- folder: ``flashback get alice many --jobs J`` -- ``--files`` files of
  ``--file-kib`` KiB in one directory (paged, each verified against its
  ``Repr-Digest``, mtime set, one ``download-complete`` line each);
- one file: ``flashback get alice one.bin`` of the same total size;
- aria2c: ``aria2c -j J -i URLS`` where URLS lists the same files' URLs on
  alice's peer server (``/download/many/NAME``; aria2c checks nothing);
- rerun: the folder ``get`` again over a complete OUT (everything skipped).

One untimed warm-up of each first (alice hashes the files then, the page
cache is warm, the output is compared byte for byte), then ``--runs``
timed rounds, interleaved, the order rotating. OUT is removed before every
timed run. The time is the wall time of the whole client process. CPU is
user+sys: alice's and bob's daemons from ``/proc/PID/stat`` before/after, the
client from ``RUSAGE_CHILDREN`` around it. Needs aria2c (``apt-get install
aria2``; ``make bench-deps``). Usage::

    PYTHONPATH=. .venv/bin/python bench/folder.py [--files 10000] [--file-kib 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final

import httpx
import trio
from proc_cpu import children_cpu_s, cpu_s  # bench/, this script's directory

from tests.procs import Proc, daemon_env, event_is, run_cli, start

KiB: Final = 1024
READY_TIMEOUT_S: Final = 60.0
RUN_TIMEOUT_S: Final = 900.0
ROLES: Final = ("alice", "bob", "client")
VARIANTS: Final = ("folder", "one file", "aria2c")


@dataclass
class Figures:
    times_s: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in ROLES})


@dataclass
class Setup:
    work: Path
    alice: Proc
    bob: Proc
    bob_env: dict[str, str]
    urls: Path
    aria2c: str
    jobs: int
    files: int
    total_bytes: int
    figures: dict[str, Figures] = field(default_factory=lambda: {v: Figures() for v in VARIANTS})
    rerun: Figures = field(default_factory=Figures)

    def out(self, variant: str) -> Path:
        return self.work / ("out-" + variant.replace(" ", "-"))


def make_share(share: Path, files: int, file_bytes: int) -> None:
    """*files* files of random bytes in ``many/`` and one file of the same total size."""
    rng = random.Random(10_000)
    (share / "many").mkdir(parents=True)
    with (share / "one.bin").open("wb") as one:
        for n in range(files):
            data = rng.randbytes(file_bytes)
            (share / "many" / f"f{n:05d}.bin").write_bytes(data)
            one.write(data)


def write_urls(path: Path, base: httpx.URL, files: int) -> None:
    """The aria2c input list: one URL per line, each built from parts, never pasted."""
    with path.open("w") as out:
        for n in range(files):
            out.write(str(base.copy_with(path=f"/download/many/f{n:05d}.bin")) + "\n")


async def timed(setup: Setup, run: Callable[[], Awaitable[None]]) -> tuple[float, dict[str, float]]:
    pids = {"alice": setup.alice.process.pid, "bob": setup.bob.process.pid}
    before = {role: cpu_s(pid) for role, pid in pids.items()}
    before["client"] = children_cpu_s()
    t0 = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - t0
    after = {role: cpu_s(pid) for role, pid in pids.items()}
    after["client"] = children_cpu_s()
    return elapsed, {role: after[role] - before[role] for role in ROLES}


async def get(setup: Setup, path: str, out: Path, *, expect: str) -> None:
    got = await run_cli(
        ["get", "alice", path, "-o", str(out), "--jobs", str(setup.jobs)],
        env=setup.bob_env,
        timeout_s=RUN_TIMEOUT_S,
    )
    if got.returncode != 0:
        raise SystemExit(f"get {path} failed: {got.stderr.decode(errors='replace')[-2000:]}")
    last = json.loads(got.stdout.decode().strip().splitlines()[-1])
    if last.get("event") != expect:
        raise SystemExit(f"get {path} ended with {last}")
    if expect == "folder-complete" and last["files"] + last["skipped"] != setup.files:
        raise SystemExit(f"get {path}: {last}")


async def aria2c(setup: Setup, out: Path) -> None:
    await trio.run_process(
        [setup.aria2c, "-q", "-j", str(setup.jobs), "-i", str(setup.urls), "-d", str(out),
         "--auto-file-renaming=false", "--allow-overwrite=true"],
        check=True,
    )  # fmt: skip


async def run_variant(setup: Setup, variant: str) -> tuple[float, dict[str, float]]:
    out = setup.out(variant)
    shutil.rmtree(out, ignore_errors=True)
    if out.with_suffix(".bin").exists():
        out.with_suffix(".bin").unlink()
    if variant == "folder":
        return await timed(setup, lambda: get(setup, "many", out, expect="folder-complete"))
    if variant == "one file":
        one = out.with_suffix(".bin")
        return await timed(setup, lambda: get(setup, "one.bin", one, expect="download-complete"))
    return await timed(setup, lambda: aria2c(setup, out))


def check_outputs(setup: Setup, share: Path) -> None:
    for variant in ("folder", "aria2c"):
        out = setup.out(variant)
        names = sorted(os.listdir(out))
        if len(names) != setup.files:
            raise SystemExit(f"{variant}: {len(names)} files, not {setup.files}")
        for name in names[:: max(1, setup.files // 50)] + names[-1:]:
            if (out / name).read_bytes() != (share / "many" / name).read_bytes():
                raise SystemExit(f"{variant}: {name} differs")
    one = setup.out("one file").with_suffix(".bin")
    if one.stat().st_size != setup.total_bytes:
        raise SystemExit("one file: wrong size")


async def bench(args: argparse.Namespace, work: Path, aria2c_exe: str) -> None:
    file_bytes = args.file_kib * KiB
    share = work / "share"
    t0 = time.perf_counter()
    make_share(share, args.files, file_bytes)
    print(f"wrote {args.files} files of {args.file_kib} KiB + one file of the same total "
          f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
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
        url = (await tracker.wait_event(event_is("tracker-ready"), timeout_s=READY_TIMEOUT_S))[
            "url"
        ]
        (work / "bob-share").mkdir()
        alice = await stack.enter_async_context(
            start(
                nursery,
                ["daemon", "--root", str(share), "--name", "alice", "--tracker", url],
                env=daemon_env(work, "alice"),
                name="alice",
            )
        )
        bob_env = daemon_env(work, "bob")
        bob = await stack.enter_async_context(
            start(
                nursery,
                ["daemon", "--root", str(work / "bob-share"), "--name", "bob", "--tracker", url],
                env=bob_env,
                name="bob",
            )
        )
        ready = await alice.wait_event(event_is("peer-server-ready"), timeout_s=READY_TIMEOUT_S)
        await alice.wait_event(event_is("tracker-connected"), timeout_s=READY_TIMEOUT_S)
        await bob.wait_event(
            lambda e: (
                e.get("event") in ("peer-joined", "peers-snapshot") and "alice" in json.dumps(e)
            ),
            timeout_s=READY_TIMEOUT_S,
        )
        urls = work / "urls.txt"
        write_urls(urls, httpx.URL(ready["url"]), args.files)
        setup = Setup(
            work, alice, bob, bob_env, urls, aria2c_exe, args.jobs, args.files,
            args.files * file_bytes,
        )  # fmt: skip
        for variant in VARIANTS:
            elapsed, _ = await run_variant(setup, variant)
            print(f"warm-up {variant:8} {elapsed:6.1f} s")
        check_outputs(setup, share)
        print("outputs checked: the folder and aria2c trees match the share, one file its size")
        for run in range(args.runs):
            order = VARIANTS[run % 3 :] + VARIANTS[: run % 3]
            line = []
            for variant in order:
                elapsed, cpu = await run_variant(setup, variant)
                figures = setup.figures[variant]
                figures.times_s.append(elapsed)
                for role, seconds in cpu.items():
                    figures.cpu[role].append(seconds)
                line.append(f"{variant} {elapsed:5.1f} s")
            # the folder's OUT is complete again: a second get fetches nothing
            done = setup.out("folder")
            elapsed, cpu = await timed(
                setup, partial(get, setup, "many", done, expect="folder-complete")
            )
            setup.rerun.times_s.append(elapsed)
            for role, seconds in cpu.items():
                setup.rerun.cpu[role].append(seconds)
            line.append(f"rerun {elapsed:5.1f} s")
            print(f"run {run + 1}: " + "   ".join(line))
        report(args, setup)


def report(args: argparse.Namespace, setup: Setup) -> None:
    total = setup.total_bytes
    print(f"\n{args.files} files of {args.file_kib} KiB ({total / 1e6:.0f} MB), --jobs / -j "
          f"{args.jobs}, {args.runs} interleaved runs "
          "(MB = 10^6 bytes; wall time of the client)")  # fmt: skip
    print(f"{'variant':9} {'files/s':>8} {'min':>6} {'max':>6} {'MB/s':>7} {'median s':>9}"
          f"   CPU s: {'alice':>6} {'bob':>6} {'client':>7}")  # fmt: skip
    medians: dict[str, float] = {}
    rows = [*VARIANTS, "rerun"]
    for variant in rows:
        figures = setup.rerun if variant == "rerun" else setup.figures[variant]
        rates = [setup.files / t for t in figures.times_s]
        medians[variant] = statistics.median(rates)
        median_s = statistics.median(figures.times_s)
        cpu = {r: statistics.median(figures.cpu[r]) for r in ROLES}
        files_s = "" if variant == "one file" else f"{medians[variant]:8.0f}"
        low = "" if variant == "one file" else f"{min(rates):6.0f}"
        high = "" if variant == "one file" else f"{max(rates):6.0f}"
        mb_s = "" if variant == "rerun" else f"{total / median_s / 1e6:7.1f}"
        print(f"{variant:9} {files_s:>8} {low:>6} {high:>6} {mb_s:>7} {median_s:9.2f}"
              f"          {cpu['alice']:6.2f} {cpu['bob']:6.2f} {cpu['client']:7.2f}")  # fmt: skip
    print(
        f"ratio folder/aria2c files/s = {medians['folder'] / medians['aria2c']:.2f}x (goal >= 1.0x)"
    )
    one_s = statistics.median(setup.figures["one file"].times_s)
    folder_s = statistics.median(setup.figures["folder"].times_s)
    print(f"ratio folder/one file MB/s = {one_s / folder_s:.2f}x")
    version = subprocess.run([setup.aria2c, "--version"], capture_output=True, text=True)
    print(f"\nmachine: nproc {os.cpu_count()}, {platform.platform()}, "
          f"Python {platform.python_version()}, trio {trio.__version__}, "
          f"{version.stdout.splitlines()[0]}")  # fmt: skip
    print("load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--file-kib", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    aria2c_exe = shutil.which("aria2c")
    if aria2c_exe is None:
        print("cannot run: aria2c is missing (apt-get install aria2)", file=sys.stderr)
        return 2
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fb-bench-folder-") as tmp:
        trio.run(bench, args, Path(tmp), aria2c_exe)
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

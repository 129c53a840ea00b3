#!/usr/bin/env python3
"""Benchmark INTERFACE §7's digests: first-response waits and hashing speed.

One run, loopback only, on a file of ``--size-mib`` (default 1024) random bytes
in a temp dir (removed at the end):

* first-response latency (request sent -> status line and headers in) from a
  fresh ``flashback serve`` (cold in-memory digest cache) and again once the
  digest is cached (warm), for the big file (> 64 MiB: hashed in the
  background, never waited for) and for a 64 MiB file (hashed before its
  first response, the longest any response may wait);
* how long ``GET /api/digest`` of the big file takes on a cold server (the
  service's own hashing path: worker threads, 4 MiB reads) and when the
  ``Repr-Digest`` first appears;
* SHA-256 throughput of :func:`flashback.protocol.digest.hash_fd` (whole +
  per-block, one pass) against ``sha256sum`` on the same page-cached file,
  interleaved, median of ``--runs``.

Usage: ``.venv/bin/python bench/bench_digest.py [--size-mib 1024] [--runs 3]``.
The server is stopped by its pid. Exit status 2 if sha256sum is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from flashback.protocol.digest import hash_fd

MIB = 1024 * 1024
MB = 1_000_000
SMALL_MIB = 64


def write_random(path: Path, size_mib: int) -> None:
    with path.open("wb") as file:
        for _ in range(size_mib):
            file.write(os.urandom(MIB))


class Server:
    """``flashback serve`` in a child process, stopped by pid."""

    def __init__(self, root: Path) -> None:
        exe = Path(sys.executable).with_name("flashback")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--root", str(root), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        event = json.loads(self.proc.stdout.readline())
        self.url = event["url"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def first_response_s(http: httpx.Client, url: str) -> tuple[float, bool]:
    """Seconds to the response head of a GET (the body is not read), and
    whether it carried Repr-Digest."""
    started = time.perf_counter()
    with http.stream("GET", url) as response:
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed, "repr-digest" in response.headers


def measure_server(root: Path, name: str) -> dict[str, float | bool]:
    server = Server(root)
    try:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            cold, cold_digest = first_response_s(http, f"/download/{name}")
            started = time.perf_counter()
            http.get(f"/api/digest/{name}").raise_for_status()
            manifest_s = time.perf_counter() - started
            warm, warm_digest = first_response_s(http, f"/download/{name}")
    finally:
        server.stop()
    return {
        "cold_s": cold,
        "cold_has_digest": cold_digest,
        "api_digest_s": manifest_s,
        "warm_s": warm,
        "warm_has_digest": warm_digest,
    }


def sha256sum_s(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
    return time.perf_counter() - started


def hash_fd_s(path: Path) -> float:
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        started = time.perf_counter()
        hash_fd(fd, size)
        return time.perf_counter() - started
    finally:
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("sha256sum") is None:
        print("sha256sum is missing", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="flashback-bench-digest-") as tmp:
        root = Path(tmp)
        big = root / "big.bin"
        write_random(big, args.size_mib)
        write_random(root / "small.bin", SMALL_MIB)
        size = big.stat().st_size
        sha256sum_s(big)  # into the page cache
        files = (("big.bin", args.size_mib), ("small.bin", SMALL_MIB))
        for name, mib in files:
            r = measure_server(root, name)
            rate = mib * MIB / MB / float(r["api_digest_s"])
            print(
                f"{mib:>5} MiB: first response cold {float(r['cold_s']) * 1000:8.1f} ms"
                f" (Repr-Digest: {r['cold_has_digest']}),"
                f" warm {float(r['warm_s']) * 1000:6.1f} ms (Repr-Digest: {r['warm_has_digest']});"
                f" /api/digest cold {float(r['api_digest_s']):.2f} s = {rate:.0f} MB/s"
            )
        ours, theirs = [], []
        for _ in range(args.runs):
            theirs.append(sha256sum_s(big))
            ours.append(hash_fd_s(big))
        ours_mb_s = size / MB / statistics.median(ours)
        theirs_mb_s = size / MB / statistics.median(theirs)
        print(
            f"sha256 throughput (median of {args.runs}): hash_fd {ours_mb_s:.0f} MB/s,"
            f" sha256sum {theirs_mb_s:.0f} MB/s, ratio {ours_mb_s / theirs_mb_s:.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

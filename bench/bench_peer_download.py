#!/usr/bin/env python3
"""Benchmark the peer server's downloads against nginx and ``http.server``.

One run, loopback only:

* downloads a large file with curl from ``flashback serve`` (``/download``),
  nginx (``sendfile on``) and ``python -m http.server``, interleaved, and prints
  MB/s (10^6 bytes/s) median/min/max, server CPU per GiB and the ratios;
* samples the flashback server's RSS every 50 ms during a 2 GiB download (and a
  rate-limited "slow client" download) and reports the peak;
* times the first page of a 100,000-entry directory over HTTP against an
  in-process ``os.scandir`` + sort of the same directory.

Every server started here is stopped by pid, and the temp dir is removed.
Usage: ``.venv/bin/python bench/bench_peer_download.py [--runs 5] [--size-mib 1024]``.
Exit status 2 when nginx or curl is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

MIB = 1024 * 1024
MB = 1_000_000
START_TIMEOUT_S = 20.0
CURL_MAX_TIME_S = 600
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX_NOPUSH = "sendfile on; tcp_nopush on;"


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A loopback port that was free a moment ago (servers that cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll until something accepts on 127.0.0.1:*port*, or fail if *proc* died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on port {port} after {timeout_s} s")


def write_file(path: Path, size_mib: int) -> None:
    """Write *size_mib* MiB of real (non-sparse) pseudo-random data, fsync'd."""
    block = os.urandom(8 * MIB)
    remaining = size_mib * MIB
    with path.open("wb") as out:
        index = 0
        while remaining > 0:
            # vary each block a little so nothing below us can dedupe it
            chunk = index.to_bytes(8, "little") + block[8:]
            out.write(chunk[: min(len(chunk), remaining)])
            remaining -= min(len(chunk), remaining)
            index += 1
        out.flush()
        os.fsync(out.fileno())


def make_big_dir(path: Path, entries: int) -> None:
    """Create *entries* small files, named so creation order is not sorted order."""
    path.mkdir()
    for i in range(entries):
        # a bit-reversal-ish permutation of i keeps names unique but unsorted on disk
        name = f"e{(i * 7919) % entries:07d}-{i % 97:02d}.txt"
        fd = os.open(path / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"x")
        os.close(fd)


def proc_tree(pid: int) -> list[int]:
    """*pid* and its descendants (via /proc/PID/task/TID/children)."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 256:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* and its descendants, in seconds."""
    total = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{p}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM...) of /proc/PID/status, 0 when gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    """Samples VmRSS of one pid every *interval_s* until stopped."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[int] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(status_kib(self.pid, "VmRSS"))
            self._stop_event.wait(self.interval_s)

    def stop(self) -> int:
        """Stop sampling; the peak in KiB."""
        self._stop_event.set()
        self.join(5)
        return max(self.samples, default=0)


def curl(url: str, *extra: str) -> tuple[float, int, int, float]:
    """Download *url* to /dev/null: (bytes/s, size, HTTP status, curl's CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "--max-time", str(CURL_MAX_TIME_S), *extra,
         "-w", "%{speed_download} %{size_download} %{http_code} %{time_total}", url],
        capture_output=True, text=True, check=False, timeout=CURL_MAX_TIME_S + 30,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    speed, size, code, _ = out.stdout.split()
    return float(speed), int(float(size)), int(code), used


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """One running server process and how to reach the benchmark file on it."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    url_for: Callable[[str], str]
    log: Path
    speeds: list[float] = field(default_factory=list)
    cpu_per_gib: list[float] = field(default_factory=list)
    curl_cpu_per_gib: list[float] = field(default_factory=list)


class Servers:
    """Starts servers and guarantees they are stopped (by pid) on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Server] = []

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for server in reversed(self.started):
            proc = server.proc
            if proc.poll() is None:
                # nginx: SIGQUIT is a graceful stop of master and workers
                nginx = server.name.startswith("nginx")
                proc.send_signal(signal.SIGQUIT if nginx else signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        self.started.clear()

    def _spawn(
        self, name: str, argv: Sequence[str], **kw: object
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(argv, stderr=err, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]  # **kw are Popen's keyword arguments
        return proc, log

    def _listening(
        self, name: str, proc: subprocess.Popen[bytes], port: int, log: Path, *, last: bool
    ) -> Server | None:
        """The server once it listens on *port*; None (process reaped) if it lost
        the race for the port and may be retried, an error on the *last* try."""
        server = Server(name, proc, port, lambda p: f"http://127.0.0.1:{port}/{p}", log)
        self.started.append(server)
        try:
            wait_listening(port, proc, START_TIMEOUT_S)
            return server
        except RuntimeError:
            self.started.remove(server)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            if last:
                raise
        return None

    def flashback(self, exe: str, root: Path) -> Server:
        """``flashback serve --port 0``; the port comes from its ready event."""
        proc, log = self._spawn(
            "flashback", [exe, "serve", "--root", str(root), "--port", "0"], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        port = 0
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + START_TIMEOUT_S
            buf = b""
            while b"\n" not in buf and time.monotonic() < deadline:
                if sel.select(max(0.0, deadline - time.monotonic())):
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    if not chunk:
                        break
                    buf += chunk
        for line in buf.splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "peer-server-ready":
                    port = int(event["port"])
        server = Server(
            "flashback", proc, port, lambda p: f"http://127.0.0.1:{port}/download/{p}", log
        )
        self.started.append(server)
        if not port:
            raise RuntimeError(f"no peer-server-ready event; see {log}: {log.read_text()[-2000:]}")
        return server

    def nginx(self, exe: str, root: Path, name: str, directives: str) -> Server:
        """nginx with *directives* (``sendfile on;``...), its own prefix/config/pid/logs."""
        prefix = self.workdir / name
        prefix.mkdir(exist_ok=True)
        for attempt in range(3):
            port = free_port()
            user = "user root root;\n" if os.geteuid() == 0 else ""
            conf = prefix / "nginx.conf"
            conf.write_text(
                f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
                f"error_log {prefix}/error.log warn;\n"
                "events { worker_connections 64; }\n"
                "http {\n"
                f"  access_log off;\n  {directives}\n"
                "  default_type application/octet-stream;\n"
                f"  client_body_temp_path {prefix}/client_body;\n"
                f"  proxy_temp_path {prefix}/proxy;\n  fastcgi_temp_path {prefix}/fastcgi;\n"
                f"  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n"
                f"  server {{\n    listen 127.0.0.1:{port};\n    root {root};\n"
                "    location / { }\n  }\n}\n"
            )
            proc, log = self._spawn(
                name, [exe, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
            )
            if server := self._listening(name, proc, port, log, last=attempt == 2):
                return server
        raise AssertionError("unreachable")

    def http_server(self, python: str, root: Path) -> Server:
        """``python3 -m http.server --bind 127.0.0.1 PORT`` serving *root*."""
        for attempt in range(3):
            port = free_port()
            proc, log = self._spawn(
                "http.server",
                [python, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root),
                 str(port)],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            if server := self._listening("http.server", proc, port, log, last=attempt == 2):
                return server
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------- phases


def cpu_times() -> list[int]:
    """The aggregate ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq steal)."""
    with open("/proc/stat") as fh:
        return [int(x) for x in fh.readline().split()[1:9]]


def machine_info(nginx: str) -> list[str]:
    """nproc, CPU model, Python, nginx, curl, kernel, load average."""
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    nginx_v = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    curl_v = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    return [
        f"nproc: {os.cpu_count()}   cpu: {cpu}   kernel: {platform.release()}",
        f"python: {platform.python_version()} ({sys.executable})",
        f"nginx: {nginx_v.removeprefix('nginx version: ')}   curl: {curl_v.split()[1]}",
        f"load average at start: {' '.join(load)}",
    ]


def warm_page_cache(server: Server, name: str, size: int) -> None:
    """One untimed download, so the file is in the page cache right before timing.

    (Some VMs reclaim page cache that has been idle a few seconds, e.g. DAMON.)
    """
    _, got, code, _ = curl(server.url_for(name))
    if code != 200 or got != size:
        raise RuntimeError(f"{server.name} warm-up: HTTP {code}, {got} of {size} bytes")


def download_phase(servers: list[Server], name: str, size: int, runs: int) -> None:
    """Warm each server once, then *runs* interleaved rounds (rotating order)."""
    for server in servers:
        warm_page_cache(server, name, size)
    for run in range(runs):
        order = servers[run % len(servers) :] + servers[: run % len(servers)]
        for server in order:
            before = cpu_seconds(server.proc.pid)
            speed, got, code, curl_cpu = curl(server.url_for(name))
            used = cpu_seconds(server.proc.pid) - before
            if code != 200 or got != size:
                raise RuntimeError(f"{server.name} run {run}: HTTP {code}, {got} of {size} bytes")
            server.speeds.append(speed / MB)
            server.cpu_per_gib.append(used / (size / (1024 * MIB)))
            server.curl_cpu_per_gib.append(curl_cpu / (size / (1024 * MIB)))
            print(f"  run {run + 1}/{runs} {server.name:<20} {speed / MB:8.0f} MB/s", flush=True)


def download_table(servers: list[Server], size_mib: int, runs: int) -> list[str]:
    """The figures as one table, plus the ratios of the medians."""
    lines = [
        f"Download of a {size_mib} MiB file with curl, {runs} interleaved runs each",
        "(MB = 10^6 bytes; server CPU = server process tree user+sys, curl CPU = the client's)",
        f"{'server':<22}{'median MB/s':>12}{'min':>7}{'max':>7}"
        f"{'server CPU s/GiB':>18}{'curl CPU s/GiB':>16}",
    ]
    medians = {}
    for s in servers:
        medians[s.name] = statistics.median(s.speeds)
        lines.append(
            f"{s.name:<22}{medians[s.name]:>12.0f}{min(s.speeds):>7.0f}{max(s.speeds):>7.0f}"
            f"{statistics.median(s.cpu_per_gib):>18.2f}"
            f"{statistics.median(s.curl_cpu_per_gib):>16.2f}"
        )
    fb = medians["flashback"]
    lines.append(
        f"ratio flashback/nginx = {fb / medians['nginx']:.2f}x (target >= 0.75x)   "
        f"flashback/http.server = {fb / medians['http.server']:.2f}x"
    )
    extra = [n for n in medians if n.startswith("nginx") and n != "nginx"]
    lines += [f"ratio flashback/{n} = {fb / medians[n]:.2f}x" for n in extra]
    return lines


def rss_phase(server: Server, name: str, size: int, slow_rate: str, slow_s: int) -> list[str]:
    """Peak VmRSS of the flashback server during a full download and a slow one."""
    pid = server.proc.pid
    warm_page_cache(server, name, size)
    idle = status_kib(pid, "VmRSS")
    sampler = RssSampler(pid)
    sampler.start()
    try:
        speed, got, code, _ = curl(server.url_for(name))
    finally:
        peak = sampler.stop()
    if code != 200 or got != size:
        raise RuntimeError(f"RSS download: HTTP {code}, {got} of {size} bytes")
    lines = [
        f"Flashback server RSS (VmRSS sampled every 50 ms, {len(sampler.samples)} samples; "
        "target < 100 MB)",
        f"  idle before: {idle / 1024:.1f} MiB   peak during {size // MIB} MiB download "
        f"({speed / MB:.0f} MB/s): {peak / 1024:.1f} MiB",
    ]
    if slow_s > 0:
        sampler = RssSampler(pid)
        sampler.start()
        try:
            _, got, _, _ = curl(server.url_for(name), "--limit-rate", slow_rate,
                                "--max-time", str(slow_s))  # fmt: skip
        finally:
            peak = sampler.stop()
        lines.append(
            f"  peak during a slow client (curl --limit-rate {slow_rate}, {slow_s} s, "
            f"{got / MB:.0f} MB received): {peak / 1024:.1f} MiB"
        )
    lines.append(f"  VmHWM (lifetime high-water mark): {status_kib(pid, 'VmHWM') / 1024:.1f} MiB")
    return lines


def listing_phase(server: Server, root: Path, dirname: str, runs: int) -> list[str]:
    """First page over HTTP vs in-process scandir+sort (and the listing function alone)."""
    from flashback.peer.listing import list_directory

    url = f"http://127.0.0.1:{server.port}/api/files/{dirname}?limit=1000"
    directory = root / dirname

    def fetch() -> tuple[float, float, int]:
        out = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "--max-time", "60",
             "-w", "%{time_starttransfer} %{time_total} %{http_code}", url],
            capture_output=True, text=True, check=False, timeout=90,
        )  # fmt: skip
        first, total, code = out.stdout.split()
        return float(first), float(total), int(code)

    def scandir_sort() -> float:
        t0 = time.perf_counter()
        with os.scandir(directory) as scan:
            names = sorted(d.name for d in scan)
        elapsed = time.perf_counter() - t0
        assert len(names) >= 1000
        return elapsed

    def listing_fn() -> float:
        t0 = time.perf_counter()
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            page = list_directory(root.resolve(), (dirname,), dir_fd, limit=1000)
        finally:
            os.close(dir_fd)
        elapsed = time.perf_counter() - t0
        assert len(page.entries) == 1000 and page.next_cursor
        return elapsed

    fetch()  # warm dentry cache and the server's code paths
    http = [fetch() for _ in range(runs)]
    if any(code != 200 for *_, code in http):
        raise RuntimeError(f"listing returned {[c for *_, c in http]}")
    local = [scandir_sort() for _ in range(runs)]
    fn = [listing_fn() for _ in range(runs)]
    ms = 1000.0
    entries = sum(1 for _ in os.scandir(directory))
    return [
        f"First listing page of a {entries}-entry directory (limit=1000), median of {runs}",
        f"  HTTP GET /api/files/{dirname}?limit=1000  first byte "
        f"{statistics.median(h[0] for h in http) * ms:7.1f} ms   total "
        f"{statistics.median(h[1] for h in http) * ms:7.1f} ms   "
        f"(min {min(h[1] for h in http) * ms:.1f}, max {max(h[1] for h in http) * ms:.1f})",
        f"  in-process os.scandir + sort(names)   {statistics.median(local) * ms:7.1f} ms"
        f"   (min {min(local) * ms:.1f}, max {max(local) * ms:.1f})",
        f"  in-process list_directory(limit=1000) {statistics.median(fn) * ms:7.1f} ms"
        f"   (open + listdir + sort + 1000 lstats, no HTTP)",
    ]


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    default_exe = Path(sys.executable).with_name("flashback")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="download file size (MiB)")
    p.add_argument("--rss-size-mib", type=int, default=2048, help="RSS-phase file size (MiB)")
    p.add_argument("--runs", type=int, default=5, help="interleaved downloads per server")
    p.add_argument("--entries", type=int, default=100_000, help="entries in the big directory")
    p.add_argument("--listing-runs", type=int, default=7, help="timed first-page requests")
    p.add_argument("--slow-rate", default="50M", help="curl --limit-rate for the slow client")
    p.add_argument("--slow-seconds", type=int, default=10, help="slow-client time, 0 to skip")
    p.add_argument(
        "--nginx-directives",
        default="sendfile on;",
        help="http-level directives of the reference nginx (default: %(default)r)",
    )
    p.add_argument(
        "--nginx-nopush",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"also measure a second nginx with {NGINX_NOPUSH!r} (Debian's default config)",
    )
    p.add_argument("--flashback", default=str(default_exe) if default_exe.exists() else "flashback")
    p.add_argument("--python", default=sys.executable, help="python for -m http.server")
    p.add_argument("--tmpdir", default=None, help="parent of the temp dir (default: system)")
    args = p.parse_args(argv)
    if not (1 <= args.runs <= 100 and args.size_mib >= 1 and args.rss_size_mib >= 1):
        p.error("runs must be 1..100 and sizes >= 1 MiB")
    return args


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def temp_workdir(parent: str | None) -> Iterator[Path]:
    """A temp dir removed on exit, whatever happens."""
    path = Path(tempfile.mkdtemp(prefix="flashback-bench-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every phase and print the report."""
    args = parse_args(argv)
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if nginx is None:
        print("nginx is not installed: apt-get update && apt-get install -y nginx", file=sys.stderr)
        return 2
    if shutil.which("curl") is None:
        print("curl is not installed: apt-get install -y curl", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    cpu_start = cpu_times()
    report = machine_info(nginx)
    print("\n".join(report), flush=True)

    with temp_workdir(args.tmpdir) as work, Servers(work) as servers:
        root = work / "root"
        root.mkdir()
        t0 = time.monotonic()
        write_file(root / "big.bin", args.size_mib)
        write_file(root / "rss.bin", args.rss_size_mib)
        make_big_dir(root / "bigdir", args.entries)
        print(f"test data written in {time.monotonic() - t0:.1f} s", flush=True)

        fb = servers.flashback(args.flashback, root)
        ngx = servers.nginx(nginx, root, "nginx", args.nginx_directives)
        pys = servers.http_server(args.python, root)
        measured = [fb, ngx, pys]
        if args.nginx_nopush:
            measured.append(servers.nginx(nginx, root, "nginx+tcp_nopush", NGINX_NOPUSH))
        for s in measured:
            print(f"server {s.name}: port {s.port}, pid {s.proc.pid}", flush=True)

        download_phase(measured, "big.bin", args.size_mib * MIB, args.runs)
        report = ["", *download_table(measured, args.size_mib, args.runs)]
        report += ["", *rss_phase(fb, "rss.bin", args.rss_size_mib * MIB, args.slow_rate,
                                  args.slow_seconds)]  # fmt: skip
        report += ["", *listing_phase(fb, root, "bigdir", args.listing_runs)]
        with open("/proc/loadavg") as fh:
            load = " ".join(fh.read().split()[:3])
        delta = [b - a for a, b in zip(cpu_start, cpu_times(), strict=True)]
        total = sum(delta) or 1
        report += [
            "",
            f"load average at end: {load}   whole-machine CPU over the run: "
            f"busy {100 * (total - delta[3] - delta[4]) / total:.0f}%, "
            f"steal {100 * delta[7] / total:.1f}%",
        ]
        print("\n".join(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

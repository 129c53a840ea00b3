"""Dedicated streaming port vs nginx: one big file over loopback, curl as client.

The stream port is the real code path: a :class:`StreamManager` in this
process answers a ``stream-request`` exactly as the daemon does (safe path
resolution, a fresh listener and token, h11, ``os.sendfile``), and curl
fetches ``http://127.0.0.1:PORT/<token>`` -- each run on a fresh port, which
then closes as completed. nginx serves the same file from a throw-away
config (``sendfile on``, ``sendfile_max_chunk 8m`` like our own per-call cap,
one worker like our one event loop, no access log) on another free loopback
port. ``tcp_nopush`` is off: on loopback it made nginx slower (about
1.7 GB/s instead of 2.9 here), and the point is to beat nginx at its best. Runs alternate between
the two so drift on a shared machine hits both alike; the figure is the
median of curl's own download speed. The file is read once first so both
serve it from the page cache. Usage::

    .venv/bin/python bench/bench_stream_port.py [--size-mib 1024] [--runs 7]

Exit status 2 if nginx or curl is missing (``apt-get install -y nginx curl``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final, cast

import trio

from flashback.protocol.messages import FileStreamReady, StreamRequest
from flashback.streaming.manager import StreamManager, StreamSettings

HOST: Final = "127.0.0.1"
FILE_NAME: Final = "big.bin"
BLOCK_BYTES: Final = 1024 * 1024
NGINX_START_TIMEOUT_S: Final = 10.0

NGINX_CONF: Final = """\
{user}worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush off;
    sendfile_max_chunk 8m;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    default_type application/octet-stream;
    server {{
        listen {host}:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return cast(int, probe.getsockname()[1])


def make_file(path: Path, size_bytes: int) -> None:
    block = os.urandom(BLOCK_BYTES)
    with path.open("wb") as out:
        for _ in range(size_bytes // BLOCK_BYTES):
            out.write(block)
        out.write(block[: size_bytes % BLOCK_BYTES])
    with path.open("rb") as warm:  # into the page cache
        while warm.read(16 * BLOCK_BYTES):
            pass


async def curl_mb_s(url: str, size_bytes: int) -> float:
    result = await trio.run_process(
        ["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"curl {url}: {result.stderr.decode().strip()}")
    got, seconds = result.stdout.decode().split()
    if int(got) != size_bytes:
        raise RuntimeError(f"curl got {got} bytes of {size_bytes}")
    return size_bytes / float(seconds) / 1e6


async def start_nginx(nursery: trio.Nursery, prefix: Path, root: Path, port: int) -> trio.Process:
    (prefix / "tmp").mkdir(parents=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, prefix=prefix, host=HOST, port=port, root=root))
    process: trio.Process = await nursery.start(
        partial_run(["nginx", "-p", str(prefix), "-c", str(conf)])
    )
    with trio.fail_after(NGINX_START_TIMEOUT_S):
        while True:
            try:
                stream = await trio.open_tcp_stream(HOST, port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return process


def partial_run(command: list[str]) -> Callable[..., Awaitable[None]]:
    """A nursery.start target that reports the process once it is spawned."""

    async def run(task_status: trio.TaskStatus[trio.Process] = trio.TASK_STATUS_IGNORED) -> None:
        await trio.run_process(
            command, check=False, task_status=task_status, stdout=subprocess.DEVNULL
        )

    return run


async def bench(size_bytes: int, runs: int) -> int:
    with tempfile.TemporaryDirectory(prefix="flashback-bench-") as tmp:
        base = Path(tmp)
        root = base / "share"
        root.mkdir()
        os.chmod(base, 0o755)
        make_file(root / FILE_NAME, size_bytes)
        nginx_port = free_port()
        nginx_url = f"http://{HOST}:{nginx_port}/{FILE_NAME}"
        stream_results: list[float] = []
        nginx_results: list[float] = []
        async with trio.open_nursery() as nursery:
            nginx = await start_nginx(nursery, base / "nginx", root, nginx_port)
            manager = StreamManager(StreamSettings(root, HOST), lambda event, **_: None)
            _, requests = trio.open_memory_channel[StreamRequest](0)
            await nursery.start(manager.run, requests, lambda answer: None)

            async def stream_once(index: int) -> float:
                answer = await manager.handle(StreamRequest(f"bench-{index}", FILE_NAME, from_="b"))
                assert isinstance(answer, FileStreamReady), answer
                return await curl_mb_s(f"http://{HOST}:{answer.port}/{answer.token}", size_bytes)

            await stream_once(-1)  # warm-up, not counted
            await curl_mb_s(nginx_url, size_bytes)
            for index in range(runs):
                stream_results.append(await stream_once(index))
                nginx_results.append(await curl_mb_s(nginx_url, size_bytes))
                print(
                    f"run {index + 1}: stream port {stream_results[-1]:8.0f} MB/s   "
                    f"nginx {nginx_results[-1]:8.0f} MB/s",
                    flush=True,
                )
            nginx.terminate()
            nursery.cancel_scope.cancel()
    stream_median = statistics.median(stream_results)
    nginx_median = statistics.median(nginx_results)
    print(f"file: {size_bytes / 2**20:.0f} MiB, {runs} runs each, interleaved, curl -o /dev/null")
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}"
    )
    print(f"nginx: {nginx_version()}, worker_processes 1, sendfile on")
    print(f"stream port median: {stream_median:,.0f} MB/s")
    print(f"nginx median:       {nginx_median:,.0f} MB/s")
    print(f"ratio stream/nginx: {stream_median / nginx_median:.2f}")
    return 0


def nginx_version() -> str:
    result = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return (result.stderr or result.stdout).strip().removeprefix("nginx version: ")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    for tool in ("nginx", "curl"):
        if shutil.which(tool) is None:
            print(
                f"{tool} is not installed (apt-get install -y {tool}); cannot compare",
                file=sys.stderr,
            )
            return 2
    return trio.run(bench, args.size_mib * 1024 * 1024, args.runs)


if __name__ == "__main__":
    sys.exit(main())

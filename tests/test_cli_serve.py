"""``flashback serve`` as a user runs it: a real process, its event line, signals, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from flashback.peer.app import ShareSettings
from flashback.peer.serve import serve_peer
from tests.procs import first_event

FLASHBACK = [sys.executable, "-m", "flashback"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLASHBACK, *args], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(
    "args",
    [
        ["serve"],
        ["serve", "--root", "/definitely/not/here"],
        ["serve", "--root", ".", "--port", "70000"],
        ["serve", "--root", ".", "--port", "abc"],
        ["nonsense"],
        [],
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr


async def test_serve_process_announces_port_and_stops_on_sigterm(share: Path) -> None:
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process(
            [*FLASHBACK, "serve", "--root", str(share), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            buffer = b""
            while b"\n" not in buffer:
                chunk = await proc.stdout.receive_some()
                assert chunk, "serve exited before announcing its port"
                buffer += chunk
            event = json.loads(buffer.split(b"\n")[0])
            assert event["event"] == "peer-server-ready"
            assert event["host"] == "127.0.0.1"
            assert event["url"] == f"http://127.0.0.1:{event['port']}"
            async with httpx.AsyncClient(base_url=event["url"]) as http:
                assert (await http.get("/content/hello.txt")).text == "hello, world\n"
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    await stream.aclose()


def test_port_in_use_is_one_line_exit_1(share: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--root", str(share), "--port", str(port))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "in use" in result.stderr.lower()


async def test_cancelling_serve_peer_closes_the_port(share: Path) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(partial(serve_peer, ShareSettings(share), "127.0.0.1", 0))
            async with httpx.AsyncClient(base_url=address.url) as http:
                assert (await http.get("/api/info")).status_code == 200
            nursery.cancel_scope.cancel()
        with pytest.raises(OSError):
            stream = await trio.open_tcp_stream(address.host, address.port)
            await stream.aclose()


def test_unused_env_does_not_leak_into_serve() -> None:
    # serve takes no tracker settings: a stray variable must not break it
    env = dict(os.environ, FLASHBACK_TRACKER_URL="not a url")
    result = subprocess.run(
        [*FLASHBACK, "serve", "--help"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0
    assert "--show-hidden" in result.stdout


async def test_sigterm_exits_in_time_even_with_a_client_that_stopped_reading(
    tmp_path: Path,
) -> None:
    """Hypercorn's body sends are shielded: a stalled reader must not hold us past 5 s."""
    big = tmp_path / "big.bin"
    with big.open("wb") as file:
        file.truncate(256 * 1024 * 1024)
    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            [*FLASHBACK, "serve", "--root", str(tmp_path), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        stalled = None
        try:
            port = (await first_event(proc))["port"]
            stalled = await trio.open_tcp_stream("127.0.0.1", port)
            await stalled.send_all(b"GET /download/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
            # the answer has begun, and 256 MiB never fits the socket buffers: from
            # here the server is in a send the client never drains
            head = await stalled.receive_some(65536)
            assert head.startswith(b"HTTP/1.1 200 "), head[:80]
            proc.send_signal(signal.SIGTERM)
            started = trio.current_time()
            with trio.fail_after(10):
                code = await proc.wait()
            assert code == 0
            assert trio.current_time() - started < 5.5
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            if stalled is not None:
                await stalled.aclose()
            if proc.stdout is not None:
                await proc.stdout.aclose()

"""``flashback tracker`` as a user runs it: a real process, port 0, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio
from trio_websocket import ConnectionClosed

from tests.procs import first_event, reap
from tests.tracker_support import hello, open_link, receive

TEST_TIMEOUT_S = 20
EXIT_TIMEOUT_S = 5


async def test_tracker_process_announces_its_port_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "flashback", "tracker", "--host", "127.0.0.1", "--port", "0",
        "--database-url", f"sqlite:///{tmp_path}/tracker.sqlite3",
    ]  # fmt: skip
    with trio.fail_after(TEST_TIMEOUT_S):
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            ready = await first_event(process)
            assert ready["event"] == "tracker-ready"
            assert ready["host"] == "127.0.0.1"
            assert ready["url"] == f"http://127.0.0.1:{ready['port']}"

            async with httpx.AsyncClient(base_url=ready["url"]) as client:
                status = await client.get("/api/relay/status")
                assert status.json()["status"] == "ok"
            ws_url = ready["url"].replace("http", "ws", 1) + "/api/peers/ws"
            async with open_link(ws_url) as ws:
                await hello(ws)
                assert (await receive(ws))["type"] == "snapshot"
                process.send_signal(signal.SIGTERM)
                try:
                    await receive(ws)
                except ConnectionClosed as closed:
                    assert closed.reason is not None
                    assert closed.reason.code == 1001
                else:
                    raise AssertionError("the link stayed open")
            with trio.fail_after(EXIT_TIMEOUT_S):
                assert await process.wait() == 0
            assert process.stderr is not None
            errors = await process.stderr.receive_some(1 << 16)
            assert b"Traceback" not in errors
        finally:
            await reap(process)


async def test_a_bad_database_url_is_a_usage_error() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        result = await trio.run_process(
            [sys.executable, "-m", "flashback", "tracker", "--port", "0",
             "--database-url", "postgres://nope"],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == b""
    assert b"DATABASE_URL" in result.stderr
    assert b"Traceback" not in result.stderr


async def test_a_busy_tunnel_port_names_host_and_port_and_exits_1() -> None:
    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    with taken, trio.fail_after(TEST_TIMEOUT_S):
        result = await trio.run_process(
            [sys.executable, "-m", "flashback", "tracker", "--host", "127.0.0.1", "--port", "0",
             "--tunnel-port", str(port), "--database-url", "memory://"],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert lines[-1] == f"flashback: tunnel port 127.0.0.1:{port}: address already in use"
    assert b"Traceback" not in result.stderr
    assert b"tracker-ready" not in result.stdout

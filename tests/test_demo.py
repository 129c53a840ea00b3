"""The README's first quick-start command (``make run`` = ``python -m flashback.demo``)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.pty_session import at_terminal


async def test_demo_starts_tracker_and_daemon_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "flashback.demo"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert process.stdout is not None
            output = b""
            while b'"event": "peer-joined"' not in output:
                chunk = await process.stdout.receive_some()
                assert chunk, output
                output += chunk
            lines = output.decode().splitlines()
            ready = next(line for line in lines if "peer-server-ready" in line)
            url = ready.split('"url": "')[1].split('"')[0]
            async with httpx.AsyncClient(base_url=url) as http:
                listing = (await http.get("/api/files")).json()
            assert {"hello.txt", "welcome.md", "notes", "index.md"} <= {
                e["name"] for e in listing["entries"]
            }
            assert any(line.startswith("[tracker]") and "tracker-ready" in line for line in lines)
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


async def test_ctrl_c_at_the_terminal_stops_the_daemon_first_so_it_unregisters(
    tmp_path: Path,
) -> None:
    """A terminal's Ctrl-C reaches the whole foreground process group (``make run``
    and what it started): the daemon must still unregister before the tracker stops."""
    demo = [sys.executable, "-m", "flashback.demo"]
    with trio.fail_after(90):
        async with at_terminal([], env={}, program=demo, cwd=str(tmp_path)) as session:
            await session.wait_for('[daemon] {"event": "peer-joined"')
            session.ctrl_c()
    text = "\n".join(session.lines())
    assert session.returncode == 0, text
    assert "unregistered from the tracker" in text and "could not unregister" not in text, text

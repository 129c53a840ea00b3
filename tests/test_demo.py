"""The README's first quick-start command (``make run`` = ``python -m flashback.demo``)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import trio


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

"""The stream ports of a real daemon against peer ids that cost nothing.

On the code before the fix the per-peer share (4 ports) fell to four free
peer ids: together they held all 16 ports and an honest requester heard
``busy``. Now the ports are a fair share: the heaviest holder's oldest port
closes to make room, never the newcomer's request (docs/INTERFACE.md, "Bounds").
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import trio

from tests.abuse_support import start_tracker_proc
from tests.procs import daemon_env, run_cli
from tests.test_daemon_system import joined, start_daemon
from tests.tracker_support import open_link, receive, send

FAST_TRACKER = {"RELAY_HEARTBEAT_INTERVAL": "1", "RELAY_PEER_TTL": "5"}


async def test_four_free_peer_ids_cannot_take_every_stream_port(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(90):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker_proc(stack, nursery, tmp_path, FAST_TRACKER)
            victim = await start_daemon(
                stack, nursery, tmp_path, "victim", url, {"a.txt": b"hello\n"}
            )
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await bob.wait_event(joined("victim"))
            links = []
            victim_id = ""
            async with httpx.AsyncClient(timeout=5) as http:
                for i in range(4):
                    body = {"name": f"sybil{i}", "peer_server": {"host": "127.0.0.1", "port": 9}}
                    me = (await http.post(url + "/api/peers/register", json=body)).json()
                    ws = await stack.enter_async_context(
                        open_link(url.replace("http://", "ws://") + "/api/peers/ws")
                    )
                    hello = {"type": "hello", "peer_id": me["peer_id"], "token": me["token"]}
                    await send(ws, hello)
                    snapshot = await receive(ws)
                    victim_id = next(
                        p["peer_id"] for p in snapshot["peers"] if p["name"] == "victim"
                    )
                    links.append(ws)
            ready = 0
            for n, ws in enumerate(links):
                for i in range(4):
                    request = {"type": "stream-request", "request_id": f"s{n}-{i}",
                               "to": victim_id, "path": "a.txt"}  # fmt: skip
                    await send(ws, request)
                answers = 0
                while answers < 4:
                    answer = await receive(ws, timeout_s=20)
                    if answer["type"] in ("file-stream-ready", "stream-error"):
                        assert answer["type"] == "file-stream-ready", answer
                        answers += 1
                ready += answers
            assert ready == 16  # every port is taken
            out = tmp_path / "a.txt"
            result = await run_cli(
                ["stream", "victim", "a.txt", "-o", str(out)], env=daemon_env(tmp_path, "bob")
            )
            assert result.returncode == 0, result.stderr
            assert out.read_bytes() == b"hello\n"
            # the port that made room was the oldest of the first sybil
            evicted = [
                e
                for e in victim.events
                if e.get("event") == "stream-closed" and e.get("reason") == "evicted"
            ]
            assert [e["request_id"] for e in evicted] == ["s0-0"]

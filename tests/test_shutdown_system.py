"""The shutdown promise on real processes: SIGTERM -> exit within 5 s, nothing lost.

A client that asks for the peer list and stops reading holds the tracker in
a send Hypercorn shields from cancellation. Before one deadline bounded every
step, only ``os._exit`` at 4.5 s kept the 5 s promise, so ``save_seq`` never
ran and the process still said 0. Now the send is cut at the servers'
deadline, ``seq`` is saved, and the exit status is 0.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import trio

from tests.procs import first_event, reap
from tests.tracker_support import registration

TEST_TIMEOUT_S = 60
#: the contract: SIGTERM -> exit within 5 s
EXIT_WITHIN_S = 5
#: peers with the largest capabilities the tracker takes (4 KiB): a peer list
#: of ~1 MiB, far more than the socket buffers of a client that reads nothing
PEERS = 250
CAPABILITIES = {"padding": "x" * 4000}


async def _start_tracker(database: Path) -> tuple[trio.Process, str]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "flashback", "tracker", "--host", "127.0.0.1", "--port", "0",
         "--tunnel-port", "off", "--database-url", f"sqlite:///{database}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "RELAY_REGISTER_BURST": str(PEERS)},
    )  # fmt: skip
    ready = await first_event(process)
    assert ready["event"] == "tracker-ready"
    return process, ready["url"]


async def _register_peers(url: str) -> int:
    """Register PEERS peers; the highest seq the tracker handed out doing so."""
    async with httpx.AsyncClient(base_url=url) as client:
        for n in range(PEERS):
            body = registration(f"peer-{n}", capabilities=CAPABILITIES)
            response = await client.post("/api/peers/register", json=body)
            assert response.status_code == 201, response.text
        listing = (await client.get("/api/peers/list")).json()
    assert len(listing["peers"]) == PEERS
    return int(listing["seq"])


def _saved_seq(database: Path) -> int | None:
    with sqlite3.connect(database) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
    return None if row is None else int(row[0])


async def _read_until_eof(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    async for chunk in stream:
        data += chunk
    return bytes(data)


async def test_a_stalled_client_does_not_cost_the_tracker_its_seq(tmp_path: Path) -> None:
    database = tmp_path / "tracker.sqlite3"
    with trio.fail_after(TEST_TIMEOUT_S):
        process, url = await _start_tracker(database)
        try:
            seq = await _register_peers(url)
            assert _saved_seq(database) is None  # saved at shutdown, not before
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await client.connect(("127.0.0.1", httpx.URL(url).port))
            stalled = trio.SocketStream(client)
            await stalled.send_all(b"GET /api/peers/list HTTP/1.1\r\nHost: tracker\r\n\r\n")
            head = await stalled.receive_some(1024)  # the answer has begun...
            assert head.startswith(b"HTTP/1.1 200")
            # ...and from now on nobody reads: the tracker blocks in a shielded send.
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(EXIT_WITHIN_S):
                code = await process.wait()
            assert process.stderr is not None
            errors = await _read_until_eof(process.stderr)
            assert code == 0, errors.decode(errors="replace")[-2000:]
            saved = _saved_seq(database)
            assert saved is not None and saved >= seq
            assert b"Traceback" not in errors
            # the client really was stalled: the tracker cut the list short
            answer = head + await _read_until_eof(stalled)
            length = int(answer.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            assert len(answer.split(b"\r\n\r\n", 1)[1]) < length
            await stalled.aclose()
        finally:
            await reap(process)


async def test_a_seq_that_cannot_be_saved_is_not_an_exit_0(tmp_path: Path) -> None:
    """A database locked by someone else: saving seq fails, and the status says so (1)."""
    database = tmp_path / "tracker.sqlite3"
    with trio.fail_after(TEST_TIMEOUT_S):
        process, url = await _start_tracker(database)
        try:
            async with httpx.AsyncClient(base_url=url) as client:
                response = await client.post("/api/peers/register", json=registration("one"))
                assert response.status_code == 201
            holder = sqlite3.connect(database, isolation_level=None)
            try:
                holder.execute("BEGIN EXCLUSIVE")  # every write of the tracker now waits
                process.send_signal(signal.SIGTERM)
                with trio.fail_after(EXIT_WITHIN_S):
                    code = await process.wait()
            finally:
                holder.close()
            assert process.stderr is not None
            errors = await _read_until_eof(process.stderr)
            assert code == 1
            assert b"saving seq" in errors
            assert b"Traceback" not in errors
            assert _saved_seq(database) is None
        finally:
            await reap(process)

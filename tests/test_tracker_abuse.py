"""Issue 10, tracker side: a real ``flashback tracker`` attacked from outside.

Each test would fail on the code before the fix: the tracker took every
registration (list growing without bound), accepted any printable host,
kept watchers that never read forever, and served a garbled database.
"""

from __future__ import annotations

import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import trio

from tests.abuse_support import (
    big_registration,
    probe,
    register_from,
    rss_kib,
    silent_watcher,
    start_tracker_proc,
)
from tests.procs import run_cli

SOURCES = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]


async def test_a_full_tracker_refuses_peers_with_503_and_its_list_stays_bounded(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    max_peers, max_bytes = 30, 60_000
    env = {"RELAY_MAX_PEERS": str(max_peers), "RELAY_MAX_PEER_LIST_BYTES": str(max_bytes)}
    async with AsyncExitStack() as stack:
        tracker, url = await start_tracker_proc(stack, nursery, tmp_path, env)
        before = rss_kib(tracker.process.pid)
        # the peer count: 40 small peers, 30 get in, 10 hear 503 tracker_full
        small = await register_from(
            url, [big_registration(i, big=False) for i in range(40)], SOURCES
        )
        assert [r.status_code for r in small] == [201] * max_peers + [503] * 10
        for response in small[max_peers:]:
            assert response.json()["error"]["code"] == "tracker_full"
        # peers that leave make room again
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            for answer in small[:20]:
                peer = answer.json()
                gone = await http.delete(
                    f"/api/peers/{peer['peer_id']}",
                    headers={"Authorization": f"Bearer {peer['token']}"},
                )
                assert gone.status_code == 204
        # the bytes: 40 of the largest records a peer may send (4 KB
        # capabilities, 253-character host) from 4 source addresses
        big = await register_from(url, [big_registration(100 + i) for i in range(40)], SOURCES)
        admitted = [r for r in big if r.status_code == 201]
        assert 1 <= len(admitted) < 20  # the byte budget, not the count, stopped them
        for response in big:
            assert response.status_code in (201, 503)
            if response.status_code == 503:
                assert response.json()["error"]["code"] == "tracker_full"
        status = await probe(url)
        assert status["peers_online"] == 10 + len(admitted)
        async with httpx.AsyncClient(timeout=5) as http:
            listing = await http.get(url + "/api/peers/list")
        assert len(listing.content) <= max_bytes + 1024
        assert len(listing.json()["peers"]) == status["peers_online"]
        assert rss_kib(tracker.process.pid) - before < 64 * 1024


async def test_watchers_that_never_read_are_evicted_not_buffered(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    env = {"RELAY_MAX_PEER_LIST_BYTES": "2000000", "RELAY_SEND_TIMEOUT": "1"}
    async with AsyncExitStack() as stack:
        tracker, url = await start_tracker_proc(stack, nursery, tmp_path, env)
        peers = await register_from(url, [big_registration(i) for i in range(150)], SOURCES)
        assert all(r.status_code == 201 for r in peers)  # ~0.7 MB of peer list
        before = rss_kib(tracker.process.pid)
        host, port = url.removeprefix("http://").split(":")
        sockets = [
            await silent_watcher(host, int(port), {"type": "hello", "last_seq": None})
            for _ in range(20)
        ]
        try:
            assert (await probe(url))["connections"] >= 1
            # each is cut off once its send deadline passes; no wait is a threshold
            # here: fail_after only ends a broken run
            with trio.fail_after(30):
                # polling another process: there is no event to wait on
                while (await probe(url))["connections"] > 0:  # noqa: ASYNC110
                    await trio.sleep(0.2)
            grown_kib = rss_kib(tracker.process.pid) - before
            assert grown_kib < 128 * 1024, f"RSS grew by {grown_kib} KiB"
        finally:
            for sock in sockets:
                sock.close()


async def test_a_host_that_is_no_host_name_is_refused_with_422(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    bad = [
        "::1]:3912/internal/admin?x=",
        "evil.example/admin",
        "a@b",
        "host:80",
        "-leading.dash",
        "under_score.example",
        "[::1]",
        "fe80::1%eth0",
        "a" * 64 + ".example",
        "",
    ]
    good = ["127.0.0.1", "::1", "laptop", "laptop.local.", "xn--bcher-kva.example"]
    async with AsyncExitStack() as stack:
        _, url = await start_tracker_proc(stack, nursery, tmp_path, {})
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            for host in bad:
                body = {"name": "x", "peer_server": {"host": host, "port": 1}}
                response = await http.post("/api/peers/register", json=body)
                assert response.status_code == 422, (host, response.text)
                assert response.json()["error"]["code"] == "invalid_field"
            for host in good:
                body = {"name": "x", "peer_server": {"host": host, "port": 1}}
                response = await http.post("/api/peers/register", json=body)
                assert response.status_code == 201, (host, response.text)
            listing = (await http.get("/api/peers/list")).json()
        hosts = {p["peer_server"]["host"] for p in listing["peers"]}
        assert hosts == set(good)


def _garbled_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE identities (peer_id TEXT PRIMARY KEY, token_hash BLOB NOT NULL,"
        " name TEXT NOT NULL, capabilities TEXT NOT NULL, first_seen REAL NOT NULL,"
        " last_seen REAL NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    )
    rows = [(f"peer-{i}", b"h" * 32, "n", "{}", 0.0, 0.0) for i in range(2000)]
    db.executemany("INSERT INTO identities VALUES (?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(2 * page, len(data), page):  # keep page 1 (header, schema)
        data[offset : offset + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


async def test_a_garbled_database_is_refused_at_start_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "tracker.sqlite3"
    _garbled_database(path)
    result = await run_cli(
        ["tracker", "--host", "127.0.0.1", "--port", "0"],
        env={"DATABASE_URL": f"sqlite:///{path}"},
        timeout_s=20,
    )
    assert result.returncode == 2, result
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], lines
    assert b"tracker-ready" not in result.stdout


async def test_one_address_cannot_take_every_peer_slot(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Before: any one address could register until the tracker was full
    (and keep the peers with heartbeats); now its share is its limit."""
    env = {"RELAY_MAX_PEERS": "20", "RELAY_MAX_PEERS_PER_ADDRESS": "5"}
    async with AsyncExitStack() as stack:
        _, url = await start_tracker_proc(stack, nursery, tmp_path, env)
        bodies = [big_registration(i, big=False) for i in range(8)]
        flood = await register_from(url, bodies, ["127.0.0.2"])
        assert [r.status_code for r in flood] == [201] * 5 + [503] * 3
        assert flood[-1].json()["error"]["code"] == "tracker_full"
        honest = await register_from(url, [big_registration(99, big=False)], ["127.0.0.3"])
        assert honest[0].status_code == 201
        # a peer that leaves gives its address the slot back
        gone = flood[0].json()
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            bearer = {"Authorization": f"Bearer {gone['token']}"}
            response = await http.delete(f"/api/peers/{gone['peer_id']}", headers=bearer)
            assert response.status_code == 204
        again = await register_from(url, [big_registration(100, big=False)], ["127.0.0.2"])
        assert again[0].status_code == 201

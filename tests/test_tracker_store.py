"""Identities in SQLite survive a tracker restart; seq never goes backwards."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from flashback.errors import ConfigError
from flashback.tracker.serve import serve_tracker
from flashback.tracker.store import (
    IdentityStore,
    IssuedIdentity,
    SQLiteStore,
    check_database_url,
    open_store,
)
from tests.tracker_support import (
    assert_json_error,
    bearer,
    hello,
    open_link,
    receive,
    register,
    registration,
    tracker_config,
)

TEST_TIMEOUT_S = 10


async def test_a_returning_peer_keeps_its_id_after_a_restart(tmp_path: Path) -> None:
    config = tracker_config(database_url=f"sqlite:///{tmp_path}/db/tracker.sqlite3")
    with trio.fail_after(TEST_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_tracker, config)
            async with httpx.AsyncClient(base_url=address.url) as client:
                peer = await register(client, "laptop")
                other = await register(client, "other")
                first_seq = (await client.get("/api/peers/list")).json()["seq"]
            nursery.cancel_scope.cancel()
        assert (tmp_path / "db" / "tracker.sqlite3").exists()

        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_tracker, config)
            async with httpx.AsyncClient(base_url=address.url) as client:
                listed = (await client.get("/api/peers/list")).json()
                assert listed["peers"] == []  # presence lives in memory
                assert listed["seq"] > first_seq
                # A watcher from the earlier run gets a snapshot, not a bogus replay.
                ws_url = address.url.replace("http", "ws", 1) + "/api/peers/ws"
                async with open_link(ws_url) as ws:
                    await hello(ws, last_seq=first_seq)
                    assert (await receive(ws))["type"] == "snapshot"

                back = registration("laptop", peer_id=peer["peer_id"])
                stolen = await client.post(
                    "/api/peers/register", json=back, headers=bearer(other["token"])
                )
                assert_json_error(stolen, 401, "unauthorized")
                again = await client.post(
                    "/api/peers/register", json=back, headers=bearer(peer["token"])
                )
                assert again.status_code == 201, again.text
                assert again.json()["peer_id"] == peer["peer_id"]
                [entry] = (await client.get("/api/peers/list")).json()["peers"]
                assert entry["peer_id"] == peer["peer_id"]
            nursery.cancel_scope.cancel()


async def test_sqlite_store_round_trip_keeps_only_the_hash(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        path = tmp_path / "t.sqlite3"
        store: IdentityStore = await SQLiteStore.open(path)
        identity = IssuedIdentity("p1", b"\x01" * 32, "n", {"a": [1]}, 10.0, 20.0)
        await store.put(identity)
        await store.touch("p1", 30.0)
        await store.save_seq(5)
        await store.save_seq(3)  # never backwards
        await store.aclose()

        store = await open_store(f"sqlite:///{path}")
        got = await store.get("p1")
        assert got is not None
        assert (got.token_hash, got.capabilities, got.first_seen, got.last_seen) == (
            b"\x01" * 32, {"a": [1]}, 10.0, 30.0,
        )  # fmt: skip
        assert await store.get("nobody") is None
        assert await store.load_seq() == 5
        await store.aclose()


def test_database_urls_are_checked_up_front() -> None:
    assert check_database_url("memory://") == "memory://"
    assert check_database_url("sqlite:////tmp/x") == "sqlite:////tmp/x"
    for bad in ("sqlite://relative", "postgres://x", ""):
        with pytest.raises(ConfigError):
            check_database_url(bad)


async def test_a_file_from_before_addresses_opens_and_forgets(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the schema before identities had an address
        db.execute(
            "CREATE TABLE identities (peer_id TEXT PRIMARY KEY, token_hash BLOB NOT NULL,"
            " name TEXT NOT NULL, capabilities TEXT NOT NULL, first_seen REAL NOT NULL,"
            " last_seen REAL NOT NULL)"
        )
        db.execute("INSERT INTO identities VALUES ('old', x'01', 'n', '{}', 1.0, 5.0)")
    store = await SQLiteStore.open(path)
    try:
        await store.put(IssuedIdentity("new", b"\x02", "m", {}, 2.0, 3.0, "2001:db8::/64"))
        assert await store.known() == [("new", "2001:db8::/64"), ("old", "")]  # oldest first
        await store.forget("old")
        await store.forget("never-issued")
        assert await store.get("old") is None
        assert await store.known() == [("new", "2001:db8::/64")]
    finally:
        await store.aclose()


async def test_identities_kept_from_an_earlier_run_are_bounded_when_it_starts(
    tmp_path: Path,
) -> None:
    from flashback.tracker.identities import IdentityBook

    store = await SQLiteStore.open(tmp_path / "t.sqlite3")
    try:
        for i in range(6):
            address = "198.51.100.1" if i < 5 else "198.51.100.2"
            await store.put(IssuedIdentity(f"p{i}", b"\x01", "n", {}, 0.0, float(i), address))
        book = IdentityBook(store, lambda _: False, capacity=4, per_address=3, online_cap=10)
        await book.load()
        # the heavy address kept its 3 newest, the other its only one
        assert sorted(p for p, _ in await store.known()) == ["p2", "p3", "p4", "p5"]
        # a peer online again is out of the table: never the one forgotten
        await book.registered("p2", "198.51.100.1")
        for i in range(6, 12):
            await book.gone(f"q{i}")  # never registered here: nothing to count
        await store.put(IssuedIdentity("p9", b"\x01", "n", {}, 0.0, 9.0, "198.51.100.1"))
        await book.registered("p9", "198.51.100.1")
        await book.gone("p9")
        assert await store.get("p2") is not None
        assert len(book) == 4
    finally:
        await store.aclose()

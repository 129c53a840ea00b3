"""The tracker's identity store under a register/leave flood, from outside.

A real ``flashback tracker`` process on an SQLite file; registrations from a
few loopback addresses, each registering a new peer and leaving at once.
Every new peer is an identity the tracker keeps (its token's hash, its name,
its capabilities) for when it comes back. On the code before the fix they
were kept forever: 3,000 cycles grew the process by ~5.7 KiB each and the
file without end. Now the identities of peers that are offline are a fair
share by address (docs/INTERFACE.md, "Bounds"): the flood's own oldest go,
an honest peer from another address keeps its identity, and a peer that is
online never loses its own.
"""

from __future__ import annotations

import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio

from flashback.tracker.store import IssuedIdentity
from tests.abuse_support import start_tracker_proc
from tests.test_tracker_redis import (
    _collect_coredis_garbage,  # noqa: F401  (an autouse fixture, used by import)
    needs_redis,
    open_instance,
    open_redis,
)

TEST_TIMEOUT_S: Final = 60
CAPACITY: Final = 24
PER_ADDRESS: Final = 10
FLOOD_ADDRESSES: Final = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
CYCLES: Final = 60  # per flood address: many times its share


def _body(name: str) -> dict[str, Any]:
    return {"name": name, "peer_server": {"host": "127.0.0.1", "port": 8000},
            "capabilities": {"x": "c" * 2000}}  # fmt: skip


def _auth(peer: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {peer['token']}"}


def _identities(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM identities").fetchone()[0])


async def _register(http: httpx.AsyncClient, name: str, again: dict[str, Any] | None = None
                    ) -> httpx.Response:  # fmt: skip
    if again is None:
        return await http.post("/api/peers/register", json=_body(name))
    body = {**_body(name), "peer_id": again["peer_id"]}
    return await http.post("/api/peers/register", json=body, headers=_auth(again))


async def test_a_register_leave_flood_keeps_the_identity_table_bounded_and_fair(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    database = tmp_path / "tracker.sqlite3"
    env = {
        "DATABASE_URL": f"sqlite:///{database}",
        "RELAY_MAX_IDENTITIES": str(CAPACITY),
        "RELAY_MAX_IDENTITIES_PER_ADDRESS": str(PER_ADDRESS),
        "RELAY_PEER_TTL": "600",
    }
    with trio.fail_after(TEST_TIMEOUT_S):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker_proc(stack, nursery, tmp_path, env)

            def client(source: str) -> httpx.AsyncClient:
                transport = httpx.AsyncHTTPTransport(local_address=source)
                return httpx.AsyncClient(base_url=url, timeout=10, transport=transport)

            honest_http = await stack.enter_async_context(client("127.0.0.9"))
            flood_http = [await stack.enter_async_context(client(a)) for a in FLOOD_ADDRESSES]
            honest = (await _register(honest_http, "honest")).json()
            path = f"/api/peers/{honest['peer_id']}"
            gone = await honest_http.delete(path, headers=_auth(honest))
            assert gone.status_code == 204
            # one of the flood's addresses also has a peer that stays online
            online = (await _register(flood_http[0], "online")).json()
            first_of_flood: dict[str, Any] | None = None
            for cycle in range(CYCLES):
                for http in flood_http:
                    answer = await _register(http, f"f{cycle}")
                    assert answer.status_code == 201, answer.text
                    peer = answer.json()
                    first_of_flood = first_of_flood or peer
                    left = await http.delete(f"/api/peers/{peer['peer_id']}", headers=_auth(peer))
                    assert left.status_code == 204
            kept = _identities(database)
            # bounded: the offline ones within their cap, plus the one online
            assert kept <= CAPACITY + 1, kept
            assert kept < len(FLOOD_ADDRESSES) * CYCLES
            # the flood's oldest went: coming back with its token is refused
            assert first_of_flood is not None
            again = await _register(flood_http[0], "f0", again=first_of_flood)
            assert again.status_code == 401, again.text
            # the honest peer's identity survived, and so did the online one's
            back = await _register(honest_http, "honest", again=honest)
            assert back.status_code == 201, back.text
            assert back.json()["peer_id"] == honest["peer_id"]
            beat = await flood_http[0].post(
                "/api/peers/heartbeat", json={"peer_id": online["peer_id"]}, headers=_auth(online)
            )
            assert beat.status_code == 200, beat.text
            still = await _register(flood_http[0], "online", again=online)
            assert still.status_code == 201, still.text


@needs_redis
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_the_redis_store_forgets_an_identity(tmp_path: Path) -> None:
    from flashback.tracker.redis.store import RedisIdentityStore

    async with open_redis(tmp_path) as redis, open_instance(redis.url) as one:
        store = one.tracker.store
        assert isinstance(store, RedisIdentityStore)
        await store.put(IssuedIdentity("p1", b"\x01", "n", {}, 1.0, 2.0, "192.0.2.1"))
        kept = await store.get("p1")
        assert kept is not None and kept.address == "192.0.2.1"
        await store.touch("p1", 3.0)
        await store.forget("p1")
        await store.forget("never-issued")
        assert await store.get("p1") is None
        assert await store.known() == []  # shared: the other instances' to bound

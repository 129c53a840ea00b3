"""The tracker's HTTP API against a real tracker on loopback (docs/INTERFACE.md §2)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from flashback.tracker.app import HEARTBEAT_PATH, create_app
from flashback.tracker.store import MemoryStore
from flashback.web import hypercorn_config, serve_quart
from tests.tracker_support import (
    assert_json_error,
    bearer,
    open_client,
    open_tracker,
    register,
    registration,
    tracker_config,
)

TEST_TIMEOUT_S = 10


async def test_register_list_heartbeat_delete() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            before = (await client.get("/api/peers/list")).json()
            assert before["peers"] == []
            peer = await register(client, "laptop")
            assert set(peer) == {"peer_id", "token", "heartbeat_interval", "ttl"}
            assert (peer["heartbeat_interval"], peer["ttl"]) == (10, 30)

            listed = (await client.get("/api/peers/list")).json()
            assert listed["seq"] == before["seq"] + 1
            [entry] = listed["peers"]
            assert entry["peer_id"] == peer["peer_id"]
            assert entry["name"] == "laptop"
            assert entry["peer_server"] == {"host": "127.0.0.1", "port": 8000}
            assert entry["capabilities"] == {"stream": True}
            assert entry["registered_at"].endswith("Z")
            assert set(entry) == {
                "peer_id", "name", "peer_server", "capabilities", "registered_at", "last_seen",
                "fingerprint", "direct", "reflexive",
            }  # fmt: skip
            assert entry["fingerprint"] is None  # this peer sent none
            assert (entry["direct"], entry["reflexive"]) == ([], None)

            beat = await client.post(
                "/api/peers/heartbeat", json={"peer_id": peer["peer_id"]},
                headers=bearer(peer["token"]),
            )  # fmt: skip
            assert beat.status_code == 200
            assert beat.json() == {"ttl": 30, "heartbeat_interval": 10}
            assert (await client.get("/api/peers/list")).json()["seq"] == listed["seq"]

            gone = await client.delete(
                f"/api/peers/{peer['peer_id']}", headers=bearer(peer["token"])
            )
            assert gone.status_code == 204
            after = (await client.get("/api/peers/list")).json()
            assert after == {"seq": listed["seq"] + 1, "peers": []}

            again = await client.post(
                "/api/peers/heartbeat", json={"peer_id": peer["peer_id"]},
                headers=bearer(peer["token"]),
            )  # fmt: skip
            assert_json_error(again, 404, "unknown_peer")


async def test_reregistering_updates_and_keeps_identity() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            peer = await register(client, "old")
            seq = (await client.get("/api/peers/list")).json()["seq"]
            body = registration("old", peer_id=peer["peer_id"])
            same = await client.post(
                "/api/peers/register", json=body, headers=bearer(peer["token"])
            )
            assert same.status_code == 201
            assert same.json()["peer_id"] == peer["peer_id"]
            assert same.json()["token"] == peer["token"]
            assert (await client.get("/api/peers/list")).json()["seq"] == seq  # no change
            body["name"] = "new"
            renamed = await client.post(
                "/api/peers/register", json=body, headers=bearer(peer["token"])
            )
            assert renamed.status_code == 201
            listed = (await client.get("/api/peers/list")).json()
            assert listed["seq"] == seq + 1
            assert [p["name"] for p in listed["peers"]] == ["new"]


FINGERPRINT_A = "sha256:" + "0a" * 32
FINGERPRINT_B = "sha256:" + "0b" * 32


async def test_fingerprint_is_listed_and_a_changed_one_is_a_change() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            peer = await register(client, "laptop", fingerprint=FINGERPRINT_A)
            listed = (await client.get("/api/peers/list")).json()
            assert [p["fingerprint"] for p in listed["peers"]] == [FINGERPRINT_A]
            body = registration("laptop", peer_id=peer["peer_id"], fingerprint=FINGERPRINT_A)
            auth = bearer(peer["token"])
            same = await client.post("/api/peers/register", json=body, headers=auth)
            assert same.status_code == 201
            assert (await client.get("/api/peers/list")).json()["seq"] == listed["seq"]
            body["fingerprint"] = FINGERPRINT_B
            changed = await client.post("/api/peers/register", json=body, headers=auth)
            assert changed.status_code == 201
            after = (await client.get("/api/peers/list")).json()
            assert after["seq"] == listed["seq"] + 1
            assert [p["fingerprint"] for p in after["peers"]] == [FINGERPRINT_B]


async def test_status_and_metrics_never_show_tokens() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            peer = await register(client)
            status = (await client.get("/api/relay/status")).json()
            assert status["status"] == "ok"
            assert status["peers_online"] == 1
            assert status["connections"] == 0
            assert isinstance(status["uptime_s"], int | float)
            assert isinstance(status["version"], str)
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert metrics.headers["content-type"].startswith("text/plain")
            assert "flashback_tracker_peers_online 1.0" in metrics.text
            assert "flashback_tracker_registrations_total 1.0" in metrics.text
            for path in ("/api/peers/list", "/api/relay/status", "/metrics"):
                assert peer["token"] not in (await client.get(path)).text


async def test_impersonation_is_refused_and_changes_nothing() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            victim = await register(client, "victim")
            intruder = await register(client, "intruder")
            before = (await client.get("/api/peers/list")).json()
            wrong = bearer(intruder["token"])
            beat = await client.post(
                "/api/peers/heartbeat", json={"peer_id": victim["peer_id"]}, headers=wrong
            )
            assert_json_error(beat, 401, "unauthorized")
            assert_json_error(
                await client.delete(f"/api/peers/{victim['peer_id']}", headers=wrong), 401
            )
            takeover = registration("pwned", peer_id=victim["peer_id"])
            assert_json_error(
                await client.post("/api/peers/register", json=takeover, headers=wrong), 401
            )
            assert_json_error(await client.post("/api/peers/register", json=takeover), 401)
            assert_json_error(
                await client.delete(f"/api/peers/{victim['peer_id']}", headers=bearer("x" * 43)),
                401,
            )
            assert (await client.get("/api/peers/list")).json() == before


async def test_relay_auth_token_gates_new_registrations() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        config = tracker_config(auth_token="s3cret")
        async with open_tracker(config) as running, open_client(running) as client:
            url = "/api/peers/register"
            assert_json_error(await client.post(url, json=registration()), 401, "unauthorized")
            assert_json_error(
                await client.post(url, json=registration(), headers=bearer("nope")), 401
            )
            ok = await client.post(url, json=registration(), headers=bearer("s3cret"))
            assert ok.status_code == 201
            peer = ok.json()
            # Coming back needs the peer's own token, not the relay's.
            back = registration(peer_id=peer["peer_id"])
            assert_json_error(await client.post(url, json=back, headers=bearer("s3cret")), 401)
            again = await client.post(url, json=back, headers=bearer(peer["token"]))
            assert again.status_code == 201


async def test_registration_is_rate_limited_per_address() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        config = tracker_config(register_rate_per_s=0.5, register_burst=3)
        async with open_tracker(config) as running, open_client(running) as client:
            for _ in range(3):
                await register(client)
            limited = await client.post("/api/peers/register", json=registration())
            assert_json_error(limited, 429, "rate_limited")
            assert 1 <= int(limited.headers["Retry-After"]) <= 2
            # Heartbeats and reads are not rate limited.
            assert (await client.get("/api/peers/list")).status_code == 200


BIG = "x" * (65 * 1024)
PEER_SERVER = {"host": "127.0.0.1", "port": 80}

BAD_REQUESTS: list[tuple[str, str, Any, int, str | None]] = [
    # (method, path, body as JSON value or raw bytes, status, code)
    ("POST", "/api/peers/register", b"{nope", 400, "invalid_json"),
    ("POST", "/api/peers/register", b"", 400, "invalid_json"),
    ("POST", "/api/peers/register", b"\xff\xfe", 400, "invalid_json"),
    ("POST", "/api/peers/register", b'{"name": "\\ud800", "peer_server": {}}', 400, None),
    ("POST", "/api/peers/register", b"[" * 100_000, 413, "payload_too_large"),
    ("POST", "/api/peers/register", b"[" * 50_000, 400, "invalid_json"),
    # not JSON per RFC 8259, though Python's json module would take them
    (
        "POST",
        "/api/peers/register",
        b'{"name":"n","peer_server":{"host":"h","port":1},"capabilities":{"a":NaN}}',
        400,
        "invalid_json",
    ),
    (
        "POST",
        "/api/peers/register",
        b'{"name":"n","peer_server":{"host":"h","port":1},"capabilities":{"a":1e999}}',
        400,
        "invalid_json",
    ),
    (
        "POST",
        "/api/peers/register",
        b'{"name":"n","peer_server":{"host":"h","port":1},"capabilities":{"a":-Infinity}}',
        400,
        "invalid_json",
    ),
    ("POST", "/api/peers/register", BIG.encode(), 413, "payload_too_large"),
    ("POST", "/api/peers/register", [], 422, "invalid_field"),
    ("POST", "/api/peers/register", "text", 422, "invalid_field"),
    ("POST", "/api/peers/register", {"peer_server": PEER_SERVER}, 422, "invalid_field"),
    ("POST", "/api/peers/register", {"name": "", "peer_server": PEER_SERVER}, 422, None),
    ("POST", "/api/peers/register", {"name": "n" * 65, "peer_server": PEER_SERVER}, 422, None),
    ("POST", "/api/peers/register", {"name": "a\x00b", "peer_server": PEER_SERVER}, 422, None),
    ("POST", "/api/peers/register", {"name": 5, "peer_server": PEER_SERVER}, 422, None),
    ("POST", "/api/peers/register", {"name": "a"}, 422, None),
    ("POST", "/api/peers/register", {"name": "a", "peer_server": "h:1"}, 422, None),
    ("POST", "/api/peers/register", {"name": "a", "peer_server": {"port": 1}}, 422, None),
    (
        "POST",
        "/api/peers/register",
        {"name": "a", "peer_server": {"host": "h" * 254, "port": 1}},
        422,
        None,
    ),
    (
        "POST",
        "/api/peers/register",
        {"name": "a", "peer_server": {"host": "", "port": 1}},
        422,
        None,
    ),
    (
        "POST",
        "/api/peers/register",
        {"name": "a", "peer_server": {"host": "h", "port": 0}},
        422,
        None,
    ),
    (
        "POST",
        "/api/peers/register",
        {"name": "a", "peer_server": {"host": "h", "port": 65536}},
        422,
        None,
    ),
    (
        "POST",
        "/api/peers/register",
        {"name": "a", "peer_server": {"host": "h", "port": "80"}},
        422,
        None,
    ),
    (
        "POST",
        "/api/peers/register",
        {"name": "a", "peer_server": {"host": "h", "port": True}},
        422,
        None,
    ),
    (
        "POST",
        "/api/peers/register",
        {"name": "a", "peer_server": {"host": "h", "port": 1.5}},
        422,
        None,
    ),
    (
        "POST",
        "/api/peers/register",
        {"name": "a", "peer_server": PEER_SERVER, "capabilities": []},
        422,
        None,
    ),
    (
        "POST",
        "/api/peers/register",
        {"name": "a", "peer_server": PEER_SERVER, "capabilities": {"x": "y" * 4100}},
        422,
        None,
    ),
    (
        "POST",
        "/api/peers/register",
        {"name": "a", "peer_server": PEER_SERVER, "peer_id": 7},
        422,
        None,
    ),
    (
        "POST",
        "/api/peers/register",
        {"name": "a", "peer_server": PEER_SERVER, "peer_id": "nope"},
        401,
        "unauthorized",
    ),
    *[
        (
            "POST",
            "/api/peers/register",
            {"name": "a", "peer_server": PEER_SERVER, "fingerprint": bad},
            422,
            "invalid_field",
        )
        for bad in (
            "",
            7,
            True,
            ["sha256:" + "ab" * 32],
            {"sha256": "ab" * 32},
            "ab" * 32,  # no prefix
            "sha256:" + "AB" * 32,  # upper case
            "SHA256:" + "ab" * 32,
            "sha256:" + "ab" * 31,  # too short
            "sha256:" + "ab" * 33,  # too long
            "sha256:" + "ab" * 31 + "zz",  # not hex
            "sha256:" + "ab" * 32 + "\n",
            " sha256:" + "ab" * 32,
            "sha1:" + "ab" * 20,
            "sha256:" + "a" * 1000,
        )
    ],
    ("POST", "/api/peers/heartbeat", {"peer_id": "nope"}, 401, "unauthorized"),
    ("POST", "/api/peers/heartbeat", b"{nope", 400, "invalid_json"),
    ("POST", "/api/peers/heartbeat", {}, 422, "invalid_field"),
    ("POST", "/api/peers/heartbeat", BIG.encode(), 413, "payload_too_large"),
    ("DELETE", "/api/peers/nope", None, 401, "unauthorized"),
    ("GET", "/api/peers/register", None, 405, None),
    ("PUT", "/api/peers/list", None, 405, None),
    ("GET", "/api/nothing-here", None, 404, None),
    ("GET", "/api/peers/ws", None, 405, None),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_REQUESTS)
async def test_bad_requests_get_json_errors_never_500(
    method: str, path: str, body: Any, status: int, code: str | None
) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            if body is None:
                response = await client.request(method, path)
            elif isinstance(body, bytes):
                response = await client.request(method, path, content=body)
            else:
                response = await client.request(method, path, json=body)
            assert_json_error(response, status, code)
            assert (await client.get("/api/peers/list")).json()["peers"] == []


async def test_authenticated_requests_for_unknown_peers() -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            auth = bearer("some-token")
            unknown_beat = await client.post(
                "/api/peers/heartbeat", json={"peer_id": "nope"}, headers=auth
            )
            assert_json_error(unknown_beat, 404, "unknown_peer")
            assert_json_error(await client.delete("/api/peers/nope", headers=auth), 404)
            back = registration(peer_id="never-seen")
            # Coming back under an id the tracker never issued: no proof, 401.
            assert_json_error(
                await client.post("/api/peers/register", json=back, headers=auth),
                401,
                "unauthorized",
            )
            assert_json_error(
                await client.post("/api/peers/heartbeat", json={"peer_id": "x"},
                                  headers={"Authorization": "Basic abc"}),
                401,
            )  # fmt: skip


async def test_expired_peers_are_dropped_and_heartbeats_keep_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """On trio's clock: a 30 s TTL, heartbeats every 10 s for two TTLs."""
    with trio.fail_after(TEST_TIMEOUT_S * 100):
        config = tracker_config(peer_ttl_s=30.0, heartbeat_interval_s=10.0)
        async with open_tracker(config) as running, open_client(running) as client:
            kept = await register(client, "kept")
            dropped = await register(client, "dropped")
            for _ in range(6):  # 60 s: twice the TTL
                await trio.sleep(10)
                beat = await client.post(
                    "/api/peers/heartbeat", json={"peer_id": kept["peer_id"]},
                    headers=bearer(kept["token"]),
                )  # fmt: skip
                assert beat.status_code == 200
            names = [p["name"] for p in (await client.get("/api/peers/list")).json()["peers"]]
            assert names == ["kept"]
            late = await client.post(
                "/api/peers/heartbeat", json={"peer_id": dropped["peer_id"]},
                headers=bearer(dropped["token"]),
            )  # fmt: skip
            assert_json_error(late, 404, "unknown_peer")
            metrics = (await client.get("/metrics")).text
            assert "flashback_tracker_expiries_total 1.0" in metrics


async def test_a_failing_store_is_a_json_503_and_nothing_changes() -> None:
    class BrokenStore(MemoryStore):
        async def put(self, identity: object) -> None:
            from flashback.errors import BackendUnavailable

            raise BackendUnavailable("store down")

    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker(store=BrokenStore()) as running, open_client(running) as client:
            response = await client.post("/api/peers/register", json=registration())
            assert_json_error(response, 503, "backend_unavailable")
            assert (await client.get("/api/peers/list")).json()["peers"] == []


async def test_a_chunked_body_over_the_limit_is_413() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"x" * 1024

    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker() as running, open_client(running) as client:
            response = await client.post("/api/peers/register", content=chunks())
            assert_json_error(response, 413, "payload_too_large")


async def test_the_heartbeat_fast_path_answers_the_bytes_quart_would() -> None:
    """Every heartbeat outcome, once through the fast path and once through the
    Quart route of the same tracker: status, headers that matter, body bytes."""
    big = b'{"peer_id": "' + b"x" * (70 * 1024) + b'"}'
    with trio.fail_after(TEST_TIMEOUT_S):
        async with (
            open_tracker() as running,
            open_client(running) as fast,
            trio.open_nursery() as nursery,
        ):
            quart_only = create_app(running.tracker)
            address = await nursery.start(
                partial(serve_quart, quart_only, hypercorn_config("127.0.0.1", 0))
            )
            peer = await register(fast, "laptop")
            good = {"peer_id": peer["peer_id"]}
            cases: list[tuple[bytes, dict[str, str]]] = [
                (json.dumps(good).encode(), bearer(peer["token"])),
                (json.dumps(good).encode(), bearer("wrong")),
                (json.dumps(good).encode(), {}),
                (json.dumps({"peer_id": "ghost"}).encode(), bearer("t")),
                (b"{not json", bearer(peer["token"])),
                (b"[1, 2]", bearer(peer["token"])),
                (b'{"peer_id": 7}', bearer(peer["token"])),
                (b'{"peer_id": "\\ud800"}', bearer(peer["token"])),
                (big, bearer(peer["token"])),
            ]
            async with httpx.AsyncClient(base_url=address.url) as slow:
                statuses = []
                for body, headers in cases:
                    answers = [
                        await client.post(
                            HEARTBEAT_PATH,
                            content=body,
                            headers={"content-type": "application/json", **headers},
                        )
                        for client in (fast, slow)
                    ]
                    one, other = (
                        (
                            a.status_code,
                            a.headers.get("content-type"),
                            a.headers.get("www-authenticate"),
                            a.content,
                        )
                        for a in answers
                    )
                    assert one == other, (body[:40], one, other)
                    statuses.append(answers[0].status_code)
            assert statuses == [200, 401, 401, 404, 400, 422, 422, 400, 413]
            nursery.cancel_scope.cancel()

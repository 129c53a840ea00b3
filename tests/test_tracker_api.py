"""The daemon's tracker client against a tracker that answers nonsense.

A broken or hostile tracker (or whatever answers on its address) must never
end the daemon: every answer that is not the contract's is ``RetryLater``,
which the heartbeat loop backs off from, never an exception that escapes it.
"""

from __future__ import annotations

from functools import partial

import httpx
import pytest
import trio
from quart import Response
from quart_trio import QuartTrio

from flashback.daemon.identity import Identity
from flashback.daemon.tracker_api import HTTPTrackerAPI, RegistrationRefused, RetryLater
from flashback.web import hypercorn_config, serve_quart

GOOD_REGISTRATION = b'{"peer_id": "p1", "token": "t1", "heartbeat_interval": 10, "ttl": 30}'
HOSTILE_ANSWERS = {
    "nested past the parser": b"[" * 100_000,
    "not an object": b'["peer_id", "token"]',
    "not JSON": b"<html>proxy error</html>",
    "no token": b'{"peer_id": "p1", "heartbeat_interval": 10, "ttl": 30}',
    "NaN interval": b'{"peer_id": "p1", "token": "t1", "heartbeat_interval": NaN, "ttl": 30}',
    "interval of a century": (
        b'{"peer_id": "p1", "token": "t1", "heartbeat_interval": 3.2e9, "ttl": 30}'
    ),
    "interval a string": b'{"peer_id": "p1", "token": "t1", "heartbeat_interval": "10", "ttl": 30}',
}


async def serve_answer(nursery: trio.Nursery, body: bytes, status: int) -> str:
    app = QuartTrio(__name__)

    @app.route("/api/peers/register", methods=["POST"])
    @app.route("/api/peers/heartbeat", methods=["POST"])
    async def answer() -> Response:
        return Response(body, status=status, content_type="application/json")

    address = await nursery.start(partial(serve_quart, app, hypercorn_config("127.0.0.1", 0)))
    return str(address.url)


@pytest.mark.parametrize("body", HOSTILE_ANSWERS.values(), ids=HOSTILE_ANSWERS.keys())
async def test_a_nonsense_registration_answer_is_retry_later(
    nursery: trio.Nursery, body: bytes
) -> None:
    url = await serve_answer(nursery, body, 201)
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(RetryLater):
            await HTTPTrackerAPI(client).register("me", "127.0.0.1", 1, identity=None)


HOSTILE_HEARTBEATS = {k: v for k, v in HOSTILE_ANSWERS.items() if k != "no token"}


@pytest.mark.parametrize("body", HOSTILE_HEARTBEATS.values(), ids=HOSTILE_HEARTBEATS.keys())
async def test_a_nonsense_heartbeat_answer_is_retry_later(
    nursery: trio.Nursery, body: bytes
) -> None:
    url = await serve_answer(nursery, body, 200)
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(RetryLater):
            await HTTPTrackerAPI(client).heartbeat(Identity("p1", "t1"))


async def test_a_deeply_nested_error_body_still_reads_as_an_error(nursery: trio.Nursery) -> None:
    url = await serve_answer(nursery, b"[" * 100_000, 403)
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(RegistrationRefused) as refused:
            await HTTPTrackerAPI(client).register("me", "127.0.0.1", 1, identity=None)
    assert "registration refused (HTTP 403): HTTP 403" in str(refused.value)


async def test_the_contracts_answer_is_a_registration(nursery: trio.Nursery) -> None:
    url = await serve_answer(nursery, GOOD_REGISTRATION, 201)
    async with httpx.AsyncClient(base_url=url) as client:
        registration = await HTTPTrackerAPI(client).register("me", "127.0.0.1", 1, identity=None)
    assert registration.identity == Identity("p1", "t1")
    assert (registration.heartbeat_interval_s, registration.ttl_s) == (10.0, 30.0)

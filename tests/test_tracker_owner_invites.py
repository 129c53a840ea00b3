"""A flood of tunnel requests at one owner, from outside (docs/INTERFACE.md §6.2, "Bounds").

A real tracker with a tunnel port; the owner is a raw websocket that says
hello and never reads again, so its queue fills. An invite is a relayed
message: a full owner keeps its link and the requester hears ``busy``. On
the code before the fix the invite went with the call that evicts a full
link, so anyone could disconnect any owner by asking it for tunnels.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any, Final

import trio

from tests.abuse_support import silent_watcher
from tests.tracker_support import (
    hello,
    open_client,
    open_link,
    open_tracker,
    receive,
    register,
    send,
    tracker_config,
)

TEST_TIMEOUT_S: Final = 40
MAX_REQUESTS: Final = 20_000  # far more than the owner's queue and socket buffers take
FINGERPRINT: Final = "sha256:" + "aa" * 32
#: candidates make each invite large, so the owner's buffers fill sooner
DIRECT: Final = [{"host": f"10.0.{i}.{j}", "port": 4000 + j} for i in range(1) for j in range(8)]


async def test_a_flood_of_tunnel_requests_never_disconnects_the_owner() -> None:
    config = tracker_config(
        tunnel_port=0,
        watcher_queue_messages=8,
        relay_rate_per_s=1e6,
        relay_burst=10**6,
        send_timeout_s=600.0,  # the owner is slow, never "too slow": only the flood may cost it
    )
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_tracker(config) as running, open_client(running) as client:
            mallory = await register(client, "mallory")
            owner = await register(client, "owner", fingerprint=FINGERPRINT, direct=DIRECT)
            async with AsyncExitStack() as stack:
                sock = await silent_watcher(
                    running.address.host,
                    running.address.port,
                    {"type": "hello", "peer_id": owner["peer_id"], "token": owner["token"]},
                )
                stack.callback(sock.close)
                while running.tracker.hub.link_for(owner["peer_id"]) is None:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                ws = await stack.enter_async_context(
                    open_link(running.ws_url, message_queue_size=MAX_REQUESTS)
                )
                await hello(ws, peer=mallory)
                assert (await receive(ws))["type"] == "snapshot"
                first_error: dict[str, Any] = {}

                async def watch(cancel: trio.CancelScope) -> None:
                    while True:
                        answer = json.loads(await ws.get_message())
                        if answer["type"] == "tunnel-error":
                            first_error.update(answer)
                            cancel.cancel()
                            return

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch, nursery.cancel_scope)
                    for i in range(MAX_REQUESTS):
                        request = {"type": "tunnel-request", "request_id": f"r{i}"}
                        await send(ws, {**request, "to": owner["peer_id"]})
                        await trio.lowlevel.checkpoint()
                    await trio.sleep_forever()  # until the first refusal
                # busy: the owner keeps its link (unknown_peer: it was just evicted)
                assert first_error["code"] == "busy", first_error  # type: ignore[unreachable]  # the nursery is cancelled
                assert running.tracker.hub.link_for(owner["peer_id"]) is not None

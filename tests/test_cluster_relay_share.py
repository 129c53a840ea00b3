"""The relay stream of a Redis cluster's instance is a fair share by sender.

Real Redis, a real tracker instance's presence. Messages relayed to a peer
linked to another instance wait in that instance's stream until it reads
them; the stream holds :data:`RELAY_BACKLOG_MESSAGES`. Here the other
instance is registered in Redis but never reads (it is busy, or slow), and
one sender floods it: on the code before the fix the stream's trimming
dropped the oldest entries of all, so an honest sender's message already
waiting was lost to the flood. Now the flood drops its own oldest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, cast

import pytest
import trio

from flashback.protocol.messages import StreamRequest, parse
from flashback.tracker.redis.presence import (
    RELAY_BACKLOG_MESSAGES,
    RELAY_BACKLOG_PER_SENDER,
    RedisPresence,
)
from flashback.tracker.redis.scripts import PREFIX, relay_key
from tests.test_tracker_redis import (
    _collect_coredis_garbage,  # noqa: F401  (an autouse fixture, used by import)
    needs_redis,
    open_instance,
    open_redis,
)

pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning")]

TEST_TIMEOUT_S: Final = 60
GHOST: Final = "ghost-instance"


def _request(request_id: str, sender: str) -> StreamRequest:
    """As the tracker relays it: ``from`` its sender."""
    return StreamRequest(request_id, "p", from_=sender)


@needs_redis
async def test_a_flood_through_the_relay_stream_drops_its_own_oldest_never_others(
    tmp_path: Path,
) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_redis(tmp_path) as redis, open_instance(redis.url) as one:
            presence = one.tracker.presence
            assert isinstance(presence, RedisPresence)
            client = presence.connection.client
            # an instance that holds links and never reads its relay stream
            await client.set(f"{PREFIX}instance:{GHOST}", "1", ex=600)
            for peer in ("victim", "target"):
                await client.set(f"{PREFIX}link:{peer}", GHOST, ex=600)
            assert await presence.relay("victim", _request("honest", "alice"))
            for i in range(3 * RELAY_BACKLOG_MESSAGES):
                assert await presence.relay("target", _request(f"m{i}", "mallory"))
            entries = await client.xrange(relay_key(GHOST))
            waiting = [parse(entry.field_values["m"]) for entry in entries]
            requests = [m for m in waiting if isinstance(m, StreamRequest)]
            ids = [m.request_id for m in requests]
            assert "honest" in ids  # the flood did not push it out
            assert len(waiting) <= RELAY_BACKLOG_MESSAGES
            assert sum(1 for m in requests if m.from_ == "mallory") == RELAY_BACKLOG_PER_SENDER
            # the flood kept its newest, within its share
            assert f"m{3 * RELAY_BACKLOG_MESSAGES - 1}" in ids
            assert "m0" not in ids


@needs_redis
async def test_a_full_relay_stream_drops_the_heaviest_senders_oldest(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT_S):
        async with open_redis(tmp_path) as redis, open_instance(redis.url) as one:
            presence = one.tracker.presence
            assert isinstance(presence, RedisPresence)
            client = presence.connection.client
            await client.set(f"{PREFIX}instance:{GHOST}", "1", ex=600)
            await client.set(f"{PREFIX}link:target", GHOST, ex=600)
            senders = RELAY_BACKLOG_MESSAGES // RELAY_BACKLOG_PER_SENDER
            for s in range(senders):  # every sender fills its share: the stream is full
                for i in range(RELAY_BACKLOG_PER_SENDER):
                    assert await presence.relay("target", _request(f"{s}.{i}", f"s{s}"))
            assert await presence.relay("target", _request("new", "newcomer"))
            entries = await client.xrange(relay_key(GHOST))
            ids = [
                cast(StreamRequest, parse(entry.field_values["m"])).request_id for entry in entries
            ]
            assert len(ids) == RELAY_BACKLOG_MESSAGES
            assert "new" in ids  # the newcomer is never the one dropped
            assert "0.0" not in ids  # a tie: the sender whose oldest is oldest paid
            assert "1.0" in ids

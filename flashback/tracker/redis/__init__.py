"""Several trackers behaving as one, through Redis (``DATABASE_URL=redis://...``).

Shared state lives in Redis; each tracker process keeps only its own
websockets and a :class:`~flashback.protocol.mirror.FeedMirror` of the feed.
The parts, one job each:

- :mod:`.scripts`: the key names and the Lua scripts. Every change is one
  script: the presence keys, ``INCR seq`` and the ``XADD`` of the change
  record happen atomically, so ``seq`` and the log can never disagree, and
  concurrent trackers get one total order. Scripts read the time with Redis
  ``TIME``: one clock for every deadline, whatever the trackers' clocks say.
  Expiry runs on every tracker, and the script removes a peer and logs its
  ``peer-left`` in one step, so each peer expires exactly once.
- :mod:`.store`: the connection (every request bounded, a 503 when Redis is
  out of reach), reading records back, and the identity store.
- :mod:`.follower`: the feed follower (the change stream and this
  instance's relay stream), with backoff through outages.
- :mod:`.presence`: the requests (register, heartbeat, leave, expire, relay).

``seq`` never goes backwards: a missing counter (a Redis that lost its data)
is seeded from the clock in microseconds, like
:func:`~flashback.protocol.registry.clock_seq`, and every script is told the
highest ``seq`` its tracker has seen, so a Redis restored from an older
backup jumps ahead instead of repeating numbers.

Importing this package needs coredis (``pip install 'flashback[redis]'``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from flashback.config import TrackerConfig
from flashback.tracker.redis.presence import RedisPresence
from flashback.tracker.redis.store import RedisIdentityStore, open_connection


@asynccontextmanager
async def open_redis_backend(
    url: str, config: TrackerConfig
) -> AsyncIterator[tuple[RedisPresence, RedisIdentityStore]]:
    """The presence and identity store of one tracker instance on the Redis at *url*."""
    async with open_connection(url) as connection:
        yield RedisPresence(connection, config), RedisIdentityStore(connection)

"""Several trackers behaving as one, through Redis (``DATABASE_URL=redis://...``).

Shared state lives in Redis; each tracker process keeps only its own
websockets and a :class:`~flashback.protocol.mirror.FeedMirror` of the feed.

Keys (all under ``flashback:``)::

    seq          the one change counter (a string integer)
    origin       the value seq was last seeded with: changes when Redis lost its data
    peers        hash  peer_id -> {"name","host","port","capabilities","fingerprint"} (JSON)
    registered   hash  peer_id -> registered_at (wall seconds)
    tokens       hash  peer_id -> sha256(token) hex, for online peers
    deadlines    zset  peer_id scored by when its TTL runs out (Redis's clock)
    changes      stream, entry id "<seq>-0": the change log, capped ~backlog
    identities   hash  peer_id -> identity JSON (the IdentityStore)
    last_seen    hash  peer_id -> wall seconds, recorded on leave/expiry
    instance:<id>  "1" with a few seconds' TTL: that tracker is alive
    link:<peer>    instance id holding the peer's websocket, with the peer TTL
    relay:<id>     stream of relayed messages for that tracker

Why it is built this way:

- Every change is one Lua script: the presence keys, ``INCR seq`` and the
  ``XADD`` of the change record happen atomically, so ``seq`` and the log can
  never disagree, and concurrent trackers get one total order.
- Stream ids are the ``seq`` itself, so "every change after ``last_seq``" is
  ``XREAD``/``XRANGE`` from ``<last_seq>-0``. Every tracker, including the one
  that made a change, publishes it to its websockets when its reader sees it
  in the stream: one order everywhere.
- Scripts read the time with Redis ``TIME``: one clock for every deadline,
  whatever the trackers' clocks say. Expiry runs on every tracker, and the
  script removes a peer and logs its ``peer-left`` in one step, so each peer
  expires exactly once.
- ``seq`` never goes backwards: a missing counter (a Redis that lost its
  data) is seeded from the clock in microseconds, like
  :func:`~flashback.protocol.registry.clock_seq`, and every script is told
  the highest ``seq`` its tracker has seen, so a Redis restored from an older
  backup jumps ahead instead of repeating numbers.
- Redis out of reach: requests that need it answer 503 ``backend_unavailable``
  within :data:`REDIS_TIMEOUT_S` or so; the reader retries with backoff and
  jittered sleeps; open websockets stay open. When Redis comes back with its
  data, the reader simply continues from its ``seq``; when the data is gone
  (or the log was trimmed past us), the tracker reloads the state and closes
  its websockets with 1013 so clients reconnect and get a snapshot.

Key names built inside scripts (``link:``, ``instance:``, ``relay:``) make
this a single-Redis design, not a Redis Cluster one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, TypeVar

import coredis
import trio
from coredis.exceptions import RedisError
from coredis.retry import NoRetryPolicy

from flashback.config import TrackerConfig
from flashback.errors import BackendUnavailable
from flashback.protocol.messages import (
    Change,
    ErrorMessage,
    Message,
    PeerInfo,
    PeerJoined,
    PeerLeft,
    PeerUpdated,
    ProtocolError,
    StreamError,
    parse,
)
from flashback.protocol.mirror import FeedMirror
from flashback.protocol.registry import rfc3339
from flashback.tracker.hub import CLOSE_TRY_AGAIN_LATER, Hub
from flashback.tracker.presence import not_online, wrong_token
from flashback.tracker.security import hash_token, token_matches
from flashback.tracker.store import Identity

log = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX: Final = "flashback:"
K_SEQ: Final = PREFIX + "seq"
K_ORIGIN: Final = PREFIX + "origin"
K_PEERS: Final = PREFIX + "peers"
K_REGISTERED: Final = PREFIX + "registered"
K_TOKENS: Final = PREFIX + "tokens"
K_DEADLINES: Final = PREFIX + "deadlines"
K_CHANGES: Final = PREFIX + "changes"
K_IDENTITIES: Final = PREFIX + "identities"
K_LAST_SEEN: Final = PREFIX + "last_seen"
CHANGE_KEYS: Final = [K_SEQ, K_PEERS, K_REGISTERED, K_TOKENS, K_DEADLINES, K_CHANGES]

REDIS_TIMEOUT_S: Final = 2.0  # per command; a 503 comes within about this long
READ_BLOCK_MS: Final = 1000
READ_COUNT: Final = 1000
INITIAL_SYNC_TIMEOUT_S: Final = 3.0
CATCH_UP_TIMEOUT_S: Final = 2.0
RETRY_MIN_S: Final = 0.05
RETRY_MAX_S: Final = 2.0
INSTANCE_TTL_S: Final = 5  # a SIGKILLed tracker stops receiving relays within this
RELAY_BACKLOG_MESSAGES: Final = 1000
RELAY_STREAM_TTL_S: Final = 60
EXPIRE_BATCH: Final = 500

_LUA_LIB: Final = """
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt_time(s) return string.format('%.6f', s) end
-- The counter, seeded from the clock (microseconds) when missing or behind
-- what a tracker has already seen: seq never goes backwards.
local function current_seq(key, floor)
  floor = tonumber(floor)
  local cur = redis.call('GET', key)
  if cur and tonumber(cur) >= floor then return cur end
  local t = redis.call('TIME')
  local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if start < floor then start = floor end
  cur = string.format('%d', start)
  redis.call('SET', key, cur)
  redis.call('SET', '@P@origin', cur)
  return cur
end
local function log_change(floor, backlog, ...)
  current_seq(KEYS[1], floor)
  local seq = redis.call('INCR', KEYS[1])
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', backlog, string.format('%d', seq) .. '-0', ...)
  return seq
end
local function forget(p)
  redis.call('HDEL', KEYS[2], p)
  redis.call('HDEL', KEYS[3], p)
  redis.call('HDEL', KEYS[4], p)
  redis.call('ZREM', KEYS[5], p)
end
"""

# KEYS: CHANGE_KEYS. ARGV: peer_id, desc, token_hash, ttl_s, backlog, floor
_REGISTER: Final = """
local p, desc = ARGV[1], ARGV[2]
local now = now_s()
redis.call('HSET', KEYS[4], p, ARGV[3])
redis.call('ZADD', KEYS[5], fmt_time(now + tonumber(ARGV[4])), p)
local old = redis.call('HGET', KEYS[2], p)
if old == desc then return 0 end
local kind = 'updated'
if not old then
  kind = 'joined'
  redis.call('HSET', KEYS[3], p, fmt_time(now))
end
redis.call('HSET', KEYS[2], p, desc)
return log_change(ARGV[6], ARGV[5], 'k', kind, 'p', p, 'd', desc,
  'r', redis.call('HGET', KEYS[3], p), 't', fmt_time(now))
"""

# KEYS: CHANGE_KEYS. ARGV: peer_id, token_hash, backlog, floor. 0 unknown, -1 wrong token.
_LEAVE: Final = """
local h = redis.call('HGET', KEYS[4], ARGV[1])
if not h then return 0 end
if h ~= ARGV[2] then return -1 end
forget(ARGV[1])
return log_change(ARGV[4], ARGV[3], 'k', 'left', 'p', ARGV[1], 'w', 'left')
"""

# KEYS: CHANGE_KEYS. ARGV: backlog, floor, batch. Returns the expired peer ids.
_EXPIRE: Final = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', fmt_time(now_s()),
  'LIMIT', 0, tonumber(ARGV[3]))
for _, p in ipairs(gone) do
  forget(p)
  log_change(ARGV[2], ARGV[1], 'k', 'left', 'p', p, 'w', 'expired')
end
return gone
"""

# KEYS: tokens, deadlines. ARGV: peer_id, token_hash, ttl_s. 1 ok, 0 unknown, -1 wrong token.
# Comparing SHA-256 digests in Lua is not constant-time, but a timing leak
# about the hash of a guess does not help find the token.
_HEARTBEAT: Final = """
local h = redis.call('HGET', KEYS[1], ARGV[1])
if not h then return 0 end
if h ~= ARGV[2] then return -1 end
redis.call('ZADD', KEYS[2], 'XX', 'GT', fmt_time(now_s() + tonumber(ARGV[3])), ARGV[1])
return 1
"""

# KEYS: deadlines. ARGV: instance_id, ttl_s, instance_ttl_s, link_ttl_s, linked peer ids...
_KEEPALIVE: Final = """
redis.call('SET', '@P@instance:' .. ARGV[1], '1', 'EX', ARGV[3])
local deadline = fmt_time(now_s() + tonumber(ARGV[2]))
for i = 5, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', 'GT', deadline, ARGV[i])
  redis.call('SET', '@P@link:' .. ARGV[i], ARGV[1], 'EX', ARGV[4])
end
return 1
"""

# ARGV: to peer_id, message text, backlog. 1 handed over, 0 nobody holds that link.
_RELAY: Final = """
local instance = redis.call('GET', '@P@link:' .. ARGV[1])
if not instance or redis.call('EXISTS', '@P@instance:' .. instance) == 0 then return 0 end
local key = '@P@relay:' .. instance
redis.call('XADD', key, 'MAXLEN', '~', ARGV[3], '*', 't', ARGV[1], 'm', ARGV[2])
redis.call('EXPIRE', key, @RELAY_TTL@)
return 1
"""

# KEYS: seq, peers, registered, deadlines. ARGV: floor. One consistent view.
_STATE: Final = """
return {current_seq(KEYS[1], ARGV[1]), redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]), redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES'),
  redis.call('GET', '@P@origin')}
"""


def _script(body: str) -> str:
    source = _LUA_LIB + body
    return source.replace("@P@", PREFIX).replace("@RELAY_TTL@", str(RELAY_STREAM_TTL_S))


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def describe(
    name: str,
    host: str,
    port: int,
    capabilities: Mapping[str, Any],
    fingerprint: str | None = None,
) -> str:
    """The compared part of a presence, as canonical JSON (equal iff unchanged)."""
    data = {
        "name": name,
        "host": host,
        "port": port,
        "capabilities": capabilities,
        "fingerprint": fingerprint,
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def peer_info(peer_id: str, desc: str, registered_at: float, last_seen: float) -> PeerInfo:
    data = json.loads(desc)
    return PeerInfo(
        peer_id=peer_id,
        name=data["name"],
        host=data["host"],
        port=data["port"],
        capabilities=data["capabilities"],
        registered_at=rfc3339(registered_at),
        last_seen=rfc3339(last_seen),
        # entries written before fingerprints existed have none
        fingerprint=data.get("fingerprint"),
    )


def change_from_entry(identifier: str, fields: Mapping[str, str]) -> Change:
    seq = int(identifier.partition("-")[0])
    if fields["k"] == "left":
        return PeerLeft(seq, fields["p"], "expired" if fields["w"] == "expired" else "left")
    info = peer_info(fields["p"], fields["d"], float(fields["r"]), float(fields["t"]))
    return (PeerJoined if fields["k"] == "joined" else PeerUpdated)(seq, info)


class RedisCluster:
    """One Redis connection pool, the scripts, and this tracker's instance id."""

    def __init__(self, client: coredis.Redis[str]) -> None:
        self.client = client
        self.instance_id = secrets.token_hex(8)
        self.register_script = client.register_script(_script(_REGISTER))
        self.leave_script = client.register_script(_script(_LEAVE))
        self.expire_script = client.register_script(_script(_EXPIRE))
        self.heartbeat_script = client.register_script(_script(_HEARTBEAT))
        self.keepalive_script = client.register_script(_script(_KEEPALIVE))
        self.relay_script = client.register_script(_script(_RELAY))
        self.state_script = client.register_script(_script(_STATE))
        self.identities = RedisIdentityStore(self)

    @property
    def relay_key(self) -> str:
        return f"{PREFIX}relay:{self.instance_id}"

    async def call(self, request: Awaitable[T], *, timeout_s: float = REDIS_TIMEOUT_S) -> T:
        """Await one Redis request; out of reach or too slow -> BackendUnavailable (503)."""
        try:
            # A backstop: coredis has its own timeouts, this bounds everything else.
            with trio.fail_after(timeout_s + 1.0):
                return await request
        except (RedisError, OSError, trio.TooSlowError) as exc:
            raise BackendUnavailable(f"the tracker's Redis is unavailable: {exc}") from exc


@asynccontextmanager
async def open_cluster(url: str) -> AsyncIterator[RedisCluster]:
    """Connect lazily: an unreachable Redis is a 503 per request, not a crash."""
    client: coredis.Redis[str] = coredis.Redis.from_url(
        url,
        decode_responses=True,
        stream_timeout=REDIS_TIMEOUT_S,
        connect_timeout=REDIS_TIMEOUT_S,
        retry_policy=NoRetryPolicy(),  # our callers decide: 503 now, or retry later
    )
    async with client:
        yield RedisCluster(client)


class RedisIdentityStore:
    """The :class:`~flashback.tracker.store.IdentityStore` of a Redis cluster.

    ``seq`` is kept by the presence scripts in Redis itself, so
    :meth:`load_seq` and :meth:`save_seq` have nothing to do.
    """

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster

    async def get(self, peer_id: str) -> Identity | None:
        raw = await self._cluster.call(self._cluster.client.hget(K_IDENTITIES, peer_id))
        if raw is None:
            return None
        data = json.loads(raw)
        return Identity(
            peer_id, bytes.fromhex(data["t"]), data["n"], data["c"], data["f"], data["l"]
        )

    async def put(self, identity: Identity) -> None:
        data = {
            "t": identity.token_hash.hex(),
            "n": identity.name,
            "c": identity.capabilities,
            "f": identity.first_seen,
            "l": identity.last_seen,
        }
        raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        await self._cluster.call(self._cluster.client.hset(K_IDENTITIES, {identity.peer_id: raw}))

    async def touch(self, peer_id: str, last_seen: float) -> None:
        await self._cluster.call(self._cluster.client.hset(K_LAST_SEEN, {peer_id: repr(last_seen)}))

    async def load_seq(self) -> int:
        return 0

    async def save_seq(self, seq: int) -> None:
        pass

    async def aclose(self) -> None:
        pass


class RedisPresence:
    """:class:`~flashback.tracker.presence.Presence` shared through Redis."""

    def __init__(self, cluster: RedisCluster, hub: Hub, config: TrackerConfig) -> None:
        self.cluster = cluster
        self.hub = hub
        self.ttl_s = config.peer_ttl_s
        self.backlog_changes = config.backlog_changes
        self.mirror = FeedMirror(config.backlog_changes)
        self._links: dict[str, int] = {}
        self._synced = False
        self._need_resync = True
        self._need_check = False
        self._progress = trio.Event()
        self._relay_last_id = "0-0"
        self._origin: str | None = None  # which life of the Redis data we follow
        self._down = False
        self._wake_reader = trio.Event()

    # -- local view ----------------------------------------------------------------

    @property
    def seq(self) -> int:
        return self.mirror.seq

    def online_count(self) -> int:
        return len(self.mirror.peers)

    def peer(self, peer_id: str, now: float) -> PeerInfo | None:
        return self.mirror.peers.get(peer_id)

    def is_online(self, peer_id: str) -> bool:
        return peer_id in self.mirror.peers

    async def _call(self, request: Awaitable[T], *, timeout_s: float = REDIS_TIMEOUT_S) -> T:
        result = await self.cluster.call(request, timeout_s=timeout_s)
        if self._down:
            self._wake_reader.set()  # Redis answers again: no need to sit out the backoff
        return result

    # -- the reader ----------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow the change log and this tracker's relay stream until cancelled."""
        # A reachable Redis is in sync before we listen; an unreachable one
        # must not keep the tracker from starting (it answers 503 meanwhile).
        with trio.move_on_after(INITIAL_SYNC_TIMEOUT_S):
            try:
                await self._resync()
            except BackendUnavailable as exc:
                log.warning("%s; retrying in the background", exc.message)
        task_status.started()
        retry_s = RETRY_MIN_S
        while True:
            try:
                if self._need_check:
                    await self._check_data_lost()
                if self._need_resync:
                    await self._resync()
                await self._read_once()
            except BackendUnavailable as exc:
                if not self._down:
                    log.warning("%s; websockets stay open, retrying", exc.message)
                    self._down = True
                    self._wake_reader = trio.Event()
                self._need_check = True
                with trio.move_on_after(retry_s * random.uniform(0.5, 1.0)):
                    await self._wake_reader.wait()
                retry_s = min(retry_s * 2, RETRY_MAX_S)
                continue
            if self._down:
                log.info("Redis is reachable again at seq %d", self.mirror.seq)
            self._down = False
            retry_s = RETRY_MIN_S

    async def _read_once(self) -> None:
        client = self.cluster.client
        streams = {K_CHANGES: f"{self.mirror.seq}-0", self.cluster.relay_key: self._relay_last_id}
        reply = await self._call(
            client.xread(streams, count=READ_COUNT, block=READ_BLOCK_MS),
            timeout_s=REDIS_TIMEOUT_S + READ_BLOCK_MS / 1000,
        )
        for key, entries in (reply or {}).items():
            if key == K_CHANGES:
                self._apply([change_from_entry(e.identifier, e.field_values) for e in entries])
            else:
                await self._deliver_relayed(entries)

    async def _check_data_lost(self) -> None:
        """After an outage: a Redis that lost its data (or went back in time)
        must not be followed from where we were. Another tracker may already
        have reseeded ``seq`` (so comparing it proves nothing); the origin
        changes with every seeding."""
        origin = await self._call(self.cluster.client.get(K_ORIGIN))
        if self._synced and origin != self._origin:
            log.warning("Redis lost the tracker state; resyncing")
            self._need_resync = True
        self._need_check = False

    async def _resync(self) -> None:
        """Reload everything; websockets that followed the old state are closed."""
        seq, peers, origin = await self._state()
        history = await self._call(
            self.cluster.client.xrevrange(K_CHANGES, f"{seq}-0", "-", count=self.backlog_changes)
        )
        changes = [change_from_entry(e.identifier, e.field_values) for e in reversed(history)]
        was_synced = self._synced
        self.mirror.reset(seq, peers, changes)
        self._origin = origin
        self._synced = True
        self._need_resync = False
        if was_synced:
            self.hub.drop_all(CLOSE_TRY_AGAIN_LATER, "tracker state reset; reconnect with last_seq")
        self._signal_progress()

    async def _state(self) -> tuple[int, list[PeerInfo], str | None]:
        raw = await self._call(
            self.cluster.state_script(
                keys=[K_SEQ, K_PEERS, K_REGISTERED, K_DEADLINES], args=[self.mirror.seq]
            )
        )
        seq = int(raw[0])
        descs, registered, deadlines = _pairs(raw[1]), _pairs(raw[2]), _pairs(raw[3])
        peers = []
        for peer_id, desc in descs.items():
            since = float(registered.get(peer_id, 0.0))
            deadline = float(deadlines.get(peer_id, since + self.ttl_s))
            peers.append(peer_info(peer_id, desc, since, max(since, deadline - self.ttl_s)))
        return seq, peers, raw[4]

    def _apply(self, changes: list[Change]) -> None:
        applied: list[Change] = []
        for change in changes:
            if not self.mirror.apply(change):
                log.warning("gap in the change log at seq %d; resyncing", change.seq)
                self._need_resync = True
                break
            applied.append(change)
        self.hub.publish(applied)
        for change in applied:
            if isinstance(change, PeerLeft) and change.reason == "expired":
                # Its link is here but its TTL ran out (Redis was out of reach
                # for longer than the TTL, say): tell the daemon to register again.
                reply = ErrorMessage("unknown_peer", "this peer expired; register again")
                for link in self.hub.links_of(change.peer_id):
                    self.hub.send(link, reply)
        if applied:
            self._signal_progress()

    def _signal_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def _wait_for(self, seq: int) -> None:
        with trio.move_on_after(CATCH_UP_TIMEOUT_S):
            while self.mirror.seq < seq and not self._need_resync:
                await self._progress.wait()

    async def _deliver_relayed(self, entries: Sequence[Any]) -> None:
        for entry in entries:
            self._relay_last_id = entry.identifier
            to = entry.field_values["t"]
            try:
                message = parse(entry.field_values["m"])
            except ProtocolError:
                continue
            link = self.hub.link_for(to)
            if link is not None and self.hub.send(link, message):
                continue
            sender = getattr(message, "from_", None)
            if isinstance(message, StreamError) or sender is None:
                continue
            bounce = StreamError(
                request_id=getattr(message, "request_id", ""),
                code="unknown_peer",
                message=f"peer {to!r} is not online",
            )
            local = self.hub.link_for(sender)
            if local is not None:
                self.hub.send(local, bounce)
            else:
                await self.relay(sender, bounce)

    # -- requests ------------------------------------------------------------------

    async def register(
        self,
        peer_id: str,
        *,
        token_hash: bytes,
        name: str,
        host: str,
        port: int,
        capabilities: Mapping[str, Any],
        now: float,
        fingerprint: str | None = None,
    ) -> None:
        seq = await self._call(
            self.cluster.register_script(
                keys=CHANGE_KEYS,
                args=[
                    peer_id,
                    describe(name, host, port, capabilities, fingerprint),
                    token_hash.hex(),
                    self.ttl_s,
                    self.backlog_changes,
                    self.mirror.seq,
                ],
            )
        )
        # Read-your-writes on this tracker: its watchers have the change when we answer.
        await self._wait_for(int(seq))  # type: ignore[arg-type]

    async def heartbeat(self, peer_id: str, token: str, now: float) -> None:
        result = await self._call(
            self.cluster.heartbeat_script(
                keys=[K_TOKENS, K_DEADLINES], args=[peer_id, hash_token(token).hex(), self.ttl_s]
            )
        )
        if result == 0:
            raise not_online(peer_id)
        if result == -1:
            raise wrong_token()

    async def leave(self, peer_id: str, token: str, now: float) -> None:
        result = await self._call(
            self.cluster.leave_script(
                keys=CHANGE_KEYS,
                args=[peer_id, hash_token(token).hex(), self.backlog_changes, self.mirror.seq],
            )
        )
        if result == 0:
            raise not_online(peer_id)
        if result == -1:
            raise wrong_token()
        await self._wait_for(int(result))  # type: ignore[arg-type]

    async def peer_list(self, now: float) -> dict[str, Any]:
        seq, peers, _ = await self._state()
        return {"seq": seq, "peers": [p.dump() for p in peers]}

    async def expire(self, now: float) -> list[str]:
        """Keep this tracker's linked peers alive, then expire everyone overdue."""
        await self._keepalive(list(self._links))
        gone = await self._call(
            self.cluster.expire_script(
                keys=CHANGE_KEYS, args=[self.backlog_changes, self.mirror.seq, EXPIRE_BATCH]
            )
        )
        return list(gone)  # type: ignore[arg-type]

    async def _keepalive(self, linked: list[str]) -> None:
        """This tracker is alive, and so are the peers linked to it (routes too)."""
        await self._call(
            self.cluster.keepalive_script(
                keys=[K_DEADLINES],
                args=[
                    self.cluster.instance_id,
                    self.ttl_s,
                    INSTANCE_TTL_S,
                    max(1, math.ceil(self.ttl_s)),
                    *linked,
                ],
            )
        )

    async def check_link(self, peer_id: str, token: str | None) -> ErrorMessage | None:
        token_hex = await self._call(self.cluster.client.hget(K_TOKENS, peer_id))
        if token_hex is None:
            return ErrorMessage("unknown_peer", "this peer is not registered; register first")
        if not token_matches(token, bytes.fromhex(token_hex)):
            return ErrorMessage("unauthorized", "wrong token for this peer_id")
        return None

    async def catch_up(self, last_seq: int | None) -> None:
        if last_seq is None or not self._synced or last_seq <= self.mirror.seq:
            return
        current = await self._call(self.cluster.client.get(K_SEQ))
        if current is not None and last_seq <= int(current):
            await self._wait_for(last_seq)  # a seq Redis handed out: we are just behind
        # Otherwise it is from the future (a Redis that lost its data): a snapshot.

    def first_messages(self, last_seq: int | None, now: float) -> list[Message]:
        if not self._synced:
            raise BackendUnavailable("the tracker has not reached its Redis yet")
        missed = self.mirror.changes_since(last_seq)
        return [self.mirror.snapshot()] if missed is None else list(missed)

    async def attach(self, peer_id: str) -> None:
        self._links[peer_id] = self._links.get(peer_id, 0) + 1
        # Route relays here now, not at the next tick (which retries if Redis is away).
        with contextlib.suppress(BackendUnavailable):
            await self._keepalive([peer_id])

    def detach(self, peer_id: str, now: float) -> None:
        # Its deadline was pushed on the last tick, so its TTL starts about now;
        # a stale link:<peer> key routes relays here, and we bounce them.
        count = self._links.get(peer_id, 0) - 1
        if count > 0:
            self._links[peer_id] = count
        else:
            self._links.pop(peer_id, None)

    async def relay(self, to: str, message: Message) -> bool:
        result = await self._call(
            self.cluster.relay_script(args=[to, message.encode(), RELAY_BACKLOG_MESSAGES])
        )
        return result == 1

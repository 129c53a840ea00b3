"""The Redis key names and the Lua scripts that change them, one atomic step each.

Keys (all under ``flashback:``)::

    seq          the one change counter (a string integer)
    origin       the value seq was last seeded with: changes when Redis lost its data
    peers        hash  peer_id -> Listing.canonical() of the peer (JSON)
    registered   hash  peer_id -> registered_at (wall seconds)
    tokens       hash  peer_id -> sha256(token) hex, for online peers
    token_peers  hash  sha256(token) hex -> peer_id, the same pairs the other way
                 (a FLASHBACK-REFLECT line names only the token)
    deadlines    zset  peer_id scored by when its TTL runs out (Redis's clock)
    changes      stream, entry id "<seq>-0": the change log, capped ~backlog
    identities   hash  peer_id -> identity JSON (the IdentityStore)
    last_seen    hash  peer_id -> wall seconds, recorded on leave/expiry
    instance:<id>  "1" with a few seconds' TTL: that tracker is alive
    link:<peer>    instance id holding the peer's websocket, with the peer TTL
    relay:<id>     stream of relayed messages for that tracker, waiting to be
                   read (the reader deletes what it read): a fair share by
                   sender, as FairShare's rule (the heaviest sender's oldest goes)
    relay:<id>:held    hash  sender -> its entries waiting in relay:<id>
    relay:<id>:of:<s>  list  sender s's waiting entry ids, oldest first
    budget:<name>  hash {t: tokens, at: when}: a token bucket shared by every
                   instance (relay:<peer_id>, register:<address>); expires once full

What is a change is not decided here: ``_REGISTER`` compares the canonical
listing text the tracker computed (:func:`flashback.protocol.feed.is_change`
is exactly "those texts differ"), and logs a change only when it moved.
A new listing is computed from the old one (a re-registration keeps the
reflexive address, a reflection changes only it), so ``_REGISTER`` and
``_UPDATE`` take the old text the tracker computed from and write only if
it is still the stored one (-2 otherwise: the tracker reads it and retries).

Key names built inside scripts (``link:``, ``instance:``, ``relay:``) make
this a single-Redis design, not a Redis Cluster one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import coredis
from coredis.commands.script import Script

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
K_TOKEN_PEERS: Final = PREFIX + "token_peers"
CHANGE_KEYS: Final = [K_SEQ, K_PEERS, K_REGISTERED, K_TOKENS, K_DEADLINES, K_CHANGES]
STATE_KEYS: Final = [K_SEQ, K_PEERS, K_REGISTERED, K_DEADLINES]

RELAY_STREAM_TTL_S: Final = 60


def relay_key(instance_id: str) -> str:
    return f"{PREFIX}relay:{instance_id}"


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
  local h = redis.call('HGET', KEYS[4], p)
  if h then redis.call('HDEL', '@P@token_peers', h) end
  redis.call('HDEL', KEYS[2], p)
  redis.call('HDEL', KEYS[3], p)
  redis.call('HDEL', KEYS[4], p)
  redis.call('ZREM', KEYS[5], p)
end
"""

# KEYS: CHANGE_KEYS. ARGV: peer_id, canonical listing, token_hash, ttl_s, backlog, floor,
# the stored listing it was computed from ('' for none).
# Returns the seq of the change, 0 when the listing did not change, -2 when the
# stored listing is no longer the one given (nothing written).
_REGISTER: Final = """
local p, desc = ARGV[1], ARGV[2]
local old = redis.call('HGET', KEYS[2], p)
if (old or '') ~= ARGV[7] then return -2 end
local now = now_s()
local old_hash = redis.call('HGET', KEYS[4], p)
if old_hash and old_hash ~= ARGV[3] then redis.call('HDEL', '@P@token_peers', old_hash) end
redis.call('HSET', KEYS[4], p, ARGV[3])
redis.call('HSET', '@P@token_peers', ARGV[3], p)
redis.call('ZADD', KEYS[5], fmt_time(now + tonumber(ARGV[4])), p)
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

# KEYS: CHANGE_KEYS. ARGV: peer_id, the stored listing, the new one, backlog, floor.
# An online peer's listing changed by the tracker (its reflexive address): the seq
# of the change, 0 unknown peer or no change, -2 the stored listing is another.
_UPDATE: Final = """
local p = ARGV[1]
local old = redis.call('HGET', KEYS[2], p)
if not old then return 0 end
if old ~= ARGV[2] then return -2 end
if old == ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], p, ARGV[3])
return log_change(ARGV[5], ARGV[4], 'k', 'updated', 'p', p, 'd', ARGV[3],
  'r', redis.call('HGET', KEYS[3], p), 't', fmt_time(now_s()))
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

# The relay stream's fair share (flashback.protocol.fairshare's rule, in Lua):
# a sender past its share drops its own oldest waiting entry; a full stream
# drops the heaviest sender's oldest (most entries; a tie: the oldest entry).
_RELAY_LIB: Final = """
local function id_older(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local function forget_entry(key, sender, id)
  local ids = key .. ':of:' .. sender
  if redis.call('LINDEX', ids, 0) == id then
    redis.call('LPOP', ids)
  elseif redis.call('LREM', ids, 1, id) == 0 then
    return  -- not counted (its list expired): nothing to give back
  end
  if redis.call('HINCRBY', key .. ':held', sender, -1) <= 0 then
    redis.call('HDEL', key .. ':held', sender)
  end
end
local function drop_oldest_of(key, sender)
  local id = redis.call('LINDEX', key .. ':of:' .. sender, 0)
  if not id then
    redis.call('HDEL', key .. ':held', sender)
    return
  end
  forget_entry(key, sender, id)
  redis.call('XDEL', key, id)
end
local function heaviest(key)
  local flat = redis.call('HGETALL', key .. ':held')
  local best, best_n, best_head = nil, -1, nil
  for i = 1, #flat, 2 do
    local n = tonumber(flat[i + 1])
    local head = redis.call('LINDEX', key .. ':of:' .. flat[i], 0)
    if head and (n > best_n or (n == best_n and id_older(head, best_head))) then
      best, best_n, best_head = flat[i], n, head
    end
  end
  return best
end
"""

# ARGV: to peer_id, message text, capacity, per-sender share, sender.
# 1 handed over, 0 nobody holds that link.
_RELAY: Final = """
local instance = redis.call('GET', '@P@link:' .. ARGV[1])
if not instance or redis.call('EXISTS', '@P@instance:' .. instance) == 0 then return 0 end
local key = '@P@relay:' .. instance
local capacity, share, sender = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
if tonumber(redis.call('HGET', key .. ':held', sender) or '0') >= share then
  drop_oldest_of(key, sender)
end
for _ = 1, 8 do  -- (entries no longer counted are trimmed below)
  if redis.call('XLEN', key) < capacity then break end
  local victim = heaviest(key)
  if not victim then break end
  drop_oldest_of(key, victim)
end
if redis.call('XLEN', key) >= capacity then
  redis.call('XTRIM', key, 'MAXLEN', capacity - 1)
end
local id = redis.call('XADD', key, '*', 't', ARGV[1], 'm', ARGV[2], 's', sender)
redis.call('RPUSH', key .. ':of:' .. sender, id)
redis.call('HINCRBY', key .. ':held', sender, 1)
redis.call('EXPIRE', key, @RELAY_TTL@)
redis.call('EXPIRE', key .. ':held', @RELAY_TTL@)
redis.call('EXPIRE', key .. ':of:' .. sender, @RELAY_TTL@)
return 1
"""

# ARGV: instance id, then (entry id, sender) pairs it has read: out of the stream
# and of their senders' shares.
_RELAY_READ: Final = """
local key = '@P@relay:' .. ARGV[1]
for i = 2, #ARGV - 1, 2 do
  forget_entry(key, ARGV[i + 1], ARGV[i])
  redis.call('XDEL', key, ARGV[i])
end
return 1
"""

# ARGV: bucket name, rate per s, burst. 0: a token taken; otherwise the
# milliseconds until one will be there. One bucket for the whole cluster,
# refilled on Redis's clock.
_TAKE_TOKEN: Final = """
local key = '@P@budget:' .. ARGV[1]
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_s()
local saved = redis.call('HMGET', key, 't', 'at')
local tokens, at = tonumber(saved[1]), tonumber(saved[2])
if not tokens or not at then tokens, at = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait_ms = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', key, 't', string.format('%.6f', tokens), 'at', fmt_time(now))
redis.call('EXPIRE', key, math.ceil((burst - tokens) / rate) + 1)
return wait_ms
"""

# KEYS: STATE_KEYS. ARGV: floor. One consistent view.
_STATE: Final = """
return {current_seq(KEYS[1], ARGV[1]), redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]), redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES'),
  redis.call('GET', '@P@origin')}
"""


def _source(body: str) -> str:
    source = _LUA_LIB + _RELAY_LIB + body
    return source.replace("@P@", PREFIX).replace("@RELAY_TTL@", str(RELAY_STREAM_TTL_S))


@dataclass(frozen=True)
class Scripts:
    """Every script, registered on one client (each is loaded on first use)."""

    register: Script[str]
    update: Script[str]
    leave: Script[str]
    expire: Script[str]
    heartbeat: Script[str]
    keepalive: Script[str]
    relay: Script[str]
    relay_read: Script[str]
    take_token: Script[str]
    state: Script[str]

    @classmethod
    def load(cls, client: coredis.Redis[str]) -> Scripts:
        return cls(
            register=client.register_script(_source(_REGISTER)),
            update=client.register_script(_source(_UPDATE)),
            leave=client.register_script(_source(_LEAVE)),
            expire=client.register_script(_source(_EXPIRE)),
            heartbeat=client.register_script(_source(_HEARTBEAT)),
            keepalive=client.register_script(_source(_KEEPALIVE)),
            relay=client.register_script(_source(_RELAY)),
            relay_read=client.register_script(_source(_RELAY_READ)),
            take_token=client.register_script(_source(_TAKE_TOKEN)),
            state=client.register_script(_source(_STATE)),
        )

"""The Redis connection, the identity store on it, and how records are read back.

Every request goes through :meth:`RedisConnection.call`: Redis out of reach
or too slow becomes :class:`~flashback.errors.BackendUnavailable` (a JSON
503) within about :data:`REDIS_TIMEOUT_S`, never a hang. Replies are checked
for the shape the scripts promise (:func:`as_int`, :func:`as_text`), so a
confused server is a 503 too, never a 500.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, TypeVar

import coredis
import trio
from coredis.exceptions import RedisError
from coredis.retry import NoRetryPolicy

from flashback.errors import BackendUnavailable
from flashback.protocol.feed import Listing
from flashback.protocol.messages import Change, PeerInfo, PeerJoined, PeerLeft, PeerUpdated
from flashback.protocol.registry import rfc3339_millis
from flashback.tracker.redis.scripts import K_IDENTITIES, K_LAST_SEEN, STATE_KEYS, Scripts
from flashback.tracker.store import IssuedIdentity

T = TypeVar("T")

REDIS_TIMEOUT_S: Final = 2.0  # per command; a 503 comes within about this long


def _unexpected(what: str, value: object) -> BackendUnavailable:
    return BackendUnavailable(f"the tracker's Redis answered {what} with {value!r:.80}")


def as_int(value: object) -> int:
    """A script's integer reply (coredis hands integers back as int)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise _unexpected("an integer", value)


def as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    raise _unexpected("text", value)


def as_list(value: object) -> list[object]:
    if isinstance(value, list | tuple):
        return list(value)
    raise _unexpected("a list", value)


def as_pairs(value: object) -> dict[str, str]:
    """A flat ``[k1, v1, k2, v2, ...]`` reply (HGETALL/WITHSCORES inside a script)."""
    flat = [as_text(item) for item in as_list(value)]
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


class RedisConnection:
    """One Redis connection pool, the scripts, and this tracker's instance id."""

    def __init__(self, client: coredis.Redis[str]) -> None:
        self.client = client
        self.instance_id = secrets.token_hex(8)
        self.scripts = Scripts.load(client)
        self._answered: trio.Event | None = None

    async def call(self, request: Awaitable[T], *, timeout_s: float = REDIS_TIMEOUT_S) -> T:
        """Await one Redis request; out of reach or too slow -> BackendUnavailable (503)."""
        try:
            # A backstop: coredis has its own timeouts, this bounds everything else.
            with trio.fail_after(timeout_s + 1.0):
                result = await request
        except (RedisError, OSError, trio.TooSlowError) as exc:
            raise BackendUnavailable(f"the tracker's Redis is unavailable: {exc}") from exc
        if self._answered is not None:
            self._answered.set()
            self._answered = None
        return result

    def next_answer(self) -> trio.Event:
        """An event set when the next request gets an answer (Redis is back)."""
        if self._answered is None:
            self._answered = trio.Event()
        return self._answered


@asynccontextmanager
async def open_connection(url: str) -> AsyncIterator[RedisConnection]:
    """Connect lazily: an unreachable Redis is a 503 per request, not a crash."""
    client: coredis.Redis[str] = coredis.Redis.from_url(
        url,
        decode_responses=True,
        stream_timeout=REDIS_TIMEOUT_S,
        connect_timeout=REDIS_TIMEOUT_S,
        retry_policy=NoRetryPolicy(),  # our callers decide: 503 now, or retry later
    )
    async with client:
        yield RedisConnection(client)


# -- records -----------------------------------------------------------------------


def peer_info(peer_id: str, canonical: str, registered_at: float, last_seen: float) -> PeerInfo:
    return Listing.from_canonical(canonical).peer_info(
        peer_id, registered_at=rfc3339_millis(registered_at), last_seen=rfc3339_millis(last_seen)
    )


def change_from_entry(identifier: str | bytes, fields: Mapping[str | bytes, str | bytes]) -> Change:
    """One entry of the change stream (its id is ``<seq>-0``) as the change it records."""
    text = {as_text(k): as_text(v) for k, v in fields.items()}
    seq = int(as_text(identifier).partition("-")[0])
    if text["k"] == "left":
        return PeerLeft(seq, text["p"], "expired" if text["w"] == "expired" else "left")
    info = peer_info(text["p"], text["d"], float(text["r"]), float(text["t"]))
    return (PeerJoined if text["k"] == "joined" else PeerUpdated)(seq, info)


@dataclass(frozen=True)
class SharedState:
    """One consistent view of the shared presence: ``seq``, the peers, the data's origin."""

    seq: int
    peers: list[PeerInfo]
    origin: str | None


async def read_state(connection: RedisConnection, floor_seq: int, ttl_s: float) -> SharedState:
    """Everything at once (one script); ``last_seen`` is derived from each deadline."""
    raw = as_list(
        await connection.call(connection.scripts.state(keys=STATE_KEYS, args=[floor_seq]))
    )
    if len(raw) != 5:
        raise _unexpected("the state", raw)
    canonical, registered, deadlines = as_pairs(raw[1]), as_pairs(raw[2]), as_pairs(raw[3])
    peers = []
    for peer_id, listing in canonical.items():
        since = float(registered.get(peer_id, 0.0))
        deadline = float(deadlines.get(peer_id, since + ttl_s))
        peers.append(peer_info(peer_id, listing, since, max(since, deadline - ttl_s)))
    return SharedState(as_int(raw[0]), peers, None if raw[4] is None else as_text(raw[4]))


# -- identities --------------------------------------------------------------------


class RedisIdentityStore:
    """The :class:`~flashback.tracker.store.IdentityStore` on the shared Redis.

    ``seq`` is kept by the presence scripts in Redis itself, so
    :meth:`load_seq` and :meth:`save_seq` have nothing to do.
    """

    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection

    async def get(self, peer_id: str) -> IssuedIdentity | None:
        raw = await self._connection.call(self._connection.client.hget(K_IDENTITIES, peer_id))
        if raw is None:
            return None
        data = json.loads(raw)
        return IssuedIdentity(
            peer_id,
            bytes.fromhex(data["t"]),
            data["n"],
            data["c"],
            data["f"],
            data["l"],
            data.get("a", ""),
        )

    async def put(self, identity: IssuedIdentity) -> None:
        data = {
            "t": identity.token_hash.hex(),
            "n": identity.name,
            "c": identity.capabilities,
            "f": identity.first_seen,
            "l": identity.last_seen,
            "a": identity.address,
        }
        raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        client = self._connection.client
        await self._connection.call(client.hset(K_IDENTITIES, {identity.peer_id: raw}))

    async def touch(self, peer_id: str, last_seen: float) -> None:
        client = self._connection.client
        await self._connection.call(client.hset(K_LAST_SEEN, {peer_id: repr(last_seen)}))

    async def forget(self, peer_id: str) -> None:
        client = self._connection.client
        await self._connection.call(client.hdel(K_IDENTITIES, [peer_id]))
        await self._connection.call(client.hdel(K_LAST_SEEN, [peer_id]))

    async def known(self) -> list[tuple[str, str]]:
        return []  # shared: the other instances' peers are theirs to bound

    async def load_seq(self) -> int:
        return 0

    async def save_seq(self, seq: int) -> None:
        pass

    async def aclose(self) -> None:
        pass

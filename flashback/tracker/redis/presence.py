""":class:`~flashback.tracker.presence.Presence` shared through Redis: the requests.

Each change is one script (:mod:`.scripts`); its change reaches this
instance's links the way everyone else's do, through the
:class:`~.follower.FeedFollower`, so the calls here return no changes to
publish. Read-your-writes: a register or leave waits (bounded) until the
follower has the change, so this tracker's watchers have it when we answer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from flashback.config import TrackerConfig
from flashback.errors import BackendUnavailable
from flashback.protocol.feed import LinkCount, Listing
from flashback.protocol.messages import Candidate, Change, ErrorMessage, Message, PeerInfo
from flashback.tracker.presence import Expired, FeedSink, not_online, wrong_token
from flashback.tracker.redis.follower import FeedFollower
from flashback.tracker.redis.scripts import (
    CHANGE_KEYS,
    K_DEADLINES,
    K_PEERS,
    K_SEQ,
    K_TOKEN_PEERS,
    K_TOKENS,
)
from flashback.tracker.redis.store import (
    RedisConnection,
    as_int,
    as_list,
    as_text,
    read_state,
)
from flashback.tracker.security import hash_token, token_matches

#: a listing computed from a stored one that moved meanwhile is recomputed this often
MAX_LISTING_RACES: Final = 4
#: _REGISTER / _UPDATE: the stored listing is not the one the new one was computed from
STORED_LISTING_MOVED: Final = -2
INSTANCE_TTL_S: Final = 5  # a SIGKILLed tracker stops receiving relays within this
RELAY_BACKLOG_MESSAGES: Final = 1000
#: of those, what one sender (a peer id) may have waiting: its newest drops its own oldest
RELAY_BACKLOG_PER_SENDER: Final = 100
EXPIRE_BATCH: Final = 500


class RedisPresence:
    def __init__(self, connection: RedisConnection, config: TrackerConfig) -> None:
        self.connection = connection
        self.ttl_s = config.peer_ttl_s
        self.backlog_changes = config.backlog_changes
        self.follower = FeedFollower(
            connection, ttl_s=config.peer_ttl_s, backlog_changes=config.backlog_changes
        )
        self._links = LinkCount()

    # -- local view ----------------------------------------------------------------

    @property
    def seq(self) -> int:
        return self.follower.seq

    def online_count(self) -> int:
        return len(self.follower.mirror.peers)

    def peer(self, peer_id: str, now: float) -> PeerInfo | None:
        return self.follower.mirror.peers.get(peer_id)

    def is_online(self, peer_id: str) -> bool:
        return peer_id in self.follower.mirror.peers

    async def run(
        self, sink: FeedSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await self.follower.run(sink, task_status=task_status)

    # -- requests ------------------------------------------------------------------

    async def register(
        self, peer_id: str, listing: Listing, *, token_hash: bytes, now: float
    ) -> list[Change]:
        async def attempt(stored: str | None) -> int:
            old = None if stored is None else Listing.from_canonical(stored)
            args: list[str | int | float] = [
                peer_id,
                listing.reregistered(old).canonical(),
                token_hash.hex(),
                self.ttl_s,
                self.backlog_changes,
                self.follower.seq,
                stored or "",
            ]
            register = self.connection.scripts.register
            return as_int(await self.connection.call(register(keys=CHANGE_KEYS, args=args)))

        seq = await self._computed_from_stored(peer_id, attempt)
        await self.follower.wait_for(seq)
        return []

    async def peer_of_token(self, token: str) -> str | None:
        token_hash = hash_token(token)
        peer_id = await self.connection.call(
            self.connection.client.hget(K_TOKEN_PEERS, token_hash.hex())
        )
        if peer_id is None:
            return None
        stored_hash = await self.connection.call(self.connection.client.hget(K_TOKENS, peer_id))
        if stored_hash is None or not token_matches(token, bytes.fromhex(stored_hash)):
            return None
        return str(peer_id)

    async def reflect(self, peer_id: str, seen: Candidate, now: float) -> list[Change]:
        """Computed from the stored listing, written only if it moved."""

        async def attempt(stored: str | None) -> int:
            if stored is None:
                return 0  # gone meanwhile
            new = Listing.from_canonical(stored).reflected(seen).canonical()
            args: list[str | int | float] = [
                peer_id,
                stored,
                new,
                self.backlog_changes,
                self.follower.seq,
            ]
            update = self.connection.scripts.update
            return as_int(await self.connection.call(update(keys=CHANGE_KEYS, args=args)))

        seq = await self._computed_from_stored(peer_id, attempt)
        await self.follower.wait_for(seq)
        return []

    async def _computed_from_stored(
        self, peer_id: str, attempt: Callable[[str | None], Awaitable[int]]
    ) -> int:
        """Run a script that writes a listing computed from the stored one.

        The first try computes from this instance's mirror (no extra round
        trip); when another instance moved the record meanwhile, the stored
        text is read and the listing computed again, a bounded number of times.
        """
        known = self.follower.mirror.peers.get(peer_id)
        stored = None if known is None else Listing.of(known).canonical()
        for _ in range(MAX_LISTING_RACES):
            result = await attempt(stored)
            if result != STORED_LISTING_MOVED:
                return result
            stored = await self.connection.call(self.connection.client.hget(K_PEERS, peer_id))
        raise BackendUnavailable("a peer's record kept changing under this registration")

    async def heartbeat(self, peer_id: str, token: str, now: float) -> None:
        script = self.connection.scripts.heartbeat
        args: list[str | int | float] = [peer_id, hash_token(token).hex(), self.ttl_s]
        result = as_int(await self.connection.call(script(keys=[K_TOKENS, K_DEADLINES], args=args)))
        if result == 0:
            raise not_online(peer_id)
        if result == -1:
            raise wrong_token()

    async def leave(self, peer_id: str, token: str, now: float) -> list[Change]:
        args: list[str | int | float] = [
            peer_id,
            hash_token(token).hex(),
            self.backlog_changes,
            self.follower.seq,
        ]
        script = self.connection.scripts.leave
        result = as_int(await self.connection.call(script(keys=CHANGE_KEYS, args=args)))
        if result == 0:
            raise not_online(peer_id)
        if result == -1:
            raise wrong_token()
        await self.follower.wait_for(result)
        return []

    async def peer_list(self, now: float) -> dict[str, Any]:
        state = await read_state(self.connection, self.follower.seq, self.ttl_s)
        return {"seq": state.seq, "peers": [p.dump() for p in state.peers]}

    async def expire(self, now: float) -> Expired:
        """Keep this tracker's linked peers alive, then expire everyone overdue."""
        await self._keepalive(list(self._links))
        args: list[str | int | float] = [self.backlog_changes, self.follower.seq, EXPIRE_BATCH]
        gone = as_list(
            await self.connection.call(self.connection.scripts.expire(keys=CHANGE_KEYS, args=args))
        )
        return Expired([as_text(peer_id) for peer_id in gone], [])

    async def _keepalive(self, linked: list[str]) -> None:
        """This tracker is alive, and so are the peers linked to it (routes too)."""
        args: list[str | int | float] = [
            self.connection.instance_id,
            self.ttl_s,
            INSTANCE_TTL_S,
            max(1, math.ceil(self.ttl_s)),
            *linked,
        ]
        await self.connection.call(self.connection.scripts.keepalive(keys=[K_DEADLINES], args=args))

    async def check_link(self, peer_id: str, token: str | None) -> ErrorMessage | None:
        token_hex = await self.connection.call(self.connection.client.hget(K_TOKENS, peer_id))
        if token_hex is None:
            return ErrorMessage("unknown_peer", "this peer is not registered; register first")
        if not token_matches(token, bytes.fromhex(token_hex)):
            return ErrorMessage("unauthorized", "wrong token for this peer_id")
        return None

    async def catch_up(self, last_seq: int | None) -> None:
        if last_seq is None or not self.follower.synced or last_seq <= self.follower.seq:
            return
        current = await self.connection.call(self.connection.client.get(K_SEQ))
        if current is not None and last_seq <= int(current):
            await self.follower.wait_for(last_seq)  # a seq Redis handed out: we are just behind
        # Otherwise it is from the future (a Redis that lost its data): a snapshot.

    def first_messages(self, last_seq: int | None, now: float) -> list[Message]:
        if not self.follower.synced:
            raise BackendUnavailable("the tracker has not reached its Redis yet")
        missed = self.follower.mirror.changes_since(last_seq)
        return [self.follower.mirror.snapshot()] if missed is None else list(missed)

    async def attach(self, peer_id: str) -> None:
        self._links.attach(peer_id)
        # Route relays here now, not at the next tick (which retries if Redis is away).
        with contextlib.suppress(BackendUnavailable):
            await self._keepalive([peer_id])

    def detach(self, peer_id: str, now: float) -> None:
        # Its deadline was pushed on the last tick, so its TTL starts about now;
        # a stale link:<peer> key routes relays here, and we bounce them.
        self._links.detach(peer_id)

    async def take_token(self, bucket: str, rate_per_s: float, burst: int) -> float:
        """A token of the cluster's bucket *bucket*: 0, or the seconds until one.

        Redis out of reach: 0, and the instance's own budgets are all that apply
        (a relay between two links of this instance still works then)."""
        args: list[str | int | float] = [bucket, rate_per_s, burst]
        script = self.connection.scripts.take_token
        try:
            return as_int(await self.connection.call(script(args=args))) / 1000
        except BackendUnavailable:
            return 0.0

    async def relay(self, to: str, message: Message) -> bool:
        # the relayed message names its sender (the tracker set "from"); a bounce
        # the tracker made itself counts as the tracker's
        sender = getattr(message, "from_", None) or ""
        args: list[str | int | float] = [
            to,
            message.encode(),
            RELAY_BACKLOG_MESSAGES,
            RELAY_BACKLOG_PER_SENDER,
            f"peer:{sender}",
        ]
        return as_int(await self.connection.call(self.connection.scripts.relay(args=args))) == 1

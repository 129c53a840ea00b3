"""Following the shared change log and this instance's relay stream.

Every tracker, including the one that made a change, hands a change to its
websockets when this follower reads it from the stream: one order on every
instance. Stream ids are the ``seq`` itself, so "every change after
``last_seq``" is ``XREAD`` from ``<last_seq>-0``.

Redis out of reach: the follower retries on the shared
:class:`~flashback.protocol.backoff.Backoff` (jittered, doubling up to
:data:`RETRY_MAX_S`); open websockets stay open, and any answer from Redis
to a request cuts the wait short. When Redis comes back with its data the
follower simply continues from its ``seq``; when the data is gone (its
``origin`` changed) or the log was trimmed past us, it reloads the state and
asks the tracker to restart its links (1013), so clients reconnect and get a
snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import trio
from coredis.response.types import StreamEntry

from flashback.errors import BackendUnavailable
from flashback.protocol.backoff import Backoff
from flashback.protocol.messages import Change, ProtocolError, parse
from flashback.protocol.mirror import FeedMirror
from flashback.tracker.presence import FeedSink
from flashback.tracker.redis.scripts import K_CHANGES, K_ORIGIN, relay_key
from flashback.tracker.redis.store import (
    REDIS_TIMEOUT_S,
    RedisConnection,
    as_text,
    change_from_entry,
    read_state,
)

log = logging.getLogger(__name__)

READ_BLOCK_MS: Final = 1000
READ_COUNT: Final = 1000
INITIAL_SYNC_TIMEOUT_S: Final = 3.0
CATCH_UP_TIMEOUT_S: Final = 2.0
RETRY_MIN_S: Final = 0.05
RETRY_MAX_S: Final = 2.0
RETRY_JITTER: Final = 0.5  # each wait is 50-100 % of the step


class FeedFollower:
    """This instance's :class:`FeedMirror` of the shared log, kept current."""

    def __init__(self, connection: RedisConnection, *, ttl_s: float, backlog_changes: int) -> None:
        self.connection = connection
        self.ttl_s = ttl_s
        self.backlog_changes = backlog_changes
        self.mirror = FeedMirror(backlog_changes)
        self.synced = False
        self._need_resync = True
        self._need_check = False
        self._progress = trio.Event()
        self._relay_last_id = "0-0"
        self._origin: str | None = None  # which life of the Redis data we follow
        self._down = False

    @property
    def seq(self) -> int:
        return self.mirror.seq

    async def run(
        self, sink: FeedSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow the change log and this tracker's relay stream until cancelled."""
        # A reachable Redis is in sync before we listen; an unreachable one
        # must not keep the tracker from starting (it answers 503 meanwhile).
        with trio.move_on_after(INITIAL_SYNC_TIMEOUT_S):
            try:
                await self._resync(sink)
            except BackendUnavailable as exc:
                log.warning("%s; retrying in the background", exc.message)
        task_status.started()
        backoff = Backoff(initial_s=RETRY_MIN_S, max_s=RETRY_MAX_S, jitter=RETRY_JITTER)
        while True:
            try:
                if self._need_check:
                    await self._check_data_lost()
                if self._need_resync:
                    await self._resync(sink)
                await self._read_once(sink)
            except BackendUnavailable as exc:
                if not self._down:
                    log.warning("%s; websockets stay open, retrying", exc.message)
                    self._down = True
                self._need_check = True
                # Any answer from Redis (to a request, say) cuts the wait short.
                answered = self.connection.next_answer()
                with trio.move_on_after(backoff.next_delay_s()):
                    await answered.wait()
                continue
            if self._down:
                log.info("Redis is reachable again at seq %d", self.mirror.seq)
            self._down = False
            backoff.reset()

    async def wait_for(self, seq: int) -> None:
        """Until the mirror holds *seq* (read-your-writes), bounded: a lagging
        follower delays an answer, it never hangs it."""
        with trio.move_on_after(CATCH_UP_TIMEOUT_S):
            while self.mirror.seq < seq and not self._need_resync:
                await self._progress.wait()

    async def _read_once(self, sink: FeedSink) -> None:
        relays = relay_key(self.connection.instance_id)
        streams = {K_CHANGES: f"{self.mirror.seq}-0", relays: self._relay_last_id}
        reply = await self.connection.call(
            self.connection.client.xread(streams, count=READ_COUNT, block=READ_BLOCK_MS),
            timeout_s=REDIS_TIMEOUT_S + READ_BLOCK_MS / 1000,
        )
        for key, entries in (reply or {}).items():
            if key == K_CHANGES:
                self._apply(
                    sink, [change_from_entry(e.identifier, e.field_values) for e in entries]
                )
            else:
                await self._deliver_relayed(sink, entries)

    async def _check_data_lost(self) -> None:
        """After an outage: a Redis that lost its data (or went back in time)
        must not be followed from where we were. Another tracker may already
        have reseeded ``seq`` (so comparing it proves nothing); the origin
        changes with every seeding."""
        origin = await self.connection.call(self.connection.client.get(K_ORIGIN))
        if self.synced and origin != self._origin:
            log.warning("Redis lost the tracker state; resyncing")
            self._need_resync = True
        self._need_check = False

    async def _resync(self, sink: FeedSink) -> None:
        """Reload everything; websockets that followed the old state are restarted."""
        state = await read_state(self.connection, self.mirror.seq, self.ttl_s)
        history = await self.connection.call(
            self.connection.client.xrevrange(
                K_CHANGES, f"{state.seq}-0", "-", count=self.backlog_changes
            )
        )
        changes = [change_from_entry(e.identifier, e.field_values) for e in reversed(history)]
        was_synced = self.synced
        self.mirror.reset(state.seq, state.peers, changes)
        self._origin = state.origin
        self.synced = True
        self._need_resync = False
        if was_synced:
            sink.restart_links()
        self._signal_progress()

    def _apply(self, sink: FeedSink, changes: list[Change]) -> None:
        applied: list[Change] = []
        for change in changes:
            if not self.mirror.apply(change):
                log.warning("gap in the change log at seq %d; resyncing", change.seq)
                self._need_resync = True
                break
            applied.append(change)
        sink.publish(applied)
        if applied:
            self._signal_progress()

    def _signal_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def _deliver_relayed(self, sink: FeedSink, entries: Sequence[StreamEntry]) -> None:
        # What we read leaves the stream and its senders' shares (scripts.py).
        read: list[str | int | float] = [self.connection.instance_id]
        for entry in entries:
            fields = {as_text(k): as_text(v) for k, v in entry.field_values.items()}
            read += [as_text(entry.identifier), fields.get("s", "")]
        if entries:
            await self.connection.call(self.connection.scripts.relay_read(args=read))
        for entry in entries:
            self._relay_last_id = as_text(entry.identifier)
            fields = {as_text(k): as_text(v) for k, v in entry.field_values.items()}
            try:
                message = parse(fields["m"])
            except ProtocolError:
                continue
            await sink.deliver_relayed(fields["t"], message)

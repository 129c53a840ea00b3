"""A body into its part file: in order, never past its size, hashed on the way in.

Past :data:`INLINE_BYTES` the writes and the digest run in two worker threads
beside each other, one batch behind the reader (``hashlib`` and ``write``
release the GIL), so the disk and the SHA-256 cost a download little wall time.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import trio

from flashback.protocol.rate_floor import RateFloor

#: a body up to this size is written on the event loop: a thread hop costs more
INLINE_BYTES: Final = 1024 * 1024


async def write_body(
    chunks: AsyncIterator[bytes],
    file: Any,
    hasher: Any,
    *,
    room: int,
    report: Callable[[int], None],
    too_slow: Callable[[RateFloor], Exception],
) -> None:
    """*chunks* into *file* (and *hasher*, unless None), at most *room* bytes;
    a body slower than the :class:`RateFloor` raises ``too_slow(floor)``."""
    sink = _Sink(file, hasher, threaded=room > INLINE_BYTES)
    async with trio.open_nursery() as nursery:
        if sink.threaded:
            sink.start(nursery)
        failure = await _pump(chunks, sink, room, report, too_slow)
        sink.close()
    if sink.error is not None:
        raise sink.error
    if failure is not None:
        raise failure


async def _pump(
    chunks: AsyncIterator[bytes],
    sink: _Sink,
    room: int,
    report: Callable[[int], None],
    too_slow: Callable[[RateFloor], Exception],
) -> Exception | None:
    """Chunks into *sink*, never past *room* bytes; what went wrong is returned,
    not raised, so that it leaves the sink's nursery as itself."""
    floor = RateFloor()
    try:
        async for chunk in chunks:
            if floor.too_slow(trio.current_time(), len(chunk)):
                raise too_slow(floor)
            over = len(chunk) > room
            if over:  # more than announced: keep what was, drop the connection
                chunk = chunk[:room]
            await sink.put(chunk)
            room -= len(chunk)
            report(len(chunk))
            if over:
                break
        await sink.flush()
    except Exception as exc:  # re-raised by the caller, outside the nursery
        with contextlib.suppress(trio.BrokenResourceError):
            await sink.flush()  # what arrived before the break is kept for a resume
        return exc
    return None


#: each worker thread takes this much per trip
SINK_BATCH_BYTES: Final = 4 * 1024 * 1024


class _Sink:
    """Writes (and hashes) chunks in order: inline for a small body, else in two
    worker threads (:meth:`drain_writes`, :meth:`drain_hashes`), each at most one
    batch behind the reader and running beside the other -- a write and a
    SHA-256 of the same bytes cost about the same, so one thread doing both was
    the slow end of a download. A write error stops the writer and is kept in
    :attr:`error`."""

    def __init__(self, file: Any, hasher: Any, *, threaded: bool) -> None:
        self.threaded = threaded
        self.error: OSError | None = None
        self._file = file
        self._hasher = hasher
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._to_writer, self._writes = trio.open_memory_channel[list[bytes]](1)
        self._to_hasher, self._hashes = trio.open_memory_channel[list[bytes]](1)

    def _write(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self._file.write(chunk)

    def _hash(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self._hasher.update(chunk)

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self.drain_writes)
        if self._hasher is not None:
            nursery.start_soon(self.drain_hashes)

    async def put(self, chunk: bytes) -> None:
        if not self.threaded:
            self._write([chunk])
            if self._hasher is not None:
                self._hash([chunk])
            return
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= SINK_BATCH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._batch:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            await self._to_writer.send(batch)
            if self._hasher is not None:
                await self._to_hasher.send(batch)

    def close(self) -> None:
        """No more batches: the workers finish what they hold and end."""
        self._to_writer.close()
        self._to_hasher.close()

    async def drain_writes(self) -> None:
        async with self._writes:
            async for batch in self._writes:
                try:
                    await trio.to_thread.run_sync(self._write, batch)
                except OSError as exc:
                    self.error = exc
                    return

    async def drain_hashes(self) -> None:
        async with self._hashes:
            async for batch in self._hashes:
                await trio.to_thread.run_sync(self._hash, batch)

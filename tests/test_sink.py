"""A body into its part file: order, the size bound, errors that leave as themselves."""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import pytest
import trio

from flashback.client.sink import INLINE_BYTES, write_body
from flashback.protocol.rate_floor import RateFloor

PIECE = bytes(range(256)) * 1024  # 256 KiB


async def pieces(n: int) -> AsyncGenerator[bytes, None]:
    for i in range(n):
        await trio.lowlevel.checkpoint()
        yield PIECE[i % 256 :] + PIECE[: i % 256]


class Refused(Exception):
    pass


def never_slow(floor: RateFloor) -> Exception:
    return Refused("slow")


@pytest.mark.parametrize("count", [2, 40])  # inline, then by the worker thread
async def test_a_body_is_written_and_hashed_in_order(count: int) -> None:
    expected = b"".join([piece async for piece in pieces(count)])
    assert (len(expected) > INLINE_BYTES) == (count == 40)
    out, hasher = io.BytesIO(), hashlib.sha256()
    seen: list[int] = []
    await write_body(
        pieces(count), out, hasher, room=len(expected), report=seen.append, too_slow=never_slow
    )
    assert out.getvalue() == expected
    assert hasher.hexdigest() == hashlib.sha256(expected).hexdigest()
    assert sum(seen) == len(expected)


async def test_never_more_than_the_room() -> None:
    out = io.BytesIO()
    room = 40 * len(PIECE) - 7
    async with aclosing(pieces(41)) as body:
        await write_body(body, out, None, room=room, report=lambda n: None, too_slow=never_slow)
    assert len(out.getvalue()) == room


class FullDisk(io.RawIOBase):
    def __init__(self, after: int) -> None:
        self.written, self.after = 0, after

    def write(self, data: bytes) -> int:  # type: ignore[override]  # a raw writer's bytes-like
        if self.written + len(data) > self.after:
            raise OSError(28, "No space left on device")
        self.written += len(data)
        return len(data)


async def test_a_write_error_leaves_as_itself_not_in_a_group() -> None:
    with pytest.raises(OSError, match="No space left"):
        await write_body(
            pieces(40),
            FullDisk(after=8 * 1024 * 1024),
            None,
            room=40 * len(PIECE),
            report=lambda n: None,
            too_slow=never_slow,
        )


async def test_a_break_keeps_what_arrived_and_leaves_as_itself() -> None:
    async def breaking() -> AsyncIterator[bytes]:
        async for piece in pieces(10):
            yield piece
        raise Refused("the connection broke")

    out = io.BytesIO()
    with pytest.raises(Refused, match="broke"):
        await write_body(
            breaking(), out, None, room=40 * len(PIECE), report=lambda n: None, too_slow=never_slow
        )
    assert len(out.getvalue()) == 10 * len(PIECE)  # nothing received is lost for a resume

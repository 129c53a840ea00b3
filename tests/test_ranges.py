"""Range parsing against RFC 9110 §14 and its examples."""

from __future__ import annotations

import pytest

from flashback.protocol.ranges import (
    MAX_RANGES,
    ByteRange,
    Unsatisfiable,
    parse_range,
    plan_multipart,
)

SIZE = 10_000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # RFC 9110 §14.1.2 examples, with a 10000-byte representation.
        ("bytes=0-499", (ByteRange(0, 499),)),
        ("bytes=500-999", (ByteRange(500, 999),)),
        ("bytes=-500", (ByteRange(9500, 9999),)),
        ("bytes=9500-", (ByteRange(9500, 9999),)),
        ("bytes=0-0,-1", (ByteRange(0, 0), ByteRange(9999, 9999))),
        (
            "bytes= 0-999, 4500-5499, -1000",
            (ByteRange(0, 999), ByteRange(4500, 5499), ByteRange(9000, 9999)),
        ),
        # end past EOF is clamped, suffix longer than the file is the whole file
        ("bytes=9000-20000", (ByteRange(9000, 9999),)),
        ("bytes=-20000", (ByteRange(0, 9999),)),
        ("BYTES=0-1", (ByteRange(0, 1),)),
        # overlapping and adjacent ranges are coalesced (sorted)
        ("bytes=500-700,601-999", (ByteRange(500, 999),)),
        ("bytes=0-9,10-19", (ByteRange(0, 19),)),
        # an unsatisfiable range among satisfiable ones is dropped
        ("bytes=0-1,20000-30000", (ByteRange(0, 1),)),
    ],
)
def test_satisfiable(header: str, expected: tuple[ByteRange, ...]) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes",
        "bytes=",
        "bytes=abc",
        "bytes=5-1",  # last < first: invalid, ignored
        "bytes=1-2-3",
        "bytes=--5",
        "bytes=+1-2",
        "bytes=0x10-20",
        "bytes=\uff11-2",  # non-ASCII digits
        "items=0-5",
        "bytes=" + ",".join(["0-0"] * (MAX_RANGES + 1)),
    ],
)
def test_ignored(header: str | None) -> None:
    assert parse_range(header, SIZE) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10000-", SIZE),
        ("bytes=20000-30000", SIZE),
        ("bytes=-0", SIZE),
        ("bytes=0-", 0),
        ("bytes=-5", 0),
        ("bytes=99999999999999999999999999-", 100),  # first-pos beyond the end, any length
        ("bytes=" + "9" * 5000 + "-", SIZE),
        ("bytes=" + "9" * 19 + "-" + "9" * 30, SIZE),
    ],
)
def test_unsatisfiable(header: str, size: int) -> None:
    result = parse_range(header, size)
    assert result == Unsatisfiable(size)
    assert isinstance(result, Unsatisfiable)
    assert result.content_range == f"bytes */{size}"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-" + "9" * 5000, (ByteRange(0, SIZE - 1),)),  # last-pos clamps to the end
        ("bytes=5-" + "9" * 30, (ByteRange(5, SIZE - 1),)),
        ("bytes=-" + "9" * 5000, (ByteRange(0, SIZE - 1),)),  # a suffix longer than the file
        ("bytes=" + "0" * 30 + "5-9", (ByteRange(5, 9),)),  # leading zeros are not length
    ],
)
def test_overlong_positions(header: str, expected: tuple[ByteRange, ...]) -> None:
    assert parse_range(header, SIZE) == expected


def test_content_range() -> None:
    assert ByteRange(0, 499).content_range(1234) == "bytes 0-499/1234"
    assert ByteRange(0, 499).length == 500


def test_multipart_plan_length_matches_body() -> None:
    data = bytes(range(256)) * 4
    ranges = (ByteRange(0, 9), ByteRange(100, 199))
    plan = plan_multipart(ranges, len(data), "text/plain", "BOUNDARY")
    body = b"".join(head + data[r.first : r.last + 1] for head, r in plan.parts) + plan.closing
    assert len(body) == plan.content_length
    assert plan.media_type == "multipart/byteranges; boundary=BOUNDARY"
    assert body.startswith(
        b"--BOUNDARY\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-9/1024"
    )
    assert (
        b"\r\n--BOUNDARY\r\nContent-Type: text/plain\r\nContent-Range: bytes 100-199/1024" in body
    )
    assert body.endswith(b"\r\n--BOUNDARY--\r\n")

"""The file planner with plain numbers: no files, no sockets."""

from __future__ import annotations

from typing import Final

import pytest

from flashback.protocol.file_plan import FileFacts, FilePlan, plan_file
from flashback.protocol.ranges import ByteRange

FACTS: Final = FileFacts(name="notes.txt", size=1000, etag='"a-3e8-1-2"', mtime_s=1_700_000_000)
MTIME: Final = "Tue, 14 Nov 2023 22:13:20 GMT"  # = FACTS.mtime_s
EXTRA: Final = (("X-Mine", "yes"),)


def plan(method: str = "GET", boundary: str | None = None, **headers: str) -> FilePlan:
    lower = {k.replace("_", "-"): v for k, v in headers.items()}
    return plan_file(
        method, lower, FACTS, extra=EXTRA, repr_digest="sha-256=:x:", boundary=boundary
    )


def test_whole_file() -> None:
    p = plan()
    assert (p.status, p.pieces, p.file_range) == (200, (ByteRange(0, 999),), ByteRange(0, 999))
    assert p.header("content-length") == "1000" and p.body_length == 1000
    assert p.header("Content-Type") == "text/plain; charset=utf-8"
    assert p.header("ETag") == FACTS.etag and p.header("Last-Modified") == MTIME
    assert p.header("Accept-Ranges") == "bytes" and p.header("X-Mine") == "yes"
    assert p.header("Repr-Digest") == "sha-256=:x:" and p.header("Content-Range") is None
    assert not p.is_error


def test_head_is_the_get_headers_without_pieces() -> None:
    head, get = plan("HEAD"), plan()
    assert head.status == 200 and head.pieces == () and head.headers == get.headers


def test_head_ignores_range() -> None:
    assert plan("HEAD", range="bytes=0-9").headers == plan("HEAD").headers
    assert plan("HEAD", range="bytes=5000-").status == 200


def test_empty_file_has_no_pieces() -> None:
    empty = FileFacts(name="e", size=0, etag='"e"', mtime_s=0)
    p = plan_file("GET", {}, empty)
    assert (p.status, p.pieces, p.header("Content-Length")) == (200, (), "0")
    assert plan_file("GET", {"range": "bytes=0-"}, empty).status == 416


def test_one_range() -> None:
    p = plan(range="bytes=100-199")
    assert (p.status, p.pieces) == (206, (ByteRange(100, 199),))
    assert p.header("Content-Range") == "bytes 100-199/1000"
    assert p.header("Content-Length") == "100"
    assert p.header("Repr-Digest") == "sha-256=:x:"  # of the whole file, on 206 too
    assert plan(range="bytes=-10").pieces == (ByteRange(990, 999),)
    assert plan(range="bytes=990-5000").pieces == (ByteRange(990, 999),)


def test_several_ranges_without_boundary_send_everything() -> None:
    p = plan(range="bytes=0-9,500-509")
    assert (p.status, p.pieces) == (200, (ByteRange(0, 999),))


def test_several_ranges_with_boundary_are_multipart() -> None:
    p = plan(boundary="BND", range="bytes=0-9,500-509")
    assert p.status == 206 and p.header("Content-Type") == "multipart/byteranges; boundary=BND"
    head1 = (
        b"--BND\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Range: bytes 0-9/1000\r\n\r\n"
    )
    head2 = (
        b"\r\n--BND\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Range: bytes 500-509/1000\r\n\r\n"
    )
    closing = b"\r\n--BND--\r\n"
    assert p.pieces == (head1, ByteRange(0, 9), head2, ByteRange(500, 509), closing)
    assert p.header("Content-Length") == str(len(head1) + 10 + len(head2) + 10 + len(closing))
    assert p.file_range is None and p.header("Content-Range") is None
    assert plan("HEAD", boundary="BND", range="bytes=0-9,500-509").status == 200


def test_unsatisfiable_is_416_without_a_body() -> None:
    p = plan(range="bytes=1000-")
    assert (p.status, p.pieces, p.is_error) == (416, (), True)
    assert p.header("Content-Range") == "bytes */1000"
    assert p.header("Content-Type") is None and p.header("X-Mine") is None


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"if_none_match": FACTS.etag}, 304),
        ({"if_none_match": f'"zz", W/{FACTS.etag}'}, 304),
        ({"if_none_match": '"zz"'}, 200),
        ({"if_modified_since": MTIME}, 304),
        ({"if_modified_since": "Tue, 14 Nov 2023 22:13:19 GMT"}, 200),  # a second older
        ({"if_match": '"zz"'}, 412),
        ({"if_match": f"W/{FACTS.etag}"}, 412),
        ({"if_match": "*", "range": "bytes=0-0"}, 206),
        ({"if_unmodified_since": "Tue, 14 Nov 2023 22:13:19 GMT"}, 412),
        ({"if_unmodified_since": MTIME}, 200),
        ({"if_match": '"zz"', "if_none_match": FACTS.etag}, 412),  # If-Match first
        ({"if_none_match": FACTS.etag, "range": "bytes=1000-"}, 304),  # before Range
        ({"if_range": FACTS.etag, "range": "bytes=0-0"}, 206),
        ({"if_range": f"W/{FACTS.etag}", "range": "bytes=0-0"}, 200),
        ({"if_range": MTIME, "range": "bytes=0-0"}, 206),
        ({"if_range": "Tue, 14 Nov 2023 22:13:21 GMT", "range": "bytes=0-0"}, 200),
    ],
)
def test_preconditions_and_if_range(headers: dict[str, str], status: int) -> None:
    p = plan(**headers)
    assert p.status == status
    if status == 304:
        assert p.pieces == () and p.header("Content-Length") is None
        assert p.header("ETag") == FACTS.etag and p.header("X-Mine") == "yes"
        assert p.header("Repr-Digest") is None
    if status == 412:
        assert p.pieces == () and p.is_error and p.header("X-Mine") is None

"""Sans-IO pieces of the streaming ports: lifetime rules, HTTP decisions, file opening."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import cast

import pytest

from flashback.daemon.stream_request import parse_stream_body
from flashback.errors import BadRequest, NotFound
from flashback.protocol.paths import real_root
from flashback.protocol.ranges import ByteRange
from flashback.streaming.lifetime import PortLifetime
from flashback.streaming.responses import FileFacts, Plan, plan_response
from flashback.streaming.source import open_source

TOKEN = "t0k3n-_abc"
FACTS = FileFacts(name="movie.mp4", size=1000, etag='"1-3e8-5"', mtime_s=1_700_000_000)


def plan(method: str = "GET", target: str = f"/{TOKEN}", **headers: str) -> Plan:
    lower = {k.replace("_", "-").lower(): v for k, v in headers.items()}
    return plan_response(method, target, lower, token=TOKEN, facts=FACTS)


def header(p: Plan, name: str) -> str | None:
    return next((v for n, v in p.headers if n.lower() == name.lower()), None)


# -- lifetime ---------------------------------------------------------------------


def test_lifetime_completes_on_one_full_download() -> None:
    life = PortLifetime(100, 60, now=0)
    life.begin()
    assert life.wake_at() == float("inf")  # never expires under a running response
    life.end(5, first=0, sent=100, body=True)
    assert life.completed and life.bytes_sent == 100


def test_lifetime_resume_completes_and_restarts_the_clock() -> None:
    life = PortLifetime(100, 60, now=0)
    life.begin()
    life.end(50, first=0, sent=40, body=True)  # broken at 40 bytes, 50 s in
    assert not life.completed
    assert life.deadline == 110  # the resume window restarts when a response ends
    assert not life.expired(100) and life.expired(110)
    life.begin()
    life.end(70, first=40, sent=60, body=True)
    assert life.completed and life.covered_bytes == 100 and not life.expired(1000)  # type: ignore[unreachable]  # still narrowed by `not life.completed`


def test_lifetime_tail_probe_does_not_complete() -> None:
    life = PortLifetime(100, 60, now=0)
    life.begin()
    life.end(1, first=90, sent=10, body=True)  # a player reading the last bytes
    assert not life.completed and life.covered_bytes == 10
    life.begin()
    life.end(2, first=0, sent=95, body=True)  # overlapping ranges merge
    assert life.completed and life.bytes_sent == 105  # type: ignore[unreachable]  # still narrowed by `not life.completed`


def test_lifetime_resume_from_an_earlier_port_completes_at_the_end() -> None:
    """A copy begun on an older port (If-Range matched) finishes here."""
    life = PortLifetime(100, 60, now=0)
    life.begin()
    life.end(1, first=40, sent=59, body=True, resume=True)
    assert not life.completed  # one byte short
    life.begin()
    life.end(2, first=99, sent=1, body=True, resume=True)
    assert life.completed


def test_lifetime_head_and_416_only_restart_the_clock() -> None:
    life = PortLifetime(100, 10, now=0)
    life.begin()
    life.end(8, body=False)
    assert not life.completed and life.deadline == 18
    assert life.expired(18) and not life.expired(17.9)


def test_lifetime_empty_file_completes_on_a_get() -> None:
    life = PortLifetime(0, 10, now=0)
    assert not life.completed
    life.begin()
    life.end(1, body=True)
    assert life.completed


def test_lifetime_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        PortLifetime(-1, 10, now=0)
    with pytest.raises(RuntimeError):
        PortLifetime(1, 10, now=0).end(0)


# -- HTTP decisions ----------------------------------------------------------------


def test_plan_full_get() -> None:
    p = plan()
    assert p.status == 200 and p.authorized and p.carries_file
    assert p.file_range == ByteRange(0, 999)
    assert header(p, "Content-Length") == "1000"
    assert header(p, "ETag") == FACTS.etag and not cast(str, header(p, "ETag")).startswith("W/")
    assert header(p, "Accept-Ranges") == "bytes"
    assert header(p, "Content-Type") == "video/mp4"
    assert p.reason == b"OK"


def test_plan_head_has_get_headers_and_no_body() -> None:
    p = plan("HEAD")
    assert p.status == 200 and p.file_range is None and not p.carries_file and p.authorized
    assert header(p, "Content-Length") == "1000"


def test_plan_single_range_is_206() -> None:
    p = plan(range="bytes=100-199")
    assert p.status == 206 and p.file_range == ByteRange(100, 199)
    assert header(p, "Content-Range") == "bytes 100-199/1000"
    assert header(p, "Content-Length") == "100"
    assert plan(range="bytes=-10").file_range == ByteRange(990, 999)


def test_plan_multiple_ranges_send_the_whole_file() -> None:
    p = plan(range="bytes=0-9,500-509")
    assert p.status == 200 and p.file_range == ByteRange(0, 999)
    assert plan(range="bytes=0-9,10-19").file_range == ByteRange(0, 19)  # coalesced: one


def test_plan_unsatisfiable_is_416_with_json() -> None:
    p = plan(range="bytes=1000-")
    assert p.status == 416 and p.authorized and not p.carries_file and p.file_range is None
    assert header(p, "Content-Range") == "bytes */1000"
    assert json.loads(p.body)["error"]["code"] == "range_not_satisfiable"


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        ("GET", {"if_none_match": FACTS.etag}, 304),
        ("HEAD", {"if_none_match": f"W/{FACTS.etag}"}, 304),  # weak comparison (RFC 9110)
        ("GET", {"if_none_match": '"other"'}, 200),
        ("GET", {"if_modified_since": "Tue, 14 Nov 2023 22:13:20 GMT"}, 304),  # = mtime
        ("GET", {"if_match": '"other"'}, 412),
        ("GET", {"if_match": FACTS.etag, "range": "bytes=0-9"}, 206),
        ("GET", {"if_unmodified_since": "Mon, 13 Nov 2023 00:00:00 GMT"}, 412),
    ],
)
def test_plan_preconditions_as_on_the_peer_server(
    method: str, headers: dict[str, str], status: int
) -> None:
    p = plan(method, **headers)
    assert p.status == status and p.authorized
    if status == 304:
        assert p.file_range is None and p.body == b"" and not p.carries_file
        assert header(p, "ETag") == FACTS.etag and header(p, "Content-Length") is None
    if status == 412:
        assert json.loads(p.body)["error"]["code"] == "precondition_failed"
        assert p.file_range is None


def test_plan_if_range_mismatch_sends_everything() -> None:
    assert plan(range="bytes=10-", if_range='"old"').status == 200
    assert plan(range="bytes=10-", if_range=FACTS.etag).status == 206


@pytest.mark.parametrize(
    ("method", "target", "status", "code"),
    [
        ("GET", "/", 404, "not_found"),
        ("GET", f"/{TOKEN}/x", 404, "not_found"),
        ("GET", f"//{TOKEN}", 404, "not_found"),
        ("GET", "*", 404, "not_found"),
        ("GET", "/wrong", 403, "forbidden"),
        ("GET", f"/{TOKEN}x", 403, "forbidden"),
        ("POST", "/wrong", 403, "forbidden"),
        ("POST", f"/{TOKEN}", 405, "method_not_allowed"),
        ("DELETE", f"/{TOKEN}", 405, "method_not_allowed"),
    ],
)
def test_plan_errors(method: str, target: str, status: int, code: str) -> None:
    p = plan(method, target)
    assert p.status == status and not p.authorized and p.file_range is None
    assert json.loads(p.body) == {
        "error": {"code": code, "message": json.loads(p.body)["error"]["message"]}
    }
    assert header(p, "Content-Length") == str(len(p.body))
    if status == 405:
        assert header(p, "Allow") == "GET, HEAD"


def test_plan_query_string_is_ignored() -> None:
    assert plan(target=f"/{TOKEN}?download=1").status == 200


def test_plan_head_error_has_no_body() -> None:
    p = plan("HEAD", "/wrong")
    assert p.status == 403 and p.body == b""


# -- opening the file -----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "nope.txt",
        ".secret",
        ".hiddendir/inner.txt",
        "../share_evil/passwd",
        "escape",
        "escape-dir/passwd",
        "docs",
        "",
        "/",
        "docs/../hello.txt",
        "a\x00b",
    ],
)
def test_unservable_paths_are_not_found(share: Path, path: str) -> None:
    with pytest.raises(NotFound):
        open_source(real_root(share), path)


def test_fifo_is_refused_without_hanging(share: Path) -> None:
    os.mkfifo(share / "pipe")
    with pytest.raises(NotFound):
        open_source(real_root(share), "pipe")


def test_open_source_pins_the_file(share: Path) -> None:
    source = open_source(real_root(share), "/docs/readme.md")
    try:
        assert source.path == "docs/readme.md" and source.size == len("# Docs\n")
        assert source.facts.name == "readme.md"
        (share / "docs" / "readme.md").unlink()  # the open descriptor still serves it
        assert os.pread(source.fd, 100, 0) == b"# Docs\n"
    finally:
        source.close()
    assert source.fd == -1
    source.close()  # idempotent


def test_hidden_allowed_when_shown(share: Path) -> None:
    source = open_source(real_root(share), ".secret", show_hidden=True)
    source.close()


def test_parse_stream_body() -> None:
    assert parse_stream_body({"peer": "alice", "path": "a.txt"}) == ("alice", "a.txt")
    bad: object
    for bad in (None, [], {"peer": "alice"}, {"peer": "", "path": "x"}, {"peer": 1, "path": "x"}):
        with pytest.raises(BadRequest):
            parse_stream_body(bad)


@pytest.mark.parametrize(
    "headers",
    [{}, {"if_match": '"other"'}, {"range": "bytes=1000-"}, {"if_none_match": FACTS.etag}],
)
def test_plan_names_each_header_once(headers: dict[str, str]) -> None:
    names = [name.lower() for name, _ in plan(**headers).headers]
    assert len(names) == len(set(names)), names


def test_plan_head_ignores_range() -> None:
    """RFC 9110 §14.2: Range is defined for GET only (the peer server's rule too)."""
    p = plan("HEAD", range="bytes=0-9")
    assert p.status == 200 and header(p, "Content-Length") == "1000"
    assert plan("HEAD", range="bytes=1000-").status == 200

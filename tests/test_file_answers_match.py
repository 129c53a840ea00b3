"""The peer server and a stream port answer the same file request the same way.

Both decide with :func:`flashback.protocol.file_plan.plan_file`; this table
proves it on the wire: a real peer server (Quart on Hypercorn) and a real
stream port (h11 and ``sendfile``) share one file and one digest service,
get the same request, and must agree on the status, the body bytes and
every header in :data:`COMPARED`.

Headers that legitimately differ, and are not compared:

* ``Cache-Control: no-store``: a stream port's token URL must not be cached;
  the peer server leaves caching to the validators;
* ``X-Content-Type-Options: nosniff``: the peer server's, for files it also
  shows inline (a stream port only serves attachments);
* ``Date``, ``Server``, ``Connection``/keep-alive: each server's own framing.

``Content-Disposition`` is compared: the peer server's ``/download/`` route
and a stream port both say ``attachment`` with the same file name.
One documented difference in behaviour: several disjoint ranges are a
``multipart/byteranges`` 206 on the peer server and the whole file (200) on
a stream port, which sends every body with one ``sendfile``
(``test_several_ranges_differ_as_documented``).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Final

import httpx
import pytest
import trio

from flashback.digests import DigestService
from flashback.peer.app import LocalInfo, ShareSettings
from flashback.peer.serve import serve_peer
from flashback.protocol.conditional import http_date, make_etag
from flashback.protocol.messages import FileStreamReady, StreamRequest
from flashback.streaming.manager import StreamManager, StreamSettings
from flashback.web import BoundAddress

TIMEOUT_S: Final = 10
SIZE: Final = 5000
NAME: Final = "clip.bin"
COMPARED: Final = (
    "etag",
    "last-modified",
    "accept-ranges",
    "content-type",
    "content-length",
    "content-range",
    "content-disposition",
    "repr-digest",
)
OLD_DATE: Final = "Mon, 01 Jan 2001 00:00:00 GMT"

#: method, request headers ({etag} and {mtime} are the file's), the status both must answer
CASES: Final = [
    ("GET", {}, 200),
    ("HEAD", {}, 200),
    ("GET", {"range": "bytes=0-99"}, 206),
    ("GET", {"range": "bytes=-10"}, 206),
    ("GET", {"range": "bytes=100-"}, 206),
    ("GET", {"range": "bytes=4990-99999"}, 206),  # an end past EOF is cut to the file
    ("GET", {"range": "bytes=0-9,5-19"}, 206),  # overlapping: coalesced into one
    ("GET", {"range": "bytes=5000-"}, 416),
    ("GET", {"range": "bytes=abc"}, 200),  # invalid: ignored
    ("GET", {"range": "items=0-1"}, 200),  # another unit: ignored
    ("HEAD", {"range": "bytes=0-99"}, 200),  # Range is for GET only
    ("HEAD", {"range": "bytes=5000-"}, 200),
    ("GET", {"if-none-match": "{etag}"}, 304),
    ("HEAD", {"if-none-match": "W/{etag}"}, 304),
    ("GET", {"if-none-match": '"other"'}, 200),
    ("GET", {"if-none-match": "*"}, 304),
    ("GET", {"if-modified-since": "{mtime}"}, 304),
    ("GET", {"if-modified-since": OLD_DATE}, 200),
    ("GET", {"if-modified-since": "not a date"}, 200),
    ("GET", {"if-match": '"other"'}, 412),
    ("HEAD", {"if-match": '"other"'}, 412),
    ("GET", {"if-match": "{etag}", "range": "bytes=0-9"}, 206),
    ("GET", {"if-match": "W/{etag}"}, 412),  # If-Match compares strongly
    ("GET", {"if-unmodified-since": OLD_DATE}, 412),
    ("GET", {"if-unmodified-since": "{mtime}"}, 200),
    ("GET", {"if-range": "{etag}", "range": "bytes=10-19"}, 206),
    ("GET", {"if-range": '"old"', "range": "bytes=10-19"}, 200),
    ("GET", {"if-range": "W/{etag}", "range": "bytes=10-19"}, 200),
    ("GET", {"if-range": "{mtime}", "range": "bytes=10-19"}, 206),
    ("GET", {"if-range": OLD_DATE, "range": "bytes=10-19"}, 200),
    ("GET", {"if-none-match": "{etag}", "range": "bytes=5000-"}, 304),  # 304 before 416
]


class Servers:
    def __init__(self, peer_url: str, stream_url: str, path: Path) -> None:
        self.peer_url = peer_url
        self.stream_url = stream_url
        info = path.stat()
        self.etag = make_etag(info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        self.mtime = http_date(info.st_mtime)

    def fill(self, headers: dict[str, str]) -> dict[str, str]:
        return {
            k: v.replace("{etag}", self.etag).replace("{mtime}", self.mtime)
            for k, v in headers.items()
        }


async def start_both(nursery: trio.Nursery, root: Path) -> Servers:
    path = root / NAME
    path.write_bytes(os.urandom(SIZE))
    digests: DigestService = await nursery.start(DigestService().run)
    settings = ShareSettings(root, show_hidden=False, info=LocalInfo(name="test-peer"))
    address: BoundAddress = await nursery.start(
        partial(serve_peer, settings, "127.0.0.1", 0, digests=digests)
    )
    manager = StreamManager(StreamSettings(root, "127.0.0.1"), lambda event, **f: None, digests)
    _, receive = trio.open_memory_channel[StreamRequest](0)
    await nursery.start(manager.run, receive, lambda answer: None)
    answer = await manager.handle(StreamRequest("req-1", NAME, from_="bob"))
    assert isinstance(answer, FileStreamReady), answer
    stream_url = f"http://127.0.0.1:{answer.port}/{answer.token}"
    return Servers(f"{address.url}/download/{NAME}", stream_url, path)


def compared(response: httpx.Response) -> dict[str, str | None]:
    return {name: response.headers.get(name) for name in COMPARED}


async def both(
    servers: Servers, method: str, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as http:
        filled = servers.fill(headers)
        peer = await http.request(method, servers.peer_url, headers=filled)
        stream = await http.request(method, servers.stream_url, headers=filled)
    return peer, stream


@pytest.mark.parametrize(("method", "headers", "status"), CASES)
async def test_both_servers_answer_alike(
    nursery: trio.Nursery, tmp_path: Path, method: str, headers: dict[str, str], status: int
) -> None:
    with trio.fail_after(TIMEOUT_S):
        servers = await start_both(nursery, tmp_path)
        peer, stream = await both(servers, method, headers)
    assert (peer.status_code, stream.status_code) == (status, status)
    assert compared(peer) == compared(stream)
    assert peer.content == stream.content
    if status in (200, 206):
        assert peer.headers["etag"] == servers.etag
        assert peer.headers["repr-digest"].startswith("sha-256=:")
        if method == "GET":
            assert int(peer.headers["content-length"]) == len(peer.content)
    if status in (412, 416):
        assert peer.headers["content-type"] == "application/json"
        if method == "GET":  # the same bytes on both (above): FlashbackError's envelope
            codes = {412: "precondition_failed", 416: "range_not_satisfiable"}
            assert peer.json()["error"]["code"] == codes[status]
    if status == 304:
        assert peer.content == b"" and "content-length" not in peer.headers


async def test_several_ranges_differ_as_documented(nursery: trio.Nursery, tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        servers = await start_both(nursery, tmp_path)
        peer, stream = await both(servers, "GET", {"range": "bytes=0-9,100-109"})
    data = (tmp_path / NAME).read_bytes()
    assert peer.status_code == 206
    assert peer.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert data[0:10] in peer.content and data[100:110] in peer.content
    assert (stream.status_code, stream.content) == (200, data)
    shared = ("etag", "last-modified", "accept-ranges", "content-disposition", "repr-digest")
    assert {h: peer.headers[h] for h in shared} == {h: stream.headers[h] for h in shared}

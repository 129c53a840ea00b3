"""The peer server's file bodies go by sendfile: byte-exact, counted, and cut cleanly.

The server is the real one (``serve_peer`` on loopback); ``os.sendfile`` is
wrapped to count what it moved, so a regression to the iterated body (bytes
through Python) fails here rather than only in the benchmark.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from flashback.peer.app import LocalInfo, ShareSettings
from flashback.peer.serve import serve_peer
from tests.conftest import BIG_FILE_BYTES

MiB = 1024 * 1024


@pytest.fixture
def sendfile_bytes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every count os.sendfile returned, in order."""
    moved: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        sent = real(out_fd, in_fd, offset, count)
        moved.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counting)
    yield moved


async def test_full_range_and_multipart_bodies_are_exact_and_sent_by_sendfile(
    client: httpx.AsyncClient, share: Path, sendfile_bytes: list[int]
) -> None:
    data = (share / "big.bin").read_bytes()

    whole = await client.get("/download/big.bin")
    assert whole.status_code == 200
    assert whole.content == data
    assert sum(sendfile_bytes) == BIG_FILE_BYTES

    sendfile_bytes.clear()
    part = await client.get("/download/big.bin", headers={"Range": "bytes=1000-2999999"})
    assert part.status_code == 206
    assert part.content == data[1000:3_000_000]
    assert sum(sendfile_bytes) == 3_000_000 - 1000

    sendfile_bytes.clear()
    multi = await client.get("/download/big.bin", headers={"Range": "bytes=0-9,-5"})
    assert multi.status_code == 206
    boundary = re.search(r"boundary=(\S+)", multi.headers["content-type"])
    assert boundary is not None
    parts = multi.content.split(b"--" + boundary.group(1).encode())
    assert parts[1].endswith(b"\r\n\r\n" + data[:10] + b"\r\n")
    assert parts[2].endswith(b"\r\n\r\n" + data[-5:] + b"\r\n")
    assert int(multi.headers["content-length"]) == len(multi.content)
    assert sum(sendfile_bytes) == 15  # the part headers are literal bytes, the data is not

    sendfile_bytes.clear()
    head = await client.head("/download/big.bin")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(BIG_FILE_BYTES)
    assert sendfile_bytes == []

    # keep-alive survives a zero-copy body: h11 framed it and is ready for the next
    again = await client.get("/content/hello.txt")
    assert again.text == "hello, world\n"


async def test_a_file_system_without_sendfile_gets_the_same_bytes_by_copying(
    client: httpx.AsyncClient, share: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused: list[int] = []

    def no_sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        refused.append(count)
        raise OSError(errno.EINVAL, "Invalid argument")  # what some FUSE mounts answer

    monkeypatch.setattr(os, "sendfile", no_sendfile)
    data = (share / "big.bin").read_bytes()
    whole = await client.get("/download/big.bin")
    assert whole.status_code == 200 and whole.content == data
    part = await client.get("/download/big.bin", headers={"Range": "bytes=7-1048583"})
    assert part.status_code == 206 and part.content == data[7:1048584]
    assert len(refused) == 2  # each body asked once, then copied


async def test_a_file_that_shrinks_mid_body_ends_that_connection_only(
    tmp_path: Path, nursery: trio.Nursery, sendfile_bytes: list[int]
) -> None:
    root = tmp_path / "share"
    root.mkdir()
    victim = root / "shrinks.bin"
    victim.write_bytes(os.urandom(64 * MiB))
    settings = ShareSettings(root, show_hidden=False, info=LocalInfo(name="shrinking"))
    address = await nursery.start(partial(serve_peer, settings, "127.0.0.1", 0))

    stream = await trio.open_tcp_stream("127.0.0.1", address.port)
    await stream.send_all(b"GET /download/shrinks.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
    received = bytearray(await stream.receive_some(65536))
    with open(victim, "r+b") as file:  # noqa: ASYNC230 -- a truncate, not a read
        file.truncate(1 * MiB)
    with trio.fail_after(30):
        while chunk := await stream.receive_some(MiB):
            received += chunk
    await stream.aclose()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert b"content-length: %d" % (64 * MiB) in head.lower()
    assert len(body) < 64 * MiB  # cut short and closed, not padded or hung

    async with httpx.AsyncClient(base_url=address.url, timeout=10) as http:
        info = await http.get("/api/info")
    assert info.status_code == 200

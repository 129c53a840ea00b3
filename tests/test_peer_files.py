"""File bodies and listings below the HTTP layer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from flashback.errors import NotFound
from flashback.peer.files import FileBody, file_response
from flashback.peer.listing import ListingPage, decode_cursor, encode_cursor, list_directory
from flashback.protocol.paths import real_root
from flashback.protocol.ranges import ByteRange


async def test_file_body_streams_in_bounded_chunks_and_closes(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    body = FileBody(fd, [b"<", ByteRange(0, 9_999), b">"], chunk_size=4096)
    chunks = []
    async with body as stream:
        async for chunk in stream:
            chunks.append(chunk)
    assert b"".join(chunks) == b"<" + data + b">"
    assert max(len(c) for c in chunks) <= 4096
    with pytest.raises(OSError):
        os.fstat(fd)  # the body closed its descriptor


async def test_file_body_closes_when_client_goes_away(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100_000)
    fd = os.open(path, os.O_RDONLY)
    body = FileBody(fd, [ByteRange(0, 99_999)], chunk_size=1000)
    async with body as stream:
        async for _ in stream:
            break
    with pytest.raises(OSError):
        os.fstat(fd)


def test_file_response_has_no_response_timeout(tmp_path: Path) -> None:
    """Quart's RESPONSE_TIMEOUT (60 s) would cut a slow multi-GB download."""
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    response = file_response(real_root(tmp_path), "f", method="GET", headers={}, attachment=True)
    assert response.timeout is None
    assert isinstance(response.response, FileBody)
    response.response.close()


def test_file_response_refuses_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(NotFound):
        file_response(real_root(tmp_path), "pipe", method="GET", headers={}, attachment=False)


def test_listing_skips_what_would_be_refused(tmp_path: Path) -> None:
    root = real_root(tmp_path)
    (root / "ok.txt").write_text("ok")
    os.mkfifo(root / "pipe")
    (root / ".hidden").write_text("h")
    (root / "dangling").symlink_to(root / "nowhere")
    os.close(os.open(os.fsencode(root) + b"/bad-\xff", os.O_CREAT | os.O_WRONLY, 0o600))
    (root / "back\\slash.txt").write_text("b")
    (root / "c:evil.txt").write_text("c")
    page = _list(root)
    assert [e["name"] for e in page.entries] == ["ok.txt"]


def test_listing_pages_skip_refused_entries(tmp_path: Path) -> None:
    root = real_root(tmp_path)
    for name in ("a", "b", "c", "d"):
        (root / name).write_text(name)
    (root / "bb").symlink_to("/etc/passwd")
    first = _list(root, limit=2)
    assert [e["name"] for e in first.entries] == ["a", "b"]
    assert first.next_cursor is not None
    second = _list(root, limit=2, after=decode_cursor(first.next_cursor))
    assert [e["name"] for e in second.entries] == ["c", "d"]
    assert second.next_cursor is None


def _list(root: Path, **kwargs: Any) -> ListingPage:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return list_directory(root, (), fd, **kwargs)
    finally:
        os.close(fd)


def test_cursor_round_trip() -> None:
    for name in ("a", "résumé", "with space", "x" * 300):
        assert decode_cursor(encode_cursor(name)) == name

"""Resumable downloads (``get``/``stream``) against a real peer server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from flashback import transfer
from flashback.client.local import check_output, part_paths
from flashback.errors import ConfigError
from flashback.protocol.rate_floor import RateFloor
from flashback.transfer import TransferFailed, download


def events_into(log: list[tuple[str, dict[str, Any]]]) -> Any:
    return lambda event, fields: log.append((event, fields))


async def test_fresh_download(peer_url: str, share: Path, tmp_path: Path) -> None:
    out = tmp_path / "big.bin"
    async with httpx.AsyncClient() as http:
        result = await download(http, f"{peer_url}/download/big.bin", out)
    data = (share / "big.bin").read_bytes()
    assert out.read_bytes() == data
    assert result.sha256 == hashlib.sha256(data).hexdigest() and result.resumed_from == 0
    assert not any(p.exists() for p in part_paths(out))


async def test_a_fresh_download_is_hashed_on_the_way_in(
    peer_url: str, share: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However big, a file fetched whole from byte 0 is verified by the hash of what
    came in: reading it back from disk afterwards only added time to every get."""
    data = os.urandom(3 * 1024 * 1024)  # above the size hashed on the event loop
    (share / "large.bin").write_bytes(data)

    async def no_read_back(*_args: object) -> str:
        raise AssertionError("the part was read back to hash it")

    monkeypatch.setattr(transfer, "sha256_of", no_read_back)
    out = tmp_path / "large.bin"
    async with httpx.AsyncClient() as http:
        result = await download(http, f"{peer_url}/download/large.bin", out)
    assert out.read_bytes() == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()


async def test_resume_asks_only_for_the_rest(peer_url: str, share: Path, tmp_path: Path) -> None:
    url = f"{peer_url}/download/big.bin"
    data = (share / "big.bin").read_bytes()
    async with httpx.AsyncClient() as http:
        etag = (await http.head(url)).headers["etag"]
        out = tmp_path / "big.bin"
        part, meta = part_paths(out)
        part.write_bytes(data[:1000])
        meta.write_text(json.dumps({"key": url, "etag": etag}))
        log: list[tuple[str, dict[str, Any]]] = []
        result = await download(http, url, out, on_event=events_into(log))
    assert log[0] == ("download-started", {"url": url, "offset": 1000, "size": len(data)})
    assert result.resumed_from == 1000 and out.read_bytes() == data


async def test_changed_file_is_fetched_whole(peer_url: str, share: Path, tmp_path: Path) -> None:
    url = f"{peer_url}/download/hello.txt"
    out = tmp_path / "hello.txt"
    part, meta = part_paths(out)
    part.write_bytes(b"HELLO")  # from an older version of the file
    meta.write_text(json.dumps({"key": url, "etag": '"an-old-version"'}))
    async with httpx.AsyncClient() as http:
        result = await download(http, url, out)
    assert result.resumed_from == 0 and out.read_bytes() == b"hello, world\n"


async def test_part_longer_than_the_file_starts_over(
    peer_url: str, share: Path, tmp_path: Path
) -> None:
    url = f"{peer_url}/download/hello.txt"
    async with httpx.AsyncClient() as http:
        etag = (await http.head(url)).headers["etag"]
        out = tmp_path / "hello.txt"
        part, meta = part_paths(out)
        part.write_bytes(b"x" * 100)
        meta.write_text(json.dumps({"key": url, "etag": etag}))
        await download(http, url, out)
    assert out.read_bytes() == b"hello, world\n"


@pytest.mark.parametrize("etag", ['"\u00e9"', "no-quotes", 5, None])
async def test_odd_saved_validator_means_no_resume(
    peer_url: str, tmp_path: Path, etag: Any
) -> None:
    url = f"{peer_url}/download/hello.txt"
    out = tmp_path / "hello.txt"
    part, meta = part_paths(out)
    part.write_bytes(b"hel")
    meta.write_text(json.dumps({"key": url, "etag": etag}))
    async with httpx.AsyncClient() as http:
        result = await download(http, url, out)
    assert result.resumed_from == 0 and out.read_bytes() == b"hello, world\n"


async def test_missing_file_is_a_transfer_failure(peer_url: str, tmp_path: Path) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(TransferFailed, match="not found"):
            await download(http, f"{peer_url}/download/nope", tmp_path / "nope")


def test_output_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        check_output(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        check_output(tmp_path / "missing" / "x")
    check_output(tmp_path / "fine.bin")
    assert not (tmp_path / "missing").exists()


DOWNLOAD_SCRIPT = """
import sys, httpx, trio
from pathlib import Path
from flashback.transfer import download
async def main():
    async with httpx.AsyncClient() as http:
        await download(http, sys.argv[1], Path(sys.argv[2]), label="fetch")
trio.run(main)
"""


async def test_progress_bar_only_on_a_terminal(peer_url: str, tmp_path: Path) -> None:
    import fcntl
    import os
    import pty
    import select
    import struct
    import sys
    import termios

    import trio

    url = f"{peer_url}/download/hello.txt"
    master, slave = pty.openpty()
    # a real terminal has a size; tqdm draws nothing on a 0-column one
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        await trio.run_process(
            [sys.executable, "-c", DOWNLOAD_SCRIPT, url, str(tmp_path / "a")], stderr=slave
        )
        readable, _, _ = select.select([master], [], [], 5)  # never block the test
        drawn = os.read(master, 65536).decode(errors="replace") if readable else ""
    finally:
        os.close(slave)
        os.close(master)
    assert "fetch:" in drawn and "B/s" in drawn  # tqdm's bar: label, rate

    plain = await trio.run_process(
        [sys.executable, "-c", DOWNLOAD_SCRIPT, url, str(tmp_path / "b")], capture_stderr=True
    )
    assert plain.stderr == b""
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == b"hello, world\n"


def test_the_rate_floor_gives_up_on_a_body_that_barely_moves() -> None:
    floor = RateFloor(min_bytes=1000, window_s=60.0)
    assert not floor.too_slow(100.0, 10)  # the first bytes start the window, at any time
    assert not floor.too_slow(159.0, 10)  # still inside it
    assert floor.too_slow(160.0, 10)  # a whole minute brought 30 bytes
    fast = RateFloor(min_bytes=1000, window_s=60.0)
    for second in range(0, 600, 20):
        assert not fast.too_slow(float(second), 500)  # 1,500 bytes a window: fine


# Leaving a body early leaves httpcore's inner async generators to the GC, which
# trio reports as a ResourceWarning (as in test_folder and test_ui_http).
@pytest.mark.filterwarnings(
    r"ignore:Async generator 'http(x|core)\._.*' was garbage collected:ResourceWarning"
)
async def test_a_peer_that_drips_a_byte_per_read_timeout_is_given_up(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def drip(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        head = b'HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nETag: "d"\r\n\r\n'
        await stream.send_all(head)
        for _ in range(100_000):
            await stream.send_all(b"x")
            await trio.sleep(25)  # just inside httpx's 30 s read timeout, forever

    listeners = await nursery.start(partial(trio.serve_tcp, drip, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    out = tmp_path / "drip.bin"
    async with httpx.AsyncClient(timeout=30) as http:
        with trio.fail_after(3600), pytest.raises(TransferFailed, match="KiB in 60 s"):
            await download(http, f"http://127.0.0.1:{port}/download/drip.bin", out)
    assert not out.exists()
    assert part_paths(out)[0].stat().st_size < 10  # kept, to resume from


async def serve_scripted(nursery: trio.Nursery, answer: Any) -> int:
    """A raw HTTP/1.1 server: ``answer(request_head, stream)`` writes each response
    however slowly it likes; one request per connection."""

    async def handle(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(65536)
            if not data:
                return
            head += data
        with contextlib.suppress(trio.BrokenResourceError):  # the client gave up: as wanted
            await answer(head, stream)

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


@pytest.mark.filterwarnings(
    r"ignore:Async generator 'http(x|core)\._.*' was garbage collected:ResourceWarning"
)
async def test_a_peer_that_drips_its_response_head_is_given_up(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A byte of the status line every 25 s: each read is inside httpx's 30 s timeout,
    the whole head never is."""

    async def drip_head(_request: bytes, stream: trio.SocketStream) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n" * 1000:
            await stream.send_all(bytes([byte]))
            await trio.sleep(25)

    port = await serve_scripted(nursery, drip_head)
    out = tmp_path / "head.bin"
    async with httpx.AsyncClient(timeout=30) as http:
        with trio.fail_after(3600), pytest.raises(TransferFailed, match="response head"):
            await download(http, f"http://127.0.0.1:{port}/download/f", out)
    assert trio.current_time() < 600  # given up at the head deadline, not by fail_after
    assert not out.exists()


@pytest.mark.filterwarnings(
    r"ignore:Async generator 'http(x|core)\._.*' was garbage collected:ResourceWarning"
)
async def test_a_peer_that_drips_a_repair_range_is_given_up(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The body comes whole but with one bad byte; the range that would repair it
    comes a byte per 25 s: the floor ends it as it ends the main body."""
    import base64

    block = 4096
    data = bytes(range(256)) * 32  # two blocks
    bad = bytearray(data)
    bad[5000] ^= 0xFF
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"
    manifest = json.dumps(
        {
            "path": "f",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "block_size": block,
            "blocks": [hashlib.sha256(data[i : i + block]).hexdigest() for i in (0, block)],
        }
    ).encode()

    def head(status: str, length: int, *extra: str) -> bytes:
        lines = [f"HTTP/1.1 {status}", f"Content-Length: {length}", 'ETag: "v1"',
                 f"Repr-Digest: {digest}", "Connection: close", *extra]  # fmt: skip
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def answer(request: bytes, stream: trio.SocketStream) -> None:
        target = request.split(b" ", 2)[1]
        if target.startswith(b"/api/digest/"):
            await stream.send_all(head("200 OK", len(manifest)) + manifest)
        elif b"\r\nrange:" in request.lower():
            await stream.send_all(
                head("206 Partial Content", block, f"Content-Range: bytes {block}-8191/8192")
            )
            for _ in range(block):
                await stream.send_all(b"x")
                await trio.sleep(25)
        else:
            await stream.send_all(head("200 OK", len(data)) + bytes(bad))

    port = await serve_scripted(nursery, answer)
    base = f"http://127.0.0.1:{port}"
    out = tmp_path / "f.bin"
    async with httpx.AsyncClient(timeout=30) as http:
        with trio.fail_after(3600), pytest.raises(TransferFailed, match="to repair at under"):
            await download(http, f"{base}/download/f", out, manifest_url=f"{base}/api/digest/f")
    assert not out.exists()

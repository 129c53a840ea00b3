"""INTERFACE §7: Repr-Digest, /api/digest, the digest cache, verified and repaired downloads.

Real servers on loopback: the peer server (with a small block size so files
stay small), a byte-counting TCP proxy in front of it, and an evil h11
server that sends bytes matching no digest, or more than it announced.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import h11
import httpx
import pytest
import trio

from flashback.client.local import part_paths
from flashback.digests import DigestCache, DigestService
from flashback.peer.app import LocalInfo, ShareSettings
from flashback.peer.serve import serve_peer
from flashback.protocol.digest import (
    MIB,
    block_size_for,
    hash_fd,
    parse_manifest,
    parse_repr_digest,
    repr_digest_header,
)
from flashback.protocol.messages import StreamRequest
from flashback.streaming.manager import StreamManager, StreamSettings
from flashback.transfer import TransferFailed, download

BLOCK = 4096  # the servers' minimum block size in these tests (1 MiB in production)


def sf_digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


async def start_server(
    nursery: trio.Nursery, root: Path, digests: DigestService | None = None
) -> tuple[str, DigestService]:
    if digests is None:
        digests = await nursery.start(DigestService(min_block=BLOCK).run)
    settings = ShareSettings(root, info=LocalInfo(name="owner"))
    address = await nursery.start(partial(serve_peer, settings, "127.0.0.1", 0, digests=digests))
    return address.url, digests


# -- pure -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 17])
def test_manifest_against_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        manifest = hash_fd(fd, size, min_block=BLOCK, read_bytes=1000)
    finally:
        os.close(fd)
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.block_size == BLOCK
    expected = [hashlib.sha256(data[i : i + BLOCK]).hexdigest() for i in range(0, size, BLOCK)]
    assert list(manifest.blocks) == expected


def test_block_size_keeps_at_most_4096_blocks() -> None:
    assert block_size_for(0) == MIB
    assert block_size_for(4096 * MIB) == MIB
    assert block_size_for(4096 * MIB + 1) == 2 * MIB
    assert block_size_for(100 * 1024 * MIB) == 32 * MIB


def test_repr_digest_round_trip_and_hostile_values() -> None:
    hex_digest = hashlib.sha256(b"x").hexdigest()
    header = repr_digest_header(hex_digest)
    assert header == sf_digest(b"x")
    assert parse_repr_digest(header) == hex_digest
    assert parse_repr_digest(f"md5=:eA==:, {header}") == hex_digest
    for bad in [None, "", "sha-256=abc", "sha-256=:eA==:", "sha-256=:!!:", "x" * 5000, "é"]:
        assert parse_repr_digest(bad) is None


def test_manifest_from_a_peer_is_checked() -> None:
    good = {"size": 5, "sha256": "0" * 64, "block_size": 4096, "blocks": ["1" * 64]}
    assert parse_manifest(good, size=5).blocks == ("1" * 64,)
    for bad in [
        [],
        good | {"size": 6},
        good | {"block_size": 3000},
        good | {"blocks": []},
        good | {"blocks": ["zz"]},
        good | {"sha256": None},
    ]:
        with pytest.raises(ValueError):
            parse_manifest(bad, size=5)


# -- the peer server ----------------------------------------------------------


async def test_file_routes_carry_the_whole_digest(nursery: trio.Nursery, tmp_path: Path) -> None:
    data = os.urandom(3 * BLOCK + 17)
    (tmp_path / "f.bin").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    url, _ = await start_server(nursery, tmp_path)
    async with httpx.AsyncClient(base_url=url) as http:
        for route in ("content", "download"):
            got = await http.get(f"/{route}/f.bin")
            assert got.headers["repr-digest"] == sf_digest(data)
            head = await http.head(f"/{route}/f.bin")
            assert head.headers["repr-digest"] == sf_digest(data)
        part = await http.get("/download/f.bin", headers={"Range": "bytes=10-20"})
        assert part.status_code == 206 and part.content == data[10:21]
        assert part.headers["repr-digest"] == sf_digest(data)  # the whole file's
        assert (await http.get("/content/empty")).headers["repr-digest"] == sf_digest(b"")
        manifest = (await http.get("/api/digest/f.bin")).json()
    assert manifest == {
        "path": "f.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "block_size": BLOCK,
        "blocks": [
            hashlib.sha256(data[i : i + BLOCK]).hexdigest() for i in range(0, 4 * BLOCK, BLOCK)
        ],
    }


async def test_digest_route_follows_the_path_rules(client: httpx.AsyncClient) -> None:
    for path in [
        "/api/digest/.secret",
        "/api/digest/escape",
        "/api/digest/docs",
        "/api/digest/nope",
    ]:
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    ok = await client.get("/api/digest/hello.txt")
    assert ok.json()["sha256"] == hashlib.sha256(b"hello, world\n").hexdigest()


async def test_concurrent_first_requests_hash_once(nursery: trio.Nursery, tmp_path: Path) -> None:
    data = os.urandom(10 * BLOCK)
    (tmp_path / "f.bin").write_bytes(data)
    url, digests = await start_server(nursery, tmp_path)
    seen: list[str] = []
    async with httpx.AsyncClient(base_url=url) as http:

        async def fetch() -> None:
            seen.append((await http.get("/download/f.bin")).headers["repr-digest"])

        async with trio.open_nursery() as group:
            for _ in range(6):
                group.start_soon(fetch)
    assert seen == [sf_digest(data)] * 6
    assert digests.passes == 1


async def test_big_file_does_not_wait_and_gets_its_digest_later(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    data = os.urandom(8 * BLOCK)
    (tmp_path / "f.bin").write_bytes(data)
    # Files over 2 blocks count as "large" here (64 MiB in production).
    digests = await nursery.start(DigestService(min_block=BLOCK, wait_limit_bytes=2 * BLOCK).run)
    url, _ = await start_server(nursery, tmp_path, digests)
    async with httpx.AsyncClient(base_url=url) as http:
        first = await http.get("/download/f.bin")
        assert first.content == data and "repr-digest" not in first.headers
        assert digests.passes == 1  # but hashing started with the first request
        manifest = (await http.get("/api/digest/f.bin")).json()  # waits for it
        assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
        later = await http.head("/download/f.bin")
    assert later.headers["repr-digest"] == sf_digest(data)
    assert digests.passes == 1


async def test_cache_invalidates_on_change_and_survives_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    target = root / "f.bin"
    target.write_bytes(b"a" * 5000)
    db = tmp_path / "digests.sqlite3"

    async def digest_of(expect_passes: int) -> str:
        async with trio.open_nursery() as nursery:
            digests = await nursery.start(DigestService(DigestCache(db), min_block=BLOCK).run)
            url, _ = await start_server(nursery, root, digests)
            async with httpx.AsyncClient(base_url=url) as http:
                header = (await http.head("/download/f.bin")).headers["repr-digest"]
                header2 = (await http.get("/download/f.bin")).headers["repr-digest"]
            assert header == header2 and digests.passes == expect_passes
            nursery.cancel_scope.cancel()
        return header

    assert await digest_of(1) == sf_digest(b"a" * 5000)
    assert await digest_of(0) == sf_digest(b"a" * 5000)  # a new server: from the cache
    info = target.stat()
    target.write_bytes(b"b" * 5000)  # same size, same inode...
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))  # ...new mtime
    assert await digest_of(1) == sf_digest(b"b" * 5000)


async def test_stream_port_carries_the_digest(nursery: trio.Nursery, tmp_path: Path) -> None:
    data = os.urandom(2 * BLOCK + 5)
    (tmp_path / "f.bin").write_bytes(data)
    digests = await nursery.start(DigestService(min_block=BLOCK).run)
    manager = StreamManager(StreamSettings(tmp_path, "127.0.0.1"), lambda *a, **k: None, digests)
    _, receive = trio.open_memory_channel[StreamRequest](0)
    await nursery.start(manager.run, receive, lambda answer: None)
    ready = await manager.handle(StreamRequest("r1", "f.bin", from_="bob"))
    url = f"http://127.0.0.1:{ready.port}/{ready.token}"  # type: ignore[union-attr]  # handle answered a StreamReady
    async with httpx.AsyncClient() as http:
        head = await http.head(url)
        ranged = await http.get(url, headers={"Range": "bytes=0-9"})
        stranger = await http.head(f"http://127.0.0.1:{ready.port}/wrong")  # type: ignore[union-attr]  # handle answered a StreamReady
    assert head.headers["repr-digest"] == sf_digest(data)
    assert ranged.status_code == 206 and ranged.headers["repr-digest"] == sf_digest(data)
    assert stranger.status_code == 403 and "repr-digest" not in stranger.headers


# -- helpers: a counting proxy and an evil server -----------------------------


class Proxy:
    """TCP proxy to *upstream*; counts bytes sent down; may cut after *cut_after*."""

    def __init__(self, upstream_port: int, cut_after: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.down_bytes = 0
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client, await trio.open_tcp_stream("127.0.0.1", self.upstream_port) as up:

            async def copy(src: trio.SocketStream, dst: trio.SocketStream, down: bool) -> None:
                while data := await src.receive_some(65536):
                    if down and self.cut_after is not None:
                        data = data[: max(0, self.cut_after - self.down_bytes)]
                        if not data:
                            group.cancel_scope.cancel()
                            return
                    if down:
                        self.down_bytes += len(data)
                    await dst.send_all(data)
                group.cancel_scope.cancel()

            try:
                async with trio.open_nursery() as group:
                    group.start_soon(copy, client, up, False)
                    group.start_soon(copy, up, client, True)
            except (trio.BrokenResourceError, OSError):
                pass


Handler = Callable[[h11.Request], Awaitable[tuple[int, list[tuple[str, str]], Any]]]


async def evil_server(
    handler: Handler, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """h11 server; *handler* returns (status, headers, body bytes or an async iterator)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def serve(stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            async with stream:
                while True:
                    event = conn.next_event()
                    while event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        event = conn.next_event()
                    if not isinstance(event, h11.Request):
                        return
                    while not isinstance(conn.next_event(), h11.EndOfMessage):
                        pass
                    status, headers, body = await handler(event)
                    await stream.send_all(
                        conn.send(h11.Response(status_code=status, headers=headers))
                    )
                    if isinstance(body, bytes):
                        await stream.send_all(conn.send(h11.Data(data=body)))
                    else:
                        async for piece in body:
                            await stream.send_all(conn.send(h11.Data(data=piece)))
                    await stream.send_all(conn.send(h11.EndOfMessage()))
                    conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.ProtocolError, OSError):
            pass

    await trio.serve_listeners(serve, listeners)


# -- verified downloads ---------------------------------------------------------


async def test_corrupted_part_is_repaired_fetching_only_bad_blocks(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    root = tmp_path / "share"
    root.mkdir()
    data = os.urandom(16 * BLOCK)
    (root / "f.bin").write_bytes(data)
    url, _ = await start_server(nursery, root)
    port = httpx.URL(url).port
    assert port is not None
    proxy = await nursery.start(Proxy(port).run)
    base = f"http://127.0.0.1:{proxy.port}"
    async with httpx.AsyncClient() as http:
        etag = (await http.head(f"{url}/download/f.bin")).headers["etag"]
        out = tmp_path / "out.bin"
        part, meta = part_paths(out)
        damaged = bytearray(data[: 8 * BLOCK])
        damaged[3 * BLOCK + 7] ^= 0xFF  # one bad byte in block 3
        part.write_bytes(bytes(damaged))
        meta.write_text(json.dumps({"key": "owner/f.bin", "etag": etag}))
        result = await download(
            http,
            f"{base}/download/f.bin",
            out,
            resume_key="owner/f.bin",
            manifest_url=f"{base}/api/digest/f.bin",
        )
    assert out.read_bytes() == data and not part.exists()
    assert result.resumed_from == 8 * BLOCK
    assert result.repaired_blocks == 1 and result.repair_bytes == BLOCK
    # the rest (8 blocks) + one block + the manifest and headers; never the whole file again
    assert 9 * BLOCK < proxy.down_bytes < 9 * BLOCK + 8000


async def test_owner_whose_bytes_never_match_fails_and_writes_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    right = os.urandom(16 * BLOCK)
    requests: list[str] = []

    async def handler(request: h11.Request) -> tuple[int, list[tuple[str, str]], Any]:
        target = request.target.decode()
        requests.append(target)
        if target.startswith("/api/digest/"):
            fd = os.open(tmp_path / "right", os.O_RDONLY)
            manifest = hash_fd(fd, len(right), min_block=BLOCK)
            os.close(fd)
            body = json.dumps(manifest.to_json("f.bin")).encode()
            return 200, [("Content-Length", str(len(body)))], body
        headers = [("ETag", '"v1"'), ("Repr-Digest", sf_digest(right))]
        rng = dict(request.headers).get(b"range")
        if rng:
            first, last = (int(x) for x in rng.decode().removeprefix("bytes=").split("-"))
            body = b"\0" * (last + 1 - first)
            headers += [("Content-Range", f"bytes {first}-{last}/{len(right)}")]
            return 206, [*headers, ("Content-Length", str(len(body)))], body
        return 200, [*headers, ("Content-Length", str(len(right)))], b"\0" * len(right)

    (tmp_path / "right").write_bytes(right)
    port = await nursery.start(evil_server, handler)
    out = tmp_path / "out.bin"
    async with httpx.AsyncClient() as http:
        with pytest.raises(TransferFailed, match="do not match its own digest"):
            await download(
                http,
                f"http://127.0.0.1:{port}/download/f.bin",
                out,
                manifest_url=f"http://127.0.0.1:{port}/api/digest/f.bin",
            )
    assert not out.exists() and not any(p.exists() for p in part_paths(out))
    assert requests == ["/download/f.bin", "/api/digest/f.bin", "/download/f.bin"]


# Leaving an httpx body early (which is the point) orphans httpx's nested
# async generators; trio reports them as a ResourceWarning when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_never_writes_more_than_announced(nursery: trio.Nursery, tmp_path: Path) -> None:
    sent = [0]

    async def endless() -> Any:
        while True:
            sent[0] += 65536
            yield b"A" * 65536

    async def handler(request: h11.Request) -> tuple[int, list[tuple[str, str]], Any]:
        # No Content-Length: chunked, and it never ends.
        return 200, [("ETag", '"v1"'), ("Repr-Digest", sf_digest(b"A" * 13))], endless()

    port = await nursery.start(evil_server, handler)
    url = f"http://127.0.0.1:{port}/x"
    async with httpx.AsyncClient() as http:
        # A stream port announced 13 bytes: 13 are written, then the connection is dropped.
        result = await download(http, url, tmp_path / "a", expected_size=13)
        assert (tmp_path / "a").read_bytes() == b"A" * 13 and result.sha256 == hashlib.sha256(
            b"A" * 13
        ).hexdigest()
        # No announced size at all: refused, nothing written.
        with pytest.raises(TransferFailed, match="did not say how big"):
            await download(http, url, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert sent[0] < 64 * MIB  # the server was cut off, not drained


async def test_resume_survives_the_owner_moving_to_another_port(
    nursery: trio.Nursery, share: Path, tmp_path: Path
) -> None:
    data = (share / "big.bin").read_bytes()
    first_url, digests = await start_server(nursery, share)
    proxy = await nursery.start(
        Proxy(cast(int, httpx.URL(first_url).port), cut_after=1_000_000).run
    )
    out = tmp_path / "big.bin"
    key = json.dumps(["flashback-file", "owner-id", "big.bin"])
    async with httpx.AsyncClient() as http:
        with pytest.raises(TransferFailed, match="is kept"):
            await download(
                http, f"http://127.0.0.1:{proxy.port}/download/big.bin", out, resume_key=key
            )
        kept = part_paths(out)[0].stat().st_size
        assert 0 < kept < len(data)
        # The owner restarts on a new port (same files, same validators).
        second_url, _ = await start_server(nursery, share, digests)
        assert second_url != first_url
        result = await download(
            http,
            f"{second_url}/download/big.bin",
            out,
            resume_key=key,
            manifest_url=f"{second_url}/api/digest/big.bin",
        )
    assert result.resumed_from == kept and out.read_bytes() == data


async def test_shutdown_stops_a_hash_and_releases_waiters(tmp_path: Path) -> None:
    (tmp_path / "f.bin").write_bytes(os.urandom(64 * BLOCK))
    outcome: list[str] = []
    fd = os.open(tmp_path / "f.bin", os.O_RDONLY)
    try:
        info = os.fstat(fd)
        with trio.fail_after(30):  # a hang guard, not a timing assertion
            async with trio.open_nursery() as nursery:
                # One 1-byte read per thread hop: the hash is far from done when we cancel.
                service = DigestService(min_block=BLOCK, read_bytes=1)
                service_scope = trio.CancelScope()

                async def run_service(task_status: trio.TaskStatus[DigestService]) -> None:
                    with service_scope:
                        await service.run(task_status=task_status)

                await nursery.start(run_service)

                async def waiter() -> None:
                    try:
                        await service.wait(fd, info)
                        outcome.append("digest")
                    except Exception as exc:
                        outcome.append(type(exc).__name__)

                nursery.start_soon(waiter)
                while not service.passes:  # noqa: ASYNC110 -- the lookup runs in a thread
                    await trio.sleep(0.01)
                service_scope.cancel()
        # After shutdown nothing new starts, and nothing hangs.
        assert await service.for_response(fd, info) is None
    finally:
        os.close(fd)
    assert outcome == ["DigestUnavailable"]


async def test_a_damaged_cache_file_is_only_lost_speed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    db = tmp_path / "digests.sqlite3"
    db.write_bytes(b"this is not a database" * 100)
    root = tmp_path / "share"
    root.mkdir()
    (root / "f").write_bytes(b"data")
    digests = await nursery.start(DigestService(DigestCache(db), min_block=BLOCK).run)
    url, _ = await start_server(nursery, root, digests)
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/content/f")).headers["repr-digest"] == sf_digest(b"data")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # as above
async def test_an_endless_manifest_is_refused(nursery: trio.Nursery, tmp_path: Path) -> None:
    async def endless() -> Any:
        yield b'{"blocks": ["'
        while True:
            yield b"0" * 65536

    async def handler(request: h11.Request) -> tuple[int, list[tuple[str, str]], Any]:
        if request.target.startswith(b"/api/digest/"):
            return 200, [], endless()
        return 200, [("Content-Length", "5")], b"hello"  # no Repr-Digest: the manifest decides

    port = await nursery.start(evil_server, handler)
    out = tmp_path / "out"
    async with httpx.AsyncClient() as http:
        with pytest.raises(TransferFailed, match="too large"):
            await download(
                http,
                f"http://127.0.0.1:{port}/download/f",
                out,
                manifest_url=f"http://127.0.0.1:{port}/api/digest/f",
            )
    assert not out.exists()


async def test_hashing_many_files_at_once_is_bounded(nursery: trio.Nursery, tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(os.urandom(64 * BLOCK))
    # One file in flight at most, hashed 1 byte per thread hop: "a" is still
    # hashing while "b" is asked for.
    digests = await nursery.start(
        DigestService(min_block=BLOCK, wait_limit_bytes=BLOCK, read_bytes=1, max_inflight=1).run
    )
    url, _ = await start_server(nursery, tmp_path, digests)
    async with httpx.AsyncClient(base_url=url) as http:
        assert "repr-digest" not in (await http.head("/download/a")).headers
        assert digests.passes == 1
        assert "repr-digest" not in (await http.head("/download/b")).headers
        busy = await http.get("/api/digest/b")
        assert digests.passes == 1  # "b" was not started
    assert busy.status_code == 503
    assert busy.json()["error"]["code"] == "digest_unavailable"


async def test_an_edit_with_its_mtime_put_back_is_a_new_version(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Same size, same inode, mtime restored (``touch -r``): only the ctime moved. The
    digest and the ETag follow it, so the file still downloads, verified."""
    root = tmp_path / "share"
    root.mkdir()
    target = root / "f.bin"
    old, new = os.urandom(3 * BLOCK), os.urandom(3 * BLOCK)
    target.write_bytes(old)
    url, _ = await start_server(nursery, root)
    async with httpx.AsyncClient(base_url=url) as http:
        first = await http.get("/download/f.bin")
        assert first.headers["repr-digest"] == sf_digest(old)
        before = target.stat()
        with target.open("r+b") as file:  # in place: the same inode
            file.write(new)
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = target.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        )
        assert after.st_ctime_ns != before.st_ctime_ns  # what the kernel moved for us
        second = await http.get("/download/f.bin")
        assert second.content == new
        assert second.headers["repr-digest"] == sf_digest(new)
        assert second.headers["etag"] != first.headers["etag"]
        out = tmp_path / "out.bin"
        result = await download(http, f"{url}/download/f.bin", out,
                                manifest_url=f"{url}/api/digest/f.bin")  # fmt: skip
    assert out.read_bytes() == new
    assert result.sha256 == hashlib.sha256(new).hexdigest()

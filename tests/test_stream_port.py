"""Stream ports in-process: real sockets, httpx and curl against the manager."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio

from flashback.protocol.messages import FileStreamReady, StreamError, StreamRequest
from flashback.streaming.manager import StreamManager, StreamSettings
from flashback.zerocopy import FileShrunk, SendProgress, sendfile_range
from tests.conftest import BIG_FILE_BYTES

TIMEOUT_S = 10


class Recorder:
    """The manager's events, and a way to wait for one."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._more = trio.Event()

    def __call__(self, event: str, **fields: Any) -> None:
        assert "token" not in fields  # never in the owner's logs
        self.events.append({"event": event, **fields})
        self._more.set()
        self._more = trio.Event()

    def closed(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "stream-closed"]

    async def wait_closed(self, count: int = 1) -> list[dict[str, Any]]:
        while len(self.closed()) < count:
            await self._more.wait()
        return self.closed()


async def start_manager(
    nursery: trio.Nursery, root: Path, **settings: Any
) -> tuple[StreamManager, Recorder]:
    events = Recorder()
    manager = StreamManager(StreamSettings(root, "127.0.0.1", **settings), events)
    _, receive = trio.open_memory_channel[StreamRequest](0)
    await nursery.start(manager.run, receive, lambda answer: None)
    return manager, events


async def ready(manager: StreamManager, path: str, requester: str = "bob") -> FileStreamReady:
    answer = await manager.handle(StreamRequest(f"req-{path}", path, from_=requester))
    assert isinstance(answer, FileStreamReady), answer
    assert answer.to == requester and answer.host == "127.0.0.1"
    return answer


def url_of(answer: FileStreamReady, token: str | None = None) -> str:
    return f"http://127.0.0.1:{answer.port}/{token or answer.token}"


def refused(port: int) -> bool:
    """A plain blocking connect: independent of trio's clock."""
    with socket.socket() as probe:
        try:
            probe.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


async def test_wrong_token_is_403_and_the_right_one_still_works(
    nursery: trio.Nursery, share: Path
) -> None:
    with trio.fail_after(TIMEOUT_S):
        manager, events = await start_manager(nursery, share)
        answer = await ready(manager, "big.bin")
        assert answer.size == BIG_FILE_BYTES and answer.expires_in == 60
        assert len(answer.token) >= 43
        assert events.events[0] == {
            "event": "file-stream-ready",
            "request_id": "req-big.bin",
            "peer_id": "bob",
            "host": "127.0.0.1",
            "port": answer.port,
            "path": "big.bin",
            "size": BIG_FILE_BYTES,
            "expires_in": 60,
        }
        async with httpx.AsyncClient(timeout=5) as http:
            wrong = await http.get(url_of(answer, "not-the-token"))
            assert wrong.status_code == 403
            assert wrong.json()["error"]["code"] == "forbidden"
            assert (await http.get(f"http://127.0.0.1:{answer.port}/")).status_code == 404
            post = await http.post(url_of(answer))
            assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
            assert post.json()["error"]["code"] == "method_not_allowed"
            assert not events.closed()
            good = await http.get(url_of(answer))
        assert good.status_code == 200
        assert good.content == (share / "big.bin").read_bytes()
        assert good.headers["etag"].startswith('"') and good.headers["accept-ranges"] == "bytes"
        (closed,) = await events.wait_closed()
        assert closed["reason"] == "completed" and closed["bytes_sent"] == BIG_FILE_BYTES
        assert closed["port"] == answer.port and closed["path"] == "big.bin"
        assert refused(answer.port)
        assert not manager.open_ports


async def test_head_then_ranges_206_416_then_resume_completes(
    nursery: trio.Nursery, share: Path
) -> None:
    data = (share / "big.bin").read_bytes()
    with trio.fail_after(TIMEOUT_S):
        manager, events = await start_manager(nursery, share)
        answer = await ready(manager, "big.bin")
        async with httpx.AsyncClient(timeout=5) as http:
            head = await http.head(url_of(answer))
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == str(len(data))
            etag = head.headers["etag"]
            part = await http.get(url_of(answer), headers={"Range": "bytes=0-999"})
            assert part.status_code == 206 and part.content == data[:1000]
            assert part.headers["content-range"] == f"bytes 0-999/{len(data)}"
            bad = await http.get(url_of(answer), headers={"Range": f"bytes={len(data)}-"})
            assert bad.status_code == 416
            assert bad.headers["content-range"] == f"bytes */{len(data)}"
            assert bad.json()["error"]["code"] == "range_not_satisfiable"
            assert not events.closed() and manager.open_ports  # still open: may resume
            rest = await http.get(
                url_of(answer), headers={"Range": "bytes=1000-", "If-Range": etag}
            )
            assert rest.status_code == 206 and part.content + rest.content == data
        (closed,) = await events.wait_closed()
        assert closed["reason"] == "completed" and closed["bytes_sent"] == len(data)
        assert refused(answer.port)


async def test_conditional_requests_get_304_and_412_then_the_port_still_serves(
    nursery: trio.Nursery, share: Path
) -> None:
    data = (share / "big.bin").read_bytes()
    with trio.fail_after(TIMEOUT_S):
        manager, events = await start_manager(nursery, share)
        answer = await ready(manager, "big.bin")
        async with httpx.AsyncClient(timeout=5) as http:
            etag = (await http.head(url_of(answer))).headers["etag"]
            same = await http.get(url_of(answer), headers={"If-None-Match": etag})
            assert same.status_code == 304 and same.content == b""
            assert same.headers["etag"] == etag
            moved = await http.get(url_of(answer), headers={"If-Match": '"other"'})
            assert moved.status_code == 412
            assert moved.json()["error"]["code"] == "precondition_failed"
            assert not events.closed() and manager.open_ports  # neither counts as a download
            whole = await http.get(url_of(answer), headers={"If-Match": etag})
            assert whole.status_code == 200 and whole.content == data
        (closed,) = await events.wait_closed()
        assert closed["reason"] == "completed"


async def test_broken_download_resumes_inside_the_window(
    nursery: trio.Nursery, share: Path
) -> None:
    data = (share / "big.bin").read_bytes()
    with trio.fail_after(TIMEOUT_S):
        manager, events = await start_manager(nursery, share)
        answer = await ready(manager, "big.bin")
        got = b""
        stream = await trio.open_tcp_stream("127.0.0.1", answer.port)
        async with stream:
            request = f"GET /{answer.token} HTTP/1.1\r\nHost: x\r\n\r\n"
            await stream.send_all(request.encode())
            while len(got) < 1024 * 1024:
                got += await stream.receive_some(64 * 1024)
        # the client went away mid-file (what it got includes the head)
        body = got.partition(b"\r\n\r\n")[2]
        (port,) = manager.open_ports
        while port.lifetime.active or not port.bytes_sent:  # noqa: ASYNC110 -- polled
            await trio.sleep(0.01)  # until the port has counted the broken response
        assert not events.closed(), "a broken download must not spend the port"
        assert manager.open_ports == {port}
        async with httpx.AsyncClient(timeout=5) as http:
            rest = await http.get(url_of(answer), headers={"Range": f"bytes={len(body)}-"})
        got = body
        assert rest.status_code == 206 and bytes(got) + rest.content == data
        (closed,) = await events.wait_closed()
        assert closed["reason"] == "completed" and closed["bytes_sent"] >= len(data)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_partial_then_resume_then_refused(
    nursery: trio.Nursery, share: Path, tmp_path: Path
) -> None:
    data = (share / "big.bin").read_bytes()
    out = tmp_path / "out.bin"

    async def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process(
            ["curl", "-sS", "--max-time", "10", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )

    with trio.fail_after(TIMEOUT_S):
        manager, events = await start_manager(nursery, share)
        answer = await ready(manager, "big.bin")
        first = await curl("-r", "0-99999", "-o", str(out), url_of(answer))
        assert first.returncode == 0 and out.stat().st_size == 100_000
        rest = await curl("-C", "-", "-o", str(out), "-w", "%{http_code}", url_of(answer))
        assert rest.returncode == 0 and rest.stdout == b"206"
        assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest()
        await events.wait_closed()
        again = await curl("-o", "/dev/null", url_of(answer))
        assert again.returncode == 7  # couldn't connect: the port is gone


async def test_expiry_with_real_time(nursery: trio.Nursery, share: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        manager, events = await start_manager(nursery, share, expires_in_s=0.5)
        answer = await ready(manager, "hello.txt")
        assert answer.expires_in == 0.5
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(url_of(answer, "nope"))).status_code == 403
        (closed,) = await events.wait_closed()
        assert closed["reason"] == "expired" and closed["bytes_sent"] == 0
        # how long it lived is the mock-clock test's job: wall time under load varies
        assert refused(answer.port) and not manager.open_ports


async def test_expiry_on_the_mock_clock(
    nursery: trio.Nursery, share: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(120):  # trio time: the clock jumps
        manager, events = await start_manager(nursery, share)
        start = trio.current_time()
        answer = await ready(manager, "hello.txt")
        (closed,) = await events.wait_closed()
        assert closed["reason"] == "expired" and closed["duration_s"] == 60.0
        assert 60 <= trio.current_time() - start < 60.1
        assert refused(answer.port)


@pytest.mark.parametrize(
    "path",
    [
        "../share_evil/passwd",
        "escape",
        ".secret",
        ".hiddendir/inner.txt",
        "missing.txt",
        "docs",
        "",
    ],
)
async def test_unservable_paths_get_stream_error_not_found(
    nursery: trio.Nursery, share: Path, path: str
) -> None:
    with trio.fail_after(TIMEOUT_S):
        manager, events = await start_manager(nursery, share)
        answer = await manager.handle(StreamRequest("r1", path, from_="bob"))
        assert isinstance(answer, StreamError)
        assert (answer.code, answer.to, answer.request_id) == ("not_found", "bob", "r1")
        assert not manager.open_ports and not events.events


async def test_the_17th_port_closes_the_oldest_port_not_the_request(
    nursery: trio.Nursery, share: Path
) -> None:
    with trio.fail_after(TIMEOUT_S):
        manager, events = await start_manager(nursery, share)
        answers = [
            await manager.handle(StreamRequest(f"r{i}", "hello.txt", from_=f"peer{i}"))
            for i in range(17)
        ]
        assert all(isinstance(a, FileStreamReady) for a in answers)
        [closed] = await events.wait_closed()
        assert (closed["request_id"], closed["reason"]) == ("r0", "evicted")
        assert len(manager.open_ports) == 16


async def test_one_requester_holds_at_most_its_quota_of_ports(
    nursery: trio.Nursery, share: Path
) -> None:
    with trio.fail_after(TIMEOUT_S):
        manager, events = await start_manager(nursery, share, max_ports_per_peer=2)
        mine = [
            await manager.handle(StreamRequest(f"m{i}", "hello.txt", from_="mallory"))
            for i in range(3)
        ]
        # its third request closes its own oldest port
        assert all(isinstance(a, FileStreamReady) for a in mine)
        [closed] = await events.wait_closed()
        assert (closed["request_id"], closed["reason"]) == ("m0", "evicted")
        await ready(manager, "hello.txt", requester="bob")  # others still get a port
        assert len(manager.open_ports) == 3


async def test_two_parallel_requests_get_two_ports(nursery: trio.Nursery, share: Path) -> None:
    results: dict[str, bytes] = {}
    with trio.fail_after(TIMEOUT_S):
        manager, events = await start_manager(nursery, share)
        answers: list[FileStreamReady] = []

        async def ask(path: str) -> None:
            answers.append(await ready(manager, path))

        async with trio.open_nursery() as inner:
            inner.start_soon(ask, "big.bin")
            inner.start_soon(ask, "hello.txt")
        assert answers[0].port != answers[1].port
        assert answers[0].token != answers[1].token
        async with httpx.AsyncClient(timeout=5) as http:

            async def fetch(answer: FileStreamReady) -> None:
                results[answer.path] = (await http.get(url_of(answer))).content

            async with trio.open_nursery() as inner:
                for answer in answers:
                    inner.start_soon(fetch, answer)
        assert results["hello.txt"] == b"hello, world\n"
        assert results["big.bin"] == (share / "big.bin").read_bytes()
        assert {e["reason"] for e in await events.wait_closed(2)} == {"completed"}


async def test_empty_file_completes(nursery: trio.Nursery, share: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        manager, events = await start_manager(nursery, share)
        answer = await ready(manager, "empty.txt")
        assert answer.size == 0
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(url_of(answer))
        assert response.status_code == 200 and response.content == b""
        assert (await events.wait_closed())[0]["reason"] == "completed"


async def test_malformed_request_gets_json_400(nursery: trio.Nursery, share: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        manager, _ = await start_manager(nursery, share)
        answer = await ready(manager, "hello.txt")
        stream = await trio.open_tcp_stream("127.0.0.1", answer.port)
        async with stream:
            await stream.send_all(b"GARBAGE\r\n\r\n")
            raw = b""
            while chunk := await stream.receive_some():
                raw += chunk
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400")
        assert json.loads(body)["error"]["code"] == "bad_request"
        assert manager.open_ports  # still serving


async def test_keep_alive_serves_several_requests_on_one_connection(
    nursery: trio.Nursery, share: Path
) -> None:
    with trio.fail_after(TIMEOUT_S):
        manager, events = await start_manager(nursery, share)
        answer = await ready(manager, "hello.txt")
        client = h11.Connection(h11.CLIENT)
        stream = await trio.open_tcp_stream("127.0.0.1", answer.port)
        async with stream:
            for method, target, status, body in [
                ("GET", "/wrong", 403, None),
                ("HEAD", f"/{answer.token}", 200, b""),
                ("GET", f"/{answer.token}", 200, b"hello, world\n"),
            ]:
                request = h11.Request(method=method, target=target, headers=[("Host", "x")])
                await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
                response, got = None, b""
                while True:
                    event = client.next_event()
                    if event is h11.NEED_DATA:
                        client.receive_data(await stream.receive_some())
                    elif isinstance(event, h11.Response):
                        response = event
                    elif isinstance(event, h11.Data):
                        got += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                assert response is not None and response.status_code == status
                if body is not None:
                    assert got == body
                client.start_next_cycle()  # the server kept the connection
        await events.wait_closed()


async def test_cancelling_the_manager_closes_every_port(share: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            manager, events = await start_manager(nursery, share)
            first = await ready(manager, "hello.txt")
            second = await ready(manager, "big.bin")
            # one of them mid-transfer: a client that reads nothing
            stream = await trio.open_tcp_stream("127.0.0.1", second.port)
            await stream.send_all(f"GET /{second.token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await stream.receive_some(65536)  # under way: 5 MiB never fits the buffers
            assert head.startswith(b"HTTP/1.1 200 "), head[:80]
            nursery.cancel_scope.cancel()
        await stream.aclose()
        assert [e["reason"] for e in events.closed()] == ["shutdown", "shutdown"]
        assert refused(first.port) and refused(second.port)


async def test_sendfile_handles_partial_sends_and_a_shrunk_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 20_000  # 5 MB, far more than one socket buffer
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    left, right = trio.socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    received = bytearray()
    try:
        with trio.fail_after(TIMEOUT_S):

            async def slow_reader() -> None:
                while len(received) < len(data) - 7:
                    received.extend(await right.recv(4096))
                    await trio.lowlevel.checkpoint()

            progress = SendProgress()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_reader)
                await sendfile_range(left, fd, 7, len(data) - 7, progress)
            assert progress.sent == len(data) - 7 and bytes(received) == data[7:]

            progress = SendProgress()
            with pytest.raises(FileShrunk):
                await sendfile_range(left, fd, len(data) - 10, 20, progress)
            assert progress.sent == 10
    finally:
        left.close()
        right.close()
        os.close(fd)


async def test_idle_strangers_cannot_lock_out_the_token_holder(
    nursery: trio.Nursery, share: Path
) -> None:
    """Found in review: 8 idle connections used to fill the per-port cap."""
    from flashback.streaming.port import MAX_PENDING_CONNECTIONS

    with trio.fail_after(TIMEOUT_S):
        manager, _ = await start_manager(nursery, share)
        answer = await ready(manager, "hello.txt")
        idle = [
            await trio.open_tcp_stream("127.0.0.1", answer.port)
            for _ in range(MAX_PENDING_CONNECTIONS + 8)
        ]
        try:
            async with httpx.AsyncClient() as http:
                response = await http.get(url_of(answer))
            assert response.status_code == 200
            assert response.content == b"hello, world\n"
        finally:
            for stream in idle:
                await stream.aclose()


async def _connect_from(source: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def test_a_flood_of_strangers_from_one_address_pays_with_its_own_connections(
    nursery: trio.Nursery, share: Path
) -> None:
    """The pending table's oldest was dropped whoever held it: a flood from one
    address pushed out the token holder that had connected just before."""
    from flashback.streaming.port import MAX_PENDING_CONNECTIONS

    with trio.fail_after(TIMEOUT_S):
        manager, _ = await start_manager(nursery, share)
        answer = await ready(manager, "hello.txt")
        honest = await _connect_from("127.0.0.3", answer.port)
        flood = [
            await _connect_from("127.0.0.2", answer.port)
            for _ in range(MAX_PENDING_CONNECTIONS + 8)
        ]
        try:
            for stream in flood[:8]:  # these went, whatever the rule: wait for them
                assert await stream.receive_some(1) == b""
            target = url_of(answer).split(str(answer.port), 1)[1]
            await honest.send_all(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await honest.receive_some(64)
            assert head.startswith(b"HTTP/1.1 200"), head
        finally:
            await honest.aclose()
            for stream in flood:
                await stream.aclose()

"""The HTTP layer under attack from outside: real processes, raw sockets, a real h2 client.

Each test fails on a server without the bound it checks (see flashback/httpserver.py):
the process dies, or a connection is held forever, or memory grows with the attack.
"""

from __future__ import annotations

import json
import resource
import socket
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Final

import h2.config
import h2.connection
import h2.settings
import httpx
import trio

from tests.procs import FLASHBACK, Proc, event_is, start
from tests.test_daemon_system import start_daemon, start_tracker

PROBE_TIMEOUT_S: Final = 2.0
BIG_BYTES: Final = 1 << 30  # sparse: costs no disk
MiB: Final = 1 << 20

WS_UPGRADE_PLUS_ONE_BYTE: Final = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nX"
)


def rss_bytes(proc: Proc) -> int:
    status = Path(f"/proc/{proc.process.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def open_descriptors(proc: Proc) -> int:
    return len(list(Path(f"/proc/{proc.process.pid}/fd").iterdir()))


async def probe(port: int, path: str = "/api/info") -> httpx.Response:
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
        return await client.get(httpx.URL(scheme="http", host="127.0.0.1", port=port, path=path))


async def start_serve(
    stack: AsyncExitStack, nursery: trio.Nursery, root: Path, env: dict[str, str], **kw: object
) -> tuple[Proc, int]:
    proc = await stack.enter_async_context(
        start(nursery, ["serve", "--root", str(root)], env=env, name="serve", **kw)  # type: ignore[arg-type]  # **kw are start()'s keyword arguments
    )
    ready = await proc.wait_event(event_is("peer-server-ready"))
    return proc, int(ready["port"])


def share_with_big_file(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    root.mkdir()
    (root / "small.txt").write_bytes(b"hello\n")
    with (root / "big").open("wb") as f:
        f.truncate(BIG_BYTES)
    return root


async def read_until_eof(stream: trio.SocketStream, *, timeout_s: float = 10) -> bytes:
    received = bytearray()
    with trio.fail_after(timeout_s):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset: closed all the same
                return bytes(received)
            if not chunk:
                return bytes(received)
            received += chunk


async def test_websocket_upgrade_plus_one_byte_ends_only_that_connection(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        tracker, tracker_url = await start_tracker(stack, nursery, tmp_path)
        tracker_port = httpx.URL(tracker_url).port
        assert tracker_port is not None
        daemon = await start_daemon(stack, nursery, tmp_path, "alice", tracker_url)
        daemon_port = int(
            next(e for e in daemon.events if e["event"] == "peer-server-ready")["port"]
        )
        serve, serve_port = await start_serve(stack, nursery, share_with_big_file(tmp_path), {})
        targets = [(tracker, tracker_port, "/api/relay/status"), (daemon, daemon_port, "/api/info")]
        targets.append((serve, serve_port, "/api/info"))
        for _proc, port, _path in targets:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(WS_UPGRADE_PLUS_ONE_BYTE)
            await read_until_eof(stream)  # the server ends this connection...
            await stream.aclose()
        for proc, port, path in targets:  # ...and only this one
            assert (await probe(port, path)).status_code == 200
            assert proc.process.returncode is None, proc.stderr.decode(errors="replace")[-2000:]
            assert b"Traceback" not in proc.stderr  # one short line per hostile packet, not 50
        nursery.cancel_scope.cancel()


async def test_h2c_is_refused_and_zero_window_streams_pin_nothing(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        serve, port = await start_serve(stack, nursery, share_with_big_file(tmp_path), {})
        before = rss_bytes(serve)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        for _ in range(10):
            stream_id = conn.get_next_available_stream_id()
            headers = [(":method", "GET"), (":path", "/download/big")]
            headers += [(":scheme", "http"), (":authority", "x")]
            conn.send_headers(stream_id, headers, end_stream=True)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(conn.data_to_send())
            received = await read_until_eof(stream)
        assert b"big" not in received and len(received) < 1024  # closed, nothing served
        assert rss_bytes(serve) - before < 32 * MiB
        assert (await probe(port)).status_code == 200
        nursery.cancel_scope.cancel()


async def test_a_body_that_never_comes_is_closed_after_the_body_timeout(tmp_path: Path) -> None:
    env = {"FLASHBACK_HTTP_BODY_TIMEOUT_S": "1"}
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        _serve, port = await start_serve(stack, nursery, share_with_big_file(tmp_path), env)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /api/info HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n"
        )
        async with stream:
            await read_until_eof(stream)  # held forever without the timeout
        assert (await probe(port)).status_code == 200
        nursery.cancel_scope.cancel()


async def test_keep_alive_connections_are_closed_when_idle_after_each_kind_of_answer(
    tmp_path: Path,
) -> None:
    """An idle keep-alive connection holds a slot of the connection cap: it must go."""
    env = {"FLASHBACK_HTTP_IDLE_TIMEOUT_S": "1"}
    requests = [
        b"GET /api/info HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /download/small.txt HTTP/1.1\r\nHost: localhost\r\n\r\n",  # a zero-copy body
        b"HEAD /download/small.txt HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /api/files HTTP/1.1\r\nHost: localhost\r\n\r\n"
        b"GET /api/info HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ]
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        serve, port = await start_serve(stack, nursery, share_with_big_file(tmp_path), env)
        idle_before = open_descriptors(serve)
        for request in requests:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(request)
            async with stream:
                answer = await read_until_eof(stream)  # held forever without the timeout
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:80]
            assert answer.count(b"HTTP/1.1 200 ") == request.count(b"HTTP/1.1\r\n")
        with trio.fail_after(10):
            while open_descriptors(serve) > idle_before:  # noqa: ASYNC110 -- polled
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


def _low_descriptor_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))


async def test_held_connections_under_a_low_descriptor_limit_cost_the_holder_not_emfile(
    tmp_path: Path,
) -> None:
    """120 idle connections against a cap of 36 (100 descriptors): the holder's own
    oldest connections close as it opens more, a newcomer is served, and the
    server never runs into EMFILE."""
    env = {"FLASHBACK_HTTP_IDLE_TIMEOUT_S": "60"}  # hold them: only the cap may help
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        serve, port = await start_serve(
            stack, nursery, share_with_big_file(tmp_path), env, preexec_fn=_low_descriptor_limit
        )
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(120)]
        served = await probe(port)
        assert served.status_code == 200  # the newcomer is served
        with trio.fail_after(10):
            assert await closed_by_the_server(held[0])  # the oldest paid for it
        for stream in held:
            await stream.aclose()
        assert serve.process.returncode is None
        assert b"Too many open files" not in serve.stderr
        nursery.cancel_scope.cancel()


async def closed_by_the_server(stream: trio.SocketStream) -> bool:
    try:
        return await stream.receive_some(100) == b""
    except trio.BrokenResourceError:  # reset rather than closed: closed all the same
        return True


async def test_clients_that_never_read_are_dropped_and_pin_little(tmp_path: Path) -> None:
    clients = 100
    env = {"FLASHBACK_HTTP_WRITE_TIMEOUT_S": "2"}
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        serve, port = await start_serve(stack, nursery, share_with_big_file(tmp_path), env)
        before = rss_bytes(serve)
        streams = []
        for _ in range(clients):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"GET /download/big HTTP/1.1\r\nHost: localhost\r\n\r\n")
            streams.append(stream)
        for stream in streams:  # every answer has begun (peeked: nothing is drained)
            head = await stream.socket.recv(13, socket.MSG_PEEK)
            assert head == b"HTTP/1.1 200 ", head
        peak = rss_bytes(serve) - before
        assert peak < 128 * MiB, f"RSS grew {peak / MiB:.0f} MiB"
        connected = open_descriptors(serve)
        with trio.fail_after(30):  # the write deadline drops every one of them
            while open_descriptors(serve) > connected - clients:  # noqa: ASYNC110 -- polled
                await trio.sleep(0.1)
        received = await read_until_eof(streams[0])
        assert len(received) < BIG_BYTES
        assert (await probe(port)).status_code == 200
        for stream in streams:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_address_in_use_names_host_and_port(tmp_path: Path) -> None:
    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    root = share_with_big_file(tmp_path)
    with taken:
        result = await trio.run_process(
            [*FLASHBACK, "serve", "--root", str(root), "--port", str(port)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert lines[-1] == f"flashback: 127.0.0.1:{port}: address already in use"
    assert not any(
        json.loads(x).get("event") == "peer-server-ready" for x in result.stdout.splitlines()
    )


async def test_verbose_access_log_one_escaped_line_per_request_without_the_query(
    tmp_path: Path,
) -> None:
    root = share_with_big_file(tmp_path)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        proc = await stack.enter_async_context(
            start(nursery, ["-v", "serve", "--root", str(root)], env={}, name="serve")
        )
        port = int((await proc.wait_event(event_is("peer-server-ready")))["port"])
        async with httpx.AsyncClient() as client:
            url = httpx.URL(scheme="http", host="127.0.0.1", port=port, path="/%1b[31mx")
            response = await client.get(url.copy_with(query=b"token=SECRET"))
            assert response.status_code == 404
            await client.get(
                httpx.URL(scheme="http", host="127.0.0.1", port=port, path="/api/info")
            )
            # the connection stays open until the line is out: a client that hangs up
            # while Hypercorn still ends the response gets a second, "- -" line
            with trio.fail_after(5):
                while b'"GET /api/info" 200' not in proc.stderr:  # noqa: ASYNC110 -- no event
                    await trio.sleep(0.05)
        lines = [x for x in proc.stderr.decode().splitlines() if "flashback.access" in x]
        assert len(lines) == 2
        assert '"GET /\\x1b[31mx" 404 ' in lines[0]
        assert '"GET /api/info" 200 ' in lines[1]
        assert "SECRET" not in proc.stderr.decode() and "\x1b" not in proc.stderr.decode()
        nursery.cancel_scope.cancel()

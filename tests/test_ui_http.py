"""The web UI over real HTTP on loopback: the token on every route, the proxy, the bounds."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any, cast

import h11
import httpx
import pytest
import trio
import trio.testing

from flashback.config import DaemonConfig
from flashback.daemon.book import BOOK_FILE, PeerBook
from flashback.daemon.context import DaemonContext
from flashback.daemon.hub import EventHub
from flashback.daemon.routes import Router
from flashback.daemon.tunnel_ends import TunnelFailed
from flashback.peer.app import LocalInfo, ShareSettings
from flashback.peer.serve import serve_peer
from flashback.protocol.lan import LanPeer, LanTable
from flashback.protocol.messages import Candidate, PeerInfo
from flashback.protocol.tunnel import OpenTarget
from flashback.ui.app import MAX_EVENT_STREAMS
from flashback.ui.auth import COOKIE_NAME, check_access
from flashback.ui.kinds import MEDIA_CSP, SANDBOX_CSP, Served, served_as, view_kind
from flashback.ui.serve import serve_ui
from tests.conftest import BIG_FILE_BYTES
from tests.procs import daemon_env, event_is, run_cli, start

TOKEN = "t0ken-for-tests"

# A browser that stops a video mid-file leaves httpx/httpcore's chain of body
# generators unexhausted (we close the response; their inner generators are
# then collected). Python ignores ResourceWarning by default; these tests
# make it an error, so only that one message from those two libraries is let through.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Async generator 'http(x|core)\._.*' was garbage collected:ResourceWarning"
)


#: the local forwards a test's router opens: (peer id, target kind) -> port
Forwards = dict[tuple[str, str], int]


async def ui_context(
    nursery: trio.Nursery,
    share: Path,
    probe: httpx.AsyncClient,
    forwards: Forwards | None = None,
    taught: list[tuple[str, str, tuple[Candidate, ...]]] | None = None,
) -> tuple[DaemonContext, str]:
    """A daemon's context with its peer server and UI on loopback and a real
    :class:`Router` (no tracker: a relay route goes to the port *forwards* names,
    else fails as a tunnel does): the context and the UI's tokened URL. What the
    router is taught of LAN or book peers (key, fingerprint, candidates) goes to
    *taught*."""
    config = DaemonConfig(root=share, tracker_url=None, name="me")
    ctx = DaemonContext(config=config, hub=EventHub(io.StringIO()), local=LocalInfo(name="me"))
    settings = ShareSettings(share, False, ctx.local)
    ctx.address = await nursery.start(partial(serve_peer, settings, "127.0.0.1", 0))

    async def open_forward(peer_id: str, target: OpenTarget) -> int:
        port = (forwards or {}).get((peer_id, target.kind))
        if port is None:
            raise TunnelFailed("refused", "no tunnel in this test")
        return port

    def know(key: str, fingerprint: str, candidates: tuple[Candidate, ...]) -> None:
        if taught is not None:
            taught.append((key, fingerprint, candidates))

    ctx.router = Router(probe, open_forward, know=know)
    url = await nursery.start(partial(serve_ui, ctx, 0, token=TOKEN))
    return ctx, url


@pytest.fixture
async def forwards() -> Forwards:
    return {}


@pytest.fixture
async def ui(
    nursery: trio.Nursery, share: Path, forwards: Forwards
) -> AsyncIterator[tuple[str, DaemonContext]]:
    (share / "clip.webm").write_bytes(b"\x1a\x45\xdf\xa3" + bytes(1000))
    async with httpx.AsyncClient() as probe:
        ctx, url = await ui_context(nursery, share, probe, forwards)
        yield url.split("/?", 1)[0], ctx


@pytest.fixture
async def authed(ui: tuple[str, DaemonContext]) -> AsyncIterator[httpx.AsyncClient]:
    base, _ = ui
    async with httpx.AsyncClient(base_url=base, cookies={COOKIE_NAME: TOKEN}) as http:
        yield http


ROUTES = [
    "/",
    "/api/peers",
    "/events",
    "/static/ui.css",
    "/static/peers.js",
    "/static/access.js",
    "/access",
    "/api/access",
    "/p/self/browse/",
    "/p/self/browse/docs",
    "/p/self/view/hello.txt",
    "/p/self/content/hello.txt",
    "/p/self/download/hello.txt",
    "/no/such/route",
]


@pytest.mark.parametrize("route", ROUTES)
async def test_every_route_is_403_without_the_token(
    ui: tuple[str, DaemonContext], route: str
) -> None:
    base, _ = ui
    async with httpx.AsyncClient(base_url=base) as http:
        for attempt in (
            http.get(route),
            http.get(route, params={"token": "wrong"}),
            http.get(route, headers={"cookie": f"{COOKIE_NAME}=wrong"}),
            http.get(route, headers={"cookie": f"{COOKIE_NAME}={TOKEN}x"}),
        ):
            response = await attempt
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "forbidden"


async def test_token_becomes_a_strict_httponly_cookie_and_leaves_the_url(
    ui: tuple[str, DaemonContext],
) -> None:
    base, _ = ui
    async with httpx.AsyncClient(base_url=base) as http:
        response = await http.get("/p/self/browse/docs", params={"token": TOKEN, "cursor": "c"})
        assert response.status_code == 303
        assert response.headers["location"] == "/p/self/browse/docs?cursor=c"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}={TOKEN};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        odd = await http.get("/p/self/view/a%3Fb%23c.md", params={"token": TOKEN})
        assert odd.status_code == 303
        assert odd.headers["location"] == "/p/self/view/a%3Fb%23c.md"
        page = await http.get("/")  # the client kept the cookie
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["referrer-policy"] == "no-referrer"


def test_check_access_decisions() -> None:
    assert check_access(TOKEN, {}, TOKEN).set_cookie
    assert not check_access("nope", {COOKIE_NAME: TOKEN}, TOKEN).allowed
    assert check_access(None, {COOKIE_NAME: TOKEN}, TOKEN).allowed
    assert not check_access(None, {}, TOKEN).allowed
    assert not check_access("é", {}, TOKEN).allowed  # non-ASCII: refused, not a crash


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.md", "markdown"),
        ("A.MARKDOWN", "markdown"),
        ("p.png", "image"),
        ("s.mp3", "audio"),
        ("v.webm", "video"),
        ("t.txt", "text"),
        ("c.json", "text"),
        ("x.bin", "other"),
    ],
)
def test_view_kind(name: str, kind: str) -> None:
    assert view_kind(name) == kind


@pytest.mark.parametrize(
    ("name", "served"),
    [
        ("p.png", Served("image/png", MEDIA_CSP, attachment=False)),
        ("v.webm", Served("video/webm", MEDIA_CSP, attachment=False)),
        ("s.ogg", Served("audio/ogg", MEDIA_CSP, attachment=False)),
        ("t.txt", Served("text/plain; charset=utf-8", SANDBOX_CSP, attachment=False)),
        ("r.md", Served("text/plain; charset=utf-8", SANDBOX_CSP, attachment=False)),
        ("i.svg", Served("application/octet-stream", SANDBOX_CSP, attachment=True)),
        ("p.html", Served("application/octet-stream", SANDBOX_CSP, attachment=True)),
        ("x.xhtml", Served("application/octet-stream", SANDBOX_CSP, attachment=True)),
        ("noext", Served("application/octet-stream", SANDBOX_CSP, attachment=True)),
    ],
)
def test_the_ui_serves_a_file_by_its_name_never_by_the_peers_type(
    name: str, served: Served
) -> None:
    assert served_as(name) == served


async def test_content_proxy_passes_ranges_and_sets_its_own_sandbox(
    authed: httpx.AsyncClient,
) -> None:
    part = await authed.get("/p/self/content/big.bin", headers={"range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.headers["content-range"].startswith("bytes 10-19/")
    assert len(part.content) == 10
    html = await authed.get("/p/self/content/page.html")
    assert html.headers["content-security-policy"] == SANDBOX_CSP
    assert html.headers["content-type"] == "application/octet-stream"
    assert html.headers["content-disposition"].startswith("attachment;")
    assert html.headers["x-content-type-options"] == "nosniff"
    video = await authed.get("/p/self/content/clip.webm")
    assert video.headers["content-type"] == "video/webm"
    assert video.headers["content-security-policy"] == MEDIA_CSP
    several = await authed.get("/p/self/content/big.bin", headers={"range": "bytes=0-1,5-9"})
    assert several.status_code == 200  # whole: a multipart type would be the peer's
    download = await authed.get("/p/self/download/hello.txt")
    assert download.content == b"hello, world\n"
    assert download.headers["content-disposition"].startswith("attachment;")


@pytest.mark.parametrize(
    "route",
    [
        "/p/self/view/..%2F..%2Fetc%2Fpasswd",
        "/p/self/content/.secret",
        "/p/self/content/escape",
        "/p/self/browse/escape-dir",
        "/p/nobody/browse/",
        "/p/self/view/missing.md",
    ],
)
async def test_outside_hidden_or_unknown_is_404(authed: httpx.AsyncClient, route: str) -> None:
    response = await authed.get(route)
    assert response.status_code == 404
    assert "error" in response.json()


async def test_view_escapes_text_and_renders_markdown(
    authed: httpx.AsyncClient, share: Path
) -> None:
    (share / "x.txt").write_text("<script>alert(1)</script>")
    (share / "docs" / "readme.md").write_text("# Docs\n\n[up](../hello.txt) <b>raw</b>\n")
    text = (await authed.get("/p/self/view/x.txt")).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>alert" not in text
    page = (await authed.get("/p/self/view/docs/readme.md")).text
    assert '<h1 id="docs">Docs</h1>' in page
    assert 'href="/p/self/view/hello.txt"' in page
    assert "&lt;b&gt;raw&lt;/b&gt;" in page


class SSEClient:
    """A real socket reading server-sent events, framed by h11 (no async generators to leak)."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.http = h11.Connection(h11.CLIENT)
        self.buffer = b""
        self.status = 0

    @classmethod
    async def open(cls, base: str, *, token: str = TOKEN) -> SSEClient:
        url = httpx.URL(base)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        await sock.connect((url.host, url.port))
        client = cls(sock)
        headers = [("host", "ui"), ("cookie", f"{COOKIE_NAME}={token}")]
        await sock.send(
            client.http.send(h11.Request(method="GET", target="/events", headers=headers))
        )
        while not client.status:
            event = await client._next()
            if isinstance(event, h11.Response):
                client.status = event.status_code
        return client

    async def _next(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                self.http.receive_data(await self.sock.recv(65536))
                continue
            return event

    async def next_event(self) -> dict[str, Any]:
        while b"\n\n" not in self.buffer:
            event = await self._next()
            assert isinstance(event, h11.Data), event
            self.buffer += bytes(event.data)
        frame, self.buffer = self.buffer.split(b"\n\n", 1)
        assert frame.startswith(b"data: ")
        return cast(dict[str, Any], json.loads(frame[len(b"data: ") :]))

    def close(self) -> None:
        self.sock.close()


def _peer(i: int) -> dict[str, object]:
    return {
        "peer_id": f"{i:08}" + "p" * 120,
        "name": "n" * 64,
        "peer_server": {"host": "h" * 200, "port": 1},
        "capabilities": {},
        "registered_at": "2026-01-01T00:00:00Z",
        "last_seen": "2026-01-01T00:00:00Z",
    }


async def test_live_events_snapshot_then_changes(ui: tuple[str, DaemonContext]) -> None:
    base, ctx = ui
    events = await SSEClient.open(base)
    try:
        assert events.status == 200
        first = await events.next_event()
        assert first["event"] == "snapshot" and first["peers"] == []
        ctx.hub.emit("peer-joined", seq=1, peer=_peer(1))
        ctx.hub.emit("stream-port-open", port=1)  # not for the page: filtered out
        ctx.hub.emit("peer-joined", seq=2, peer={"bad": 1})  # malformed: skipped
        ctx.hub.emit("peer-left", seq=3, peer_id="x", reason="left")
        # a LAN change: the page fetches the merged list again (§12)
        lan_peer = {"peer_id": None, "name": "bob", "fingerprint": "sha256:" + "b" * 64}
        ctx.hub.emit("lan-peer-found", **lan_peer)
        ctx.hub.emit("lan-peer-lost", **lan_peer)
        ctx.hub.emit("tracker-connected", url=None)  # after them: the last one the page sees
        joined = await events.next_event()
        assert joined["event"] == "peer-joined"
        assert joined["peer"]["route"] == "not yet used"  # no route was tried: none is claimed
        assert (await events.next_event()) == {"event": "peer-left", "peer_id": "x"}
        assert (await events.next_event()) == {"event": "lan-peer-found"}
        assert (await events.next_event()) == {"event": "lan-peer-lost"}
        assert (await events.next_event()) == {"event": "tracker-connected", "connected": True}
    finally:
        events.close()


async def test_live_views_are_capped(authed: httpx.AsyncClient) -> None:
    async with trio.open_nursery() as nursery:
        opened = trio.Semaphore(0)
        done = trio.Event()

        async def hold() -> None:
            async with authed.stream("GET", "/events") as response:
                assert response.status_code == 200
                opened.release()
                await done.wait()

        for _ in range(MAX_EVENT_STREAMS):
            nursery.start_soon(hold)
        for _ in range(MAX_EVENT_STREAMS):
            await opened.acquire()
        refused = await authed.get("/events")
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        done.set()


async def test_a_ui_client_that_stops_reading_is_dropped_not_waited_for(
    ui: tuple[str, DaemonContext], authed: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A raw socket that never reads: the hub drops it; a reading client gets everything."""
    base, ctx = ui
    caplog.set_level(logging.WARNING, logger="flashback.daemon.hub")

    def dropped() -> int:
        return sum("fell behind" in record.getMessage() for record in caplog.records)

    port = httpx.URL(base).port
    assert port is not None
    stalled = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await stalled.connect(("127.0.0.1", port))
    request = f"GET /events HTTP/1.1\r\nHost: x\r\nCookie: {COOKIE_NAME}={TOKEN}\r\n\r\n"
    await stalled.send(request.encode())
    head = b""
    with trio.fail_after(10):
        while b"\n\n" not in head.partition(b"data: ")[2]:  # its snapshot: it is subscribed
            head += await stalled.recv(1)
    assert head.startswith(b"HTTP/1.1 200")
    received = sent = 0
    reader = await SSEClient.open(base)
    try:
        with trio.fail_after(120):
            await reader.next_event()  # snapshot: both are subscribed now
            while not dropped():
                for _ in range(100):
                    sent += 1
                    ctx.hub.emit("peer-joined", seq=sent, peer=_peer(sent))
                while received < sent:  # the reader keeps up, batch by batch
                    assert (await reader.next_event())["event"] == "peer-joined"
                    received += 1
            assert dropped() == 1  # the stalled one went; the reader stays and still hears
            ctx.hub.emit("peer-left", seq=sent + 1, peer_id="last", reason="left")
            assert (await reader.next_event())["event"] == "peer-left"
    finally:
        reader.close()
    assert (await authed.get("/api/peers")).status_code == 200
    stalled.close()


async def test_flashback_ui_prints_the_daemons_url(tmp_path: Path, nursery: trio.Nursery) -> None:
    env = daemon_env(tmp_path, "solo")
    missing = await run_cli(["ui"], env=env)
    assert missing.returncode == 1
    assert missing.stderr.decode().count("\n") == 1
    root = tmp_path / "root"
    root.mkdir()
    async with start(
        nursery, ["daemon", "--root", str(root), "--name", "solo"], env=env, name="d"
    ) as proc:
        ready = await proc.wait_event(event_is("ui-ready"))
        assert ready["url"].startswith("http://127.0.0.1:")
        assert "?token=" in ready["url"]
        printed = await run_cli(["ui"], env=env)
        assert printed.returncode == 0
        assert printed.stdout.decode() == ready["url"] + "\n"
        base, _, token = ready["url"].partition("/?token=")
        async with httpx.AsyncClient() as http:
            assert (await http.get(base + "/")).status_code == 403
            assert (await http.get(ready["url"], follow_redirects=True)).status_code == 200
        # A live view left open does not hold the daemon up: SIGTERM still exits 0.
        view = await SSEClient.open(base, token=token)
        try:
            assert (await view.next_event())["event"] == "snapshot"
            proc.signal(signal.SIGTERM)
            assert await proc.wait_exit() == 0
        finally:
            view.close()


async def _read_all(response: httpx.Response) -> int:
    """How many body bytes came before the UI ended the response (or it was all)."""
    got = 0
    with contextlib.suppress(httpx.HTTPError):  # a response cut short
        async for chunk in response.aiter_raw():
            got += len(chunk)
    return got


async def test_proxied_streams_are_a_fair_share_per_peer_and_freed(
    authed: httpx.AsyncClient,
) -> None:
    from flashback.ui.proxy import MAX_STREAMS, MAX_STREAMS_PER_PEER

    limits = httpx.Limits(max_connections=MAX_STREAMS + 4)
    async with httpx.AsyncClient(
        base_url=str(authed.base_url), cookies={COOKIE_NAME: TOKEN}, limits=limits
    ) as http:
        async with AsyncExitStack() as stack:
            held = []
            for _ in range(MAX_STREAMS):  # big.bin is 5 MiB: each one stays open, unread
                response = await stack.enter_async_context(
                    http.stream("GET", "/p/self/content/big.bin")
                )
                assert response.status_code == 200
                held.append(response)
            # past its share a peer's newest stream ends its own oldest, not a 429
            assert (await http.get("/p/self/content/hello.txt")).content == b"hello, world\n"
            assert await _read_all(held[0]) < BIG_FILE_BYTES  # the oldest were cut
            assert await _read_all(held[MAX_STREAMS - MAX_STREAMS_PER_PEER - 1]) < BIG_FILE_BYTES
            assert await _read_all(held[-1]) == BIG_FILE_BYTES  # the newest went on
        # the held ones closed: their slots are free again
        assert (await http.get("/p/self/content/hello.txt")).content == b"hello, world\n"


async def serve_stalling_peer(
    peer_id: str, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """A peer server that is *peer_id* and sends every file's head and 1 KiB, then nothing."""

    async def handle(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(4096)
            if not data:
                return
            head += data
        target = head.split(b" ", 2)[1].decode()
        with contextlib.suppress(trio.BrokenResourceError):
            if target.startswith("/api/info"):
                body = json.dumps({"peer_id": peer_id}).encode()
                await stream.send_all(hostile_http({"Content-Type": "application/json"}, body))
                return
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5242880\r\n\r\n" + bytes(1024)
            )
            await stream.receive_some(1)  # until the UI hangs up
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def test_a_stalling_peer_cannot_take_every_proxied_stream(
    nursery: trio.Nursery, ui: tuple[str, DaemonContext], authed: httpx.AsyncClient
) -> None:
    """One peer that drips its files (or a page that embeds many of them) holds
    its share of the UI's stream slots; another peer's file still streams, and
    when the slots are full the heaviest peer's oldest stream is the one cut.
    On the code before, 16 stalled streams of one peer made every other 429."""
    from flashback.ui.proxy import MAX_STREAMS

    _, ctx = ui
    port = await nursery.start(serve_stalling_peer, "evil")
    ctx.table.peers["evil"] = PeerInfo("evil", "mallory", "127.0.0.1", port)
    limits = httpx.Limits(max_connections=2 * MAX_STREAMS + 4)
    async with (
        httpx.AsyncClient(
            base_url=str(authed.base_url), cookies={COOKIE_NAME: TOKEN}, limits=limits
        ) as http,
        AsyncExitStack() as stack,
    ):
        stalled = []
        for i in range(MAX_STREAMS):
            response = await stack.enter_async_context(
                http.stream("GET", f"/p/evil/content/f{i}.bin")
            )
            assert response.status_code == 200
            stalled.append(response)
        honest = await http.get("/p/self/content/hello.txt")
        assert honest.status_code == 200, honest.text
        assert honest.content == b"hello, world\n"
        # the stalled peer's oldest streams were cut; it holds no more than its share
        assert await _read_all(stalled[0]) == 1024


HOSTILE_LISTING = {
    "path": "",
    "entries": [
        {"name": "../../etc", "type": "dir", "size": 0},
        {"name": ".hidden", "type": "file", "size": 1},
        {"name": "<img src=x onerror=alert(1)>.md", "type": "file", "size": 1},
        {"name": "ok.txt", "type": "file", "size": "huge"},
        {"name": "a/b", "type": "file", "size": 1},
        {"name": "x\x1b[2J", "type": "file", "size": 1},
        "not an entry",
    ],
    "next_cursor": None,
}


async def serve_hostile_peer(
    responses: dict[str, bytes], *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """A 'peer server' that answers each path prefix with fixed raw bytes."""

    async def handle(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some(4096)
            if not data:
                return
            head += data
        target = head.split(b" ", 2)[1].decode()
        for prefix, raw in responses.items():
            if target.startswith(prefix):
                with contextlib.suppress(trio.BrokenResourceError):  # the UI hung up on us
                    await stream.send_all(raw)
                break
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


def hostile_http(headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{k}: {v}" for k, v in {**headers, "Content-Length": str(len(body))}.items()]
    return ("HTTP/1.1 200 OK\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_a_hostile_peer_cannot_reach_the_ui_origin(
    nursery: trio.Nursery, ui: tuple[str, DaemonContext], authed: httpx.AsyncClient
) -> None:
    _, ctx = ui
    port = await nursery.start(
        serve_hostile_peer,
        {
            "/api/info": hostile_http({"Content-Type": "application/json"}, b'{"peer_id": "evil"}'),
            "/api/files/big": hostile_http({"Content-Type": "application/json"}, b" " * (5 << 20)),
            "/api/files": hostile_http(
                {"Content-Type": "application/json"}, json.dumps(HOSTILE_LISTING).encode()
            ),
            "/content/": hostile_http(
                {
                    "Content-Type": "text/html",
                    "Content-Security-Policy": "script-src *",
                    "Set-Cookie": f"{COOKIE_NAME}=stolen",
                },
                b"<script>document.title='pwned'</script>",
            ),
        },
    )
    ctx.table.peers["evil"] = PeerInfo("evil", "mallory", "127.0.0.1", port)
    page = await authed.get("/p/evil/browse/")
    assert page.status_code == 200
    assert "ok.txt" in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;.md" in page.text
    for refused in ("../../etc", ".hidden", "a/b", "\x1b", "<img src=x"):
        assert refused not in page.text
    content = await authed.get("/p/evil/content/page")
    assert content.headers["content-security-policy"] == SANDBOX_CSP
    assert content.headers["content-type"] == "application/octet-stream"
    assert "set-cookie" not in content.headers
    too_big = await authed.get("/p/evil/browse/big")
    assert too_big.status_code == 502
    assert too_big.json()["error"]["code"] == "unreachable"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed: connecting is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_the_ui_reaches_a_peer_only_as_itself_and_through_a_tunnel_when_needed(
    nursery: trio.Nursery,
    tmp_path: Path,
    ui: tuple[str, DaemonContext],
    authed: httpx.AsyncClient,
    forwards: Forwards,
) -> None:
    """The same routes as ``ls``: an address that answers for somebody else (alice's
    server, a local service) is not the peer; a peer only a tunnel reaches is shown."""
    _, ctx = ui
    alice_root = tmp_path / "alice"
    alice_root.mkdir()
    (alice_root / "alice-only.txt").write_text("alice's\n")
    alice_info = LocalInfo(name="alice", peer_id="p-alice")
    alice = await nursery.start(
        partial(serve_peer, ShareSettings(alice_root, False, alice_info), "127.0.0.1", 0)
    )
    service = await nursery.start(
        serve_hostile_peer,
        {
            "/api/files": hostile_http(
                {"Content-Type": "application/json"},
                json.dumps(
                    {"entries": [{"name": "service-secret", "type": "file", "size": 1}]}
                ).encode(),
            ),
        },
    )
    ctx.table.peers["p-evil"] = PeerInfo("p-evil", "mallory", "127.0.0.1", alice.port)
    ctx.table.peers["p-svc"] = PeerInfo("p-svc", "service", "127.0.0.1", service)
    # alice is registered where nothing answers: only her tunnel reaches her
    ctx.table.peers["p-alice"] = PeerInfo("p-alice", "alice", "127.0.0.1", closed_port())
    forwards[("p-alice", "peer-server")] = alice.port

    for impostor in ("p-evil", "p-svc"):
        page = await authed.get(f"/p/{impostor}/browse/")
        assert page.status_code == 502, (impostor, page.text)
        assert page.json()["error"]["code"] == "unreachable"
        assert "alice-only" not in page.text and "service-secret" not in page.text
        content = await authed.get(f"/p/{impostor}/content/alice-only.txt")
        assert content.status_code == 502
    relayed = await authed.get("/p/p-alice/browse/")
    assert relayed.status_code == 200, relayed.text
    assert "alice-only.txt" in relayed.text and "route relay" in relayed.text
    text = await authed.get("/p/p-alice/content/alice-only.txt")
    assert text.content == b"alice's\n"


async def test_a_huge_markdown_is_shown_as_text_not_rendered(
    authed: httpx.AsyncClient, share: Path
) -> None:
    """512 KiB of ``![``: seconds of CPU per view when rendered; over the cap it is text."""
    (share / "bomb.md").write_text("![" * (256 * 1024))
    (share / "fine.md").write_text("# Fine\n\n" + "a line\n" * 1000)
    bomb = await authed.get("/p/self/view/bomb.md")
    assert bomb.status_code == 200
    assert 'id="rendered"' not in bomb.text and 'id="not-rendered"' in bomb.text
    assert '<pre id="text">![![' in bomb.text
    fine = await authed.get("/p/self/view/fine.md")
    assert '<h1 id="fine">Fine</h1>' in fine.text and 'id="not-rendered"' not in fine.text


async def test_markdown_renders_are_cached_by_etag_and_bounded_in_number() -> None:
    from flashback.ui.rendering import MarkdownRenderer

    running = peak = 0
    release, entered = trio.Event(), trio.Semaphore(0)

    def slow_render(text: str, parts: tuple[str, ...], url_for: Any) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        trio.from_thread.run_sync(entered.release)
        trio.from_thread.run(release.wait)
        running -= 1
        return f"<p>{text}</p>"

    renderer = MarkdownRenderer(render=slow_render, max_renders=2)

    def url_for(action: str, parts: tuple[str, ...]) -> str:
        return "/"

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(renderer.render, "peer", (f"f{i}.md",), '"v1"', "x", url_for)
        await entered.acquire()
        await entered.acquire()
        await trio.testing.wait_all_tasks_blocked()
        assert renderer.waiting == 4 and peak == 2  # four wait for a slot
        release.set()
    assert renderer.renders == 6 and peak == 2
    again = await renderer.render("peer", ("f0.md",), '"v1"', "x", url_for)
    assert again == "<p>x</p>" and renderer.renders == 6  # from the cache
    await renderer.render("peer", ("f0.md",), '"v2"', "y", url_for)  # changed: rendered
    await renderer.render("peer", ("f0.md",), None, "y", url_for)  # no validator: rendered
    await renderer.render("other", ("f0.md",), '"v1"', "x", url_for)  # another peer's
    assert renderer.renders == 9


async def test_a_peer_that_drips_a_listing_or_a_text_ends_that_view(
    nursery: trio.Nursery,
    ui: tuple[str, DaemonContext],
    authed: httpx.AsyncClient,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A byte every 25 s (inside every read timeout): the view gives up at its deadline."""
    from tests.test_transfer import serve_scripted

    _, ctx = ui

    async def answer(request: bytes, stream: trio.SocketStream) -> None:
        if request.startswith(b"GET /api/info"):
            body = b'{"peer_id": "slow"}'
            await stream.send_all(hostile_http({"Content-Type": "application/json"}, body))
            return
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(100_000):
            await stream.send_all(b" ")
            await trio.sleep(25)

    port = await serve_scripted(nursery, answer)
    ctx.table.peers["slow"] = PeerInfo("slow", "slowpoke", "127.0.0.1", port)
    for route in ("/p/slow/browse/", "/p/slow/view/notes.txt"):
        started = trio.current_time()
        with trio.fail_after(3600):
            response = await authed.get(route, timeout=None)
        assert response.status_code == 502, route
        assert "took over 60 s" in response.json()["error"]["message"]
        assert trio.current_time() - started < 120


FP_ALICE = "sha256:" + "a" * 64
FP_ALICE_TOO = "sha256:" + "d" * 64


async def test_lan_and_book_peers_are_listed_by_source_and_browsed_by_their_endpoint(
    nursery: trio.Nursery, share: Path, tmp_path: Path
) -> None:
    """A LAN peer and a book peer, both named alice: two rows told apart by source
    and fingerprint, each browsed, viewed and downloaded through the daemon's
    direct-endpoint door (its candidates taught to the routes, the forward it
    opens reaching that peer's real server), never one for the other."""
    shares = {}
    for fingerprint, text in ((FP_ALICE, "from the lan\n"), (FP_ALICE_TOO, "from the book\n")):
        root = tmp_path / fingerprint[-1]
        (root / "music").mkdir(parents=True)
        (root / "music" / "notes.txt").write_text(text)
        settings = ShareSettings(root, False, LocalInfo(name="alice"))
        shares[fingerprint] = await nursery.start(partial(serve_peer, settings, "127.0.0.1", 0))
    # the router's forward for each key stands in for the TLS-checked dial of its candidates
    forwards: Forwards = {(fp, "peer-server"): address.port for fp, address in shares.items()}
    taught: list[tuple[str, str, tuple[Candidate, ...]]] = []
    async with httpx.AsyncClient() as probe:
        ctx, url = await ui_context(nursery, share, probe, forwards, taught)
        ctx.lan = LanTable(None)
        lan_at = (Candidate("192.0.2.7", 4711),)
        ctx.lan.seen(LanPeer("alice._flashback._tcp.local.", None, "alice", FP_ALICE, lan_at))
        ctx.book = PeerBook(tmp_path / BOOK_FILE, clock=lambda: 5.0)
        book_at = (Candidate("198.51.100.9", 4712),)
        ctx.book.record(FP_ALICE_TOO, name="alice", candidates=book_at)
        # a tracker-listed id copying a fingerprint stands for nobody but itself
        assert ctx.address is not None
        ctx.table.peers[FP_ALICE] = PeerInfo(FP_ALICE, "mallory", "127.0.0.1", ctx.address.port)
        base = url.split("/?", 1)[0]
        async with httpx.AsyncClient(base_url=base, cookies={COOKIE_NAME: TOKEN}) as http:
            listed = (await http.get("/api/peers")).json()["peers"]
            rows = {row["fingerprint"]: row for row in listed}
            assert {fp: (r["name"], r["source"]) for fp, r in rows.items()} == {
                FP_ALICE: ("alice", "lan"),
                FP_ALICE_TOO: ("alice", "book"),
            }
            assert rows[FP_ALICE]["address"] == "192.0.2.7:4711"
            assert rows[FP_ALICE]["last_seen_human"] == "on the LAN now"
            assert rows[FP_ALICE_TOO]["last_seen"] == "last reached 1970-01-01T00:00:05Z"
            assert rows[FP_ALICE_TOO]["last_seen_human"] == "1 Jan 1970"
            page = await http.get("/")
            assert page.text.count('<td class="source">lan</td>') == 1
            assert page.text.count('<td class="source">book</td>') == 1
            for fingerprint, text, at in (
                (FP_ALICE, "from the lan\n", lan_at),
                (FP_ALICE_TOO, "from the book\n", book_at),
            ):
                browse = rows[fingerprint]["browse"]
                assert browse == f"/p/{fingerprint.replace(':', '%3A')}/browse/"
                folder = await http.get(f"{browse}music/")
                assert folder.status_code == 200
                assert "notes.txt" in folder.text
                assert taught[-1] == (fingerprint, fingerprint, at)
                viewed = await http.get(f"/p/{fingerprint}/view/music/notes.txt")
                assert viewed.status_code == 200 and text.strip() in viewed.text
                got = await http.get(f"/p/{fingerprint}/download/music/notes.txt")
                assert got.status_code == 200 and got.content == text.encode()
                assert got.headers["content-disposition"].startswith("attachment")
            # two peers share the name: it names neither, only a fingerprint tells them apart
            by_name = await http.get("/p/alice/browse/")
            assert by_name.status_code == 409
            assert by_name.json()["error"]["code"] == "ambiguous_peer"
            # reached, the LAN peer is in the book now; a book row without an address says so
            assert FP_ALICE in {entry.fingerprint for entry in ctx.book.entries()}
            ctx.book.record(FP_CAROL, name="carol")
            nowhere = await http.get(f"/p/{FP_CAROL}/browse/")
            assert nowhere.status_code == 502
            assert nowhere.json()["error"]["code"] == "no_direct_endpoint"


FP_CAROL = "sha256:" + "c" * 64

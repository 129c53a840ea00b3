"""The daemon wiring in-process: local requests, routing answers, the control route."""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from flashback.config import DaemonConfig
from flashback.daemon.context import DaemonContext
from flashback.daemon.control import create_control_app
from flashback.daemon.hub import EventHub
from flashback.daemon.identity import Identity
from flashback.daemon.stream_ports import run_stream_ports
from flashback.daemon.stream_request import NoTracker, StreamRefused, StreamTimeout, request_stream
from flashback.errors import NotFound
from flashback.peer.app import LocalInfo
from flashback.protocol.messages import FileStreamReady, StreamError, StreamRequest
from flashback.protocol.messages import PeerInfo as WirePeer
from flashback.shutdown import Shutdown


def make_ctx(share: Path) -> DaemonContext:
    config = DaemonConfig(root=share, tracker_url="http://tracker.invalid", name="me")
    return DaemonContext(config=config, hub=EventHub(stdout=io.StringIO()), local=LocalInfo("me"))


async def test_a_request_to_ourselves_needs_no_tracker(nursery: trio.Nursery, share: Path) -> None:
    ctx = make_ctx(share)
    shutdown = Shutdown()
    with trio.fail_after(10):
        await nursery.start(run_stream_ports, ctx, shutdown)
        notice = await request_stream(ctx, "me", "hello.txt")
        assert notice["type"] == "file-stream-ready" and "to" not in notice
        assert notice["path"] == "hello.txt" and notice["size"] == 13
        async with httpx.AsyncClient(timeout=5) as http:
            url = f"http://{notice['host']}:{notice['port']}/{notice['token']}"
            assert (await http.get(url)).text == "hello, world\n"
        with pytest.raises(StreamRefused) as refused:
            await request_stream(ctx, "me", ".secret")
        assert refused.value.code == "not_found" and refused.value.status == 404
        assert not ctx.stream_waiters  # every waiter cleaned up
        with pytest.raises(NoTracker, match="no tracker connection"):
            await request_stream(ctx, "someone-else", "hello.txt")
        stdout = ctx.hub._stdout
        assert isinstance(stdout, io.StringIO)
        while '"stream-closed"' not in stdout.getvalue():  # noqa: ASYNC110
            await trio.sleep(0.01)
        assert notice["token"] not in stdout.getvalue()


async def test_remote_requests_and_answers_go_through_the_tracker_queue(
    nursery: trio.Nursery, share: Path
) -> None:
    ctx = make_ctx(share)
    shutdown = Shutdown()
    with trio.fail_after(10):
        manager = await nursery.start(run_stream_ports, ctx, shutdown)
        await ctx.stream_requests_send.send(StreamRequest("r1", "hello.txt", from_="bob"))
        answer = await ctx.outgoing_receive.receive()
        assert isinstance(answer, FileStreamReady) and answer.to == "bob"
        await ctx.stream_requests_send.send(StreamRequest("r2", "../x", from_="bob"))
        error = await ctx.outgoing_receive.receive()
        assert isinstance(error, StreamError) and error.code == "not_found" and error.to == "bob"
        assert len(manager.open_ports) == 1
        shutdown.set()  # daemon shutdown closes every port
        while manager.open_ports:  # noqa: ASYNC110
            await trio.sleep(0.01)
        assert '"reason": "shutdown"' in ctx.hub._stdout.getvalue()  # type: ignore[union-attr]  # the hub writes to the test's StringIO


async def test_requester_waits_for_the_owner_answer(share: Path) -> None:
    ctx = make_ctx(share)
    ctx.set_identity(Identity(peer_id="p-me", token="t"))
    ctx.tracker_connected = True
    with trio.fail_after(10):
        with pytest.raises(NotFound, match="no peer 'alice'"):
            await request_stream(ctx, "alice", "x")
        ctx.table.peers["p-alice"] = _peer("p-alice", "alice")

        async def owner() -> None:
            request = await ctx.outgoing_receive.receive()
            assert isinstance(request, StreamRequest) and request.to == "p-alice"
            ctx.deliver_stream_answer(
                FileStreamReady(
                    request.request_id, "127.0.0.1", 9, "tok", "x", 1, 60, from_="p-alice"
                )
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner)
            notice = await request_stream(ctx, "alice", "x")
        assert notice["from"] == "p-alice" and notice["token"] == "tok"


async def test_requester_gives_up_after_the_bound(
    share: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ctx = make_ctx(share)
    ctx.set_identity(Identity(peer_id="p-me", token="t"))
    ctx.tracker_connected = True
    ctx.table.peers["p-alice"] = _peer("p-alice", "alice")
    with trio.fail_after(60):
        start = trio.current_time()
        with pytest.raises(StreamTimeout, match="no answer") as timeout:
            await request_stream(ctx, "alice", "x")
        assert timeout.value.status == 504
        assert trio.current_time() - start == pytest.approx(15)
        assert not ctx.stream_waiters


async def test_control_route(nursery: trio.Nursery, share: Path) -> None:
    ctx = make_ctx(share)
    with trio.fail_after(10):
        await nursery.start(partial(run_stream_ports, ctx, Shutdown()))
        client = create_control_app(ctx).test_client()
        ok = await client.post("/stream", json={"peer": "me", "path": "hello.txt"})
        assert ok.status_code == 200 and (await ok.get_json())["size"] == 13
        bad = await client.post("/stream", json={"peer": "me"})
        assert bad.status_code == 400 and "error" in await bad.get_json()
        missing = await client.post("/stream", json={"peer": "me", "path": "nope"})
        assert missing.status_code == 404
        assert (await missing.get_json())["error"]["code"] == "not_found"
        offline = await client.post("/stream", json={"peer": "bob", "path": "x"})
        assert offline.status_code == 503
        assert (await offline.get_json())["error"] == {
            "code": "no_tracker",
            "message": "no tracker connection",
        }


def _peer(peer_id: str, name: str) -> WirePeer:
    return WirePeer(peer_id, name, "127.0.0.1", 1)

"""The whole system as users run it: a tracker process and daemon processes on loopback."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import signal
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.procs import Proc, daemon_env, event_is, run_cli, start

TRACKER_ENV = {
    "RELAY_HEARTBEAT_INTERVAL": "1",
    "RELAY_PEER_TTL": "5",
}


def make_share(base: Path, name: str, files: dict[str, bytes]) -> Path:
    root = base / name / "share"
    root.mkdir(parents=True)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


async def start_tracker(
    stack: AsyncExitStack, nursery: trio.Nursery, base: Path, port: int = 0
) -> tuple[Proc, str]:
    env = {**TRACKER_ENV, "DATABASE_URL": f"sqlite:///{base / 'tracker.sqlite3'}"}
    proc = await stack.enter_async_context(
        start(
            nursery,
            ["tracker", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            name="tracker",
        )
    )
    ready = await proc.wait_event(event_is("tracker-ready"))
    return proc, ready["url"]


async def start_daemon(
    stack: AsyncExitStack,
    nursery: trio.Nursery,
    base: Path,
    name: str,
    tracker_url: str,
    files: dict[str, bytes] | None = None,
) -> Proc:
    root = make_share(base, name, files or {f"{name}.txt": f"I am {name}\n".encode()})
    proc = await stack.enter_async_context(
        start(
            nursery,
            ["daemon", "--root", str(root), "--tracker", tracker_url, "--name", name],
            env=daemon_env(base, name),
            name=name,
        )
    )
    await proc.wait_event(event_is("peer-server-ready"))
    await proc.wait_event(event_is("tracker-connected"))
    return proc


async def watchers(env: dict[str, str]) -> int:
    """How many ``peers --watch`` the daemon has subscribed now (``status --json``)."""
    return int(json.loads((await run_cli(["status", "--json"], env=env)).stdout)["watchers"])


def joined(name: str) -> Any:
    return lambda e: e.get("event") == "peer-joined" and e["peer"]["name"] == name


async def test_daemons_see_each_other_join_and_leave(tmp_path: Path, nursery: trio.Nursery) -> None:
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker(stack, nursery, tmp_path)
            alice = await start_daemon(stack, nursery, tmp_path, "alice", url)
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await alice.wait_event(joined("bob"))
            await bob.wait_event(joined("alice"))

            alice_env = daemon_env(tmp_path, "alice")
            status = await run_cli(["status", "--json"], env=alice_env)
            assert status.returncode == 0, status.stderr
            info = json.loads(status.stdout)
            assert info["name"] == "alice"
            assert info["tracker"] == {
                "url": url,
                "connected": True,
                "reason": None,
                "ever_connected": True,
            }
            assert info["url"] == f"http://127.0.0.1:{info['port']}"

            watch = await stack.enter_async_context(
                start(
                    nursery,
                    ["peers", "--watch", "--json"],
                    env=daemon_env(tmp_path, "alice"),
                    name="watch",
                )
            )
            # carol must join after the watcher subscribed, or she is only in the
            # snapshot it skips: the daemon counts its live subscribers
            assert info["watchers"] == 0
            while await watchers(alice_env) != 1:  # noqa: ASYNC110 -- another process, polled
                await trio.sleep(0.05)
            carol = await start_daemon(stack, nursery, tmp_path, "carol", url)
            joined_event = await watch.wait_event(joined("carol"))
            carol_id = joined_event["peer"]["peer_id"]

            peers = await run_cli(["peers", "--json"], env=daemon_env(tmp_path, "bob"))
            listing = json.loads(peers.stdout)
            assert {p["name"] for p in listing["peers"]} == {"alice", "bob", "carol"}
            assert isinstance(listing["seq"], int)

            carol.signal(signal.SIGTERM)
            with trio.fail_after(5):
                assert await carol.wait_exit() == 0
            left = await watch.wait_event(event_is("peer-left", peer_id=carol_id))
            assert left["reason"] == "left"
            await bob.wait_event(event_is("peer-left", peer_id=carol_id, reason="left"))

            ls = await run_cli(["ls", "bob", "--json"], env=daemon_env(tmp_path, "alice"))
            assert ls.returncode == 0, ls.stderr
            assert [e["name"] for e in json.loads(ls.stdout)["entries"]] == ["bob.txt", "index.md"]

            for proc in (alice, bob):
                proc.signal(signal.SIGTERM)
                assert await proc.wait_exit(timeout_s=5) == 0


async def test_get_downloads_and_checks(tmp_path: Path, nursery: trio.Nursery) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker(stack, nursery, tmp_path)
            await start_daemon(stack, nursery, tmp_path, "alice", url, {"sub/big.bin": data})
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await bob.wait_event(joined("alice"))
            out = tmp_path / "out.bin"
            result = await run_cli(
                ["get", "alice", "sub/big.bin", "-o", str(out)], env=daemon_env(tmp_path, "bob")
            )
            assert result.returncode == 0, result.stderr
            last = json.loads(result.stdout.splitlines()[-1])
            assert last == {
                "event": "download-complete",
                "path": str(out),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "verified": True,
                "repaired_blocks": 0,
            }
            assert out.read_bytes() == data
            assert not (tmp_path / "out.bin.part").exists()

            missing = await run_cli(
                ["get", "alice", "nope.bin", "-o", str(tmp_path / "x")],
                env=daemon_env(tmp_path, "bob"),
            )
            assert missing.returncode == 1
            assert len(missing.stderr.decode().strip().splitlines()) == 1
            unknown = await run_cli(["get", "nobody", "x"], env=daemon_env(tmp_path, "bob"))
            assert unknown.returncode == 1
            assert b"nobody" in unknown.stderr


class FakePeerServer:
    """What every hand-written test peer shares: its peer id once registered, and
    the ``/api/info`` answer that makes the daemon's route to it direct (§6.3)."""

    peer_id: str | None = None

    async def answered_info(self, stream: trio.SocketStream, target: str) -> bool:
        if target != "/api/info":
            return False
        body = json.dumps({"name": "fake", "peer_id": self.peer_id, "version": "0"}).encode()
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await stream.aclose()
        return True


async def register_fake_peer(
    tracker_url: str,
    name: str,
    port: int,
    fake: FakePeerServer | None = None,
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    """Register a test server as a peer and heartbeat for it like a daemon
    would, so it stays online however slowly the CLI runs start (TTL 5 s)."""
    async with httpx.AsyncClient(base_url=tracker_url) as http:
        registered = await http.post(
            "/api/peers/register",
            json={
                "name": name,
                "peer_server": {"host": "127.0.0.1", "port": port},
                "capabilities": {},
            },
        )
        assert registered.status_code == 201
        identity = registered.json()
        if fake is not None:
            fake.peer_id = identity["peer_id"]
        task_status.started()
        while True:
            await trio.sleep(1)
            with contextlib.suppress(httpx.HTTPError):  # the tracker stops with the test
                await http.post(
                    "/api/peers/heartbeat",
                    json={"peer_id": identity["peer_id"]},
                    headers={"Authorization": f"Bearer {identity['token']}"},
                )


class FlakyPeer(FakePeerServer):
    """A peer server that breaks the first download halfway, then serves the rest."""

    ETAG = '"flaky-v1"'

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list[dict[str, str]] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = await stream.receive_some()
            if not chunk:
                return
            raw += chunk
        head = raw.split(b"\r\n\r\n")[0].decode().split("\r\n")
        if await self.answered_info(stream, head[0].split(" ")[1]):
            return
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        self.requests.append(headers)
        size = len(self.data)
        digest = base64.b64encode(hashlib.sha256(self.data).digest()).decode()
        if "range" not in headers:
            await stream.send_all(
                f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nETag: {self.ETAG}\r\n"
                f"Repr-Digest: sha-256=:{digest}:\r\n"
                f"Accept-Ranges: bytes\r\nConnection: close\r\n\r\n".encode()
            )
            await stream.send_all(self.data[: size // 3])  # then vanish
            await stream.aclose()
            return
        first = int(headers["range"].removeprefix("bytes=").rstrip("-"))
        assert headers.get("if-range") == self.ETAG
        body = self.data[first:]
        await stream.send_all(
            f"HTTP/1.1 206 Partial Content\r\nContent-Length: {len(body)}\r\n"
            f"Content-Range: bytes {first}-{size - 1}/{size}\r\nETag: {self.ETAG}\r\n"
            f"Repr-Digest: sha-256=:{digest}:\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await stream.aclose()


async def test_get_keeps_the_partial_file_and_resumes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    data = os.urandom(2 * 1024 * 1024)
    flaky = FlakyPeer(data)
    listeners = await nursery.start(partial(trio.serve_tcp, flaky.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker(stack, nursery, tmp_path)
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await nursery.start(register_fake_peer, url, "flaky", port, flaky)
            await bob.wait_event(joined("flaky"))
            out = tmp_path / "file.bin"
            first = await run_cli(
                ["get", "flaky", "file.bin", "-o", str(out)], env=daemon_env(tmp_path, "bob")
            )
            assert first.returncode == 1
            message = first.stderr.decode().strip()
            assert len(message.splitlines()) == 1 and "resume" in message
            part = tmp_path / "file.bin.part"
            assert part.stat().st_size == len(data) // 3
            assert not out.exists()

            second = await run_cli(
                ["get", "flaky", "file.bin", "-o", str(out)], env=daemon_env(tmp_path, "bob")
            )
            assert second.returncode == 0, second.stderr
            assert flaky.requests[-1]["range"] == f"bytes={len(data) // 3}-"
            assert out.read_bytes() == data
            assert (
                json.loads(second.stdout.splitlines()[-1])["sha256"]
                == hashlib.sha256(data).hexdigest()
            )


async def test_tracker_restart_peers_keep_serving_and_come_back(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(90):
        async with AsyncExitStack() as stack:
            tracker, url = await start_tracker(stack, nursery, tmp_path)
            port = int(url.rsplit(":", 1)[1])
            alice = await start_daemon(stack, nursery, tmp_path, "alice", url)
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await bob.wait_event(joined("alice"))
            alice_ready = await alice.wait_event(event_is("peer-server-ready"))
            ids_before = {
                json.loads(
                    (await run_cli(["status", "--json"], env=daemon_env(tmp_path, n))).stdout
                )["peer_id"]
                for n in ("alice", "bob")
            }

            tracker.signal(signal.SIGKILL)
            await tracker.wait_exit()
            await alice.wait_event(event_is("tracker-disconnected"))
            # the peer servers go on serving while the tracker is away
            async with httpx.AsyncClient(base_url=alice_ready["url"]) as http:
                assert (await http.get("/content/alice.txt")).text == "I am alice\n"

            marks = {proc.name: len(proc.events) for proc in (alice, bob)}
            await bob.wait_event(event_is("tracker-disconnected"))
            await start_tracker(stack, nursery, tmp_path, port=port)
            for proc in (alice, bob):
                await proc.wait_event(
                    event_is("tracker-connected"), timeout_s=40, after=marks[proc.name]
                )
            async with httpx.AsyncClient(base_url=url) as http:
                with trio.fail_after(30):
                    while True:
                        listing = (await http.get("/api/peers/list")).json()
                        if {p["name"] for p in listing["peers"]} == {"alice", "bob"}:
                            break
                        await trio.sleep(0.2)
            # same identities as before the restart (kept by the tracker's SQLite and the daemons)
            assert {p["peer_id"] for p in listing["peers"]} == ids_before
            for proc in (alice, bob):
                proc.signal(signal.SIGINT)
                assert await proc.wait_exit(timeout_s=5) == 0


async def test_daemon_refuses_a_second_instance_and_bad_config(tmp_path: Path) -> None:
    root = make_share(tmp_path, "solo", {"a.txt": b"a"})
    bad = await run_cli(
        ["daemon", "--root", str(tmp_path / "missing")], env=daemon_env(tmp_path, "solo")
    )
    assert bad.returncode == 2
    assert len(bad.stderr.decode().strip().splitlines()) == 1
    bad_url = await run_cli(
        ["daemon", "--root", str(root), "--tracker", "ftp://x"], env=daemon_env(tmp_path, "solo")
    )
    assert bad_url.returncode == 2
    no_daemon = await run_cli(["status"], env=daemon_env(tmp_path, "nobody"))
    assert no_daemon.returncode == 1
    assert b"no flashback daemon is running" in no_daemon.stderr


async def test_daemon_without_tracker_serves_and_second_instance_is_refused(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    root = make_share(tmp_path, "solo", {"a.txt": b"a"})
    env = daemon_env(tmp_path, "solo")
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            solo = await stack.enter_async_context(
                start(
                    nursery, ["daemon", "--root", str(root), "--name", "solo"], env=env, name="solo"
                )
            )
            ready = await solo.wait_event(event_is("peer-server-ready"))
            async with httpx.AsyncClient(base_url=ready["url"]) as http:
                info = (await http.get("/api/info")).json()
                assert info["name"] == "solo" and info["peer_id"] is None
            state = tmp_path / "solo" / "state"
            assert oct(state.stat().st_mode & 0o777) == "0o700"
            assert oct((state / "control.sock").stat().st_mode & 0o777) == "0o600"
            second = await run_cli(["daemon", "--root", str(root)], env=env)
            assert second.returncode == 2
            assert b"already running" in second.stderr
            assert b"FLASHBACK_STATE_DIR" in second.stderr  # says how to run a second one
            status = json.loads((await run_cli(["status", "--json"], env=env)).stdout)
            assert status["tracker"] == {
                "url": None,
                "connected": False,
                "reason": None,
                "ever_connected": False,
            }
            solo.signal(signal.SIGTERM)
            assert await solo.wait_exit(timeout_s=5) == 0


async def test_wildcard_bind_announces_a_dialable_address(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    root = make_share(tmp_path, "wide", {"a.txt": b"a"})
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker(stack, nursery, tmp_path)
            wide = await stack.enter_async_context(
                start(
                    nursery,
                    ["daemon", "--root", str(root), "--tracker", url, "--host", "0.0.0.0"],
                    env=daemon_env(tmp_path, "wide"),
                    name="wide",
                )
            )
            joined_event = await wide.wait_event(lambda e: e.get("event") == "peer-joined")
            assert joined_event["peer"]["peer_server"]["host"] == "127.0.0.1"
            wide.signal(signal.SIGTERM)
            assert await wide.wait_exit(timeout_s=5) == 0


class LyingPeer(FakePeerServer):
    """A peer server whose bytes never match the digest it announces."""

    ETAG = '"lying-v1"'

    def __init__(self, right: bytes) -> None:
        self.right = right
        self.targets: list[str] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = await stream.receive_some()
            if not chunk:
                return
            raw += chunk
        head = raw.split(b"\r\n\r\n")[0].decode().split("\r\n")
        target = head[0].split(" ")[1]
        if await self.answered_info(stream, target):
            return
        self.targets.append(target)
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        size = len(self.right)
        if target.startswith("/api/digest/"):
            body = json.dumps(
                {
                    "path": "file.bin",
                    "size": size,
                    "sha256": hashlib.sha256(self.right).hexdigest(),
                    "block_size": 1024 * 1024,
                    "blocks": [
                        hashlib.sha256(self.right[i : i + 1024 * 1024]).hexdigest()
                        for i in range(0, size, 1024 * 1024)
                    ],
                }
            ).encode()
            status, extra = "200 OK", ""
        elif "range" in headers:
            first, last = (int(x) for x in headers["range"].removeprefix("bytes=").split("-"))
            body = b"\0" * (last + 1 - first)
            status, extra = "206 Partial Content", f"Content-Range: bytes {first}-{last}/{size}\r\n"
        else:
            body, status, extra = b"\0" * size, "200 OK", ""
        digest = base64.b64encode(hashlib.sha256(self.right).digest()).decode()
        await stream.send_all(
            f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nETag: {self.ETAG}\r\n"
            f"Repr-Digest: sha-256=:{digest}:\r\n{extra}Connection: close\r\n\r\n".encode()
            + body
        )
        await stream.aclose()


async def test_get_from_an_owner_whose_bytes_never_match_fails_without_out(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    lying = LyingPeer(os.urandom(2 * 1024 * 1024 + 3))
    listeners = await nursery.start(partial(trio.serve_tcp, lying.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker(stack, nursery, tmp_path)
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await nursery.start(register_fake_peer, url, "liar", port, lying)
            await bob.wait_event(joined("liar"))
            out = tmp_path / "file.bin"
            result = await run_cli(
                ["get", "liar", "file.bin", "-o", str(out)], env=daemon_env(tmp_path, "bob")
            )
    assert result.returncode == 1
    message = result.stderr.decode().strip()
    assert len(message.splitlines()) == 1 and "do not match" in message, message
    assert not out.exists() and not (tmp_path / "file.bin.part").exists()
    # the body, the manifest, then one ranged repair of all three blocks
    assert lying.targets == ["/download/file.bin", "/api/digest/file.bin", "/download/file.bin"]
    assert not any(
        e.get("event") == "download-complete" for e in map(json.loads, result.stdout.splitlines())
    )

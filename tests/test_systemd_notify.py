"""sd_notify from real processes: READY, STATUS, WATCHDOG and STOPPING on a datagram socket."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio

from tests.procs import daemon_env, event_is, start
from tests.test_daemon_system import make_share, start_tracker


class NotifyListener:
    """Plays systemd's side of NOTIFY_SOCKET: collects every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.messages: list[str] = []
        self._changed = trio.Event()

    async def bind(self) -> None:
        await self.sock.bind(str(self.path))

    async def collect(self) -> None:
        while True:
            data = await self.sock.recv(65536)
            self.messages.append(data.decode())
            self._changed.set()
            self._changed = trio.Event()

    def fields(self) -> list[tuple[str, str]]:
        return [
            tuple(line.split("=", 1))  # type: ignore[misc]  # NAME=value: two parts
            for message in self.messages
            for line in message.splitlines()
        ]

    async def wait_count(self, text: str, count: int, *, timeout_s: float = 5) -> None:
        with trio.fail_after(timeout_s):
            while sum(text in m for m in self.messages) < count:
                await self._changed.wait()

    async def wait_for(self, key: str, value: str | None = None, *, timeout_s: float = 15) -> str:
        with trio.fail_after(timeout_s):
            while True:
                for k, v in self.fields():
                    if k == key and (value is None or value in v):
                        return v
                await self._changed.wait()


@asynccontextmanager
async def open_notify_listener(path: Path) -> AsyncIterator[NotifyListener]:
    """A bound listener collecting in the background until the block ends."""
    listener = NotifyListener(path)
    try:
        await listener.bind()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.collect)
            yield listener
            nursery.cancel_scope.cancel()
    finally:
        listener.sock.close()


async def test_daemon_notifies_systemd(tmp_path: Path, nursery: trio.Nursery) -> None:
    root = make_share(tmp_path, "svc", {"a.txt": b"a"})
    with trio.fail_after(60):
        async with (
            open_notify_listener(tmp_path / "notify.sock") as listener,
            AsyncExitStack() as stack,
        ):
            _, tracker_url = await start_tracker(stack, nursery, tmp_path)
            env = {
                **daemon_env(tmp_path, "svc"),
                "NOTIFY_SOCKET": str(listener.path),
                "WATCHDOG_USEC": "400000",  # ping every 0.2 s
            }
            daemon = await stack.enter_async_context(
                start(
                    nursery,
                    ["daemon", "--root", str(root), "--tracker", tracker_url, "--name", "svc"],
                    env=env,
                    name="svc",
                )
            )
            ready = await daemon.wait_event(event_is("peer-server-ready"))
            await listener.wait_for("READY", "1")
            status = await listener.wait_for("STATUS")
            assert f"port {ready['port']}" in status
            await listener.wait_for("STATUS", "connected")
            await daemon.wait_event(event_is("tracker-connected"))
            # READY only once the port is bound: it comes after the server listens
            first_ready = next(i for i, m in enumerate(listener.messages) if "READY=1" in m)
            assert first_ready == 0
            await listener.wait_count("WATCHDOG=1", 3)
            daemon.signal(signal.SIGTERM)
            # well inside the 4 s shutdown budget: a task that outlives shutdown
            # (the watchdog, the status reporter) makes the daemon use all of it
            assert await daemon.wait_exit(timeout_s=2.5) == 0
            await listener.wait_for("STOPPING", "1", timeout_s=1)


async def test_no_notify_socket_means_no_notifications(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    root = make_share(tmp_path, "plain", {"a.txt": b"a"})
    env = {**daemon_env(tmp_path, "plain"), "NOTIFY_SOCKET": "", "WATCHDOG_USEC": "100000"}
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            daemon = await stack.enter_async_context(
                start(nursery, ["daemon", "--root", str(root)], env=env, name="plain")
            )
            await daemon.wait_event(event_is("peer-server-ready"))
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait_exit(timeout_s=5) == 0
            assert b"Traceback" not in daemon.stderr


async def test_tracker_notifies_systemd(tmp_path: Path, nursery: trio.Nursery) -> None:
    env = {
        "DATABASE_URL": "memory://",
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "400000",
    }
    with trio.fail_after(30):
        async with (
            open_notify_listener(tmp_path / "notify.sock") as listener,
            AsyncExitStack() as stack,
        ):
            tracker = await stack.enter_async_context(
                start(
                    nursery,
                    ["tracker", "--host", "127.0.0.1", "--port", "0"],
                    env=env,
                    name="tracker",
                )
            )
            ready = await tracker.wait_event(event_is("tracker-ready"))
            await listener.wait_for("READY", "1")
            assert f"port {ready['port']}" in await listener.wait_for("STATUS")
            await listener.wait_count("WATCHDOG=1", 3)
            tracker.signal(signal.SIGTERM)
            assert await tracker.wait_exit(timeout_s=5) == 0
            await listener.wait_for("STOPPING", "1", timeout_s=1)

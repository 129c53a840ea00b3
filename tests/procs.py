"""Real ``flashback`` processes for system tests: start, read their JSON event
lines as they come, signal them, and always reap them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

FLASHBACK = [sys.executable, "-m", "flashback"]
EventPredicate = Callable[[dict[str, Any]], bool]


class Proc:
    """A running flashback command whose stdout lines are parsed as events."""

    def __init__(self, process: trio.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.stderr = bytearray()
        self._changed = trio.Event()
        self._stdout_ended = False

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        async for chunk in self.process.stdout:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    try:
                        self.events.append(json.loads(line))
                    except ValueError:
                        self.events.append({"event": "<text>", "text": line.decode()})
            self._changed.set()
            self._changed = trio.Event()
        self._stdout_ended = True  # every line it will ever print is in self.events
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        async for chunk in self.process.stderr:
            self.stderr += chunk

    async def wait_event(
        self, predicate: EventPredicate, *, timeout_s: float = 15, after: int = 0
    ) -> dict[str, Any]:
        """The first matching event from index *after* on (already seen or still to come)."""
        seen = after
        with trio.fail_after(timeout_s):
            while True:
                for event in self.events[seen:]:
                    if predicate(event):
                        return event
                seen = len(self.events)
                if self._stdout_ended:
                    raise AssertionError(
                        f"{self.name} closed its stdout (exit status "
                        f"{self.process.returncode}) without the event; "
                        f"stderr: {self.stderr.decode(errors='replace')[-2000:]}"
                    )
                await self._changed.wait()

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signum)

    async def wait_exit(self, *, timeout_s: float = 10) -> int:
        with trio.fail_after(timeout_s):
            return await self.process.wait()


def event_is(name: str, **fields: Any) -> EventPredicate:
    return lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items())


@asynccontextmanager
async def start(
    nursery: trio.Nursery,
    args: list[str],
    *,
    env: dict[str, str],
    name: str,
    prefix: Sequence[str] = (),
    preexec_fn: Callable[[], None] | None = None,
    program: Sequence[str] = FLASHBACK,
) -> AsyncIterator[Proc]:
    """*prefix* goes before the command (``ip netns exec NS`` for the tunnel tests);
    *program* is ``python -m flashback`` unless a test runs a stand-in."""
    process = await trio.lowlevel.open_process(
        [*prefix, *program, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
        preexec_fn=preexec_fn,
    )
    proc = Proc(process, name)
    async with trio.open_nursery() as readers:
        readers.start_soon(proc._read_stdout)
        readers.start_soon(proc._read_stderr)
        try:
            yield proc
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
            readers.cancel_scope.cancel()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            await stream.aclose()


def daemon_env(base: Path, name: str) -> dict[str, str]:
    return {
        "FLASHBACK_STATE_DIR": str(base / name / "state"),
        "FLASHBACK_DATA_DIR": str(base / name / "data"),
        "XDG_CONFIG_HOME": str(base / name / "config"),
    }


async def reap(process: trio.Process) -> None:
    """Kill *process* if it still runs, wait for it, close its pipes."""
    if process.returncode is None:
        process.kill()
        await process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            await stream.aclose()


async def first_event(process: trio.Process) -> dict[str, Any]:
    """The first stdout line of a just-started *process* (its ready event), read
    byte by byte so nothing after it is consumed."""
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await process.stdout.receive_some(1)
        assert chunk, "the process exited before it was ready"
        line += chunk
    event: dict[str, Any] = json.loads(line)
    return event


def start_daemon(
    nursery: trio.Nursery,
    base: Path,
    name: str,
    *,
    root: Path,
    tracker_url: str,
    prefix: Sequence[str] = (),
    proc_name: str | None = None,
) -> contextlib.AbstractAsyncContextManager[Proc]:
    """``flashback daemon`` *name* sharing *root*, with its own dirs under *base*."""
    args = ["daemon", "--root", str(root), "--name", name, "--tracker", tracker_url]
    return start(nursery, args, env=daemon_env(base, name), name=proc_name or name, prefix=prefix)


async def wait_until_linked(owner: Proc, requester: Proc, owner_name: str) -> None:
    """*owner* is linked to its tracker and *requester*'s peer table lists it."""
    await owner.wait_event(event_is("tracker-connected"), timeout_s=30)
    await requester.wait_event(
        lambda e: (
            e.get("event") in ("peer-joined", "peers-snapshot") and owner_name in json.dumps(e)
        ),
        timeout_s=30,
    )


async def run_cli(
    args: list[str], *, env: dict[str, str], timeout_s: float = 30, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(timeout_s):
        return await trio.run_process(
            [*prefix, *FLASHBACK, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, **env},
        )

"""``make run``: the whole system on embedded defaults, nothing external.

Starts a relay tracker (SQLite) and one peer daemon sharing ``demo-share/``,
as two real ``flashback`` processes, relays their event lines to stdout and
prints where each listens and how to talk to them. Ctrl-C stops both, the
daemon first so that it unregisters, then the tracker (SIGTERM each, then wait).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

DEMO_FILES = {
    "welcome.md": "# Welcome to Flashback\n\nSee [notes](notes/todo.txt).\n",
    "notes/todo.txt": "share files\nfind peers\n",
    "hello.txt": "hello from the demo share\n",
}
FLASHBACK = [sys.executable, "-m", "flashback"]


def make_demo_share(root: Path) -> Path:
    for name, text in DEMO_FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text, encoding="utf-8")
    return root


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def relay(
    process: trio.Process, label: str, on_event: Callable[[dict[str, Any]], Awaitable[None]]
) -> None:
    """Print each JSON line the child writes, tagged, and hand it to *on_event*."""
    assert process.stdout is not None
    buffer = b""
    async for chunk in process.stdout:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            print(f"[{label}] {line.decode(errors='replace')}", flush=True)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            await on_event(event)


async def run_demo(base: Path) -> int:
    share = make_demo_share(base / "demo-share")
    work = base / ".demo"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{work / 'tracker.sqlite3'}",
        "FLASHBACK_STATE_DIR": str(work / "state"),
        "FLASHBACK_DATA_DIR": str(work / "data"),
    }
    work.mkdir(exist_ok=True)
    tracker_url: trio.Event = trio.Event()
    found: dict[str, str] = {}

    async def tracker_event(event: dict[str, Any]) -> None:
        if event.get("event") == "tracker-ready":
            found["tracker"] = event["url"]
            tracker_url.set()

    async def daemon_event(event: dict[str, Any]) -> None:
        if event.get("event") == "peer-server-ready":
            say(f"\npeer daemon: sharing {share} at {event['url']}")
            say(f"tracker:     {found['tracker']}  (try: curl {found['tracker']}/api/peers/list)")
            say(f"local CLI:   FLASHBACK_STATE_DIR={work / 'state'} .venv/bin/flashback peers")
            say("Ctrl-C stops both.\n")
        elif event.get("event") == "ui-ready":
            say(f"web UI:      open {event['url']} in a browser\n")

    processes: list[trio.Process] = []
    try:
        async with trio.open_nursery() as nursery:
            tracker = await trio.lowlevel.open_process(
                [*FLASHBACK, "tracker", "--host", "127.0.0.1", "--port", "0", "--tunnel-port", "0"],
                stdout=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
            processes.append(tracker)
            nursery.start_soon(relay, tracker, "tracker", tracker_event)
            with trio.fail_after(30):
                await tracker_url.wait()
            daemon = await trio.lowlevel.open_process(
                [
                    *FLASHBACK,
                    "daemon",
                    "--root",
                    str(share),
                    "--tracker",
                    found["tracker"],
                    "--name",
                    "demo",
                    # one machine, embedded defaults: nothing to announce to the network
                    "--lan",
                    "off",
                ],
                stdout=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
            processes.append(daemon)
            nursery.start_soon(relay, daemon, "daemon", daemon_event)
            # The children run in their own sessions (a terminal's Ctrl-C goes
            # to the whole foreground process group, ``make`` and all), so it
            # reaches only us: stop the daemon first (it unregisters), then the
            # tracker.
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            for process in (daemon, tracker):
                process.send_signal(signal.SIGTERM)
                with trio.move_on_after(10):
                    await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for process in processes:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                if process.stdout is not None:
                    await process.stdout.aclose()
    return 0 if all(p.returncode == 0 for p in processes) else 1


def main() -> int:
    return trio.run(run_demo, Path.cwd())


if __name__ == "__main__":
    sys.exit(main())

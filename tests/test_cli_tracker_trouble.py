"""The tracker's trouble and the daemon's own start, said in one line at a terminal:
real daemons, a real tracker (or the wrong server, or none) on loopback, a pty."""

from __future__ import annotations

import json
import socket
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from flashback.daemon.peer_lines import HEADER, labels, peers_lines
from flashback.daemon.tracker_api import refusal_reason
from tests.procs import Proc, daemon_env, event_is, run_cli, start
from tests.pty_session import run_at_terminal
from tests.test_daemon_system import TRACKER_ENV, joined, make_share, start_daemon, start_tracker

FP_A = "sha256:" + "a1" * 32
FP_B = "sha256:" + "b2" * 32


def test_colliding_names_get_a_short_fingerprint() -> None:
    rows = [
        {"name": "alice", "fingerprint": FP_A},
        {"name": "bob", "fingerprint": FP_B},
        {"name": "alice", "fingerprint": FP_B},
    ]
    assert labels(rows) == ["alice (a1a1a1a1)", "bob", "alice (b2b2b2b2)"]


def test_refusals_name_the_fix() -> None:
    assert refusal_reason(401, "x", token_sent=False) == (
        "the tracker wants a token: set FLASHBACK_TRACKER_TOKEN (HTTP 401)"
    )
    assert "FLASHBACK_TRACKER_TOKEN" in refusal_reason(401, "x", token_sent=True)
    page = "The requested URL was not found on the server. If you entered the URL manually"
    said = refusal_reason(404, page, token_sent=False)
    assert said.startswith("not a flashback tracker (HTTP 404") and "requested URL" not in said


def test_peers_without_a_tracker_link_is_not_a_quiet_network() -> None:
    never = {"url": "http://t", "connected": False, "reason": "r", "ever_connected": False}
    assert peers_lines({"peers": [], "tracker": never}) == (
        [],
        ["flashback: never connected to the tracker at http://t: r"],
        1,
    )
    row = {"name": "alice", "peer_id": "p1", "peer_server": {"host": "127.0.0.1", "port": 9}}
    out, notes, code = peers_lines({"peers": [row], "tracker": never | {"ever_connected": True}})
    assert code == 0 and out[0] == HEADER
    assert notes == [
        "flashback: no connection to the tracker at http://t (r); these peers are "
        "remembered or found on the LAN, not a live list"
    ]
    assert "127.0.0.1" not in out[1]  # a peer's own loopback, meaningless here


async def _daemon(
    stack: AsyncExitStack,
    nursery: trio.Nursery,
    base: Path,
    name: str,
    args: list[str],
    env: dict[str, str] | None = None,
) -> Proc:
    root = make_share(base, name, {"a.txt": b"a\n"})
    proc = await stack.enter_async_context(
        start(
            nursery,
            ["daemon", "--root", str(root), "--name", "alice", *args],
            env=env or daemon_env(base, name),
            name=name,
        )
    )
    await proc.wait_event(event_is("peer-server-ready"))
    return proc


async def _tracker_reason(env: dict[str, str]) -> Any:
    """The daemon's reason once its first registration failed (it retries with backoff)."""
    for _ in range(200):
        status = json.loads((await run_cli(["status", "--json"], env=env)).stdout)
        if status["tracker"]["reason"]:
            return status["tracker"]["reason"]
        await trio.sleep(0.1)
    raise AssertionError("no reason after 200 status calls")


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_status_peers_and_ls_say_why_the_tracker_is_not_connected(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            # nothing listens there
            down = f"http://127.0.0.1:{_closed_port()}"
            await _daemon(stack, nursery, tmp_path, "d1", ["--tracker", down])
            env = daemon_env(tmp_path, "d1")
            refused = (
                "tracker unreachable: connection refused (is the tracker running at that address?)"
            )
            assert await _tracker_reason(env) == refused
            code, lines = await run_at_terminal(["status"], env=env)
            assert code == 0 and f"tracker:  {down} (never connected: {refused})" in lines
            assert await run_at_terminal(["peers"], env=env) == (
                1,
                [f"flashback: never connected to the tracker at {down}: {refused}"],
            )
            code, lines = await run_at_terminal(["ls", "alice"], env=env)
            assert code == 1 and lines[-1].startswith(
                "flashback: no peer 'alice' known: no tracker connection (never connected: "
            )

            # a peer server where the tracker should be
            other = await _daemon(stack, nursery, tmp_path, "d2", [])
            ready = other.events[0]
            await _daemon(stack, nursery, tmp_path, "d3", ["--tracker", ready["url"]])
            reason = await _tracker_reason(daemon_env(tmp_path, "d3"))
            assert reason.startswith("not a flashback tracker (HTTP 40"), reason
            assert "check --tracker / FLASHBACK_TRACKER_URL" in reason

            # a tracker that wants a token
            env = {**TRACKER_ENV, "RELAY_AUTH_TOKEN": "s3cret", "DATABASE_URL": "memory://"}
            tracker = await stack.enter_async_context(
                start(nursery, ["tracker", "--host", "127.0.0.1", "--port", "0"], env=env, name="t")
            )
            url = (await tracker.wait_event(event_is("tracker-ready")))["url"]
            await _daemon(stack, nursery, tmp_path, "d4", ["--tracker", url])
            assert await _tracker_reason(daemon_env(tmp_path, "d4")) == (
                "the tracker wants a token: set FLASHBACK_TRACKER_TOKEN (HTTP 401)"
            )


async def test_peers_has_a_header_hides_loopback_and_marks_a_stale_list(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    bob_env = daemon_env(tmp_path, "bob")
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            tracker, url = await start_tracker(stack, nursery, tmp_path)
            await start_daemon(stack, nursery, tmp_path, "alice", url)
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await bob.wait_event(joined("alice"))
            code, lines = await run_at_terminal(["peers"], env=bob_env)
            assert code == 0 and lines[0] == HEADER
            row = next(line for line in lines if line.startswith("alice "))
            assert row.split()[2:4] == ["-", "-"] and row.endswith(" tracker"), row

            listed = await run_cli(["ls", "alice"], env=bob_env)  # a route, then a book entry
            assert listed.returncode == 0, listed.stderr
            code, lines = await run_at_terminal(["peers"], env=bob_env)
            row = next(line for line in lines if line.startswith("alice "))
            assert row.split()[2:4][0] == "direct" and "127.0.0.1:" in row, row

            tracker.process.kill()
            await tracker.process.wait()
            await bob.wait_event(event_is("tracker-disconnected"))
            code, lines = await run_at_terminal(["peers"], env=bob_env)
            assert code == 0, lines
            assert lines[0].startswith(
                f"flashback: no connection to the tracker at {url} (link lost"
            )
            assert lines[0].endswith(
                "these peers are remembered or found on the LAN, not a live list"
            )
            assert lines[1] == HEADER


async def test_ui_port_in_use_is_one_line_and_never_ready(tmp_path: Path) -> None:
    root = make_share(tmp_path, "solo", {"a.txt": b"a"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["daemon", "--root", str(root), "--ui-port", str(port)]
        code, lines = await run_at_terminal(args, env=daemon_env(tmp_path, "solo"))
    assert (code, lines[-1]) == (
        1,
        f"flashback: cannot open the web UI on port {port} (--ui-port): address already in use",
    )
    assert not any("peer-server-ready" in line for line in lines), lines


async def test_a_second_alice_says_so_and_both_show_their_fingerprints(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    bob_env = daemon_env(tmp_path, "bob")
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker(stack, nursery, tmp_path)
            first = await _daemon(stack, nursery, tmp_path, "a1", ["--tracker", url])
            # the same data directory: the second takes the next free identity
            twin_env = daemon_env(tmp_path, "a1") | {
                "FLASHBACK_STATE_DIR": str(tmp_path / "a2" / "state")
            }
            second = await _daemon(stack, nursery, tmp_path, "a2", ["--tracker", url], twin_env)
            await second.wait_event(event_is("tracker-connected"))
            said = second.stderr.decode()
            assert "this one is identity 'alice-2'" in said, said
            assert "this one is identity" not in first.stderr.decode()

            await start_daemon(stack, nursery, tmp_path, "bob", url)
            listing: dict[str, Any] = {}
            for _ in range(100):
                listing = json.loads((await run_cli(["peers", "--json"], env=bob_env)).stdout)
                if [p["name"] for p in listing["peers"]].count("alice") == 2:
                    break
                await trio.sleep(0.1)
            fps = [p["fingerprint"][7:15] for p in listing["peers"] if p["name"] == "alice"]
            assert len(fps) == 2
            code, lines = await run_at_terminal(["peers"], env=bob_env)
            assert code == 0
            assert {line.split(")")[0] + ")" for line in lines if line.startswith("alice")} == {
                f"alice ({fp})" for fp in fps
            }
            code, lines = await run_at_terminal(["get", "alice", "a.txt"], env=bob_env)
            assert code == 2 and lines[-1].startswith(
                "flashback: error: several peers are named 'alice'; use a peer id or fingerprint: "
            )
            assert all(f"alice ({fp}) " in lines[-1] for fp in fps), lines[-1]

"""A folder from a peer in another home: ``get PEER DIR`` through the tracker's tunnel.

The topology of tests/test_tunnel_system.py (tests/netns.py): alice in home
A with a localhost-only peer server, bob in home B, the tracker on the
relay; no packet goes from one home to the other. Kept small (a few files)
so the suite stays fast; the folder logic itself is tested in test_folder.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.netns import (
    RELAY_ADDR_A,
    RELAY_ADDR_B,
    Topology,
    netns_unavailable_reason,
    two_homes_and_a_relay,
)
from tests.procs import daemon_env, event_is, run_cli, start, start_daemon, wait_until_linked

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif((reason := netns_unavailable_reason()) is not None, reason=str(reason)),
]

FILES = {
    "docs/read me.txt": b"hello from alice\n",
    "docs/sub/données.bin": os.urandom(300_000),
    "docs/sub/deeper/x.txt": b"x" * 10,
}


def events(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]


async def test_a_folder_comes_through_the_relay(tmp_path: Path, nursery: trio.Nursery) -> None:
    share = tmp_path / "alice" / "share"
    for rel, data in FILES.items():
        (share / rel).parent.mkdir(parents=True, exist_ok=True)
        (share / rel).write_bytes(data)
    (share / "docs" / "empty").mkdir()
    (tmp_path / "bob" / "share").mkdir(parents=True)
    with two_homes_and_a_relay() as topo, trio.fail_after(120):
        in_relay = Topology.exec_prefix(topo.relay)
        in_a, in_b = Topology.exec_prefix(topo.home_a), Topology.exec_prefix(topo.home_b)
        async with start(
            nursery,
            ["tracker", "--host", "0.0.0.0", "--port", "0", "--database-url", "memory://"],
            env={"FLASHBACK_DATA_DIR": str(tmp_path / "tracker"), "RELAY_TUNNEL_PORT": "0"},
            name="tracker",
            prefix=in_relay,
        ) as tracker:
            port = (await tracker.wait_event(event_is("tracker-ready")))["port"]
            bob_env = daemon_env(tmp_path, "bob")
            async with (
                start_daemon(
                    nursery, tmp_path, "alice", root=share,
                    tracker_url=f"http://{RELAY_ADDR_A}:{port}", prefix=in_a,
                ) as alice,
                start_daemon(
                    nursery, tmp_path, "bob", root=tmp_path / "bob" / "share",
                    tracker_url=f"http://{RELAY_ADDR_B}:{port}", prefix=in_b,
                ) as bob,
            ):  # fmt: skip
                await wait_until_linked(alice, bob, "alice")
                out = tmp_path / "got"
                got = await run_cli(
                    ["get", "alice", "docs", "-o", str(out), "--jobs", "2"],
                    env=bob_env,
                    prefix=in_b,
                    timeout_s=60,
                )
                assert got.returncode == 0, got.stderr
                lines = events(got.stdout)
                assert lines[-1] == {
                    "event": "folder-complete",
                    "path": str(out),
                    "files": 3,
                    "bytes": sum(len(data) for data in FILES.values()),
                    "skipped": 0,
                    "refused": 0,
                }
                done = [e for e in lines if e["event"] == "download-complete"]
                assert len(done) == 3 and all(e["verified"] for e in done)
                for rel, data in FILES.items():
                    assert (out / rel.removeprefix("docs/")).read_bytes() == data
                assert (out / "empty").is_dir()

                peers = await run_cli(["peers", "--json"], env=bob_env, prefix=in_b)
                routes = {p["name"]: p["route"] for p in json.loads(peers.stdout)["peers"]}
                assert routes["alice"] == "relay"  # the only way from home B to home A

                whole = await run_cli(
                    ["get", "alice", "/", "-o", str(tmp_path / "root")], env=bob_env, prefix=in_b
                )  # the share's root: every file, index.md too
                assert whole.returncode == 0, whole.stderr
                assert events(whole.stdout)[-1]["files"] == 4
                assert (tmp_path / "root" / "index.md").is_file()

                again = await run_cli(
                    ["get", "alice", "docs", "-o", str(out)], env=bob_env, prefix=in_b
                )
                assert again.returncode == 0, again.stderr
                assert events(again.stdout) == [
                    {
                        "event": "folder-complete",
                        "path": str(out),
                        "files": 0,
                        "bytes": 0,
                        "skipped": 3,
                        "refused": 0,
                    }
                ]

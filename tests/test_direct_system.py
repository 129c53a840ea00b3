"""Real processes: bob gets a file from alice over the direct endpoint, not the relay.

Two homes and a relay in network namespaces (tests/netns.py), with the relay
routing between the homes this time (two hosts on the open internet): the
peer servers stay on 127.0.0.1 in their homes, so the §6.3 probe fails and
every byte goes by the daemon's route race. The introduction's candidates
win; the tracker's tunnel counters must not grow by the file's size.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.netns import (
    HOME_A_ADDR,
    HOME_B_ADDR,
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

FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"


def tunnel_bytes(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("flashback_tracker_tunnel_bytes_copied")
    )


def jsonl(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]


def route_between_homes(topo: Topology) -> None:
    for args in (
        ["ip", "netns", "exec", topo.relay, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ["ip", "-n", topo.home_a, "route", "add", "default", "via", RELAY_ADDR_A],
        ["ip", "-n", topo.home_b, "route", "add", "default", "via", RELAY_ADDR_B],
    ):
        subprocess.run(args, check=True, capture_output=True)


async def test_get_goes_direct_and_the_relay_carries_no_file(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    body = os.urandom(3 * 1024 * 1024)
    (tmp_path / "alice" / "share").mkdir(parents=True)
    (tmp_path / "alice" / "share" / "big.bin").write_bytes(body)
    (tmp_path / "bob" / "share").mkdir(parents=True)
    with two_homes_and_a_relay() as topo, trio.fail_after(120):
        route_between_homes(topo)
        in_relay = Topology.exec_prefix(topo.relay)
        in_a, in_b = Topology.exec_prefix(topo.home_a), Topology.exec_prefix(topo.home_b)
        tracker_env = {"FLASHBACK_DATA_DIR": str(tmp_path / "tracker"), "RELAY_TUNNEL_PORT": "0"}
        async with start(
            nursery,
            ["tracker", "--host", "0.0.0.0", "--port", "0", "--database-url", "memory://"],
            env=tracker_env,
            name="tracker",
            prefix=in_relay,
        ) as tracker:
            port = (await tracker.wait_event(event_is("tracker-ready")))["port"]
            bob_env = daemon_env(tmp_path, "bob")
            async with (
                start_daemon(
                    nursery, tmp_path, "alice", root=tmp_path / "alice" / "share",
                    tracker_url=f"http://{RELAY_ADDR_A}:{port}", prefix=in_a,
                ) as alice,
                start_daemon(
                    nursery, tmp_path, "bob", root=tmp_path / "bob" / "share",
                    tracker_url=f"http://{RELAY_ADDR_B}:{port}", prefix=in_b,
                ) as bob,
            ):  # fmt: skip
                ready = await alice.wait_event(event_is("direct-ready"))
                assert ready["port"] > 0
                await wait_until_linked(alice, bob, "alice")
                listed = json.loads((await run_cli(["peers", "--json"], env=bob_env,
                                                   prefix=in_b)).stdout)["peers"]  # fmt: skip
                entry = next(p for p in listed if p["name"] == "alice")
                if not entry.get("direct"):
                    pytest.skip("this tracker does not list direct candidates (§10.2)")
                assert {"host": HOME_A_ADDR, "port": ready["port"]} in entry["direct"]

                async def metrics() -> float:
                    got = await trio.run_process(
                        [*in_relay, sys.executable, "-c", FETCH,
                         f"http://127.0.0.1:{port}/metrics"],
                        capture_stdout=True, check=True,
                    )  # fmt: skip
                    return tunnel_bytes(got.stdout.decode())

                before = await metrics()
                out = tmp_path / "got.bin"
                got = await run_cli(
                    ["get", "alice", "big.bin", "-o", str(out)], env=bob_env, prefix=in_b
                )
                assert got.returncode == 0, got.stderr
                assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(body).digest()
                assert await metrics() - before < len(body)

                opened = await bob.wait_event(event_is("tunnel-opened", route="direct"))
                assert opened["peer_id"] == entry["peer_id"]
                assert opened["address"] == f"{HOME_A_ADDR}:{ready['port']}"
                owner = await alice.wait_event(event_is("tunnel-opened", route="direct"))
                assert owner["address"].startswith(f"{HOME_B_ADDR}:")

                peers = await run_cli(["peers"], env=bob_env, prefix=in_b)
                assert "direct" in peers.stdout.decode()

                # the tracker dies: the remembered direct address still works
                tracker.process.kill()
                await tracker.process.wait()
                again = tmp_path / "again.bin"
                got = await run_cli(
                    ["get", "alice", "big.bin", "-o", str(again)], env=bob_env, prefix=in_b
                )
                assert got.returncode == 0, got.stderr
                assert again.read_bytes() == body
                plain = await bob.wait_event(
                    event_is("tunnel-opened", route="direct", punched=False)
                )
                assert plain["address"] == f"{HOME_A_ADDR}:{ready['port']}"

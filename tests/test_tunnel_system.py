"""Two homes behind NAT and a relay: ls, get, stream and connect through tunnels.

Real processes in network namespaces the test makes (see tests/netns.py):
the tracker on the relay, alice's daemon in home A with a localhost-only
peer server, bob's in home B. No packet can go from one home to the other;
everything bob gets from alice crosses the tracker's tunnel port, and a
capture there must never show the file's bytes (TLS runs end to end).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.netns import (
    HOME_A_ADDR,
    RELAY_ADDR_A,
    RELAY_ADDR_B,
    Topology,
    netns_unavailable_reason,
    two_homes_and_a_relay,
)
from tests.procs import Proc, daemon_env, event_is, run_cli, start, start_daemon, wait_until_linked

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif((reason := netns_unavailable_reason()) is not None, reason=str(reason)),
]

MARKER = b"FLASHBACK-PLAINTEXT-MARKER-7d1f"


def make_share(root: Path) -> bytes:
    root.mkdir(parents=True)
    # the marker repeats so any plaintext fragment in a capture would contain it
    body = (MARKER + os.urandom(200)) * 4000 + b"tail"
    (root / "big.bin").write_bytes(body)
    (root / "notes.txt").write_text("hello from alice\n")
    return body


def jsonl(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]


async def test_bob_reaches_alice_only_through_the_relay(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    body = make_share(tmp_path / "alice" / "share")
    (tmp_path / "bob" / "share").mkdir(parents=True)
    with two_homes_and_a_relay() as topo, trio.fail_after(180):
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
            ready = await tracker.wait_event(event_is("tracker-ready"))
            port, tunnel_port = ready["port"], ready["tunnel_port"]
            assert isinstance(tunnel_port, int) and tunnel_port > 0
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
                alice_ready = await alice.wait_event(event_is("peer-server-ready"))
                assert alice_ready["host"] == "127.0.0.1"  # localhost-only, as by default
                await wait_until_linked(alice, bob, "alice")

                async def bob_cli(
                    *args: str, timeout_s: float = 60
                ) -> subprocess.CompletedProcess[bytes]:
                    return await run_cli(list(args), env=bob_env, prefix=in_b, timeout_s=timeout_s)

                # a direct connection from home B to home A is impossible
                probe = await trio.run_process(
                    [*in_b, sys.executable, "-c",
                     "import socket,sys\ns=socket.socket();s.settimeout(2)\n"
                     "try:\n s.connect((sys.argv[1],int(sys.argv[2])));print('connected')\n"
                     "except OSError as e:\n print(type(e).__name__)",
                     HOME_A_ADDR, str(port)],
                    capture_stdout=True, check=True,
                )  # fmt: skip
                assert probe.stdout.strip() != b"connected"

                capture = tmp_path / "relay.pcap"
                dump = None
                if shutil.which("tcpdump"):
                    dump = await trio.lowlevel.open_process(
                        [*in_relay, "tcpdump", "-i", "any", "-U", "-s", "0", "-w", str(capture),
                         "tcp", "port", str(tunnel_port)],
                        stderr=subprocess.PIPE,
                    )  # fmt: skip
                    assert dump.stderr is not None
                    said = b""
                    while b"listening on" not in said:  # its line once it captures
                        chunk = await dump.stderr.receive_some(4096)
                        assert chunk, f"tcpdump ended: {said!r}"
                        said += chunk

                listing = await bob_cli("ls", "alice", "--json")
                assert listing.returncode == 0, listing.stderr
                names = {e["name"] for e in json.loads(listing.stdout)["entries"]}
                assert {"big.bin", "notes.txt"} <= names

                out = tmp_path / "got.bin"
                got = await bob_cli("get", "alice", "big.bin", "-o", str(out))
                assert got.returncode == 0, got.stderr
                done = jsonl(got.stdout)[-1]
                assert done["event"] == "download-complete" and done["verified"] is True
                assert out.read_bytes() == body
                assert done["sha256"] == hashlib.sha256(body).hexdigest()

                streamed = tmp_path / "streamed.bin"
                stream = await bob_cli("stream", "alice", "big.bin", "-o", str(streamed))
                assert stream.returncode == 0, stream.stderr
                assert streamed.read_bytes() == body

                async with start(
                    nursery, ["connect", "alice", "--json"], env=bob_env, name="connect",
                    prefix=in_b,
                ) as connect:  # fmt: skip
                    url_event = await connect.wait_event(event_is("peer-url"), timeout_s=30)
                    assert url_event["route"] == "relay"
                    assert url_event["url"].startswith("http://127.0.0.1:")
                    if shutil.which("curl"):
                        ranged = await trio.run_process(
                            [*in_b, "curl", "-sf", "-r", "100-199",
                             url_event["url"] + "/download/big.bin"],
                            capture_stdout=True, check=True,
                        )  # fmt: skip
                        assert ranged.stdout == body[100:200]
                    connect.signal(signal.SIGINT)  # Ctrl-C ends a connect normally
                    assert await connect.wait_exit() == 0

                if dump is not None:
                    dump.terminate()
                    await dump.wait()
                    captured = capture.read_bytes()
                    assert len(captured) > len(body)  # the file's bytes did cross the relay
                    assert MARKER not in captured  # ... but only as ciphertext

                peers = await bob_cli("peers")
                assert peers.returncode == 0
                assert "relay" in peers.stdout.decode()  # the route last used is shown
                alice_id = next(
                    p["peer_id"]
                    for p in json.loads((await bob_cli("peers", "--json")).stdout)["peers"]
                    if p["name"] == "alice"
                )

                # alice comes back with another key under the same peer id: refused by the pin
                alice.signal()
                assert await alice.wait_exit() == 0
                (tmp_path / "alice" / "data" / "identities" / "alice" / "identity.pem").unlink()
                async with start_daemon(
                    nursery, tmp_path, "alice", root=tmp_path / "alice" / "share",
                    tracker_url=f"http://{RELAY_ADDR_A}:{port}", prefix=in_a,
                    proc_name="alice-new-key",
                ) as alice_again:  # fmt: skip
                    await alice_again.wait_event(event_is("tracker-connected"), timeout_s=30)
                    swapped = await bob_cli("get", "alice", "notes.txt", "-o", str(tmp_path / "n"))
                    assert swapped.returncode == 1
                    lines = swapped.stderr.decode().strip().splitlines()
                    assert len(lines) == 1 and "fingerprint" in lines[0], lines
                    assert alice_id in lines[0]
                    assert not (tmp_path / "n").exists()
                    forgot = await bob_cli("forget", alice_id)
                    assert forgot.returncode == 0, forgot.stderr
                    again = await bob_cli("get", "alice", "notes.txt", "-o", str(tmp_path / "n"))
                    assert again.returncode == 0, again.stderr
                    assert (tmp_path / "n").read_text() == "hello from alice\n"


async def test_a_tracker_that_dies_ends_its_tunnels_and_get_resumes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Kill the relay mid-transfer: one clear line, the .part stays; once the tracker
    is back (same port, same database) the next get resumes through a new tunnel."""
    body = os.urandom(6 * 1024 * 1024)
    share = tmp_path / "alice" / "share"
    share.mkdir(parents=True)
    (share / "big.bin").write_bytes(body)
    (tmp_path / "bob" / "share").mkdir(parents=True)
    with two_homes_and_a_relay() as topo, trio.fail_after(240):
        in_relay = Topology.exec_prefix(topo.relay)
        in_a, in_b = Topology.exec_prefix(topo.home_a), Topology.exec_prefix(topo.home_b)
        database = f"sqlite:///{tmp_path / 'tracker.sqlite3'}"
        # a slow tunnel (1 MB/s) so the transfer is surely in flight when the tracker dies
        tracker_env = {"RELAY_TUNNEL_PORT": "0", "RELAY_TUNNEL_RATE": "1000000"}
        tracker_args = ["tracker", "--host", "0.0.0.0", "--database-url", database]
        bob_env = daemon_env(tmp_path, "bob")
        tracker = await nursery.start(
            _started, start(nursery, [*tracker_args, "--port", "0"], env=tracker_env,
                            name="tracker", prefix=in_relay)
        )  # fmt: skip
        port = (await tracker.wait_event(event_is("tracker-ready")))["port"]
        async with (
            start_daemon(nursery, tmp_path, "alice", root=share,
                         tracker_url=f"http://{RELAY_ADDR_A}:{port}", prefix=in_a) as alice,
            start_daemon(nursery, tmp_path, "bob", root=tmp_path / "bob" / "share",
                         tracker_url=f"http://{RELAY_ADDR_B}:{port}", prefix=in_b) as bob,
        ):  # fmt: skip
            await wait_until_linked(alice, bob, "alice")
            out = tmp_path / "got.bin"
            async with start(
                nursery, ["get", "alice", "big.bin", "-o", str(out)], env=bob_env, name="get",
                prefix=in_b,
            ) as get:  # fmt: skip
                await get.wait_event(event_is("download-started"), timeout_s=60)
                part = out.with_name(out.name + ".part")
                # another process writes the part: no event to wait on but its size
                while not part.exists() or part.stat().st_size < 1024 * 1024:  # noqa: ASYNC110
                    await trio.sleep(0.05)  # a MiB on disk, about 5 still to come
                tracker.signal(signal.SIGKILL)
                await tracker.wait_exit()
                assert await get.wait_exit(timeout_s=60) == 1
            lines = get.stderr.decode().strip().splitlines()
            assert len(lines) == 1 and "resume" in lines[0], lines
            kept = part.stat().st_size
            assert 0 < kept < len(body) and not out.exists()

            seen_a, seen_b = len(alice.events), len(bob.events)
            async with start(
                nursery, [*tracker_args, "--port", str(port)], env=tracker_env,
                name="tracker-again", prefix=in_relay,
            ) as again:  # fmt: skip
                await again.wait_event(event_is("tracker-ready"))
                await bob.wait_event(event_is("tracker-connected"), after=seen_b, timeout_s=60)
                await alice.wait_event(event_is("tracker-connected"), after=seen_a, timeout_s=60)
                resumed = await run_cli(
                    ["get", "alice", "big.bin", "-o", str(out)], env=bob_env, prefix=in_b,
                    timeout_s=120,
                )  # fmt: skip
                assert resumed.returncode == 0, resumed.stderr
                started = next(e for e in jsonl(resumed.stdout) if e["event"] == "download-started")
                assert started["offset"] == kept  # resumed, not fetched again
                assert out.read_bytes() == body

                # shutdown with a tunnel in flight: the daemons close it and exit 0
                again_out = tmp_path / "again.bin"
                async with start(
                    nursery, ["get", "alice", "big.bin", "-o", str(again_out)], env=bob_env,
                    name="get-during-shutdown", prefix=in_b,
                ) as inflight:  # fmt: skip
                    await inflight.wait_event(event_is("download-started"), timeout_s=60)
                    bob.signal()
                    alice.signal()
                    assert await bob.wait_exit(timeout_s=10) == 0
                    assert await alice.wait_exit(timeout_s=10) == 0
                    assert await inflight.wait_exit(timeout_s=30) == 1
                    assert not again_out.exists()


async def _started(
    context: AbstractAsyncContextManager[Proc],
    *,
    task_status: trio.TaskStatus[Proc] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run an async context manager (a process) as a nursery task, handing out its value."""
    async with context as value:
        task_status.started(value)
        await trio.sleep_forever()

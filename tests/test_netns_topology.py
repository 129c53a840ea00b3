"""The test network itself: the homes reach the relay and never each other."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.netns import (
    HOME_A_ADDR,
    RELAY_ADDR_A,
    RELAY_ADDR_B,
    Topology,
    netns_unavailable_reason,
    two_homes_and_a_relay,
)

pytestmark = pytest.mark.skipif(
    (reason := netns_unavailable_reason()) is not None, reason=str(reason)
)

CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError as exc:
    print(type(exc).__name__)
else:
    print("connected")
"""

LISTEN_ONCE = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 4321))
s.listen()
print("listening", flush=True)
s.settimeout(10)
try:
    while True:
        s.accept()[0].close()
except OSError:
    pass
"""


def run_in(namespace: str, code: str, *args: str) -> str:
    out = subprocess.run(
        [*Topology.exec_prefix(namespace), sys.executable, "-c", code, *args],
        capture_output=True,
        check=True,
        timeout=20,
    )
    return out.stdout.decode().strip()


@pytest.mark.parametrize("listener_side", ["relay", "home_a"])
def test_homes_reach_the_relay_but_not_each_other(listener_side: str) -> None:
    with two_homes_and_a_relay() as topo:
        namespace = getattr(topo, listener_side)
        server = subprocess.Popen(
            [*Topology.exec_prefix(namespace), sys.executable, "-c", LISTEN_ONCE],
            stdout=subprocess.PIPE,
        )
        try:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == b"listening"
            if listener_side == "relay":
                assert run_in(topo.home_a, CONNECT, RELAY_ADDR_A, "4321") == "connected"
                assert run_in(topo.home_b, CONNECT, RELAY_ADDR_B, "4321") == "connected"
            else:
                # home-b has no route to home-a, and the relay would not forward anyway
                assert run_in(topo.home_b, CONNECT, HOME_A_ADDR, "4321") != "connected"
                assert run_in(topo.relay, CONNECT, HOME_A_ADDR, "4321") == "connected"
        finally:
            server.kill()
            server.wait()
            assert server.stdout is not None
            server.stdout.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, check=True).stdout
    assert topo.relay.encode() not in names and topo.home_a.encode() not in names

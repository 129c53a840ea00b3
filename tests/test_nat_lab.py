"""The NAT lab itself (tests/nat_lab.py), shown with raw sockets only.

What the direct-connection tests rely on: a host behind a ``cone`` or
``symmetric`` router cannot be reached unsolicited from the internet (an
``open`` host can); a ``cone`` NAT keeps a connection's source port, so two
cone hosts that dial each other's reflected public address at once get one
TCP connection (simultaneous open); two ``symmetric`` NATs give every new
connection a fresh port, and the same dance never connects.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.nat_lab import (
    Home,
    NatLab,
    exec_prefix,
    mappings_from,
    nat_lab,
    parse_conntrack,
    require_nat_lab,
    router_rules,
)

HOMES = {
    "open1": "open",
    "cone1": "cone",
    "cone2": "cone",
    "symmetric1": "symmetric",
    "symmetric2": "symmetric",
}

#: echoes each connection's source address as "host port\n", then closes
REFLECTOR = """
import socket
s = socket.socket()
s.bind(("0.0.0.0", 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c, (host, port) = s.accept()
    c.sendall(f"{host} {port}\\n".encode())
    c.close()
"""

#: bind one port; learn its public mapping from the reflector; print it; read
#: the other side's public address from stdin; dial it from the same port,
#: again and again, for up to 3 s; on a connection swap one line each way.
PUNCH = """
import json, socket, sys, time

def bound(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    return s

probe = bound(0)
port = probe.getsockname()[1]
probe.settimeout(5)
probe.connect((sys.argv[1], int(sys.argv[2])))
line = b""
while not line.endswith(b"\\n"):
    chunk = probe.recv(100)
    if not chunk:
        break
    line += chunk
probe.close()
host, public_port = line.decode().split()
listener = None
if sys.argv[3:] == ["listen"]:  # as a daemon's endpoint does, on the same port
    listener = bound(port)
    listener.listen()
print(json.dumps({"port": port, "public": [host, int(public_port)]}), flush=True)

peer_host, peer_port = sys.stdin.readline().split()
deadline = time.monotonic() + 3.0
errors = []
while (left := deadline - time.monotonic()) > 0:
    s = bound(port)
    s.settimeout(left)
    try:
        s.connect((peer_host, int(peer_port)))
    except OSError as exc:
        errors.append(type(exc).__name__)
        s.close()
        time.sleep(0.05)
        continue
    s.settimeout(5)
    s.sendall(f"hello from {port}\\n".encode())
    got = s.recv(100).decode().strip()
    accepted = 0
    if listener is not None:
        listener.setblocking(False)
        try:
            while listener.accept():
                accepted += 1
        except BlockingIOError:
            pass
    print(json.dumps({"connected": True, "got": got, "local": s.getsockname(),
                      "peer": s.getpeername(), "listener_accepted": accepted}), flush=True)
    break
else:
    print(json.dumps({"connected": False, "errors": errors}), flush=True)
"""

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

#: accept for as long as it runs; print one line per connection accepted
LISTEN = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 0))
s.listen()
print(s.getsockname()[1], flush=True)
while True:
    c, peer = s.accept()
    print("accepted", peer[0], flush=True)
    c.close()
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[NatLab]:
    require_nat_lab()
    with nat_lab(HOMES) as built:  # type: ignore[arg-type]  # plain strings for the NAT kinds
        yield built
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, check=True).stdout
    assert built.internet.encode() not in names  # removed again


def python_in(namespace: str, code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*exec_prefix(namespace), sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> str:
    """Kill *process*; everything it printed that was not read yet."""
    process.kill()
    out, _ = process.communicate(timeout=10)
    return out


def run_python(namespace: str, code: str, *args: str) -> str:
    done = subprocess.run(
        [*exec_prefix(namespace), sys.executable, "-c", code, *args],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return done.stdout.strip()


@pytest.fixture(scope="module")
def reflector(lab: NatLab) -> Iterator[tuple[str, int]]:
    process = python_in(lab.internet, REFLECTOR)
    assert process.stdout is not None
    port = int(process.stdout.readline())
    yield lab.tracker_addr, port
    stop(process)


def test_the_rules_are_the_ones_a_home_router_has() -> None:
    cone, symmetric = router_rules("cone"), router_rules("symmetric")
    assert cone[0] == ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
    assert symmetric[0] == [*cone[0], "--random-fully"]
    assert cone[1:] == symmetric[1:]
    forward = [r for r in cone if r[1] == "FORWARD"]
    assert forward == [
        ["-A", "FORWARD", "-i", "wan", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
         "-j", "ACCEPT"],
        ["-A", "FORWARD", "-i", "wan", "-j", "DROP"],
    ]  # fmt: skip


def test_conntrack_lines_parse_into_mappings() -> None:
    text = (
        "tcp      6 117 SYN_SENT src=192.168.2.2 dst=203.0.113.12 sport=40001 dport=40002 "
        "[UNREPLIED] src=203.0.113.12 dst=203.0.113.11 sport=40002 dport=61234 mark=0 use=1\n"
        "tcp      6 431999 ESTABLISHED src=192.168.2.2 dst=203.0.113.1 sport=40001 dport=3000 "
        "src=203.0.113.1 dst=203.0.113.11 sport=3000 dport=40001 [ASSURED] mark=0 use=1\n"
        "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n"
    )
    first, second = parse_conntrack(text)
    assert first.state == "SYN_SENT" and not first.replied
    assert first.private == ("192.168.2.2", 40001) and first.public == ("203.0.113.11", 61234)
    assert first.remote == ("203.0.113.12", 40002)
    assert second.state == "ESTABLISHED" and second.replied
    assert second.public == ("203.0.113.11", 40001)


@pytest.mark.parametrize("label", ["open1", "cone1", "symmetric1"])
def test_only_an_open_host_is_reachable_unsolicited(lab: NatLab, label: str) -> None:
    home = lab[label]
    listener = python_in(home.host, LISTEN)
    added_route = False
    try:
        assert listener.stdout is not None
        port = listener.stdout.readline().strip()
        outcomes = [run_python(lab.internet, CONNECT, home.public_addr, port)]
        if home.kind != "open":
            # even a neighbour that routes the private network to the router
            # (an ISP's own machine, say) gets nothing through the filter
            subprocess.run(
                [*exec_prefix(lab.internet), "ip", "route", "add", f"{home.lan_prefix}.0/24",
                 "via", home.public_addr],
                check=True, capture_output=True,
            )  # fmt: skip
            added_route = True
            outcomes.append(run_python(lab.internet, CONNECT, home.host_addr, port))
    finally:
        if added_route:
            subprocess.run(
                [*exec_prefix(lab.internet), "ip", "route", "del", f"{home.lan_prefix}.0/24"],
                check=False, capture_output=True,
            )  # fmt: skip
        printed = stop(listener)
    if home.kind == "open":
        assert outcomes == ["connected"]
        assert "accepted 203.0.113.1" in printed
    else:
        # dropped, not refused: a home router answers nothing unsolicited
        assert outcomes == ["TimeoutError", "TimeoutError"], outcomes
        assert "accepted" not in printed


def punch(
    reflector: tuple[str, int], a: Home, b: Home, *, listen: bool = False
) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[str]]]:
    """Both hosts reflect, then dial each other's public mapping at once.

    With *listen*, each also listens on the port it dials from, as a daemon's
    direct endpoint does (``SO_REUSEPORT``).
    """
    extra = ["listen"] if listen else []
    sides = [python_in(h.host, PUNCH, reflector[0], str(reflector[1]), *extra) for h in (a, b)]
    try:
        learned = []
        for side in sides:
            assert side.stdout is not None
            line = side.stdout.readline()
            assert line, side.stderr.read() if side.stderr else ""
            learned.append(json.loads(line))
        mappings = {
            h.label: [str(m) for m in mappings_from(h.router, info["port"])]
            for h, info in zip((a, b), learned, strict=True)
        }
        # both start dialing at once, each towards what the other learned
        for side, other in ((sides[0], learned[1]), (sides[1], learned[0])):
            assert side.stdin is not None
            side.stdin.write(f"{other['public'][0]} {other['public'][1]}\n")
            side.stdin.flush()
        results = []
        for side in sides:
            out, err = side.communicate(timeout=30)
            assert side.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for side in sides:
            if side.poll() is None:
                stop(side)
    return (
        {"a": learned[0], "b": learned[1]},
        {"a": results[0], "b": results[1]},
        mappings,
    )


@pytest.mark.parametrize("listen", [False, True], ids=["dialing", "dialing-and-listening"])
def test_two_cone_hosts_get_one_connection_by_simultaneous_open(
    lab: NatLab, reflector: tuple[str, int], listen: bool
) -> None:
    a, b = lab["cone1"], lab["cone2"]
    learned, results, mappings = punch(reflector, a, b, listen=listen)
    # the cone NAT kept the port: the reflector saw the router's address and the host's port
    assert learned["a"]["public"] == [a.public_addr, learned["a"]["port"]], mappings
    assert learned["b"]["public"] == [b.public_addr, learned["b"]["port"]], mappings
    # ... and so does its own table, for the reflector connection
    assert any(
        f"-> {a.public_addr}:{learned['a']['port']} -> {reflector[0]}:{reflector[1]}" in m
        for m in mappings["cone1"]
    ), mappings
    assert results["a"]["connected"] and results["b"]["connected"], (results, lab.describe())
    # one connection, seen from both ends: each read the other's line
    assert results["a"]["got"] == f"hello from {learned['b']['port']}"
    assert results["b"]["got"] == f"hello from {learned['a']['port']}"
    assert results["a"]["local"] == [a.host_addr, learned["a"]["port"]]
    assert results["a"]["peer"] == [b.public_addr, learned["b"]["port"]]
    if listen:  # the SYN met the dialing socket, not the listener on the same port
        assert results["a"]["listener_accepted"] == results["b"]["listener_accepted"] == 0


def test_two_symmetric_hosts_never_connect(lab: NatLab, reflector: tuple[str, int]) -> None:
    a, b = lab["symmetric1"], lab["symmetric2"]
    learned, results, mappings = punch(reflector, a, b)
    for side, home in (("a", a), ("b", b)):
        host, public_port = learned[side]["public"]
        assert host == home.public_addr
        # the router gave the reflector connection a port of its own choosing ...
        assert any(
            f":{learned[side]['port']} -> {home.public_addr}:{public_port} -> " in m
            for m in mappings[home.label]
        ), mappings
    assert results["a"]["connected"] is False, results
    assert results["b"]["connected"] is False, results
    # ... and a fresh one to each new destination, so the dials never met
    dials = [
        m
        for m in mappings_from(a.router, learned["a"]["port"])
        if m.remote == (b.public_addr, learned["b"]["public"][1])
    ]
    assert dials and all(m.public[1] != learned["a"]["public"][1] for m in dials), dials

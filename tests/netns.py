"""Two homes that cannot reach each other, and a relay both reach: Linux network namespaces.

The topology the tunnel tests need is the real one -- peers behind NAT and a
tracker on the internet -- built on this machine only::

    home-a (192.0.2.2) ---veth--- (192.0.2.1) relay (198.51.100.1) ---veth--- (198.51.100.2) home-b

The addresses are documentation ranges (RFC 5737) that exist only inside the
namespaces this module creates; each home has a route to its own link only,
and the relay does not forward (``net.ipv4.ip_forward=0``), so home-a and
home-b have no path to each other: any byte between them must go through a
process on the relay. Everything is removed again on exit, and names carry
a random suffix so parallel runs never collide.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

HOME_A_ADDR = "192.0.2.2"
RELAY_ADDR_A = "192.0.2.1"
HOME_B_ADDR = "198.51.100.2"
RELAY_ADDR_B = "198.51.100.1"


def netns_unavailable_reason() -> str | None:
    """Why these tests cannot run here, or None when they can."""
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    probe = f"fbprobe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.decode().strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass(frozen=True)
class Topology:
    relay: str
    home_a: str
    home_b: str

    @staticmethod
    def exec_prefix(namespace: str) -> list[str]:
        """Put this in front of a command to run it inside *namespace*."""
        return ["ip", "netns", "exec", namespace]


@contextmanager
def two_homes_and_a_relay() -> Iterator[Topology]:
    tag = secrets.token_hex(3)
    topo = Topology(relay=f"fb-{tag}-relay", home_a=f"fb-{tag}-a", home_b=f"fb-{tag}-b")
    made: list[str] = []
    try:
        for ns in (topo.relay, topo.home_a, topo.home_b):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for home, home_addr, relay_addr, side in (
            (topo.home_a, HOME_A_ADDR, RELAY_ADDR_A, "a"),
            (topo.home_b, HOME_B_ADDR, RELAY_ADDR_B, "b"),
        ):
            home_if, relay_if = f"fb{tag}{side}h", f"fb{tag}{side}r"
            # created inside the home namespace, so nothing ever appears in the host's
            _ip("-n", home, "link", "add", home_if, "type", "veth", "peer", "name", relay_if)
            _ip("-n", home, "link", "set", relay_if, "netns", topo.relay)
            _ip("-n", home, "addr", "add", f"{home_addr}/24", "dev", home_if)
            _ip("-n", topo.relay, "addr", "add", f"{relay_addr}/24", "dev", relay_if)
            _ip("-n", home, "link", "set", home_if, "up")
            _ip("-n", topo.relay, "link", "set", relay_if, "up")
        # (a new namespace starts with forwarding off; say so, without needing procps)
        subprocess.run(
            [
                *Topology.exec_prefix(topo.relay),
                "sh",
                "-c",
                "echo 0 > /proc/sys/net/ipv4/ip_forward",
            ],
            check=True,
            capture_output=True,
        )
        yield topo
    finally:
        for ns in made:  # deleting a namespace deletes its veth ends too
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


# -- one LAN: two hosts on a bridge, multicast on ----------------------------------------

LAN_ADDRS = ("203.0.113.10", "203.0.113.11")


@dataclass(frozen=True)
class Lan:
    """Two hosts (namespaces) on one Ethernet segment: ``hosts[i]`` has ``LAN_ADDRS[i]``."""

    switch: str
    hosts: tuple[str, str]


def require_netns() -> None:
    """Skip when network namespaces cannot be had here; in CI (``CI=true``) fail instead."""
    import pytest

    reason = netns_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the network-namespace tests: {reason}")
    pytest.skip(reason)


@contextmanager
def two_hosts_on_a_lan() -> Iterator[Lan]:
    """A bridge (the switch, in its own namespace) with one veth end of each host on it.

    Multicast snooping is off, so the switch floods mDNS (224.0.0.251) to
    both hosts as a home router's switch does; each host routes multicast
    out of its LAN interface (there is no default route to carry it).
    """
    tag = secrets.token_hex(3)
    lan = Lan(switch=f"fb-{tag}-sw", hosts=(f"fb-{tag}-la", f"fb-{tag}-lb"))
    made: list[str] = []
    try:
        for ns in (lan.switch, *lan.hosts):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        bridge = f"fb{tag}br"
        _ip("-n", lan.switch, "link", "add", bridge, "type", "bridge", "mcast_snooping", "0")
        _ip("-n", lan.switch, "link", "set", bridge, "up")
        for host, addr, side in zip(lan.hosts, LAN_ADDRS, "ab", strict=True):
            host_if, port_if = f"fb{tag}{side}h", f"fb{tag}{side}s"
            _ip("-n", host, "link", "add", host_if, "type", "veth", "peer", "name", port_if)
            _ip("-n", host, "link", "set", port_if, "netns", lan.switch)
            _ip("-n", lan.switch, "link", "set", port_if, "master", bridge)
            _ip("-n", lan.switch, "link", "set", port_if, "up")
            _ip("-n", host, "addr", "add", f"{addr}/24", "dev", host_if)
            _ip("-n", host, "link", "set", host_if, "multicast", "on", "up")
            _ip("-n", host, "route", "add", "224.0.0.0/4", "dev", host_if)
        yield lan
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


@contextmanager
def one_host_two_addresses() -> Iterator[tuple[str, tuple[str, str]]]:
    """One namespace whose two veth ends are two addresses of one segment (for one
    process playing several LAN hosts); multicast leaves by the first."""
    ns = f"fb-{secrets.token_hex(3)}-probe"
    addrs = ("192.0.2.1", "192.0.2.2")
    made = False
    try:
        _ip("netns", "add", ns)
        made = True
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "add", "fbp0", "type", "veth", "peer", "name", "fbp1")
        for dev, addr in zip(("fbp0", "fbp1"), addrs, strict=True):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "fbp0")
        yield ns, addrs
    finally:
        if made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

"""Whose share an address counts against, everywhere a limit is per address.

One subscriber gets a whole IPv6 /64, so a limit counted by single IPv6
addresses gives one attacker 2**64 shares; a dual-stack listener sees IPv4
clients as IPv4-mapped IPv6. Plain numbers, and the tracker's tables fed
addresses as its HTTP and websocket glue hands them over. On the code before
this, only the tunnel port's join phase grouped a /64: registrations, links,
send budgets and peer lists counted each IPv6 address alone.
"""

from __future__ import annotations

import pytest

from flashback.errors import BackendUnavailable, RateLimited
from flashback.protocol.fairshare import share_address
from flashback.tracker.hub import Connection, Hub
from flashback.tracker.linkshare import LinkShare
from flashback.tracker.validate import RegisterBody
from tests.tracker_support import open_tracker, tracker_config


def test_ipv4_is_counted_as_it_is() -> None:
    assert share_address("198.51.100.4") == "198.51.100.4"
    assert share_address("198.51.100.4") != share_address("198.51.100.5")


def test_ipv6_is_counted_by_its_64() -> None:
    assert share_address("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert share_address("2001:db8:1:2::1") == share_address("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert share_address("2001:db8:1:2::1") != share_address("2001:db8:1:3::1")
    assert share_address("2001:DB8:1:2::1") == share_address("2001:db8:1:2::9")
    assert share_address("fe80::1%eth0") == share_address("fe80::2%eth1") == "fe80::/64"


def test_ipv4_mapped_ipv6_is_counted_as_ipv4() -> None:
    assert share_address("::ffff:198.51.100.4") == "198.51.100.4"
    assert share_address("::ffff:198.51.100.4") == share_address("198.51.100.4")


def test_what_is_no_ip_address_is_counted_as_given() -> None:
    assert share_address("unknown") == "unknown"
    assert share_address("") == ""


def _connection(host: str, port: int) -> Connection:
    return Connection(None, 8, client=(host, port), server=("::", 3000))


def test_links_from_one_64_share_one_address_share() -> None:
    hub = Hub()
    links = LinkShare(hub, capacity=10, per_address=2)
    first, second, third = (_connection(f"2001:db8::{i}", 1000 + i) for i in (1, 2, 3))
    for connection in (first, second, third):
        hub.add(connection)
        links.admit(connection)
    assert first.close_code is not None  # its /64's own oldest made room
    assert second.close_code is None and third.close_code is None
    assert links.share.count("2001:db8::/64") == 2


def _body(name: str) -> RegisterBody:
    return RegisterBody(name=name, host="127.0.0.1", port=8000, capabilities={}, peer_id=None)


@pytest.mark.parametrize(
    ("first", "second"),
    [("2001:db8::1", "2001:db8::ffff:2"), ("::ffff:198.51.100.4", "198.51.100.4")],
)
async def test_registrations_from_one_64_share_one_address_share(first: str, second: str) -> None:
    config = tracker_config(max_peers_per_address=1)
    async with open_tracker(config) as running:
        await running.tracker.register(_body("one"), {}, first)
        with pytest.raises(BackendUnavailable):
            await running.tracker.register(_body("two"), {}, second)
        # another /64 has its own share
        await running.tracker.register(_body("three"), {}, "2001:db8:0:1::1")


async def test_the_registration_rate_is_counted_by_64() -> None:
    config = tracker_config(register_rate_per_s=0.001, register_burst=1)
    async with open_tracker(config) as running:
        await running.tracker.register(_body("one"), {}, "2001:db8::1")
        with pytest.raises(RateLimited):
            await running.tracker.register(_body("two"), {}, "2001:db8::2")

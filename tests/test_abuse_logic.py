"""Pure rules behind the abuse bounds, with numbers: hosts, the token bucket,
the tracker's peer capacity, relay room in a link's queue, URL building."""

from __future__ import annotations

import httpx
import pytest

from flashback.config import tracker_from_sources
from flashback.daemon.client import http_url
from flashback.errors import ConfigError, FlashbackError
from flashback.protocol.hosts import is_valid_host
from flashback.protocol.messages import MAX_PEER_LIST_BYTES, Candidate, StreamError
from flashback.protocol.token_bucket import TokenBucket
from flashback.tracker.capacity import PeerCapacity, record_bytes
from flashback.tracker.hub import Connection, Hub


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "::1", "2001:db8::1", "laptop", "a.b-c.example", "host.", "x" * 63],
)
def test_host_names_and_ip_literals_are_hosts(host: str) -> None:
    assert is_valid_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "::1]:3912/internal/admin?x=",
        "[::1]",
        "fe80::1%eth0",
        "a/b",
        "a?b",
        "a#b",
        "a@b",
        "a:1",
        "-a",
        "a-",
        "a_b",
        "a..b",
        ".",
        "x" * 64,
        ".".join(["a" * 63] * 4),
        "",
        "ä.example",
        "a b",
    ],
)
def test_anything_else_is_not(host: str) -> None:
    assert not is_valid_host(host)


def test_token_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_s(10.0) == pytest.approx(0.5)
    assert not bucket.take(10.4)
    assert bucket.take(10.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst
    assert not bucket.take(99.0)  # time going backwards refills nothing


def test_capacity_counts_peers_and_bytes_and_forgets_the_gone() -> None:
    online: set[str] = set()
    capacity = PeerCapacity(max_peers=2, max_bytes=1000, is_online=online.__contains__)
    assert capacity.refusal("a", 400, len(online)) is None
    capacity.admit("a", 400)
    online.add("a")
    assert capacity.refusal("a", 900, len(online)) is None  # a replaces its own record
    assert "bytes" in (capacity.refusal("b", 700, len(online)) or "")
    capacity.admit("b", 500)
    online.add("b")
    assert "2 peers" in (capacity.refusal("c", 1, len(online)) or "")
    online.discard("a")  # expired without our hearing of it
    assert capacity.refusal("c", 500, len(online)) is None
    assert capacity.total_bytes == 500


def test_a_record_costs_what_it_adds_to_a_snapshot() -> None:
    size = record_bytes("id", "ü", "h", 1, {"k": "v"})
    assert (
        size
        == len(
            (
                '{"peer_id":"id","name":"ü","peer_server":{"host":"h","port":1},"capabilities":'
                '{"k":"v"},"registered_at":"1970-01-01T00:00:00.000Z",'
                '"last_seen":"1970-01-01T00:00:00.000Z","fingerprint":null,"direct":[],'
                # the widest reflexive address is reserved: a reflection adds no bytes later
                '"reflexive":{"host":"ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255","port":65535}}'
            ).encode()
        )
        + 1
    )
    fingerprint = "sha256:" + "ab" * 32
    with_key = record_bytes("id", "ü", "h", 1, {"k": "v"}, fingerprint)
    assert with_key == size + len(f'"{fingerprint}"') - len("null")
    direct = (Candidate("10.0.0.1", 4000),)
    with_direct = record_bytes("id", "ü", "h", 1, {"k": "v"}, None, direct)
    assert with_direct == size + len('{"host":"10.0.0.1","port":4000}')


def test_the_peer_list_budget_may_not_exceed_what_a_daemon_accepts() -> None:
    assert tracker_from_sources({}, {}).max_peer_list_bytes == MAX_PEER_LIST_BYTES
    assert tracker_from_sources({}, {"RELAY_MAX_PEERS": "7"}).max_peers == 7
    with pytest.raises(ConfigError, match="RELAY_MAX_PEER_LIST_BYTES"):
        tracker_from_sources({}, {"RELAY_MAX_PEER_LIST_BYTES": str(MAX_PEER_LIST_BYTES + 1)})
    with pytest.raises(ConfigError, match="RELAY_MAX_PEERS"):
        tracker_from_sources({}, {"RELAY_MAX_PEERS": "0"})


def test_relays_fill_half_a_queue_and_never_evict_the_target() -> None:
    hub = Hub()
    target = Connection("victim", queue_messages=4)
    hub.add(target)
    message = StreamError("r", "x", "y", from_="mallory")
    assert [hub.relay(target, message) for _ in range(3)] == [True, True, False]
    assert hub.link_for("victim") is target  # still linked
    assert target.offer("feed") and target.offer("feed")  # the feed keeps its half


def test_urls_are_built_from_parts() -> None:
    assert str(http_url("::1", 8000, "/api/files/a b?c#d")) == (
        "http://[::1]:8000/api/files/a%20b%3Fc%23d"
    )
    assert http_url("127.0.0.1", 1, "/x").host == "127.0.0.1"
    with pytest.raises(FlashbackError):
        http_url("::1]:3912/internal/admin?x=", 80, "/download/f")
    with pytest.raises(FlashbackError):
        http_url("evil/x", 80)
    assert isinstance(http_url("h", 1), httpx.URL)


def test_charging_bytes_holds_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=1000.0, burst=500.0)
    assert bucket.charge(0.0, 500) == 0.0  # the burst passes at once
    assert bucket.charge(0.0, 1000) == pytest.approx(1.0)
    # after sleeping that second the debt is paid, so the next 1000 wait 1 s more
    assert bucket.charge(1.0, 1000) == pytest.approx(1.0)
    assert bucket.charge(10.0, 0) == 0.0
    assert bucket.tokens == pytest.approx(500.0)  # refills to the burst, no further

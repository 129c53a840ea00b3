"""The tunnel-pairing decision (protocol/pairing.py) on plain values."""

from __future__ import annotations

import pytest

from flashback.protocol.pairing import (
    Hosts,
    Refusal,
    delivery_refusal,
    pairing_hosts,
    request_refusal,
)


def _request(**overrides: object) -> Refusal | None:
    facts: dict[str, object] = {
        "requester": "bob",
        "tunnels_enabled": True,
        "owner": "alice",
        "owner_online": True,
        "owner_fingerprint": "ab" * 32,
    }
    facts.update(overrides)
    return request_refusal(**facts)  # type: ignore[arg-type]


def test_a_request_from_a_peer_to_an_online_owner_with_a_key_is_not_refused() -> None:
    assert _request() is None


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"requester": None}, "forbidden"),
        ({"tunnels_enabled": False}, "disabled"),
        ({"owner_online": False, "owner_fingerprint": None}, "unknown_peer"),
        ({"owner_fingerprint": None}, "no_fingerprint"),
        # the first reason that applies is the one heard
        ({"requester": None, "tunnels_enabled": False, "owner_online": False}, "forbidden"),
        ({"tunnels_enabled": False, "owner_online": False}, "disabled"),
    ],
)
def test_the_first_reason_that_applies_refuses_a_request(
    overrides: dict[str, object], code: str
) -> None:
    refused = _request(**overrides)
    assert refused is not None and refused.code == code


def test_refusals_name_the_owner() -> None:
    assert _request(owner_online=False) == Refusal("unknown_peer", "peer 'alice' is not online")
    assert _request(owner_fingerprint=None) == Refusal(
        "no_fingerprint", "peer 'alice' has no key to prove itself with"
    )


def test_an_owner_linked_here_dials_the_host_its_own_link_reached() -> None:
    hosts = pairing_hosts(
        requester_host="10.0.0.1",
        owner_linked_here=True,
        owner_link_host="192.0.2.7",
        advertise="relay.example",
        bind_host="0.0.0.0",
    )
    assert hosts == Hosts(owner="192.0.2.7", requester="10.0.0.1")


def test_an_owner_linked_elsewhere_dials_the_advertised_host_or_the_bind_address() -> None:
    def owner_host(advertise: str | None, bind_host: str) -> Hosts | Refusal:
        return pairing_hosts(
            requester_host="10.0.0.1",
            owner_linked_here=False,
            owner_link_host="evil.example",  # not its link: never used
            advertise=advertise,
            bind_host=bind_host,
        )

    assert owner_host("relay.example", "0.0.0.0") == Hosts("relay.example", "10.0.0.1")
    assert owner_host(None, "198.51.100.2") == Hosts("198.51.100.2", "10.0.0.1")
    refused = owner_host(None, "0.0.0.0")
    assert isinstance(refused, Refusal) and refused.code == "disabled"
    assert "RELAY_TUNNEL_ADVERTISE" in refused.text


def test_no_host_for_a_side_linked_here_is_disabled() -> None:
    for requester_host, owner_link_host in [(None, "192.0.2.7"), ("10.0.0.1", None)]:
        refused = pairing_hosts(
            requester_host=requester_host,
            owner_linked_here=True,
            owner_link_host=owner_link_host,
            advertise=None,
            bind_host="127.0.0.1",
        )
        assert refused == Refusal("disabled", "no address to offer for the tunnel port")


@pytest.mark.parametrize(
    ("linked_here", "owner_invited", "requester_invited", "code"),
    [
        (True, True, True, None),
        (False, True, True, None),
        (True, False, False, "busy"),  # a full owner here keeps its link
        (False, False, False, "unknown_peer"),  # no instance holds the owner's link
        (True, True, False, "unknown_peer"),  # the requester's own queue was full
        (False, True, False, "unknown_peer"),
    ],
)
def test_delivery_calls_a_session_off_unless_both_invites_went(
    linked_here: bool, owner_invited: bool, requester_invited: bool, code: str | None
) -> None:
    refused = delivery_refusal(
        "alice",
        owner_linked_here=linked_here,
        owner_invited=owner_invited,
        requester_invited=requester_invited,
    )
    assert (None if refused is None else refused.code) == code

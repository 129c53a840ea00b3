"""The owner's access decision (§11) as a table, and the access-denied throttle: no sockets."""

from __future__ import annotations

from typing import Any

import pytest

from flashback.protocol.access import EventThrottle, Verdict, decide

BOB = "sha256:" + "b" * 64
BOB2 = "sha256:" + "2" * 64  # bob's new key
EVE = "sha256:" + "e" * 64
CAROL = "sha256:" + "c" * 64

# (case, inputs, expected verdict). Inputs left out: tracker mode, no invite,
# nothing allowed, denied, pinned, accepted before or online.
TABLE: list[tuple[str, dict[str, Any], Verdict]] = [
    # -- tracker mode, with an invite: the tracker's fingerprint for that peer id
    ("tracker: matches the invite", dict(invite=("bob", BOB)), Verdict(None, ("bob", BOB))),
    ("tracker: another key than the invite", dict(invite=("bob", BOB), presented=EVE),
     Verdict("forbidden")),
    ("tracker: invite without a fingerprint", dict(invite=("bob", None)), Verdict("forbidden")),
    ("tracker: no certificate", dict(invite=("bob", BOB), presented=None),
     Verdict("no_certificate")),
    ("tracker: denied beats the tracker", dict(invite=("bob", BOB), denied={BOB}),
     Verdict("denied")),
    ("tracker: pinned, same key", dict(invite=("bob", BOB), pins={"bob": BOB}),
     Verdict(None)),
    ("tracker: pinned, key changed (tracker vouches)",
     dict(invite=("bob", BOB2), presented=BOB2, pins={"bob": BOB}), Verdict("key_changed")),
    ("tracker: pinned, key changed even if allowed",
     dict(invite=("bob", BOB2), presented=BOB2, pins={"bob": BOB}, allowed={BOB2}),
     Verdict("key_changed")),
    ("tracker: allowed passes a stale listing", dict(invite=("bob", EVE), allowed={BOB}),
     Verdict(None, ("bob", BOB))),
    ("tracker: online elsewhere does not stand in for the invite",
     dict(invite=("bob", EVE), online={BOB}), Verdict("forbidden")),
    ("tracker: denied beats allowed", dict(invite=("bob", BOB), allowed={BOB}, denied={BOB}),
     Verdict("denied")),
    # -- tracker mode, a plain dial (no invite)
    ("dial: stranger", dict(), Verdict("forbidden")),
    ("dial: allowed", dict(allowed={BOB}), Verdict(None)),
    ("dial: listed online", dict(online={CAROL, BOB}), Verdict(None)),
    ("dial: accepted before (tracker down)", dict(accepted_before={BOB}), Verdict(None)),
    ("dial: denied though online", dict(online={BOB}, denied={BOB}), Verdict("denied")),
    ("dial: no certificate", dict(presented=None, online={BOB}), Verdict("no_certificate")),
    # -- the peer book's vouched fingerprints (§12): a LAN-found peer with the tracker down
    ("dial: vouched in the book (tracker down)", dict(booked={BOB}), Verdict(None)),
    ("dial: another peer vouched in the book", dict(booked={CAROL}), Verdict("forbidden")),
    ("dial: denied though vouched in the book", dict(booked={BOB}, denied={BOB}),
     Verdict("denied")),
    ("tracker: the book does not stand in for the invite",
     dict(invite=("bob", EVE), booked={BOB}), Verdict("forbidden")),
    ("allowed: dial, only vouched in the book", dict(mode="allowed", booked={BOB}),
     Verdict("forbidden")),
    # -- allowed mode: allowed only
    ("allowed: not allowed, tracker vouches", dict(mode="allowed", invite=("bob", BOB)),
     Verdict("forbidden")),
    ("allowed: allowed, with invite", dict(mode="allowed", invite=("bob", BOB), allowed={BOB}),
     Verdict(None, ("bob", BOB))),
    ("allowed: lying tracker lists an allowed key for a stranger",
     dict(mode="allowed", invite=("bob", CAROL), presented=EVE, allowed={CAROL}),
     Verdict("forbidden")),
    ("allowed: lying tracker lists bob's allowed key for a new key",
     dict(mode="allowed", invite=("bob", BOB), presented=BOB2, allowed={BOB}),
     Verdict("forbidden")),
    ("allowed: dial, allowed", dict(mode="allowed", allowed={BOB}), Verdict(None)),
    ("allowed: dial, only online", dict(mode="allowed", online={BOB}), Verdict("forbidden")),
    ("allowed: dial, only accepted before",
     dict(mode="allowed", accepted_before={BOB}), Verdict("forbidden")),
    ("allowed: denied and allowed", dict(mode="allowed", allowed={BOB}, denied={BOB}),
     Verdict("denied")),
    ("allowed: pinned, key changed", dict(mode="allowed", invite=("bob", BOB2), presented=BOB2,
                                          allowed={BOB, BOB2}, pins={"bob": BOB}),
     Verdict("key_changed")),
    ("allowed: other peer's pin does not matter",
     dict(mode="allowed", invite=("bob", BOB), allowed={BOB}, pins={"carol": CAROL}),
     Verdict(None, ("bob", BOB))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("inputs", "expected"), [row[1:] for row in TABLE], ids=[r[0] for r in TABLE]
)
def test_decision_table(inputs: dict[str, Any], expected: Verdict) -> None:
    invite_peer, invite_fingerprint = inputs.get("invite", (None, None))
    verdict = decide(
        inputs.get("presented", BOB),
        mode=inputs.get("mode", "tracker"),
        invite_peer=invite_peer,
        invite_fingerprint=invite_fingerprint,
        allowed=inputs.get("allowed", set()),
        denied=inputs.get("denied", set()),
        pins=inputs.get("pins", {}),
        accepted_before=inputs.get("accepted_before", set(inputs.get("pins", {}).values())),
        online=inputs.get("online", set()),
        booked=inputs.get("booked", set()),
    )
    assert verdict == expected
    assert verdict.serve == (expected.refusal is None)


def test_throttle_once_per_key_per_minute() -> None:
    throttle = EventThrottle(window_s=60, capacity=8)
    assert throttle.allow(BOB, 0.0)
    assert not throttle.allow(BOB, 59.9)
    assert throttle.allow(EVE, 10.0)  # another key has its own minute
    assert throttle.allow(BOB, 60.0)
    assert not throttle.allow(BOB, 100.0)
    assert throttle.allow(BOB, 120.0)


def test_throttle_is_bounded_and_forgets_the_least_recent() -> None:
    throttle = EventThrottle(window_s=60, capacity=3)
    for i, key in enumerate("abc"):
        assert throttle.allow(key, float(i))
    assert throttle.allow("d", 3.0)  # "a" is forgotten to make room
    assert len(throttle) == 3
    assert throttle.allow("a", 4.0)  # so it may be told again (memory stays bounded)
    assert not throttle.allow("d", 5.0)
    assert not throttle.allow("c", 5.0)
    assert throttle.allow("b", 5.0)  # "b" went when "a" came back


def test_throttle_refuses_nonsense_bounds() -> None:
    with pytest.raises(ValueError):
        EventThrottle(capacity=0)

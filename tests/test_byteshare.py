"""ByteShare: the fair-share rule counted in bytes, with plain numbers."""

from __future__ import annotations

import pytest

from flashback.protocol.byteshare import ByteShare


def test_under_the_budget_everything_is_admitted() -> None:
    share: ByteShare[str, int] = ByteShare(capacity=100, per_holder=50)
    assert share.admit("a", 1, 30).admitted
    assert share.admit("b", 2, 30).admitted
    assert share.total == share.in_use == 60 and share.held("a") == 30


def test_a_full_budget_condemns_the_heaviest_holders_oldest_not_the_newcomer() -> None:
    share: ByteShare[str, int] = ByteShare(capacity=100, per_holder=60)
    for key in range(5):  # the flooder holds 50 in five entries
        assert share.admit("flood", key, 10).admitted
    assert share.admit("other", 10, 40).admitted  # total 90
    first = share.admit("newcomer", 20, 25)
    # the flooder is heaviest (50 > 40): its two oldest go; the newcomer waits for them
    assert first.victims == (("flood", 0), ("flood", 1))
    assert not first.admitted and not first.refused
    assert share.state(0) == "condemned" and share.state(20) == "pending"
    share.release(0)
    assert share.state(20) == "pending"  # 15 short: one more to go
    share.release(1)
    assert share.state(20) == "live"
    assert share.held("newcomer") == 25 and share.held("other") == 40
    assert share.in_use == 95


def test_a_holder_past_its_share_pays_with_its_own_oldest() -> None:
    share: ByteShare[str, int] = ByteShare(capacity=1000, per_holder=30)
    assert share.admit("a", 1, 20).admitted
    assert share.admit("b", 2, 20).admitted
    third = share.admit("a", 3, 20)
    assert third.victims == (("a", 1),) and not third.admitted and not third.refused
    share.release(1)
    assert share.state(3) == "live"
    assert share.held("b") == 20  # the other holder never paid


def test_a_holder_whose_share_is_all_waiting_is_refused() -> None:
    share: ByteShare[str, int] = ByteShare(capacity=100, per_holder=30)
    assert share.admit("a", 1, 20).admitted
    assert share.admit("a", 2, 20).victims == (("a", 1),)  # 2 waits for 1
    # a third: its own oldest standing is the waiting 2, which goes instead
    third = share.admit("a", 3, 20)
    assert third.victims == (("a", 2),) and share.state(2) is None
    assert share.state(3) == "pending"


def test_waiting_entries_are_chosen_like_any_other() -> None:
    """Many holders waiting behind a full table: the newest still gets in,
    because the heaviest (then oldest) entry -- waiting or not -- goes first."""
    share: ByteShare[str, int] = ByteShare(capacity=30, per_holder=10)
    for key in range(3):
        assert share.admit(f"old{key}", key, 10).admitted
    for key in range(3, 6):  # three later holders, each waiting
        assert not share.admit(f"old{key}", key, 10).admitted
    honest = share.admit("honest", 99, 10)
    assert honest.victims == (("old3", 3),)  # the oldest waiting one gives way
    for key in range(3):
        share.release(key)
    assert share.state(99) == "live"


def test_ties_go_to_the_holder_whose_oldest_entry_is_oldest() -> None:
    share: ByteShare[str, int] = ByteShare(capacity=40, per_holder=40)
    assert share.admit("late", 1, 20).admitted
    assert share.admit("later", 2, 20).admitted
    assert share.admit("new", 3, 10).victims == (("late", 1),)


def test_an_entry_larger_than_a_share_is_refused_and_condemns_nothing() -> None:
    share: ByteShare[str, int] = ByteShare(capacity=100, per_holder=40)
    assert share.admit("a", 1, 40).admitted
    answer = share.admit("b", 2, 41)
    assert answer.refused and not answer.admitted and answer.victims == ()
    assert share.total == 40 and 2 not in share


def test_released_and_unknown_keys_leave_the_counts_right() -> None:
    share: ByteShare[str, int] = ByteShare(capacity=10, per_holder=10)
    assert share.admit("a", 1, 4).admitted
    assert share.release(1) == "a"
    assert share.release(1) is None
    assert share.total == share.in_use == 0 and len(share) == 0 and share.held("a") == 0
    with pytest.raises(ValueError):
        ByteShare(capacity=0, per_holder=1)
    assert share.admit("a", 2, 3).admitted
    with pytest.raises(ValueError):
        share.admit("a", 2, 3)

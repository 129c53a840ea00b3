"""The fair-share rule with plain numbers: the heaviest holder pays, never the newcomer."""

from __future__ import annotations

import pytest

from flashback.protocol.fairshare import FairShare


def test_a_holder_rotates_within_its_share() -> None:
    table: FairShare[str, int] = FairShare(capacity=10, per_holder=3)
    for key in range(3):
        assert table.admit("mallory", key).evicted is None
    assert table.admit("mallory", 3).evicted == ("mallory", 0)
    assert table.count("mallory") == 3 and 0 not in table


def test_a_full_table_evicts_the_heaviest_holders_oldest_entry() -> None:
    table: FairShare[str, int] = FairShare(capacity=6, per_holder=4)
    for key in range(4):
        table.admit("mallory", key)
    table.admit("bob", 10)
    table.admit("carol", 20)
    # full: the newcomer gets in, mallory (4 entries) gives up her oldest
    assert table.admit("dave", 30).evicted == ("mallory", 0)
    assert table.admit("erin", 40).evicted == ("mallory", 1)
    assert sorted(h for h, _ in table.holders()) == ["bob", "carol", "dave", "erin", "mallory"]
    assert len(table) == 6


def test_a_flood_from_one_holder_never_locks_out_an_honest_one() -> None:
    table: FairShare[str, int] = FairShare(capacity=256, per_holder=32)
    for key in range(10_000):
        table.admit("flood", key)
    assert table.count("flood") == 32
    for honest in range(27):
        assert table.admit(f"honest-{honest}", 100_000 + honest).evicted is None
    assert all(table.count(f"honest-{h}") == 1 for h in range(27))


def test_ties_go_to_the_holder_with_the_oldest_entry() -> None:
    table: FairShare[str, int] = FairShare(capacity=4, per_holder=2)
    table.admit("a", 1)
    table.admit("b", 2)
    table.admit("a", 3)
    table.admit("b", 4)
    assert table.would_evict("c") == ("a", 1)


def test_when_the_newcomer_is_the_heaviest_it_pays_itself() -> None:
    table: FairShare[str, int] = FairShare(capacity=3, per_holder=3)
    table.admit("a", 1)
    table.admit("a", 2)
    table.admit("b", 3)
    assert table.admit("a", 4).evicted == ("a", 1)


def test_release_and_refresh() -> None:
    table: FairShare[str, int] = FairShare(capacity=2, per_holder=2)
    table.admit("a", 1)
    table.admit("a", 2)
    table.admit("a", 1)  # refreshed: now the newest
    assert table.would_evict("b") == ("a", 2)
    assert table.release(2) == "a" and table.release(2) is None
    assert table.holder_of(1) == "a" and len(table) == 1


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FairShare(capacity=0, per_holder=1)

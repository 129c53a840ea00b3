"""The owner's gate and its file (§11): lists, requester pins, events, counters, bounds."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from flashback.daemon.access import (
    ACCESS_FILE,
    MAX_ACCESS_FILE_BYTES,
    AccessControl,
    AccessStore,
    AmbiguousPeer,
    forget_in_file,
)
from flashback.errors import BackendUnavailable, BadRequest, ConfigError, NotFound
from flashback.protocol.messages import PeerInfo

BOB = "sha256:" + "b" * 64
BOB2 = "sha256:" + "2" * 64
EVE = "sha256:" + "e" * 64


def peer(peer_id: str, name: str, fingerprint: str | None) -> PeerInfo:
    return PeerInfo.parse(
        {
            "peer_id": peer_id,
            "name": name,
            "peer_server": {"host": "127.0.0.1", "port": 1},
            "capabilities": {},
            "registered_at": "2026-01-01T00:00:00Z",
            "last_seen": "2026-01-01T00:00:00Z",
            "fingerprint": fingerprint,
        }
    )


class World:
    def __init__(self, directory: Path, mode: str = "tracker") -> None:
        self.directory = directory
        self.online: list[PeerInfo] = []
        self.events: list[dict[str, Any]] = []
        self.now = 1000.0
        self.gate = self.open(mode)

    def open(self, mode: str = "tracker") -> AccessControl:
        return AccessControl(
            AccessStore(self.directory),
            mode,  # type: ignore[arg-type]  # the test's mode string, as a config would give it
            emit=lambda event, **fields: self.events.append({"event": event, **fields}),
            online=lambda: self.online,
            clock=lambda: self.now,
            wall_clock=lambda: self.now,
        )

    def ask(
        self, presented: str | None, peer_id: str | None = None, listed: str | None = None
    ) -> str | None:
        return self.gate.check(presented, invite_peer=peer_id, invite_fingerprint=listed)


def test_tracker_mode_serves_the_listed_key_and_pins_it_across_restarts(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.online = [peer("bob-id", "bob", BOB)]
    assert world.ask(BOB, "bob-id", BOB) is None
    saved = json.loads((tmp_path / ACCESS_FILE).read_text())
    assert saved["requesters"][0] | {"accepted_at": 0} == {
        "peer_id": "bob-id", "fingerprint": BOB, "name": "bob", "accepted_at": 0,
    }  # fmt: skip
    assert stat.S_IMODE((tmp_path / ACCESS_FILE).stat().st_mode) == 0o600
    # a restarted owner still knows bob's key: a new one under his id is refused
    world.gate = world.open()
    assert world.ask(BOB2, "bob-id", BOB2) == "forbidden"
    assert world.events[-1] == {
        "event": "access-denied", "peer_id": "bob-id", "name": "bob", "fingerprint": BOB2,
        "reason": "key_changed",
    }  # fmt: skip
    # ... and a plain dial by the key it served is served with the tracker gone
    world.online = []
    assert world.ask(BOB) is None
    assert world.ask(EVE) == "forbidden"
    # forget: the new key is accepted, and pinned in its place
    assert [p.fingerprint for p in world.gate.forget("bob")] == [BOB]
    assert world.ask(BOB2, "bob-id", BOB2) is None
    counters = world.gate.status()["counters"]
    assert counters == {
        "accepted": 2,
        "refused": {"no_certificate": 0, "denied": 0, "key_changed": 1, "forbidden": 1},
    }


def test_allowed_mode_allow_deny_remove(tmp_path: Path) -> None:
    world = World(tmp_path, "allowed")
    world.online = [peer("bob-id", "bob", BOB)]
    assert world.ask(BOB, "bob-id", BOB) == "forbidden"
    entry = world.gate.allow("bob")
    assert (entry.fingerprint, entry.peer_id, entry.name) == (BOB, "bob-id", "bob")
    assert world.ask(BOB, "bob-id", BOB) is None
    # deny moves him off the allowed list and holds in tracker mode too
    world.gate.deny("bob-id")
    assert world.gate.status()["allowed"] == []
    assert world.ask(BOB, "bob-id", BOB) == "forbidden"
    tracker = World(tmp_path, "tracker")  # the same file, read by a daemon in tracker mode
    tracker.online = world.online
    assert tracker.ask(BOB, "bob-id", BOB) == "forbidden"
    assert tracker.events[-1]["reason"] == "denied"
    world.gate.remove("denied", BOB)
    assert world.ask(BOB, "bob-id", BOB) == "forbidden"  # neither list: allowed mode refuses
    with pytest.raises(NotFound):
        world.gate.remove("denied", BOB)
    with pytest.raises(BadRequest):
        world.gate.remove("other", BOB)


def test_peer_names_resolve_or_say_which(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.online = [peer("b1", "bob", BOB), peer("b2", "bob", BOB2), peer("e1", "eve", None)]
    with pytest.raises(AmbiguousPeer) as ambiguous:
        world.gate.allow("bob")
    assert "b1" in ambiguous.value.message and BOB2 in ambiguous.value.message
    assert world.gate.allow("b2").fingerprint == BOB2
    assert world.gate.allow(EVE).fingerprint == EVE  # a full fingerprint, known or not
    with pytest.raises(BadRequest):
        world.gate.allow("sha256:" + "B" * 64)  # upper case is not a fingerprint
    with pytest.raises(BadRequest):
        world.gate.allow("sha256:abc")
    with pytest.raises(NotFound):
        world.gate.allow("e1")  # registered no key
    with pytest.raises(NotFound):
        world.gate.allow("nobody")
    # a refused stranger can be allowed by the name it gave, from the recent attempts
    world.online = [peer("c1", "carol", "sha256:" + "c" * 64)]
    world.ask("sha256:" + "c" * 64, "c1", None)
    world.online = []
    assert world.gate.allow("carol").fingerprint == "sha256:" + "c" * 64


def test_access_denied_once_per_fingerprint_per_minute(tmp_path: Path) -> None:
    world = World(tmp_path, "allowed")
    for step in range(5):
        world.now = 1000.0 + step * 10  # five tries in 40 s
        assert world.ask(EVE, "eve-id", EVE) == "forbidden"
    assert world.ask(BOB, "bob-id", BOB) == "forbidden"
    assert [e["fingerprint"] for e in world.events] == [EVE, BOB]
    world.now = 1060.0
    assert world.ask(EVE, "eve-id", EVE) == "forbidden"
    assert [e["fingerprint"] for e in world.events] == [EVE, BOB, EVE]
    recent = world.gate.recent()
    assert [(r["fingerprint"], r["count"]) for r in recent] == [(EVE, 6), (BOB, 1)]
    assert world.ask(None, "x", None) == "forbidden"
    assert world.gate.status()["counters"]["refused"]["no_certificate"] == 1


def test_recent_attempts_are_a_fair_share(tmp_path: Path) -> None:
    """One peer id that tries many keys cannot push another's attempt out of the list."""
    world = World(tmp_path, "allowed")
    world.ask(BOB, "bob-id", BOB)
    for i in range(200):
        world.ask(f"sha256:{i:064x}", "flood-id", None)
    shown = [r["fingerprint"] for r in world.gate.recent()]
    assert BOB in shown and len(shown) <= 64


def test_a_damaged_or_huge_file_stops_the_daemon_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / ACCESS_FILE
    path.write_text('{"allowed": [{"fingerprint": "nope"}]}')
    with pytest.raises(ConfigError, match="damaged"):
        World(tmp_path)
    path.write_text("[" * 100_000)
    with pytest.raises(ConfigError, match="damaged"):
        World(tmp_path)
    path.write_bytes(b" " * (MAX_ACCESS_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="MiB"):
        World(tmp_path)


def test_forget_without_a_daemon_edits_the_file(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.online = [peer("bob-id", "bob", BOB)]
    world.ask(BOB, "bob-id", BOB)
    assert [p.peer_id for p in forget_in_file(tmp_path, BOB)] == ["bob-id"]
    assert forget_in_file(tmp_path, BOB) == []
    assert World(tmp_path).gate.status()["requesters"] == 0


def test_a_file_that_cannot_be_written_refuses_the_change_not_the_daemon(tmp_path: Path) -> None:
    world = World(tmp_path / "gone")
    world.online = [peer("bob-id", "bob", BOB)]
    (tmp_path / "gone").write_text("a file where the directory should be")
    assert world.ask(BOB, "bob-id", BOB) is None  # served; the pin holds in memory
    assert world.ask(BOB2, "bob-id", BOB2) == "forbidden"
    with pytest.raises(BackendUnavailable):
        world.gate.allow(EVE)

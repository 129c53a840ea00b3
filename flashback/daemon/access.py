"""Who may connect to me (docs/INTERFACE.md §11): the owner's lists, pins and gate.

:class:`AccessControl` is the running daemon's gate: every tunnel's owner
end (and the direct endpoint) asks :meth:`AccessControl.check` about the
fingerprint the requester proved, before any ``OPEN`` line is read. The
rule itself is :func:`flashback.protocol.access.decide`; this module holds
what it decides on and keeps it:

- ``access.json`` in the identity's directory (inside the data directory):
  the allowed and denied fingerprints and the **requester pins** -- every
  peer id this owner served, with the fingerprint it proved (the record of
  requesters accepted before). Written atomically (temp file, fsync,
  ``os.replace``, mode 0600), bounded in entries and bytes; a damaged or
  oversized file stops the daemon with one line rather than be read as
  "nobody is denied".
- The running daemon owns the file: ``flashback allow``/``deny``/``forget``
  change it through the control socket, so a change holds for the next
  connection, with no restart.
- Refusals are counted by reason, remembered (a bounded list of recent
  attempts for the web UI) and told as an ``access-denied`` event at most
  once per fingerprint per minute.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from flashback.daemon.keys import write_private
from flashback.errors import BackendUnavailable, BadRequest, ConfigError, FlashbackError, NotFound
from flashback.protocol.access import (
    REASONS,
    WIRE_REFUSAL,
    EventThrottle,
    Mode,
    Reason,
    decide,
)
from flashback.protocol.fairshare import FairShare
from flashback.protocol.fingerprint import FINGERPRINT_PREFIX, is_fingerprint
from flashback.protocol.messages import PeerInfo

log = logging.getLogger(__name__)

ACCESS_FILE: Final = "access.json"
ACCESS_FILE_VERSION: Final = 1
#: allowed and denied are the user's own lists: refuse more than this many each
MAX_LIST_ENTRIES: Final = 1_000
#: requesters served before (strangers in tracker mode can add some): a fair share
MAX_REQUESTER_PINS: Final = 10_000
#: peer ids one key may hold pins for (a key that registers again and again)
MAX_PINS_PER_FINGERPRINT: Final = 8
MAX_ACCESS_FILE_BYTES: Final = 4 * 1024 * 1024
#: the recent refusals the web UI lists, and how many of them one peer id may hold
MAX_RECENT_ATTEMPTS: Final = 64
MAX_RECENT_PER_PEER: Final = 4
MAX_NAME_CHARS: Final = 64
DENIED_EVENT_WINDOW_S: Final = 60.0
DENIED_EVENT_MEMORY: Final = 1_024
#: the holder, in the recent-attempts table, of refusals that came with no invite
_PLAIN_DIAL: Final = ""


class AmbiguousPeer(FlashbackError):
    """A name that several peers have: the caller must say which (CLI exit 2)."""

    status = 409
    default_code = "ambiguous_peer"


@dataclass(frozen=True)
class Entry:
    """An allowed or denied fingerprint, with who it was when it was added."""

    fingerprint: str
    peer_id: str | None
    name: str | None
    added_at: float


@dataclass(frozen=True)
class RequesterPin:
    """A requester this owner served: its peer id kept this fingerprint."""

    peer_id: str
    fingerprint: str
    name: str | None
    accepted_at: float


@dataclass
class Attempt:
    """A recent refusal, for the web UI's list."""

    fingerprint: str | None
    peer_id: str | None
    name: str | None
    reason: Reason
    at: float
    count: int = 1


# -- the file ---------------------------------------------------------------------


@dataclass
class AccessData:
    allowed: dict[str, Entry]
    denied: dict[str, Entry]
    pins: dict[str, RequesterPin]


def _text_or_none(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 128 or not value.isprintable():
        raise ValueError(f"bad {what}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("bad time")
    return float(value)


def _fingerprint(value: Any) -> str:
    if not is_fingerprint(value):
        raise ValueError(f"bad fingerprint {str(value)[:80]!r}")
    return str(value)


def _entries(raw: Any, what: str) -> dict[str, Entry]:
    if not isinstance(raw, list) or len(raw) > MAX_LIST_ENTRIES:
        raise ValueError(f'"{what}" must be a list of at most {MAX_LIST_ENTRIES}')
    out: dict[str, Entry] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError(f"bad entry in {what}")
        fingerprint = _fingerprint(item.get("fingerprint"))
        out[fingerprint] = Entry(
            fingerprint,
            _text_or_none(item.get("peer_id"), "peer id"),
            _text_or_none(item.get("name"), "name"),
            _number(item.get("added_at", 0)),
        )
    return out


def _pins(raw: Any) -> dict[str, RequesterPin]:
    if not isinstance(raw, list) or len(raw) > MAX_REQUESTER_PINS:
        raise ValueError(f'"requesters" must be a list of at most {MAX_REQUESTER_PINS}')
    out: dict[str, RequesterPin] = {}
    for item in raw:
        if not isinstance(item, dict):
            raise ValueError("bad entry in requesters")
        peer_id = _text_or_none(item.get("peer_id"), "peer id")
        if peer_id is None:
            raise ValueError("a requester without a peer id")
        out[peer_id] = RequesterPin(
            peer_id,
            _fingerprint(item.get("fingerprint")),
            _text_or_none(item.get("name"), "name"),
            _number(item.get("accepted_at", 0)),
        )
    return out


class AccessStore:
    """``access.json``: read once at start, written whole after each change."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ACCESS_FILE

    def load(self) -> AccessData:
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_ACCESS_FILE_BYTES + 1)
        except FileNotFoundError:
            return AccessData({}, {}, {})
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror}") from exc
        if len(raw) > MAX_ACCESS_FILE_BYTES:
            raise ConfigError(
                f"{self.path} is over {MAX_ACCESS_FILE_BYTES // (1024 * 1024)} MiB; "
                "refusing to guess who may connect (move it away to start afresh)"
            )
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return AccessData(
                _entries(data.get("allowed", []), "allowed"),
                _entries(data.get("denied", []), "denied"),
                _pins(data.get("requesters", [])),
            )
        except (ValueError, RecursionError) as exc:
            raise ConfigError(
                f"{self.path} is damaged ({exc}); refusing to guess who may connect"
            ) from None

    def save(self, data: AccessData) -> None:
        body = {
            "version": ACCESS_FILE_VERSION,
            "allowed": [asdict(e) for e in data.allowed.values()],
            "denied": [asdict(e) for e in data.denied.values()],
            "requesters": [asdict(p) for p in data.pins.values()],
        }
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.path, json.dumps(body, indent=1).encode())


def forget_in_file(directory: Path, key: str) -> list[RequesterPin]:
    """``forget`` with no daemon running: drop *key*'s requester pins from the file."""
    store = AccessStore(directory)
    if not store.path.exists():
        return []
    data = store.load()
    removed = _matching_pins(data.pins.values(), key)
    for pin in removed:
        del data.pins[pin.peer_id]
    if removed:
        store.save(data)
    return removed


def _matching_pins(pins: Iterable[RequesterPin], key: str) -> list[RequesterPin]:
    pins = list(pins)
    exact = [p for p in pins if key in (p.peer_id, p.fingerprint)]
    return exact or [p for p in pins if p.name == key]


# -- the gate ---------------------------------------------------------------------


#: what the gate reads from the running daemon: the online peers (tracker's list)
OnlinePeers = Callable[[], Collection[PeerInfo]]
#: and the peer book's vouched fingerprints (§12)
Booked = Callable[[], Collection[str]]
Emit = Callable[..., None]


class AccessControl:
    """The :class:`~flashback.daemon.reach.Gate` of a running daemon, and its lists."""

    def __init__(
        self,
        store: AccessStore,
        mode: Mode,
        *,
        emit: Emit,
        online: OnlinePeers,
        booked: Booked = frozenset,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._booked = booked
        self.mode: Mode = mode
        self._emit = emit
        self._online = online
        self._clock = clock
        self._wall = wall_clock
        data = store.load()
        self._allowed = data.allowed
        self._denied = data.denied
        self._pins: dict[str, RequesterPin] = {}
        self._pin_share: FairShare[str, str] = FairShare(
            MAX_REQUESTER_PINS, MAX_PINS_PER_FINGERPRINT
        )
        self._pinned_fingerprints: Counter[str] = Counter()
        for pin in sorted(data.pins.values(), key=lambda p: p.accepted_at):
            self._add_pin(pin)
        self._throttle = EventThrottle(window_s=DENIED_EVENT_WINDOW_S, capacity=DENIED_EVENT_MEMORY)
        self._recent: dict[str | None, Attempt] = {}
        self._recent_share: FairShare[str, str | None] = FairShare(
            MAX_RECENT_ATTEMPTS, MAX_RECENT_PER_PEER
        )
        self.accepted = 0
        self.refused: Counter[Reason] = Counter()

    @classmethod
    def open(
        cls,
        directory: Path,
        mode: Mode,
        *,
        emit: Emit,
        online: OnlinePeers,
        booked: Booked = frozenset,
    ) -> AccessControl:
        return cls(AccessStore(directory), mode, emit=emit, online=online, booked=booked)

    # -- the Gate ---------------------------------------------------------------

    def check(
        self,
        presented: str | None,
        *,
        invite_peer: str | None,
        invite_fingerprint: str | None,
    ) -> str | None:
        """None to serve *presented*, else the ``ERR`` code (``forbidden``)."""
        peers = list(self._online())
        verdict = decide(
            presented,
            mode=self.mode,
            invite_peer=invite_peer,
            invite_fingerprint=invite_fingerprint,
            allowed=self._allowed,
            denied=self._denied,
            pins={} if invite_peer is None else _one_pin(self._pins, invite_peer),
            accepted_before=self._pinned_fingerprints,
            online={p.fingerprint for p in peers if p.fingerprint is not None},
            booked=self._booked() if invite_peer is None else (),
        )
        name = _name_for(peers, invite_peer, presented) or self._known_name(invite_peer, presented)
        if verdict.refusal is None:
            self.accepted += 1
            if verdict.pin is not None:
                peer_id, fingerprint = verdict.pin
                self._add_pin(RequesterPin(peer_id, fingerprint, name, self._wall()))
                try:
                    self._save()
                except BackendUnavailable as exc:  # the pin holds in memory meanwhile
                    log.warning("%s", exc.message)
            return None
        self._refused(verdict.refusal, presented, invite_peer, name)
        return WIRE_REFUSAL

    def _refused(
        self, reason: Reason, presented: str | None, peer_id: str | None, name: str | None
    ) -> None:
        self.refused[reason] += 1
        log.warning(
            "refused %s (%s, %s): %s", presented or "a peer without a certificate",
            name or "unknown name", peer_id or "no invite", reason,
        )  # fmt: skip
        attempt = self._recent.get(presented)
        if attempt is not None:
            attempt.count += 1
            attempt.at, attempt.reason = self._wall(), reason
            attempt.peer_id, attempt.name = peer_id or attempt.peer_id, name or attempt.name
        else:
            admitted = self._recent_share.admit(peer_id or _PLAIN_DIAL, presented)
            if admitted.evicted is not None:
                self._recent.pop(admitted.evicted[1], None)
            self._recent[presented] = Attempt(presented, peer_id, name, reason, self._wall())
        if self._throttle.allow(presented, self._clock()):
            self._emit(
                "access-denied", peer_id=peer_id, name=name, fingerprint=presented, reason=reason
            )

    # -- the lists -----------------------------------------------------------------

    def resolve(self, key: str) -> Entry:
        """The fingerprint *key* names: a full ``sha256:`` fingerprint, a peer id, or a
        name -- of an online peer, a requester served before, or a recent attempt."""
        peers = list(self._online())
        if key.startswith(FINGERPRINT_PREFIX):
            if not is_fingerprint(key):
                raise BadRequest(
                    f"{key[:80]!r} is not a full fingerprint (sha256: and 64 lowercase hex digits)",
                    code="bad_fingerprint",
                )
            named = _name_for(peers, None, key) or self._known_name(None, key)
            return Entry(key, self._peer_id_for(peers, key), named, self._wall())
        for peer in peers:
            if peer.peer_id == key:
                if peer.fingerprint is None:
                    raise NotFound(f"peer {key} registered no fingerprint", code="no_fingerprint")
                return Entry(peer.fingerprint, peer.peer_id, peer.name, self._wall())
        pin = self._pins.get(key)
        if pin is not None:
            return Entry(pin.fingerprint, pin.peer_id, pin.name, self._wall())
        candidates: dict[str, Entry] = {}
        sources: list[tuple[str | None, str | None, str | None]] = [
            (p.fingerprint, p.peer_id, p.name) for p in peers
        ]
        sources += [(p.fingerprint, p.peer_id, p.name) for p in self._pins.values()]
        sources += [(a.fingerprint, a.peer_id, a.name) for a in self._recent.values()]
        for fingerprint, peer_id, name in sources:
            if name == key and fingerprint is not None and fingerprint not in candidates:
                candidates[fingerprint] = Entry(fingerprint, peer_id, name, self._wall())
        if not candidates:
            raise NotFound(
                f"no peer {key!r} is known (online, served or refused)", code="unknown_peer"
            )
        if len(candidates) > 1:
            shown = "; ".join(f"{e.peer_id or '-'} {e.fingerprint}" for e in candidates.values())
            raise AmbiguousPeer(
                f"several peers are named {key!r}; use a peer id or fingerprint: {shown}"
            )
        return next(iter(candidates.values()))

    def allow(self, key: str) -> Entry:
        entry = self.resolve(key)
        self._put(self._allowed, entry, "allowed")
        self._denied.pop(entry.fingerprint, None)
        self._save()
        return entry

    def deny(self, key: str) -> Entry:
        entry = self.resolve(key)
        self._put(self._denied, entry, "denied")
        self._allowed.pop(entry.fingerprint, None)
        self._save()
        return entry

    def remove(self, which: str, fingerprint: str) -> Entry:
        """Take *fingerprint* off the ``allowed`` or ``denied`` list (the UI's Remove)."""
        table = {"allowed": self._allowed, "denied": self._denied}.get(which)
        if table is None:
            raise BadRequest('"list" must be "allowed" or "denied"')
        entry = table.pop(fingerprint, None)
        if entry is None:
            raise NotFound(f"{fingerprint[:80]!r} is not on the {which} list")
        self._save()
        return entry

    def forget(self, key: str) -> list[RequesterPin]:
        """Drop the requester pins of *key* (peer id, fingerprint or name)."""
        removed = _matching_pins(self._pins.values(), key)
        for pin in removed:
            self._drop_pin(pin.peer_id)
        if removed:
            self._save()
        return removed

    def _put(self, table: dict[str, Entry], entry: Entry, what: str) -> None:
        if entry.fingerprint not in table and len(table) >= MAX_LIST_ENTRIES:
            raise BadRequest(f"the {what} list holds {MAX_LIST_ENTRIES} peers already")
        table[entry.fingerprint] = entry

    def _add_pin(self, pin: RequesterPin) -> None:
        self._drop_pin(pin.peer_id)
        admitted = self._pin_share.admit(pin.fingerprint, pin.peer_id)
        if admitted.evicted is not None:
            self._drop_pin(admitted.evicted[1])
        self._pins[pin.peer_id] = pin
        self._pinned_fingerprints[pin.fingerprint] += 1

    def _drop_pin(self, peer_id: str) -> None:
        old = self._pins.pop(peer_id, None)
        if old is None:
            return
        self._pin_share.release(peer_id)
        self._pinned_fingerprints[old.fingerprint] -= 1
        if self._pinned_fingerprints[old.fingerprint] <= 0:
            del self._pinned_fingerprints[old.fingerprint]

    def _save(self) -> None:
        try:
            self.store.save(AccessData(self._allowed, self._denied, self._pins))
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot write {self.store.path}: {exc.strerror}", code="access_unwritable"
            ) from exc

    def _known_name(self, peer_id: str | None, fingerprint: str | None) -> str | None:
        if peer_id is not None and peer_id in self._pins:
            return self._pins[peer_id].name
        entries: list[Entry | RequesterPin] = [*self._allowed.values(), *self._denied.values()]
        for entry in [*entries, *self._pins.values()]:
            if entry.fingerprint == fingerprint and entry.name:
                return entry.name
        return None

    @staticmethod
    def _peer_id_for(peers: list[PeerInfo], fingerprint: str) -> str | None:
        return next((p.peer_id for p in peers if p.fingerprint == fingerprint), None)

    # -- what the status and the UI show -----------------------------------------

    def recent(self) -> list[dict[str, Any]]:
        """Recent refusals, newest first, marked if since allowed."""
        rows = sorted(self._recent.values(), key=lambda a: a.at, reverse=True)
        return [{**asdict(a), "allowed": a.fingerprint in self._allowed} for a in rows]

    def status(self) -> dict[str, Any]:
        return {
            "share_with": self.mode,
            "allowed": [asdict(e) for e in self._allowed.values()],
            "denied": [asdict(e) for e in self._denied.values()],
            "requesters": len(self._pins),
            "counters": {
                "accepted": self.accepted,
                "refused": {reason: self.refused[reason] for reason in REASONS},
            },
        }


def _one_pin(pins: dict[str, RequesterPin], peer_id: str) -> dict[str, str]:
    pin = pins.get(peer_id)
    return {} if pin is None else {peer_id: pin.fingerprint}


def _name_for(peers: list[PeerInfo], peer_id: str | None, fingerprint: str | None) -> str | None:
    """The name the tracker lists for *peer_id*, else for a peer with *fingerprint*."""
    for peer in peers:
        if peer_id is not None and peer.peer_id == peer_id:
            return peer.name[:MAX_NAME_CHARS]
    for peer in peers:
        if fingerprint is not None and peer.fingerprint == fingerprint:
            return peer.name[:MAX_NAME_CHARS]
    return None

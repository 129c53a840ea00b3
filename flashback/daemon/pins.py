"""Trust on first use: the fingerprint each peer id was first seen with (INTERFACE §6.1).

Users type names, not peer ids, so a name is pinned too, the way ssh pins
the host name typed: the name a pin was made under belongs to that
fingerprint. A *new* peer id presenting the pinned name with another
fingerprint (an impostor registered as "alice" while alice is offline) is
refused, naming both fingerprints, until ``flashback forget NAME``. The same
fingerprint under a new id (the peer registered afresh) is the same peer.

One ``pins.json`` per data directory, shared by the user's daemons (like
``~/.ssh/known_hosts``). Every change is a read-modify-write under an
exclusive ``flock`` on ``pins.lock`` and an atomic replace, so two daemons
pinning at once lose nothing and a crash never leaves half a file. An
unreadable store refuses every check: treating it as empty would trust any
key presented next.

For the tunnel::

    store = PinStore.in_data_dir(config.data_dir)
    store.check(peer_id, presented_fingerprint, name=peer_name)  # or FingerprintMismatch
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from flashback.daemon.keys import write_private
from flashback.errors import FlashbackError, Forbidden
from flashback.protocol.fingerprint import is_fingerprint

PINS_FILE: Final = "pins.json"
LOCK_FILE: Final = "pins.lock"
MAX_PINS: Final = 10_000
MAX_PINS_FILE_BYTES: Final = 4 * 1024 * 1024


class FingerprintMismatch(Forbidden):
    """The peer presents another key than the one pinned for its id: refuse it."""

    default_code = "fingerprint_mismatch"

    def __init__(
        self, peer_id: str, pinned: str, presented: str, *, name: str | None = None
    ) -> None:
        if name is None:
            super().__init__(
                f"peer {peer_id} presents fingerprint {presented} but is pinned to {pinned}; "
                f"if you trust the new one (checked out of band), run: flashback forget {peer_id}"
            )
        else:
            super().__init__(
                f"peer {name!r} ({peer_id}) presents fingerprint {presented} but the name "
                f"{name!r} is pinned to {pinned}; if you trust the new one (checked out of "
                f"band), run: flashback forget {name}"
            )
        self.peer_id, self.pinned, self.presented = peer_id, pinned, presented
        self.name = name


class PinStoreError(FlashbackError):
    """The pin store cannot be read or is full: refuse rather than trust blindly."""

    status = 500
    default_code = "pin_store_unavailable"


@dataclass(frozen=True)
class Pin:
    peer_id: str
    fingerprint: str
    name: str | None
    pinned_at: float


class PinStore:
    def __init__(self, directory: Path) -> None:
        self.path = directory / PINS_FILE
        self.lock_path = directory / LOCK_FILE

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> PinStore:
        return cls(data_dir)

    # -- reading -----------------------------------------------------------------

    def _read(self) -> dict[str, Pin]:
        try:
            with self.path.open("rb") as file:
                raw = file.read(MAX_PINS_FILE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise PinStoreError(f"cannot read the pin store {self.path}: {exc.strerror}") from exc
        try:
            if len(raw) > MAX_PINS_FILE_BYTES:
                raise ValueError("too large")
            data = json.loads(raw)
            return {pid: _pin(pid, entry) for pid, entry in data["pins"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PinStoreError(f"the pin store {self.path} is damaged: {exc}") from None

    def get(self, peer_id: str) -> Pin | None:
        return self._read().get(peer_id)

    def pins(self) -> list[Pin]:
        return list(self._read().values())

    # -- changing ----------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[dict[str, Pin]]:
        """The pins, to change in place; written back when the block ends normally."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            pins = self._read()
            before = dict(pins)
            yield pins
            if pins != before:
                data = {"pins": {pid: _dump(pin) for pid, pin in pins.items()}}
                write_private(self.path, json.dumps(data, indent=1).encode())
        finally:
            os.close(fd)

    def check(self, peer_id: str, fingerprint: str, *, name: str | None = None) -> Pin:
        """Pin *fingerprint* for *peer_id* on first use; raise if it differs from the pin."""
        if not is_fingerprint(fingerprint):
            raise Forbidden(f"peer {peer_id} presents no valid fingerprint", code="no_fingerprint")
        with self._locked() as pins:
            pin = pins.get(peer_id)
            if pin is not None:
                if pin.fingerprint != fingerprint:
                    raise FingerprintMismatch(peer_id, pin.fingerprint, fingerprint)
                return pin
            if name is not None:
                taken = next(
                    (p for p in pins.values() if p.name == name and p.fingerprint != fingerprint),
                    None,
                )
                if taken is not None:
                    raise FingerprintMismatch(peer_id, taken.fingerprint, fingerprint, name=name)
            if len(pins) >= MAX_PINS:
                raise PinStoreError(f"the pin store {self.path} holds {MAX_PINS} pins already")
            pin = Pin(peer_id, fingerprint, name, time.time())
            pins[peer_id] = pin
            return pin

    def forget(self, peer: str) -> list[Pin]:
        """Remove the pin of peer id *peer*, else those of the peers named *peer*."""
        with self._locked() as pins:
            if peer in pins:
                return [pins.pop(peer)]
            named = [pid for pid, pin in pins.items() if pin.name == peer]
            return [pins.pop(pid) for pid in named]


def _pin(peer_id: str, entry: Any) -> Pin:
    fingerprint = entry["fingerprint"]
    name = entry.get("name")
    if not is_fingerprint(fingerprint) or not (name is None or isinstance(name, str)):
        raise ValueError(f"bad entry for {peer_id!r}")
    return Pin(peer_id, fingerprint, name, float(entry.get("pinned_at", 0)))


def _dump(pin: Pin) -> dict[str, Any]:
    return {"fingerprint": pin.fingerprint, "name": pin.name, "pinned_at": pin.pinned_at}

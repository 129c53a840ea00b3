"""The daemon's identity with the tracker: peer id and token, kept across restarts.

Stored as JSON in the user's data directory, mode 0600 (the token is the only
proof that this daemon is that peer), written atomically so a crash never
leaves half a file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"


@dataclass(frozen=True)
class Identity:
    peer_id: str
    token: str

    def __repr__(self) -> str:  # the token never reaches a log
        return f"Identity(peer_id={self.peer_id!r})"


class IdentityStore:
    def __init__(self, directory: Path, tracker_url: str) -> None:
        self.path = directory / IDENTITY_FILE
        self.tracker_url = tracker_url

    def load(self) -> Identity | None:
        """The identity for this tracker, or None (missing, unreadable, other tracker)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entry = data["trackers"].get(self.tracker_url)
            if entry is None:
                return None  # never registered with this tracker
            return Identity(str(entry["peer_id"]), str(entry["token"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable identity file %s: %s", self.path, exc)
            return None

    def save(self, identity: Identity) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data.get("trackers"), dict):
                raise ValueError
        except (OSError, ValueError):
            data = {"trackers": {}}
        data["trackers"][self.tracker_url] = {
            "peer_id": identity.peer_id,
            "token": identity.token,
        }
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def forget(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            data["trackers"].pop(self.tracker_url, None)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file)
        os.replace(tmp, self.path)

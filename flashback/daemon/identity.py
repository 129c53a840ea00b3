"""Who this daemon is: one identity instance, held exclusively while it runs.

Identities live under ``<data dir>/identities/<instance>/``: the tracker peer
ids and tokens (``identity.json``, per tracker URL), the key pair and
certificate (``identity.pem``, see :mod:`flashback.daemon.keys`) and a
``lock`` file. A running daemon holds an exclusive ``flock`` on that lock for
its whole life, so two daemons never share a peer id, a token or a key --
whatever directories they were given. The instance is the one named with
``--identity`` / ``FLASHBACK_IDENTITY`` (in use: refused), else the first
free one of ``<name>``, ``<name>-2``, ... (a restart gets its own back).

Files are mode 0600 (the token and the key are the only proofs of who we
are) and written atomically, so a crash never leaves half a file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from flashback.config import ensure_private_dir
from flashback.daemon.keys import KeyPair, load_or_create, write_private
from flashback.errors import ConfigError

log = logging.getLogger(__name__)

IDENTITIES_DIR: Final = "identities"
IDENTITY_FILE: Final = "identity.json"
LOCK_FILE: Final = "lock"
#: the single, shared file of versions before instances; moved into the first instance
LEGACY_IDENTITY_FILE: Final = "identity.json"
#: how many instances of one name may run at once
MAX_INSTANCES_PER_NAME: Final = 32
MAX_IDENTITY_FILE_BYTES: Final = 1024 * 1024
_INSTANCE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Identity:
    peer_id: str
    token: str

    def __repr__(self) -> str:  # the token never reaches a log
        return f"Identity(peer_id={self.peer_id!r})"


def check_instance_name(value: str) -> str:
    if not _INSTANCE_NAME.fullmatch(value):
        raise ConfigError(
            f"identity name {value!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "and start with a letter or digit"
        )
    return value


def instance_base(daemon_name: str) -> str:
    """A directory-safe instance name for a daemon name (any printable text)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", daemon_name).lstrip(".-_")[:60].rstrip(".")
    return safe or "default"


class IdentityStore:
    """Peer id and token per tracker URL, in one instance's directory."""

    def __init__(self, directory: Path, tracker_url: str) -> None:
        self.path = directory / IDENTITY_FILE
        self.tracker_url = tracker_url

    def _read(self) -> dict[str, Any]:
        with self.path.open("rb") as file:
            data = json.loads(file.read(MAX_IDENTITY_FILE_BYTES))
        if not isinstance(data, dict) or not isinstance(data.get("trackers"), dict):
            raise ValueError("no 'trackers' object")
        return data

    def load(self) -> Identity | None:
        """The identity for this tracker, or None (missing, unreadable, other tracker)."""
        try:
            entry = self._read()["trackers"].get(self.tracker_url)
            if entry is None:
                return None  # never registered with this tracker
            return Identity(str(entry["peer_id"]), str(entry["token"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable identity file %s: %s", self.path, exc)
            return None

    def _write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.path, json.dumps(data).encode())

    def save(self, identity: Identity) -> None:
        try:
            data = self._read()
        except (OSError, ValueError):
            data = {"trackers": {}}
        data["trackers"][self.tracker_url] = {
            "peer_id": identity.peer_id,
            "token": identity.token,
        }
        self._write(data)

    def forget(self) -> None:
        try:
            data = self._read()
        except (OSError, ValueError):
            return
        data["trackers"].pop(self.tracker_url, None)
        self._write(data)


class Instance:
    """One claimed identity: its directory, key pair and the lock that makes it ours.

    Close it (or leave the ``with`` block) to release the lock; the daemon
    keeps it open for as long as it runs.
    """

    def __init__(self, name: str, directory: Path, lock_fd: int, keys: KeyPair) -> None:
        self.name = name
        self.directory = directory
        self.keys = keys
        self._lock_fd: int | None = lock_fd

    @property
    def fingerprint(self) -> str:
        return self.keys.fingerprint

    def identity_store(self, tracker_url: str) -> IdentityStore:
        return IdentityStore(self.directory, tracker_url)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _try_lock(directory: Path) -> int | None:
    """An fd holding the exclusive lock of *directory*, or None: another daemon has it."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def _migrate_legacy(data_dir: Path, directory: Path, name: str) -> None:
    """Move the pre-instance ``identity.json`` into a fresh instance, once.

    ``rename`` is atomic: of two daemons starting together only one gets the
    old peer id, the other registers as a new peer.
    """
    target = directory / IDENTITY_FILE
    if target.exists():
        return
    try:
        os.rename(data_dir / LEGACY_IDENTITY_FILE, target)
    except FileNotFoundError:
        return
    os.chmod(target, 0o600)
    log.info("moved %s into identity %r", data_dir / LEGACY_IDENTITY_FILE, name)


def _open_instance(data_dir: Path, name: str) -> Instance | None:
    ensure_private_dir(data_dir / IDENTITIES_DIR)  # mkdir(parents=True) would not make it 0700
    directory = ensure_private_dir(data_dir / IDENTITIES_DIR / name)
    fd = _try_lock(directory)
    if fd is None:
        return None
    try:
        _migrate_legacy(data_dir, directory, name)
        keys = load_or_create(directory)
    except BaseException:
        os.close(fd)
        raise
    return Instance(name, directory, fd, keys)


def claim_instance(data_dir: Path, daemon_name: str, explicit: str | None = None) -> Instance:
    """Lock and return this daemon's identity (see the module docstring).

    Raises :class:`ConfigError` (exit 2) when *explicit* is in use, or when
    every instance of the name is.
    """
    ensure_private_dir(data_dir)
    try:
        if explicit is not None:
            instance = _open_instance(data_dir, check_instance_name(explicit))
            if instance is None:
                raise ConfigError(
                    f"identity {explicit!r} is in use by another running daemon "
                    f"({data_dir / IDENTITIES_DIR / explicit})"
                )
            return instance
        base = instance_base(daemon_name)
        for number in range(1, MAX_INSTANCES_PER_NAME + 1):
            name = base if number == 1 else f"{base}-{number}"
            instance = _open_instance(data_dir, name)
            if instance is not None:
                return instance  # the daemon says which one it took if not the first
    except OSError as exc:
        raise ConfigError(f"cannot use the identities in {data_dir}: {exc}") from exc
    raise ConfigError(
        f"all {MAX_INSTANCES_PER_NAME} identities named {base!r} are in use in {data_dir}"
    )

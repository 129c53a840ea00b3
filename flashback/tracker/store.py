"""Where the tracker keeps peer identities: memory, or an SQLite file.

Presence (who is online right now) lives in memory, in the registry. What
must survive a restart is small: each known peer's id, the SHA-256 of its
token, its name and capabilities, when it was first and last seen, and the
last ``seq`` handed out. That is the whole :class:`IdentityStore` interface,
kept small on purpose so a Redis backend implements it too
(:class:`~flashback.tracker.redis.store.RedisIdentityStore`).

SQLite is blocking, so every call runs in ``trio.to_thread`` with a deadline:
a stuck or broken database answers :class:`BackendUnavailable` (a JSON 503)
within a few seconds instead of hanging a request.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import trio

from flashback.errors import BackendUnavailable, ConfigError

log = logging.getLogger(__name__)

STORE_TIMEOUT_S: Final = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class IssuedIdentity:
    """A peer the tracker has issued a token to (online or not); the daemon's own
    half of it is :class:`flashback.daemon.identity.Identity`."""

    peer_id: str
    token_hash: bytes = field(repr=False)
    name: str
    capabilities: dict[str, Any]
    first_seen: float
    last_seen: float
    #: the share address it registered from (whose share it counts in offline)
    address: str = ""


class IdentityStore(Protocol):
    async def get(self, peer_id: str) -> IssuedIdentity | None: ...

    async def put(self, identity: IssuedIdentity) -> None:
        """Insert or replace the identity with this ``peer_id``."""

    async def touch(self, peer_id: str, last_seen: float) -> None: ...

    async def forget(self, peer_id: str) -> None:
        """Drop the identity (its peer registers anew); unknown ids are fine."""

    async def known(self) -> list[tuple[str, str]]:
        """Every identity kept from an earlier run as (peer_id, address), least
        recently seen first; a store shared with other instances returns none."""

    async def load_seq(self) -> int:
        """The highest ``seq`` saved by an earlier run, 0 if none."""

    async def save_seq(self, seq: int) -> None: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """``memory://``: identities last as long as the process."""

    def __init__(self) -> None:
        self._identities: dict[str, IssuedIdentity] = {}
        self._seq = 0

    async def get(self, peer_id: str) -> IssuedIdentity | None:
        return self._identities.get(peer_id)

    async def put(self, identity: IssuedIdentity) -> None:
        self._identities[identity.peer_id] = identity

    async def touch(self, peer_id: str, last_seen: float) -> None:
        old = self._identities.get(peer_id)
        if old is not None:
            self._identities[peer_id] = dataclasses.replace(old, last_seen=last_seen)

    async def forget(self, peer_id: str) -> None:
        self._identities.pop(peer_id, None)

    async def known(self) -> list[tuple[str, str]]:
        ordered = sorted(self._identities.values(), key=lambda identity: identity.last_seen)
        return [(identity.peer_id, identity.address) for identity in ordered]

    async def load_seq(self) -> int:
        return self._seq

    async def save_seq(self, seq: int) -> None:
        self._seq = max(self._seq, seq)

    async def aclose(self) -> None:
        pass


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS identities (
    peer_id      TEXT PRIMARY KEY,
    token_hash   BLOB NOT NULL,
    name         TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    first_seen   REAL NOT NULL,
    last_seen    REAL NOT NULL,
    address      TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SQLiteStore:
    """One SQLite file; each call in a worker thread, one call at a time."""

    def __init__(self, connection: sqlite3.Connection, path: Path | None = None) -> None:
        self._connection = connection
        self.path = path
        # A threading lock, not a trio one: a call abandoned after its deadline
        # may still be running in its thread, and the next must wait for it.
        self._lock = threading.Lock()

    @classmethod
    async def open(cls, path: Path) -> SQLiteStore:
        def connect() -> sqlite3.Connection:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=2000")
            # A garbled file opens fine and fails on every write later: find
            # out now, before we report ready (quick_check reads every page).
            problems = [row[0] for row in connection.execute("PRAGMA quick_check(1)")]
            if problems != ["ok"]:
                connection.close()
                first = " ".join(str(problems[0]).split())  # one line, whatever SQLite says
                raise sqlite3.DatabaseError(f"integrity check failed: {first}")
            connection.executescript(_SCHEMA)
            columns = {row[1] for row in connection.execute("PRAGMA table_info(identities)")}
            if "address" not in columns:  # a file from before identities had one
                connection.execute(
                    "ALTER TABLE identities ADD COLUMN address TEXT NOT NULL DEFAULT ''"
                )
            return connection

        try:
            connection = await trio.to_thread.run_sync(connect)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot use tracker database {path}: {exc}") from exc
        return cls(connection, path)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            if not self._lock.acquire(timeout=STORE_TIMEOUT_S):
                raise sqlite3.OperationalError("database busy")
            try:
                return fn(self._connection)
            finally:
                self._lock.release()

        with trio.move_on_after(STORE_TIMEOUT_S):
            try:
                return await trio.to_thread.run_sync(locked, abandon_on_cancel=True)
            except sqlite3.Error as exc:
                log.error("tracker database %s: %s", self.path, exc)
                raise BackendUnavailable(f"tracker database error: {exc}") from exc
        log.error("tracker database %s did not answer in %.0f s", self.path, STORE_TIMEOUT_S)
        raise BackendUnavailable("tracker database did not answer in time")

    async def get(self, peer_id: str) -> IssuedIdentity | None:
        def query(db: sqlite3.Connection) -> IssuedIdentity | None:
            row = db.execute(
                "SELECT peer_id, token_hash, name, capabilities, first_seen, last_seen, address"
                " FROM identities WHERE peer_id = ?",
                (peer_id,),
            ).fetchone()
            if row is None:
                return None
            return IssuedIdentity(
                row[0], bytes(row[1]), row[2], json.loads(row[3]), row[4], row[5], row[6]
            )

        return await self._run(query)

    async def put(self, identity: IssuedIdentity) -> None:
        capabilities = json.dumps(identity.capabilities, separators=(",", ":"))
        await self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO identities"
                " (peer_id, token_hash, name, capabilities, first_seen, last_seen, address)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    identity.peer_id,
                    identity.token_hash,
                    identity.name,
                    capabilities,
                    identity.first_seen,
                    identity.last_seen,
                    identity.address,
                ),
            )
        )

    async def touch(self, peer_id: str, last_seen: float) -> None:
        await self._run(
            lambda db: db.execute(
                "UPDATE identities SET last_seen = ? WHERE peer_id = ?", (last_seen, peer_id)
            )
        )

    async def forget(self, peer_id: str) -> None:
        await self._run(
            lambda db: db.execute("DELETE FROM identities WHERE peer_id = ?", (peer_id,))
        )

    async def known(self) -> list[tuple[str, str]]:
        def query(db: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = db.execute("SELECT peer_id, address FROM identities ORDER BY last_seen, rowid")
            return [(str(row[0]), str(row[1])) for row in rows]

        return await self._run(query)

    async def load_seq(self) -> int:
        def query(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()
            return int(row[0]) if row else 0

        return await self._run(query)

    async def save_seq(self, seq: int) -> None:
        await self._run(
            lambda db: db.execute(
                "INSERT INTO meta VALUES ('seq', ?) ON CONFLICT(key)"
                " DO UPDATE SET value = max(value, excluded.value)",
                (seq,),
            )
        )

    async def aclose(self) -> None:
        await self._run(lambda db: db.close())


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def check_database_url(url: str) -> str:
    """Refuse a URL we cannot serve before anything starts (exit 2, one line)."""
    if url == "memory://" or url.startswith("sqlite:///"):
        return url
    if url.startswith("sqlite://"):
        raise ConfigError(f"sqlite URLs need an absolute path (sqlite:///PATH), not {url!r}")
    if is_redis_url(url):
        try:
            import coredis  # noqa: F401
        except ImportError:
            raise ConfigError(
                "redis:// needs the coredis client: pip install 'flashback[redis]'"
            ) from None
        return url
    raise ConfigError(f"unsupported DATABASE_URL {url!r}: use sqlite:///PATH or memory://")


async def open_store(url: str) -> IdentityStore:
    """A single-process store (``redis://`` stores come with their cluster)."""
    check_database_url(url)
    if is_redis_url(url):
        raise ConfigError("a redis:// store is opened with its cluster (serve_tracker)")
    if url == "memory://":
        return MemoryStore()
    return await SQLiteStore.open(Path(url.removeprefix("sqlite://")))

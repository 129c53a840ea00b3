"""Tunnel pairing through the tracker (INTERFACE §6.2), as pure rules.

The tracker pairs two *outbound* connections -- one from the requester, one
from the owner -- by single-use keys it handed out in ``tunnel-invite``
messages, and then copies bytes it cannot read (TLS runs end to end inside).
Everything here is sans-IO: the join line is fed in as bytes, time is an
argument, randomness is injected; the trio code in ``tracker/tunnels.py``
only moves bytes and waits.

Wire (plain TCP to the tunnel port)::

    peer -> tracker   FLASHBACK-TUNNEL 1 <key>\\n      (at most 128 bytes, within 5 s)
    tracker -> both   OK\\n                            (once both keys have joined)
    tracker -> peer   ERR <code>\\n                    (then close)

    peer -> tracker   FLASHBACK-REFLECT 1 <token>\\n   (its tracker token; same bounds)
    tracker -> peer   ADDR <host> <port>\\n            (the source address seen; then close)

Inside the tunnel, after TLS, the requester opens a target with one line::

    OPEN peer-server\\n   |   OPEN stream <port>\\n   ->   OK\\n  |  ERR <code>\\n
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from flashback.protocol.fairshare import FairShare
from flashback.protocol.messages import Candidate

JOIN_MAGIC: Final = b"FLASHBACK-TUNNEL 1 "
REFLECT_MAGIC: Final = b"FLASHBACK-REFLECT 1 "
#: a tracker token is 43 characters; anything much longer is not one
MAX_TOKEN_CHARS: Final = 100
_TOKEN_CHARS: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
MAX_JOIN_LINE_BYTES: Final = 128
#: a connection that has not sent a valid join line by then gets ERR and is closed
JOIN_TIMEOUT_S: Final = 5.0
#: each key of an invite is valid this long after it was issued
KEY_TTL_S: Final = 30.0
#: a paired session with no byte in either direction for this long is closed
IDLE_TIMEOUT_S: Final = 120.0
DEFAULT_MAX_SESSIONS: Final = 256
#: pending sessions one requester may hold; its next request replaces its oldest
MAX_PENDING_PER_PEER: Final = 16
#: paired sessions one peer id may be a side of (a daemon serves 64 owner tunnels)
MAX_PAIRED_PER_PEER: Final = 32
#: paired sessions the requesters of one address (share_address) may hold, as a
#: divisor of the table: peer ids are free, an address is not
PAIRED_ADDRESS_DIVISOR: Final = 4
KEY_BYTES: Final = 32
MAX_OPEN_LINE_BYTES: Final = 64

OK_LINE: Final = b"OK\n"

Role = Literal["client", "server"]
#: how an address is named among the holders of paired shares (never a peer id's form)
_ADDRESS: Final = "address "


class TunnelError(Exception):
    """A refusal with its wire code; :attr:`line` is the ``ERR`` line to send."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def line(self) -> bytes:
        return err_line(self.code)


def err_line(code: str) -> bytes:
    return b"ERR " + code.encode("ascii") + b"\n"


def new_key(token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """32 random bytes, URL-safe base64 without padding (43 characters)."""
    return base64.urlsafe_b64encode(token_bytes(KEY_BYTES)).rstrip(b"=").decode("ascii")


def is_valid_key(text: str) -> bool:
    if len(text) != 43:
        return False
    try:
        raw = base64.urlsafe_b64decode(text + "=")
    except (binascii.Error, ValueError):
        return False
    # reject non-canonical spellings (other trailing bits) so one key has one form
    return len(raw) == KEY_BYTES and new_key(lambda _n: raw) == text


# -- lines ---------------------------------------------------------------------


class LineReader:
    """Collects one ``\\n``-terminated line of at most *max_bytes*; sans-IO.

    :meth:`receive_data` returns the line (without ``\\n``) once complete;
    bytes after the newline are kept in :attr:`leftover` -- they belong to
    whatever follows the line and must be passed on, not dropped.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self.leftover = b""

    def receive_data(self, data: bytes | bytearray) -> bytes | None:
        if not data:
            raise TunnelError("bad_line", "connection closed before the line ended")
        self._buffer += data
        newline = self._buffer.find(b"\n")
        if newline == -1:
            if len(self._buffer) >= self.max_bytes:
                raise TunnelError("line_too_long", f"line longer than {self.max_bytes} bytes")
            return None
        if newline + 1 > self.max_bytes:
            raise TunnelError("line_too_long", f"line longer than {self.max_bytes} bytes")
        line = bytes(self._buffer[:newline])
        self.leftover = bytes(self._buffer[newline + 1 :])
        self._buffer.clear()
        return line


def join_line(key: str) -> bytes:
    return JOIN_MAGIC + key.encode("ascii") + b"\n"


def parse_join_line(line: bytes) -> str:
    """The key of a join line (without its newline); TunnelError ``bad_line`` otherwise."""
    if not line.startswith(JOIN_MAGIC):
        raise TunnelError("bad_line", "expected 'FLASHBACK-TUNNEL 1 <key>'")
    key = line[len(JOIN_MAGIC) :].decode("ascii", errors="replace")
    if not is_valid_key(key):
        raise TunnelError("bad_line", "the key is not 32 bytes of URL-safe base64")
    return key


@dataclass(frozen=True, slots=True)
class Reflect:
    """A ``FLASHBACK-REFLECT`` line: the peer asks which address the tracker sees."""

    token: str

    def __repr__(self) -> str:  # a token is a credential: never in a log
        return "Reflect(token=...)"


def reflect_line(token: str) -> bytes:
    return REFLECT_MAGIC + token.encode("ascii") + b"\n"


def parse_first_line(line: bytes) -> str | Reflect:
    """What a connection to the tunnel port asked, by its first line (without
    its newline): a join (the key) or a reflection; TunnelError ``bad_line``."""
    if not line.startswith(REFLECT_MAGIC):
        return parse_join_line(line)
    token = line[len(REFLECT_MAGIC) :]
    if not 0 < len(token) <= MAX_TOKEN_CHARS or not set(token) <= _TOKEN_CHARS:
        raise TunnelError("bad_line", "expected 'FLASHBACK-REFLECT 1 <token>'")
    return Reflect(token.decode("ascii"))


def addr_line(seen: Candidate) -> bytes:
    return f"ADDR {seen.host} {seen.port}\n".encode("ascii")


def parse_addr_line(line: bytes) -> Candidate:
    """The answer to a REFLECT line (without its newline); TunnelError otherwise."""
    parts = line.split(b" ")
    if len(parts) == 2 and parts[0] == b"ERR":
        code = parts[1].decode("ascii", errors="replace")
        raise TunnelError(code, f"the tracker refused the reflection ({code})")
    if len(parts) != 3 or parts[0] != b"ADDR" or not parts[2].isdigit() or len(parts[2]) > 5:
        raise TunnelError("bad_addr", "expected 'ADDR <host> <port>'")
    seen = source_candidate(parts[1].decode("ascii", errors="replace"), int(parts[2]))
    if seen is None:
        raise TunnelError("bad_addr", "the ADDR line names no IP address and port")
    return seen


def source_candidate(host: str, port: int) -> Candidate | None:
    """The source address of an accepted connection as a candidate (§10.2).

    A dual-stack listener sees IPv4 peers as ``::ffff:a.b.c.d``: they are
    given (and dialled) as plain IPv4. A scoped (link-local) address means
    nothing to anyone else, so it is no candidate; nor is port 0.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return None
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    if not 1 <= port <= 65535:
        return None
    return Candidate(str(address), port)


def dialable(candidate: Candidate) -> bool:
    """Whether other peers may be told to dial *candidate*: never an unspecified
    address (connecting to ``0.0.0.0`` or ``::`` reaches the dialler's own
    machine), a multicast or the IPv4 broadcast address -- a registration
    naming one would point every requester at itself or at no one."""
    address = ipaddress.ip_address(candidate.host)
    if address.is_unspecified or address.is_multicast:
        return False
    return not (isinstance(address, ipaddress.IPv4Address) and address.packed == b"\xff" * 4)


@dataclass(frozen=True, slots=True)
class OpenTarget:
    """What the requester asked the owner to relay to: its peer server or a stream port."""

    kind: Literal["peer-server", "stream"]
    port: int | None = None

    def line(self) -> bytes:
        if self.kind == "peer-server":
            return b"OPEN peer-server\n"
        if self.port is None:
            raise ValueError("a stream target names its port")
        return b"OPEN stream %d\n" % self.port


def parse_open_line(line: bytes) -> OpenTarget:
    parts = line.split(b" ")
    if parts == [b"OPEN", b"peer-server"]:
        return OpenTarget("peer-server")
    is_stream = len(parts) == 3 and parts[:2] == [b"OPEN", b"stream"]
    # at most 5 digits before int(): a 5,000-digit port must not cost a bignum parse
    if is_stream and parts[2].isdigit() and len(parts[2]) <= 5 and 1 <= int(parts[2]) <= 65535:
        return OpenTarget("stream", int(parts[2]))
    raise TunnelError("bad_open", "expected 'OPEN peer-server' or 'OPEN stream <port>'")


# -- the session table ---------------------------------------------------------


@dataclass(eq=False, slots=True)
class Session:
    """One requested tunnel: two keys, and who has joined with which."""

    session_id: int
    request_id: str
    client_peer: str
    server_peer: str
    keys: dict[Role, str]
    issued_at: float
    joined: set[Role] = field(default_factory=set)
    #: the requester's address as its share is counted (None: not known)
    client_address: str | None = None

    def holders(self) -> set[str]:
        """Whose paired share this session counts in: both peer ids, the requester's address."""
        sides = {self.client_peer, self.server_peer}
        return sides if self.client_address is None else sides | {_ADDRESS + self.client_address}

    @property
    def expires_at(self) -> float:
        return self.issued_at + KEY_TTL_S

    @property
    def paired(self) -> bool:
        return len(self.joined) == 2


@dataclass(frozen=True, slots=True)
class Joined:
    """The outcome of a valid join: which session and side, and whether both are in."""

    session: Session
    role: Role
    paired: bool


class SessionTable:
    """Pending and paired sessions, with single-use keys that live :data:`KEY_TTL_S`.

    The table never grows past *max_sessions* sessions (pending or paired),
    and no requester can take it (a stranger's flood must not turn honest
    requesters away ``busy``):

    - pending sessions are a :class:`~flashback.protocol.fairshare.FairShare`
      per requester peer id: a requester holds at most *max_pending_per_peer*
      (its next request replaces its own oldest), and when the table is full
      the heaviest requester's oldest pending session makes room -- never
      the newcomer's request;
    - a peer id may be a side of at most *max_paired_per_peer* paired
      sessions (so a tunnel kept alive by a byte every few seconds holds a
      share, not the table), and the requesters of one address of at most
      :attr:`max_paired_per_address` (a quarter: peer ids are free); past
      either, its requests and pairings are ``busy``.

    Only when every session is paired is a request refused ``busy``. A used
    key is remembered until it would have expired so a second joiner learns
    ``used`` rather than ``unknown``; an evicted one answers ``busy``.
    """

    def __init__(
        self,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        *,
        max_pending_per_peer: int = MAX_PENDING_PER_PEER,
        max_paired_per_peer: int = MAX_PAIRED_PER_PEER,
        make_key: Callable[[], str] = new_key,
    ) -> None:
        self.max_sessions = max_sessions
        self.max_paired_per_peer = max_paired_per_peer
        self.max_paired_per_address = max(1, max_sessions // PAIRED_ADDRESS_DIVISOR)
        self._make_key = make_key
        self._sessions: dict[int, Session] = {}
        self._by_key: dict[str, tuple[Session, Role]] = {}
        # dead keys -> (when they would have expired, the code a late joiner gets)
        self._dead: dict[str, tuple[float, str]] = {}
        self._pending: FairShare[str, int] = FairShare(max_sessions, max_pending_per_peer)
        self._paired_by: dict[str, int] = {}  # peer id -> paired sessions it is a side of
        self._paired = 0
        self._next_id = 1
        #: the pending session the last :meth:`open` pushed out, if any
        self.evicted: Session | None = None

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def paired_count(self) -> int:
        return self._paired

    def paired_of(self, peer_id: str) -> int:
        return self._paired_by.get(peer_id, 0)

    def _full(self, holder: str) -> bool:
        cap = self.max_paired_per_address if holder.startswith(_ADDRESS) else None
        return self._paired_by.get(holder, 0) >= (cap or self.max_paired_per_peer)

    def pending_of(self, peer_id: str) -> int:
        return self._pending.count(peer_id)

    def open(
        self,
        *,
        request_id: str,
        client_peer: str,
        server_peer: str,
        now: float,
        client_address: str | None = None,
    ) -> Session:
        """A new pending session; the one it pushed out (if any) is in :attr:`evicted`
        for the caller to wake its waiting side. TunnelError ``busy``: no room."""
        self.expire(now)
        self.evicted = None
        for side in (client_peer, server_peer):
            if self.paired_of(side) >= self.max_paired_per_peer:
                raise TunnelError("busy", f"peer {side!r} has {self.max_paired_per_peer} tunnels")
        if client_address is not None and self._full(_ADDRESS + client_address):
            cap = self.max_paired_per_address
            raise TunnelError("busy", f"the requesters of your address have {cap} tunnels")
        # pending sessions may use what paired ones leave of the table
        room = self.max_sessions - self._paired
        if room < 1:
            raise TunnelError("busy", f"the tracker has {self.max_sessions} tunnels already")
        self._pending.capacity = room
        keys: dict[Role, str] = {"client": self._make_key(), "server": self._make_key()}
        session = Session(
            self._next_id,
            request_id,
            client_peer,
            server_peer,
            keys,
            now,
            client_address=client_address,
        )
        self._next_id += 1
        admitted = self._pending.admit(client_peer, session.session_id)
        if admitted.evicted is not None:
            self.evicted = self._sessions[admitted.evicted[1]]
            self.close(self.evicted, code="busy")
        self._sessions[session.session_id] = session
        for role, key in keys.items():
            self._by_key[key] = (session, role)
        return session

    def join(self, key: str, *, now: float) -> Joined:
        dead = self._dead.get(key)
        if dead is not None:
            raise TunnelError(dead[1], f"this key is no longer valid ({dead[1]})")
        entry = self._by_key.get(key)
        if entry is None:
            raise TunnelError("unknown", "no tunnel has this key")
        session, role = entry
        if now >= session.expires_at:
            self.close(session, code="expired")
            raise TunnelError("expired", "this key has expired")
        second = len(session.joined) == 1 and role not in session.joined
        # the second side: the session becomes paired, within each holder's share
        if second and any(self._full(holder) for holder in session.holders()):
            self.close(session, code="busy")
            raise TunnelError("busy", "a side of this tunnel has its share of tunnels")
        del self._by_key[key]
        self._dead[key] = (session.expires_at, "used")
        session.joined.add(role)
        if session.paired:
            self._pending.release(session.session_id)
            self._paired += 1
            for side in session.holders():
                self._paired_by[side] = self._paired_by.get(side, 0) + 1
        return Joined(session, role, session.paired)

    def close(self, session: Session, *, code: str = "used") -> None:
        """Forget *session*; its keys that were never used stop working now, and
        a late joiner is told *code* (``refused`` after an owner declined, say)."""
        if self._sessions.pop(session.session_id, None) is None:
            return
        self._pending.release(session.session_id)
        if session.paired:
            self._paired -= 1
            for side in session.holders():
                left = self._paired_by.get(side, 0) - 1
                if left > 0:
                    self._paired_by[side] = left
                else:
                    self._paired_by.pop(side, None)
        for role, key in session.keys.items():
            if self._by_key.pop(key, None) is not None and role not in session.joined:
                self._dead[key] = (session.expires_at, code)

    def find(self, request_id: str, client_peer: str) -> Session | None:
        """The open session a requester asked for under *request_id*."""
        for session in self._sessions.values():
            if session.request_id == request_id and session.client_peer == client_peer:
                return session
        return None

    def expire(self, now: float) -> list[Session]:
        """Close the unpaired sessions whose keys have expired; return them."""
        for key in [k for k, (t, _code) in self._dead.items() if t <= now]:
            del self._dead[key]
        gone = [s for s in self._sessions.values() if not s.paired and now >= s.expires_at]
        for session in gone:
            self.close(session)
        return gone


# -- where peers dial ------------------------------------------------------------

_HOST_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:")


def advertise_host(host_header: str | None, configured: str | None) -> str | None:
    """The host a peer dials for its tunnels: *configured* (``RELAY_TUNNEL_ADVERTISE``),
    else the host part of the ``Host`` its own websocket request named -- the
    address by which that peer already reaches us. None when neither is usable."""
    if configured:
        return configured
    if not host_header or len(host_header) > 255:
        return None
    value = host_header.strip()
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        host = value[1:end] if end > 0 else ""
    elif value.count(":") == 1:
        host = value.split(":", 1)[0]
    else:
        host = value
    if not host or not set(host) <= _HOST_CHARS:
        return None
    return host


_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def cluster_tunnel_host(configured: str | None, bind_host: str) -> str | None:
    """The host an owner linked to *another* instance of a cluster dials for
    a session on this one: ``RELAY_TUNNEL_ADVERTISE``, else this instance's
    bind address when it names one host (not a wildcard). Never anything a
    client sent: a requester's ``Host`` header would let it make owners
    connect wherever it likes (a relay address comes from the server, as in
    TURN, RFC 8656). None: there is none to give."""
    if configured:
        return configured
    if bind_host in _WILDCARDS or not set(bind_host) <= _HOST_CHARS:
        return None
    return bind_host


# -- routes (§6.3) ---------------------------------------------------------------

Route = Literal["direct", "relay"]
#: how long a route that worked is tried first without probing again
ROUTE_MEMORY_S: Final = 300.0


@dataclass(slots=True)
class RouteMemory:
    """Which route last worked for each peer, for a while (pure; time is an argument)."""

    ttl_s: float = ROUTE_MEMORY_S
    _routes: dict[str, tuple[Route, float]] = field(default_factory=dict)

    def remember(self, peer_id: str, route: Route, now: float) -> None:
        self._routes[peer_id] = (route, now + self.ttl_s)

    def recall(self, peer_id: str, now: float) -> Route | None:
        entry = self._routes.get(peer_id)
        if entry is None or now >= entry[1]:
            return None
        return entry[0]

    def last_used(self, peer_id: str) -> Route | None:
        """The last route used, however old (shown in ``flashback peers``)."""
        entry = self._routes.get(peer_id)
        return None if entry is None else entry[0]

    def forget(self, peer_id: str) -> None:
        self._routes.pop(peer_id, None)


def direct_probe_accepts(info: object, peer_id: str) -> bool:
    """Whether an ``/api/info`` answer proves the address is that peer's server."""
    return isinstance(info, dict) and info.get("peer_id") == peer_id

"""Direct connections after the relay's introduction (docs/INTERFACE.md §10), as pure rules.

What the endpoint does with a connection, which candidates are dialled in
which order and how often, which attempt of a race wins, and what a daemon
remembers about the routes that worked -- all sans-IO: bytes and times are
arguments, and the trio shells (``daemon/direct.py``, ``daemon/race.py``)
only move bytes and wait.

Wire, on the direct endpoint (plain TCP, then TLS 1.3 with ALPN ``flashback/1``)::

    a plain dial:            ClientHello (first byte 0x16) ...
    a dial an introduction   FLASHBACK-INTRO 1 <request_id>\\n   (both directions,
    sets off:                                                    at most 128 bytes)

Whoever dialled, the owner is then the TLS server and the requester the TLS
client; inside, ``OPEN``/``OK`` as in a tunnel. The endpoint that accepts an
INTRO for a pending introduction answers with the same line, so a dialler
always reads one line back, whether its connect met a listener or the other
side's simultaneous dial.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from flashback.protocol.messages import MAX_CANDIDATES, Candidate
from flashback.protocol.tunnel import Route, TunnelError

INTRO_MAGIC: Final = b"FLASHBACK-INTRO 1 "
MAX_INTRO_LINE_BYTES: Final = 128
#: a TLS record of type handshake: a ClientHello starts with it
TLS_HANDSHAKE_BYTE: Final = 0x16
#: an endpoint connection must have finished its handshake (or INTRO) by then
HANDSHAKE_TIMEOUT_S: Final = 5.0

#: an introduction's dials run this long
PUNCH_WINDOW_S: Final = 3.0
#: a failed dial of one candidate is retried after this long
RETRY_INTERVAL_S: Final = 0.3
#: a candidate (maybe forged, pointing at a third party) is dialled at most this often
#: per introduction
MAX_ATTEMPTS_PER_CANDIDATE: Final = 10
#: RFC 8305's connection attempt delay: the relay join waits this long for direct
RELAY_DELAY_S: Final = 0.25
#: a peer reached only by relay is tried directly again at most this often
DIRECT_RETRY_S: Final = 60.0
MAX_REMEMBERED_PEERS: Final = 1024

_ID_CHARS: Final = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
MAX_REQUEST_ID_BYTES: Final = MAX_INTRO_LINE_BYTES - len(INTRO_MAGIC) - 1


# -- the INTRO line ------------------------------------------------------------------


def intro_line(request_id: str) -> bytes:
    raw = request_id.encode("ascii")
    if not raw or len(raw) > MAX_REQUEST_ID_BYTES or not set(raw) <= _ID_CHARS:
        raise ValueError(f"a request id of 1-{MAX_REQUEST_ID_BYTES} plain characters")
    return INTRO_MAGIC + raw + b"\n"


def parse_intro_line(line: bytes) -> str:
    """The request id of an INTRO line (without its newline); TunnelError ``bad_line`` else."""
    if not line.startswith(INTRO_MAGIC):
        raise TunnelError("bad_line", "expected 'FLASHBACK-INTRO 1 <request_id>'")
    raw = line[len(INTRO_MAGIC) :]
    if not raw or len(raw) > MAX_REQUEST_ID_BYTES or not set(raw) <= _ID_CHARS:
        raise TunnelError(
            "bad_line", f"the request id is not 1-{MAX_REQUEST_ID_BYTES} plain characters"
        )
    return raw.decode("ascii")


FirstByte = Literal["tls", "intro", "close"]


def classify_first_byte(data: bytes) -> FirstByte:
    """What the endpoint does with a connection, from its first byte."""
    if not data:
        return "close"
    if data[0] == TLS_HANDSHAKE_BYTE:
        return "tls"
    if data[0] == INTRO_MAGIC[0]:
        return "intro"
    return "close"


# -- reflection (§10.2) ------------------------------------------------------------------

REFLECT_MAGIC: Final = b"FLASHBACK-REFLECT 1 "
ADDR_MAGIC: Final = b"ADDR "
MAX_REFLECT_LINE_BYTES: Final = 256
#: while linked, the endpoint's mapping is refreshed this often (NAT mappings expire)
REFLECT_INTERVAL_S: Final = 25.0


def reflect_line(token: str) -> bytes:
    raw = token.encode("ascii")
    if not raw or len(raw) + len(REFLECT_MAGIC) + 1 > MAX_REFLECT_LINE_BYTES or b" " in raw:
        raise ValueError("a token of plain characters that fits the line")
    return REFLECT_MAGIC + raw + b"\n"


def parse_addr_line(line: bytes) -> Candidate:
    """``ADDR <host> <port>`` (without its newline) as a candidate; TunnelError otherwise."""
    if line.startswith(b"ERR "):
        code = line[4:36].decode("ascii", "replace")
        raise TunnelError(code or "refused", f"the tracker refused the reflection ({code})")
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] + b" " != ADDR_MAGIC:
        raise TunnelError("bad_line", "expected 'ADDR <host> <port>'")
    try:
        host = ipaddress.ip_address(parts[1].decode("ascii")).compressed
    except (ValueError, UnicodeDecodeError):
        raise TunnelError("bad_line", "the reflected host is not an IP address") from None
    port = parts[2]
    if not (port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise TunnelError("bad_line", "the reflected port is not a port")
    return Candidate(host, int(port))


# -- candidates ----------------------------------------------------------------------


def order_candidates(
    candidates: Iterable[Candidate], *, limit: int = MAX_CANDIDATES
) -> tuple[Candidate, ...]:
    """Whom to dial: duplicates dropped, IPv4 first then IPv6 (each in the order given),
    at most *limit*; never an unspecified, multicast or broadcast address, and only
    the ports given (no port guessing: a forged list cannot make us scan)."""
    v4: list[Candidate] = []
    v6: list[Candidate] = []
    seen: set[tuple[str, int]] = set()
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate.host)
        except ValueError:
            continue
        if address.is_unspecified or address.is_multicast or not 1 <= candidate.port <= 65535:
            continue
        if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address(
            "255.255.255.255"
        ):
            continue
        key = (address.compressed, candidate.port)
        if key in seen:
            continue
        seen.add(key)
        normal = Candidate(address.compressed, candidate.port)
        (v4 if address.version == 4 else v6).append(normal)
    return tuple([*v4, *v6][:limit])


def is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def introduction_candidates(
    candidates: Iterable[Candidate], *, tunnel_host: str
) -> tuple[Candidate, ...]:
    """What an introduction dials: :func:`order_candidates`, and loopback addresses
    only when the tracker itself is reached over loopback (everyone on one machine)
    -- a loopback candidate of a peer elsewhere would make us dial our own services."""
    keep_loopback = is_loopback_host(tunnel_host)
    return order_candidates(c for c in candidates if keep_loopback or not is_loopback_host(c.host))


# -- the attempt schedule --------------------------------------------------------------


@dataclass
class _Slot:
    attempts: int = 0
    in_flight: bool = False
    next_at: float = 0.0


class DialPlan:
    """When to dial each candidate of one introduction (time is an argument).

    All at once at *start*; a failed dial is retried after *interval_s*; at most
    one dial per candidate in flight (one source port, one 5-tuple) and at most
    *max_attempts* per candidate; nothing after *start* + *window_s*.
    """

    def __init__(
        self,
        candidates: Iterable[Candidate],
        start: float,
        *,
        window_s: float = PUNCH_WINDOW_S,
        interval_s: float = RETRY_INTERVAL_S,
        max_attempts: int = MAX_ATTEMPTS_PER_CANDIDATE,
    ) -> None:
        self.candidates = order_candidates(candidates)
        self.deadline = start + window_s
        self.interval_s = interval_s
        self.max_attempts = max_attempts
        self._slots = {c: _Slot(next_at=start) for c in self.candidates}
        self.done = False

    def due(self, now: float) -> list[Candidate]:
        """The candidates to dial now; each is counted as in flight until :meth:`failed`."""
        if self.done or now >= self.deadline:
            return []
        out = []
        for candidate, slot in self._slots.items():
            if not slot.in_flight and slot.attempts < self.max_attempts and slot.next_at <= now:
                slot.attempts += 1
                slot.in_flight = True
                out.append(candidate)
        return out

    def add(self, candidates: Iterable[Candidate], now: float) -> list[Candidate]:
        """Candidates learnt during the window (the other side's reflexive address
        arriving in a ``peer-updated``): dialled from *now* on, the plan still at
        most :data:`MAX_CANDIDATES` long. Returns the ones added."""
        added = []
        for candidate in order_candidates(candidates):
            if candidate in self._slots or len(self._slots) >= MAX_CANDIDATES:
                continue
            self._slots[candidate] = _Slot(next_at=now)
            added.append(candidate)
        self.candidates = tuple(self._slots)
        return added

    def failed(self, candidate: Candidate, now: float) -> None:
        slot = self._slots[candidate]
        slot.in_flight = False
        slot.next_at = now + self.interval_s

    def succeeded(self) -> None:
        """One dial made it: no more dials for this introduction."""
        self.done = True

    def next_wake(self, now: float) -> float | None:
        """When :meth:`due` may next return something (None: never again)."""
        if self.done or now >= self.deadline:
            return None
        times = [
            max(slot.next_at, now)
            for slot in self._slots.values()
            if not slot.in_flight and slot.attempts < self.max_attempts
        ]
        if not times:
            return None if not any(s.in_flight for s in self._slots.values()) else self.deadline
        return min(min(times), self.deadline)

    def attempts(self, candidate: Candidate) -> int:
        return self._slots[candidate].attempts


# -- the race ------------------------------------------------------------------------


@dataclass
class Race:
    """RFC 8305 between direct attempts and the relay join, for one connection.

    Direct attempts start at once; the relay joins *relay_delay_s* after the
    invite arrived unless a direct attempt has already authenticated (at once
    when there is nothing to dial). The first authenticated attempt wins.
    """

    relay_delay_s: float = RELAY_DELAY_S
    winner: str | None = None

    def relay_start(self, invited_at: float, direct_candidates: int) -> float:
        return invited_at if direct_candidates == 0 else invited_at + self.relay_delay_s

    def should_join_relay(self) -> bool:
        return self.winner is None

    def claim(self, attempt: str) -> bool:
        """Whether *attempt* (which just authenticated) wins; the others are closed."""
        if self.winner is None:
            self.winner = attempt
            return True
        return self.winner == attempt


# -- route memory --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Remembered:
    route: Route
    address: str | None  # host:port used, for `flashback peers`
    at: float
    #: the candidates a relay-only introduction dialled in vain
    tried: frozenset[Candidate] = frozenset()


@dataclass
class RouteBook:
    """Per peer: the direct addresses that worked, and when relay was all we got.

    A peer reached directly is dialled first next time at the address that
    worked (needing no tracker); a peer reached only by relay is tried
    directly again at most every *direct_retry_s*. At most *max_peers* peers,
    least recently used forgotten first.
    """

    direct_retry_s: float = DIRECT_RETRY_S
    max_peers: int = MAX_REMEMBERED_PEERS
    _last: OrderedDict[str, Remembered] = field(default_factory=OrderedDict)
    _direct: dict[str, tuple[Candidate, ...]] = field(default_factory=dict)

    def _touch(self, peer_id: str, entry: Remembered) -> None:
        self._last[peer_id] = entry
        self._last.move_to_end(peer_id)
        while len(self._last) > self.max_peers:
            gone, _ = self._last.popitem(last=False)
            self._direct.pop(gone, None)

    def remember_direct(self, peer_id: str, address: Candidate, now: float) -> None:
        known = self._direct.get(peer_id, ())
        # the one that worked first, then the others that worked before
        self._direct[peer_id] = (address, *[c for c in known if c != address])[:MAX_CANDIDATES]
        self._touch(peer_id, Remembered("direct", _hostport(address), now))

    def remember_relay(
        self, peer_id: str, address: str | None, now: float, *, tried: Iterable[Candidate] = ()
    ) -> None:
        self._touch(peer_id, Remembered("relay", address, now, frozenset(tried)))

    def learn_direct(self, peer_id: str, candidates: Iterable[Candidate]) -> None:
        """Addresses known without the tracker (LAN, peer book, §12), dialled plainly
        after those that worked; no route is claimed until one does."""
        known = self._direct.get(peer_id, ())
        merged = (*known, *[c for c in candidates if c not in known])[:MAX_CANDIDATES]
        if merged:
            self._direct[peer_id] = merged

    def direct_first(self, peer_id: str) -> tuple[Candidate, ...]:
        """Addresses to dial plainly before anything else (empty: none worked yet)."""
        return self._direct.get(peer_id, ())

    def may_punch(self, peer_id: str, now: float, candidates: Iterable[Candidate] = ()) -> bool:
        """Whether to dial an introduction's candidates: not for a peer that only the
        relay reached less than *direct_retry_s* ago -- unless it has a candidate that
        was not tried then (a reflexive address learnt since, say)."""
        entry = self._last.get(peer_id)
        if entry is None or entry.route == "direct" or now >= entry.at + self.direct_retry_s:
            return True
        return any(candidate not in entry.tried for candidate in candidates)

    def forget_direct(self, peer_id: str, address: Candidate) -> None:
        left = tuple(c for c in self._direct.get(peer_id, ()) if c != address)
        if left:
            self._direct[peer_id] = left
        else:
            self._direct.pop(peer_id, None)

    def last(self, peer_id: str) -> Remembered | None:
        return self._last.get(peer_id)


def _hostport(candidate: Candidate) -> str:
    host = f"[{candidate.host}]" if ":" in candidate.host else candidate.host
    return f"{host}:{candidate.port}"


def hostport(host: str, port: int) -> str:
    """``host:port`` with an IPv6 literal in brackets (the ``address`` of events)."""
    return _hostport(Candidate(host, port))

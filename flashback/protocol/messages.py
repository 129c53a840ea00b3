"""The tracker's websocket messages, both directions, as frozen dataclasses.

One class per ``"type"`` of docs/INTERFACE.md §2. Each declares its wire
fields once, in wire order, with the reader of each in its field metadata
(``port: int = field(metadata=PORT)``); the codec in
:mod:`flashback.protocol.wire` derives :meth:`Message.dump` and the parsing
from those declarations, so adding a field is adding one line. :func:`parse`
turns a decoded (or raw text) frame into its message. Anything malformed
raises :class:`ProtocolError`, which carries the ``{"type": "error", "code",
"message"}`` reply to send, so the server answers bad input without a
``try`` around every field (the wsproto ``event_hint`` idea). The peer
daemon uses this same module as a client. Pure: imports neither trio nor
quart.

Wire summary (tracker = T, peer/watcher = P)::

    P->T hello             {peer_id?, token?, last_seq}
    T->P snapshot          {seq, peers}
    T->P peer-joined       {seq, peer}        peer-updated {seq, peer}
    T->P peer-left         {seq, peer_id, reason: left|expired}
    P->T stream-request    {request_id, to, path}     T->P the same with "from"
    P->T file-stream-ready {request_id, to, host, port, token, path, size, expires_in}
    P->T stream-error      {request_id, to, code, message}   (T->P: "from", or
                           neither when the tracker itself answers unknown_peer)
    P->T tunnel-request    {request_id, to}
    T->P tunnel-invite     {request_id, from, fingerprint, role, host, port, key,
                            candidates, peer_fingerprint}  (to both sides, at once)
    P->T route-report      {request_id, route: direct|relay}  (each side, once it knows)
    P->T tunnel-error      {request_id, to, code, message}   (an owner declines; T->P: "from",
                           or neither when the tracker itself refuses)
    T->P error             {code, message}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

from flashback.protocol.hosts import MAX_HOST_CHARS, is_ip_literal

# The codec owns the frames' base, the error frame, its bounds and the error
# every reader raises; these ``X as X`` imports name them here too, so that
# users of the frames need this module only.
from flashback.protocol.wire import MAX_CODE_CHARS as MAX_CODE_CHARS
from flashback.protocol.wire import MAX_MESSAGE_CHARS as MAX_MESSAGE_CHARS
from flashback.protocol.wire import ErrorMessage as ErrorMessage
from flashback.protocol.wire import Message as Message
from flashback.protocol.wire import ProtocolError as ProtocolError
from flashback.protocol.wire import (
    check_unicode,
    decode_object,
    dump_each,
    dump_fields,
    dump_or_none,
    integer,
    invalid,
    note,
    one_of,
    read_fields,
    read_fingerprint,
    read_int,
    read_number,
    read_object,
    read_required_fingerprint,
    read_str,
    text,
    wire,
)

MAX_ID_CHARS: Final = 128
MAX_TOKEN_CHARS: Final = 512
MAX_PATH_CHARS: Final = 4096
MAX_NAME_CHARS: Final = 64
#: direct candidates a peer may register (§10.2): its addresses, not a port scan
MAX_CANDIDATES: Final = 8
#: The largest frame a daemon accepts, and so the largest snapshot a tracker
#: may ever have to send (its peer-list budget is derived from this).
MAX_SNAPSHOT_BYTES: Final = 16 * 1024 * 1024
#: ``{"type":"snapshot","seq":<20 digits>,"peers":[...]}`` around the records
SNAPSHOT_OVERHEAD_BYTES: Final = 64
#: The most peer records (UTF-8 bytes, commas included) a tracker may hold.
MAX_PEER_LIST_BYTES: Final = MAX_SNAPSHOT_BYTES - SNAPSHOT_OVERHEAD_BYTES

LeaveReason = Literal["left", "expired"]
Role = Literal["client", "server"]
Route = Literal["direct", "relay"]

#: a peer id that may be absent, and is then left off the wire: ``to``/``from``,
#: a watcher's hello
OPTIONAL_ID: Final = text(MAX_ID_CHARS, omit_none=True)
PORT: Final = integer(1, 65535)


# -- direct candidates (§10.2) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """One address a peer's direct endpoint may be dialled at: an IP literal and a port.

    Only IP literals: a candidate is dialled by other peers, and a name would
    make them resolve whatever a stranger registered.
    """

    host: str
    port: int

    def dump(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port}

    @classmethod
    def parse(cls, data: Any, *, label: str = "candidate") -> Candidate:
        if not isinstance(data, dict):
            raise invalid(label, "an object {host, port}")
        host = read_str(data, "host", max_chars=64, label=f"{label}.host")
        if not is_ip_literal(host) or "%" in host:
            raise invalid(f"{label}.host", "an IP address literal")
        return cls(host, read_int(data, "port", low=1, high=65535, label=f"{label}.port"))


def read_candidates(data: Mapping[str, Any], key: str) -> tuple[Candidate, ...]:
    """A list of at most :data:`MAX_CANDIDATES` candidates (absent: none), duplicates dropped."""
    value = data.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_CANDIDATES:
        raise invalid(key, f"a list of at most {MAX_CANDIDATES} {{host, port}} objects")
    out: list[Candidate] = []
    for item in value:
        candidate = Candidate.parse(item, label=key)
        if candidate not in out:
            out.append(candidate)
    return tuple(out)


def read_candidate(data: Mapping[str, Any], key: str) -> Candidate | None:
    value = data.get(key)
    return None if value is None else Candidate.parse(value, label=key)


CANDIDATES: Final = wire(read_candidates, dump_each)


# -- the peer record shared by snapshot, list and feed --------------------------


@dataclass(frozen=True)
class PeerInfo:
    """One online peer as everybody sees it (never with its token)."""

    peer_id: str = field(metadata=text(MAX_ID_CHARS))
    name: str = field(metadata=text(MAX_NAME_CHARS))
    host: str = field(metadata=text(MAX_HOST_CHARS, within="peer_server"))
    port: int = field(metadata=integer(1, 65535, within="peer_server"))
    capabilities: dict[str, Any] = field(default_factory=dict, metadata=wire(read_object))
    registered_at: str = field(default="", metadata=text(64))
    last_seen: str = field(default="", metadata=text(64))
    # sha256:<hex> of the peer's certificate (INTERFACE §6.1); None: it sent none
    fingerprint: str | None = field(default=None, metadata=wire(read_fingerprint))
    # its direct endpoint as registered, and as the tracker saw it from outside (§10.2)
    direct: tuple[Candidate, ...] = field(default=(), metadata=CANDIDATES)
    reflexive: Candidate | None = field(default=None, metadata=wire(read_candidate, dump_or_none))

    def dump(self) -> dict[str, Any]:
        return dump_fields(self)

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """Where its endpoint may be dialled: the registered addresses, then the reflexive one."""
        if self.reflexive is None or self.reflexive in self.direct:
            return self.direct
        return (*self.direct, self.reflexive)

    @classmethod
    def parse(cls, data: Any) -> PeerInfo:
        if not isinstance(data, dict):
            raise invalid("peer", "an object")
        return cls(**read_fields(cls, data))


def read_peer(data: Mapping[str, Any], key: str) -> PeerInfo:
    return PeerInfo.parse(data.get(key))


def read_peers(data: Mapping[str, Any], key: str) -> tuple[PeerInfo, ...]:
    peers = data.get(key)
    if not isinstance(peers, list):
        raise invalid(key, "a list")
    return tuple(PeerInfo.parse(p) for p in peers)


PEER: Final = wire(read_peer, lambda peer: peer.dump())  # looked up at call time, as the others


# -- messages: each declares its wire fields in wire order (see wire.py) ------------


@dataclass(frozen=True)
class Hello(Message):
    """First client frame: an identified peer (peer_id + token) or a watcher."""

    TYPE: ClassVar[str] = "hello"
    peer_id: str | None = field(default=None, metadata=OPTIONAL_ID)
    token: str | None = field(  # a credential: never in a repr, so never in a log
        default=None, repr=False, metadata=text(MAX_TOKEN_CHARS, omit_none=True)
    )
    last_seq: int | None = field(default=None, metadata=integer(optional=True))

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        if (values["peer_id"] is None) != (values["token"] is None):
            raise ProtocolError("invalid_field", "'peer_id' and 'token' go together")


@dataclass(frozen=True)
class Snapshot(Message):
    TYPE: ClassVar[str] = "snapshot"
    seq: int = field(metadata=integer())
    peers: tuple[PeerInfo, ...] = field(default=(), metadata=wire(read_peers, dump_each))


@dataclass(frozen=True)
class PeerJoined(Message):
    TYPE: ClassVar[str] = "peer-joined"
    seq: int = field(metadata=integer())
    peer: PeerInfo = field(metadata=PEER)


@dataclass(frozen=True)
class PeerUpdated(Message):
    TYPE: ClassVar[str] = "peer-updated"
    seq: int = field(metadata=integer())
    peer: PeerInfo = field(metadata=PEER)


@dataclass(frozen=True)
class PeerLeft(Message):
    TYPE: ClassVar[str] = "peer-left"
    seq: int = field(metadata=integer())
    peer_id: str = field(metadata=text(MAX_ID_CHARS))
    reason: LeaveReason = field(metadata=one_of(LeaveReason))


class _Routed(Message):
    """A frame with ``to`` (a peer sends it) or ``from`` (the tracker forwards it), not both.

    Its ``to``/``from_`` fields are keyword-only, so they can stand where the
    wire has them without taking a place among the positional arguments.
    """

    TO_REQUIRED: ClassVar[bool] = True

    @classmethod
    def check(cls, values: dict[str, Any]) -> None:
        if values["to"] is not None and values["from_"] is not None:
            raise ProtocolError("invalid_field", "give either 'to' or 'from', not both")
        if cls.TO_REQUIRED and values["to"] is None and values["from_"] is None:
            raise ProtocolError("invalid_field", "'to' is required")


@dataclass(frozen=True)
class StreamRequest(_Routed):
    """``to`` when a requester sends it, ``from`` when the tracker forwards it."""

    TYPE: ClassVar[str] = "stream-request"
    request_id: str = field(metadata=text(MAX_ID_CHARS))
    to: str | None = field(default=None, kw_only=True, metadata=OPTIONAL_ID)
    from_: str | None = field(default=None, kw_only=True, metadata=OPTIONAL_ID)
    path: str = field(metadata=text(MAX_PATH_CHARS))


@dataclass(frozen=True)
class FileStreamReady(_Routed):
    """The owner's answer: where and with which token to fetch the file."""

    TYPE: ClassVar[str] = "file-stream-ready"
    request_id: str = field(metadata=text(MAX_ID_CHARS))
    to: str | None = field(default=None, kw_only=True, metadata=OPTIONAL_ID)
    from_: str | None = field(default=None, kw_only=True, metadata=OPTIONAL_ID)
    host: str = field(metadata=text(MAX_HOST_CHARS))
    port: int = field(metadata=PORT)
    token: str = field(metadata=text(MAX_TOKEN_CHARS))
    path: str = field(metadata=text(MAX_PATH_CHARS))
    size: int = field(metadata=integer())
    expires_in: float | int = field(metadata=wire(read_number))


@dataclass(frozen=True)
class _Refusal(_Routed):
    """The shape of a refusal: ``to`` when a peer sends it, ``from`` when the tracker
    forwards it, neither when the tracker answers itself."""

    TO_REQUIRED: ClassVar[bool] = False
    request_id: str = field(metadata=text(MAX_ID_CHARS))
    to: str | None = field(default=None, kw_only=True, metadata=OPTIONAL_ID)
    from_: str | None = field(default=None, kw_only=True, metadata=OPTIONAL_ID)
    code: str = field(metadata=text(MAX_CODE_CHARS))
    message: str = field(metadata=note(MAX_MESSAGE_CHARS))


@dataclass(frozen=True)
class StreamError(_Refusal):
    """A refused stream."""

    TYPE: ClassVar[str] = "stream-error"


@dataclass(frozen=True)
class TunnelRequest(Message):
    """A requester asks the tracker to pair it with *to* through the tunnel port (§6.2)."""

    TYPE: ClassVar[str] = "tunnel-request"
    request_id: str = field(metadata=text(MAX_ID_CHARS))
    to: str = field(metadata=text(MAX_ID_CHARS))


@dataclass(frozen=True)
class TunnelInvite(Message):
    """Tracker -> each side: dial host:port and join with *key* (single use, 30 s).

    ``fingerprint`` is always the owner's: the requester checks the TLS
    certificate against it. ``peer_fingerprint`` is the *other* side's
    registered fingerprint (for the owner: the requester's, which it checks
    the requester's client certificate against, §11), and ``candidates`` the
    other side's direct endpoint addresses to dial at once (§10.3).
    """

    TYPE: ClassVar[str] = "tunnel-invite"
    request_id: str = field(metadata=text(MAX_ID_CHARS))
    from_: str = field(metadata=text(MAX_ID_CHARS))
    fingerprint: str = field(metadata=wire(read_required_fingerprint))
    role: Role = field(metadata=one_of(Role))
    host: str = field(metadata=text(MAX_HOST_CHARS))
    port: int = field(metadata=PORT)
    # a credential: never in a repr, so never in a log
    key: str = field(repr=False, metadata=text(MAX_TOKEN_CHARS))
    # an introduction may list both sides' addresses plus each reflexive one
    candidates: tuple[Candidate, ...] = field(default=(), metadata=CANDIDATES)
    peer_fingerprint: str | None = field(default=None, metadata=wire(read_fingerprint))


@dataclass(frozen=True)
class RouteReport(Message):
    """Each side of an introduction tells the tracker which route won (§10.3 metrics)."""

    TYPE: ClassVar[str] = "route-report"
    request_id: str = field(metadata=text(MAX_ID_CHARS))
    route: Route = field(metadata=one_of(Route))


@dataclass(frozen=True)
class TunnelErrorMessage(_Refusal):
    """A refused tunnel: by the tracker, or an owner's decline (forwarded)."""

    TYPE: ClassVar[str] = "tunnel-error"


Change = PeerJoined | PeerUpdated | PeerLeft
"""A change of the peer list: what the feed carries, each with its ``seq``."""

MESSAGE_TYPES: Final[dict[str, type[Message]]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Snapshot,
        PeerJoined,
        PeerUpdated,
        PeerLeft,
        StreamRequest,
        FileStreamReady,
        StreamError,
        TunnelRequest,
        TunnelInvite,
        TunnelErrorMessage,
        RouteReport,
        ErrorMessage,
    )
}


def parse(data: Mapping[str, Any] | str | bytes) -> Message:
    """Decode one frame (text or an already-decoded dict) into its message."""
    if isinstance(data, str | bytes):
        data = decode_object(data)
    elif isinstance(data, Mapping):
        check_unicode(data)
    else:
        raise ProtocolError("invalid_message", "the message must be a JSON object")
    kind = data.get("type")
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind!r}"[:MAX_MESSAGE_CHARS])
    return cls.from_dict(data)

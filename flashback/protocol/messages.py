"""The tracker's websocket messages, both directions, as frozen dataclasses.

One class per ``"type"`` of docs/INTERFACE.md §2; :func:`parse` turns a decoded
(or raw text) frame into one of them and :meth:`Message.dump` turns one back
into a JSON-ready dict. Anything malformed raises :class:`ProtocolError`,
which carries the ``{"type": "error", "code", "message"}`` reply to send, so
the server answers bad input without a ``try`` around every field (the
wsproto ``event_hint`` idea). The peer daemon uses this same module as a
client. Pure: imports neither trio nor quart.

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

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal, Self

from flashback.protocol.fingerprint import is_fingerprint
from flashback.protocol.hosts import MAX_HOST_CHARS, is_ip_literal
from flashback.protocol.strict_json import loads_strict

MAX_ID_CHARS: Final = 128
MAX_TOKEN_CHARS: Final = 512
MAX_PATH_CHARS: Final = 4096
MAX_NAME_CHARS: Final = 64
MAX_CODE_CHARS: Final = 64
MAX_MESSAGE_CHARS: Final = 1024
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


class ProtocolError(Exception):
    """A frame we cannot accept; :attr:`reply` is what to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def reply(self) -> ErrorMessage:
        return ErrorMessage(code=self.code, message=self.message)


# -- field readers: each raises ProtocolError with a message naming the field ---
# (the one place fields are checked: tracker/validate.py reads HTTP bodies with these)


def invalid(key: str, what: str) -> ProtocolError:
    return ProtocolError("invalid_field", f"{key!r} must be {what}")


def decode_object(text: str | bytes, *, what: str = "the message") -> dict[str, Any]:
    """Strict JSON text that must be an object UTF-8 can carry (*what* names it in errors)."""
    try:
        data = loads_strict(text)
    except ValueError:
        raise ProtocolError("invalid_json", f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("invalid_message", f"{what} must be a JSON object")
    # ASCII bytes with no \u escape and no NUL (so UTF-8, not UTF-16/32) cannot
    # hold a surrogate: no need to encode the whole object again to find one
    if not (
        isinstance(text, bytes) and text.isascii() and b"\\u" not in text and b"\0" not in text
    ):
        check_unicode(data, what=what)
    return data


def check_unicode(data: Mapping[str, Any], *, what: str = "the message") -> None:
    """Lone surrogates (from "\\ud800" escapes) cannot be sent on as UTF-8."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("invalid_json", f"{what} has a lone surrogate escape") from None


def read_str(
    data: Mapping[str, Any],
    key: str,
    *,
    max_chars: int,
    optional: bool = False,
    label: str | None = None,
) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise invalid(label or key, f"a string of 1-{max_chars} characters")
    return value


def read_int(
    data: Mapping[str, Any],
    key: str,
    *,
    low: int = 0,
    high: int | None = None,
    optional: bool = False,
    label: str | None = None,
) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    label = label or key
    # bool is an int subclass; True is not a port number.
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise invalid(label, f"an integer >= {low}")
    if high is not None and value > high:
        raise invalid(label, f"an integer between {low} and {high}")
    return value


def read_number(data: Mapping[str, Any], key: str) -> float | int:
    value = data.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise invalid(key, "a number >= 0")
    return value


def read_object(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise invalid(key, "an object")
    return value


def read_required_fingerprint(data: Mapping[str, Any]) -> str:
    value = read_fingerprint(data)
    if value is None:
        raise invalid("fingerprint", "'sha256:' and 64 lowercase hex digits")
    return value


def read_fingerprint(data: Mapping[str, Any], key: str = "fingerprint") -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not is_fingerprint(value):
        raise invalid(key, "'sha256:' and 64 lowercase hex digits")
    return str(value)


def _one_direction(data: Mapping[str, Any], *, required: bool) -> tuple[str | None, str | None]:
    to = read_str(data, "to", max_chars=MAX_ID_CHARS, optional=True)
    from_ = read_str(data, "from", max_chars=MAX_ID_CHARS, optional=True)
    if to is not None and from_ is not None:
        raise ProtocolError("invalid_field", "give either 'to' or 'from', not both")
    if required and to is None and from_ is None:
        raise ProtocolError("invalid_field", "'to' is required")
    return to, from_


def _direction(to: str | None, from_: str | None) -> dict[str, str]:
    if to is not None:
        return {"to": to}
    if from_ is not None:
        return {"from": from_}
    return {}


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


# -- the peer record shared by snapshot, list and feed --------------------------


@dataclass(frozen=True)
class PeerInfo:
    """One online peer as everybody sees it (never with its token)."""

    peer_id: str
    name: str
    host: str
    port: int
    capabilities: dict[str, Any] = field(default_factory=dict)
    registered_at: str = ""
    last_seen: str = ""
    # sha256:<hex> of the peer's certificate (INTERFACE §6.1); None: it sent none
    fingerprint: str | None = None
    # its direct endpoint as registered, and as the tracker saw it from outside (§10.2)
    direct: tuple[Candidate, ...] = ()
    reflexive: Candidate | None = None

    def dump(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "name": self.name,
            "peer_server": {"host": self.host, "port": self.port},
            "capabilities": self.capabilities,
            "registered_at": self.registered_at,
            "last_seen": self.last_seen,
            "fingerprint": self.fingerprint,
            "direct": [c.dump() for c in self.direct],
            "reflexive": None if self.reflexive is None else self.reflexive.dump(),
        }

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
        server = read_object(data, "peer_server")
        return cls(
            peer_id=read_str(data, "peer_id", max_chars=MAX_ID_CHARS),
            name=read_str(data, "name", max_chars=MAX_NAME_CHARS),
            host=read_str(server, "host", max_chars=MAX_HOST_CHARS),
            port=read_int(server, "port", low=1, high=65535),
            capabilities=read_object(data, "capabilities"),
            registered_at=read_str(data, "registered_at", max_chars=64),
            last_seen=read_str(data, "last_seen", max_chars=64),
            fingerprint=read_fingerprint(data),
            direct=read_candidates(data, "direct"),
            reflexive=read_candidate(data, "reflexive"),
        )


# -- messages ---------------------------------------------------------------------


class Message:
    """Base of every frame; subclasses set ``TYPE`` and implement dump/_from."""

    TYPE: ClassVar[str]

    def dump(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self) -> str:
        """Compact JSON text, the form that goes on the wire."""
        return json.dumps(self.dump(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> Message:
        raise NotImplementedError


@dataclass(frozen=True)
class Hello(Message):
    """First client frame: an identified peer (peer_id + token) or a watcher."""

    TYPE: ClassVar[str] = "hello"
    last_seq: int | None = None
    peer_id: str | None = None
    token: str | None = None

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        if self.peer_id is not None:
            out["peer_id"] = self.peer_id
            out["token"] = self.token
        out["last_seq"] = self.last_seq
        return out

    def __repr__(self) -> str:  # never print a token into a log
        return f"Hello(peer_id={self.peer_id!r}, last_seq={self.last_seq!r})"

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> Hello:
        peer_id = read_str(data, "peer_id", max_chars=MAX_ID_CHARS, optional=True)
        token = read_str(data, "token", max_chars=MAX_TOKEN_CHARS, optional=True)
        if (peer_id is None) != (token is None):
            raise ProtocolError("invalid_field", "'peer_id' and 'token' go together")
        return cls(last_seq=read_int(data, "last_seq", optional=True), peer_id=peer_id, token=token)


@dataclass(frozen=True)
class Snapshot(Message):
    TYPE: ClassVar[str] = "snapshot"
    seq: int
    peers: tuple[PeerInfo, ...] = ()

    def dump(self) -> dict[str, Any]:
        return {"type": self.TYPE, "seq": self.seq, "peers": [p.dump() for p in self.peers]}

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> Snapshot:
        peers = data.get("peers")
        if not isinstance(peers, list):
            raise invalid("peers", "a list")
        return cls(seq=read_int(data, "seq"), peers=tuple(PeerInfo.parse(p) for p in peers))


@dataclass(frozen=True)
class PeerJoined(Message):
    TYPE: ClassVar[str] = "peer-joined"
    seq: int
    peer: PeerInfo

    def dump(self) -> dict[str, Any]:
        return {"type": self.TYPE, "seq": self.seq, "peer": self.peer.dump()}

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> PeerJoined:
        return cls(seq=read_int(data, "seq"), peer=PeerInfo.parse(data.get("peer")))


@dataclass(frozen=True)
class PeerUpdated(Message):
    TYPE: ClassVar[str] = "peer-updated"
    seq: int
    peer: PeerInfo

    def dump(self) -> dict[str, Any]:
        return {"type": self.TYPE, "seq": self.seq, "peer": self.peer.dump()}

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> PeerUpdated:
        return cls(seq=read_int(data, "seq"), peer=PeerInfo.parse(data.get("peer")))


@dataclass(frozen=True)
class PeerLeft(Message):
    TYPE: ClassVar[str] = "peer-left"
    seq: int
    peer_id: str
    reason: LeaveReason

    def dump(self) -> dict[str, Any]:
        return {"type": self.TYPE, "seq": self.seq, "peer_id": self.peer_id, "reason": self.reason}

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> PeerLeft:
        reason = data.get("reason")
        if reason not in ("left", "expired"):
            raise invalid("reason", "'left' or 'expired'")
        return cls(
            seq=read_int(data, "seq"),
            peer_id=read_str(data, "peer_id", max_chars=MAX_ID_CHARS),
            reason=reason,
        )


@dataclass(frozen=True)
class StreamRequest(Message):
    """``to`` when a requester sends it, ``from`` when the tracker forwards it."""

    TYPE: ClassVar[str] = "stream-request"
    request_id: str
    path: str
    to: str | None = None
    from_: str | None = None

    def dump(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "request_id": self.request_id,
            **_direction(self.to, self.from_),
            "path": self.path,
        }

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> StreamRequest:
        to, from_ = _one_direction(data, required=True)
        return cls(
            request_id=read_str(data, "request_id", max_chars=MAX_ID_CHARS),
            path=read_str(data, "path", max_chars=MAX_PATH_CHARS),
            to=to,
            from_=from_,
        )


@dataclass(frozen=True)
class FileStreamReady(Message):
    """The owner's answer: where and with which token to fetch the file."""

    TYPE: ClassVar[str] = "file-stream-ready"
    request_id: str
    host: str
    port: int
    token: str
    path: str
    size: int
    expires_in: float | int
    to: str | None = None
    from_: str | None = None

    def dump(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "request_id": self.request_id,
            **_direction(self.to, self.from_),
            "host": self.host,
            "port": self.port,
            "token": self.token,
            "path": self.path,
            "size": self.size,
            "expires_in": self.expires_in,
        }

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> FileStreamReady:
        to, from_ = _one_direction(data, required=True)
        return cls(
            request_id=read_str(data, "request_id", max_chars=MAX_ID_CHARS),
            host=read_str(data, "host", max_chars=MAX_HOST_CHARS),
            port=read_int(data, "port", low=1, high=65535),
            token=read_str(data, "token", max_chars=MAX_TOKEN_CHARS),
            path=read_str(data, "path", max_chars=MAX_PATH_CHARS),
            size=read_int(data, "size"),
            expires_in=read_number(data, "expires_in"),
            to=to,
            from_=from_,
        )


@dataclass(frozen=True)
class _Refusal(Message):
    """The shape of a refusal: ``to`` when a peer sends it, ``from`` when the tracker
    forwards it, neither when the tracker answers itself."""

    request_id: str
    code: str
    message: str
    to: str | None = None
    from_: str | None = None

    def dump(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "request_id": self.request_id,
            **_direction(self.to, self.from_),
            "code": self.code,
            "message": self.message,
        }

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> Self:
        to, from_ = _one_direction(data, required=False)
        message = data.get("message", "")
        if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
            raise invalid("message", f"a string of at most {MAX_MESSAGE_CHARS} characters")
        return cls(
            request_id=read_str(data, "request_id", max_chars=MAX_ID_CHARS),
            code=read_str(data, "code", max_chars=MAX_CODE_CHARS),
            message=message,
            to=to,
            from_=from_,
        )


@dataclass(frozen=True)
class StreamError(_Refusal):
    """A refused stream."""

    TYPE: ClassVar[str] = "stream-error"


@dataclass(frozen=True)
class TunnelRequest(Message):
    """A requester asks the tracker to pair it with *to* through the tunnel port (§6.2)."""

    TYPE: ClassVar[str] = "tunnel-request"
    request_id: str
    to: str

    def dump(self) -> dict[str, Any]:
        return {"type": self.TYPE, "request_id": self.request_id, "to": self.to}

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> TunnelRequest:
        return cls(
            request_id=read_str(data, "request_id", max_chars=MAX_ID_CHARS),
            to=read_str(data, "to", max_chars=MAX_ID_CHARS),
        )


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
    request_id: str
    from_: str
    fingerprint: str
    role: Literal["client", "server"]
    host: str
    port: int
    key: str
    candidates: tuple[Candidate, ...] = ()
    peer_fingerprint: str | None = None

    def dump(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "request_id": self.request_id,
            "from": self.from_,
            "fingerprint": self.fingerprint,
            "role": self.role,
            "host": self.host,
            "port": self.port,
            "key": self.key,
            "candidates": [c.dump() for c in self.candidates],
            "peer_fingerprint": self.peer_fingerprint,
        }

    def __repr__(self) -> str:  # a key is a credential: never in a log
        return (
            f"TunnelInvite(request_id={self.request_id!r}, from_={self.from_!r}, "
            f"role={self.role!r})"
        )

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> TunnelInvite:
        role = data.get("role")
        if role not in ("client", "server"):
            raise invalid("role", "'client' or 'server'")
        return cls(
            request_id=read_str(data, "request_id", max_chars=MAX_ID_CHARS),
            from_=read_str(data, "from", max_chars=MAX_ID_CHARS),
            fingerprint=read_required_fingerprint(data),
            role=role,
            host=read_str(data, "host", max_chars=MAX_HOST_CHARS),
            port=read_int(data, "port", low=1, high=65535),
            key=read_str(data, "key", max_chars=MAX_TOKEN_CHARS),
            # an introduction may list both sides' addresses plus each reflexive one
            candidates=read_candidates(data, "candidates"),
            peer_fingerprint=read_fingerprint(data, "peer_fingerprint"),
        )


@dataclass(frozen=True)
class RouteReport(Message):
    """Each side of an introduction tells the tracker which route won (§10.3 metrics)."""

    TYPE: ClassVar[str] = "route-report"
    request_id: str
    route: Literal["direct", "relay"]

    def dump(self) -> dict[str, Any]:
        return {"type": self.TYPE, "request_id": self.request_id, "route": self.route}

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> RouteReport:
        route = data.get("route")
        if route not in ("direct", "relay"):
            raise invalid("route", "'direct' or 'relay'")
        return cls(request_id=read_str(data, "request_id", max_chars=MAX_ID_CHARS), route=route)


@dataclass(frozen=True)
class TunnelErrorMessage(_Refusal):
    """A refused tunnel: by the tracker, or an owner's decline (forwarded)."""

    TYPE: ClassVar[str] = "tunnel-error"


@dataclass(frozen=True)
class ErrorMessage(Message):
    TYPE: ClassVar[str] = "error"
    code: str
    message: str

    def dump(self) -> dict[str, Any]:
        return {"type": self.TYPE, "code": self.code, "message": self.message}

    @classmethod
    def _from(cls, data: Mapping[str, Any]) -> ErrorMessage:
        message = data.get("message", "")
        if not isinstance(message, str):
            raise invalid("message", "a string")
        return cls(code=read_str(data, "code", max_chars=MAX_CODE_CHARS), message=message)


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
    return cls._from(data)

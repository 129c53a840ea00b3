"""The message codec: every frame type's exact wire text, and each kind of bad field.

The expected texts and errors were taken from the hand-written codecs that the
field-driven one replaced: they pin the wire format byte for byte (key order
included) and the error a peer gets back for each kind of fault.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, assert_type

import pytest

from flashback.protocol import messages as m
from flashback.protocol import wire as wire_codec

FP_A = "sha256:" + "a" * 64
FP_B = "sha256:" + "b" * 64
C4 = m.Candidate("192.0.2.2", 4000)
C6 = m.Candidate("2001:db8::1", 4001)

#: a peer with only what the wire requires, and one with every optional field
BARE_PEER = m.PeerInfo("p1", "laptop", "10.0.0.2", 8080, registered_at="t0", last_seen="t1")
FULL_PEER = m.PeerInfo(
    "p2",
    "desk",
    "desk.lan",
    9000,
    {"stream": True, "v": [1, 2]},
    "t0",
    "t1",
    FP_A,
    (C4, C6),
    m.Candidate("203.0.113.9", 61000),
)
BARE_PEER_WIRE: dict[str, Any] = {
    "peer_id": "p1",
    "name": "laptop",
    "peer_server": {"host": "10.0.0.2", "port": 8080},
    "capabilities": {},
    "registered_at": "t0",
    "last_seen": "t1",
    "fingerprint": None,
    "direct": [],
    "reflexive": None,
}
CANDIDATES_WIRE = [{"host": "192.0.2.2", "port": 4000}, {"host": "2001:db8::1", "port": 4001}]
FULL_PEER_WIRE: dict[str, Any] = {
    "peer_id": "p2",
    "name": "desk",
    "peer_server": {"host": "desk.lan", "port": 9000},
    "capabilities": {"stream": True, "v": [1, 2]},
    "registered_at": "t0",
    "last_seen": "t1",
    "fingerprint": FP_A,
    "direct": CANDIDATES_WIRE,
    "reflexive": {"host": "203.0.113.9", "port": 61000},
}
INVITE_WIRE: dict[str, Any] = {
    "type": "tunnel-invite",
    "request_id": "r2",
    "from": "p1",
    "fingerprint": FP_A,
    "role": "client",
    "host": "198.51.100.1",
    "port": 3001,
    "key": "k",
}


def _refusals(cls: type[m.StreamError | m.TunnelErrorMessage]) -> list[tuple[m.Message, Any]]:
    """A refusal as the tracker sends it (neither side), as a peer does, as it is forwarded."""
    head = {"type": cls.TYPE, "request_id": "r1"}
    return [
        (
            cls("r1", "unknown_peer", "offline"),
            {**head, "code": "unknown_peer", "message": "offline"},
        ),
        (
            cls("r1", "refused", "no", to="p1"),
            {**head, "to": "p1", "code": "refused", "message": "no"},
        ),
        (
            cls("r1", "refused", "", from_="p2"),
            {**head, "from": "p2", "code": "refused", "message": ""},
        ),
    ]


#: (message, its wire form): each type with its optional fields unset and set
WIRE: list[tuple[m.Message, dict[str, Any]]] = [
    (m.Hello(), {"type": "hello", "last_seq": None}),
    (
        m.Hello(last_seq=42, peer_id="p1", token="secret"),
        {"type": "hello", "peer_id": "p1", "token": "secret", "last_seq": 42},
    ),
    (m.Snapshot(seq=0), {"type": "snapshot", "seq": 0, "peers": []}),
    (
        m.Snapshot(seq=7, peers=(BARE_PEER, FULL_PEER)),
        {"type": "snapshot", "seq": 7, "peers": [BARE_PEER_WIRE, FULL_PEER_WIRE]},
    ),
    (m.PeerJoined(1, BARE_PEER), {"type": "peer-joined", "seq": 1, "peer": BARE_PEER_WIRE}),
    (m.PeerJoined(2, FULL_PEER), {"type": "peer-joined", "seq": 2, "peer": FULL_PEER_WIRE}),
    (m.PeerUpdated(3, BARE_PEER), {"type": "peer-updated", "seq": 3, "peer": BARE_PEER_WIRE}),
    (m.PeerUpdated(4, FULL_PEER), {"type": "peer-updated", "seq": 4, "peer": FULL_PEER_WIRE}),
    (
        m.PeerLeft(5, "p1", "left"),
        {"type": "peer-left", "seq": 5, "peer_id": "p1", "reason": "left"},
    ),
    (
        m.PeerLeft(6, "p2", "expired"),
        {"type": "peer-left", "seq": 6, "peer_id": "p2", "reason": "expired"},
    ),
    (
        m.StreamRequest("r1", "a/b.mkv", to="p2"),
        {"type": "stream-request", "request_id": "r1", "to": "p2", "path": "a/b.mkv"},
    ),
    (
        m.StreamRequest("r1", "a/b.mkv", from_="p1"),
        {"type": "stream-request", "request_id": "r1", "from": "p1", "path": "a/b.mkv"},
    ),
    (
        m.FileStreamReady("r1", "10.0.0.2", 4000, "tok", "a", 3, 60, to="p1"),
        {
            "type": "file-stream-ready",
            "request_id": "r1",
            "to": "p1",
            "host": "10.0.0.2",
            "port": 4000,
            "token": "tok",
            "path": "a",
            "size": 3,
            "expires_in": 60,
        },
    ),
    (
        m.FileStreamReady("r1", "h", 1, "tok", "a", 0, 1.5, from_="p2"),
        {
            "type": "file-stream-ready",
            "request_id": "r1",
            "from": "p2",
            "host": "h",
            "port": 1,
            "token": "tok",
            "path": "a",
            "size": 0,
            "expires_in": 1.5,
        },
    ),
    *_refusals(m.StreamError),
    (m.TunnelRequest("r2", "p2"), {"type": "tunnel-request", "request_id": "r2", "to": "p2"}),
    (
        m.TunnelInvite("r2", "p1", FP_A, "client", "198.51.100.1", 3001, "k"),
        {**INVITE_WIRE, "candidates": [], "peer_fingerprint": None},
    ),
    (
        m.TunnelInvite("r2", "p1", FP_A, "client", "198.51.100.1", 3001, "k", (C4, C6), FP_B),
        {**INVITE_WIRE, "candidates": CANDIDATES_WIRE, "peer_fingerprint": FP_B},
    ),
    (
        m.RouteReport("r2", "direct"),
        {"type": "route-report", "request_id": "r2", "route": "direct"},
    ),
    (m.RouteReport("r2", "relay"), {"type": "route-report", "request_id": "r2", "route": "relay"}),
    *_refusals(m.TunnelErrorMessage),
    (
        m.ErrorMessage("invalid_json", "bad"),
        {"type": "error", "code": "invalid_json", "message": "bad"},
    ),
    (m.ErrorMessage("x", ""), {"type": "error", "code": "x", "message": ""}),
]


def compact(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def test_every_message_type_has_its_wire_samples() -> None:
    assert {message.TYPE for message, _ in WIRE} == set(m.MESSAGE_TYPES)


@pytest.mark.parametrize(("message", "wire"), WIRE, ids=lambda v: getattr(v, "TYPE", ""))
def test_encode_gives_the_wire_text_key_for_key(message: m.Message, wire: dict[str, Any]) -> None:
    assert message.encode() == compact(wire)
    assert list(message.dump()) == list(wire)


@pytest.mark.parametrize(("message", "wire"), WIRE, ids=lambda v: getattr(v, "TYPE", ""))
def test_parse_reads_the_wire_form_back(message: m.Message, wire: dict[str, Any]) -> None:
    assert m.parse(wire) == message
    assert m.parse(compact(wire).encode()) == message


ABSENT: list[tuple[dict[str, Any], m.Message]] = [
    # fields the wire may leave out read as their defaults
    ({"type": "hello"}, m.Hello()),
    ({"type": "hello", "peer_id": "p", "token": "t"}, m.Hello(peer_id="p", token="t")),
    ({"type": "hello", "peer_id": None, "token": None, "last_seq": None}, m.Hello()),
    (INVITE_WIRE, m.TunnelInvite("r2", "p1", FP_A, "client", "198.51.100.1", 3001, "k")),
    ({**INVITE_WIRE, "candidates": None, "peer_fingerprint": None}, m.parse(INVITE_WIRE)),
    ({"type": "stream-error", "request_id": "r", "code": "c"}, m.StreamError("r", "c", "")),
    ({"type": "error", "code": "c"}, m.ErrorMessage("c", "")),
    (
        {
            "type": "peer-joined",
            "seq": 1,
            "peer": {k: v for k, v in BARE_PEER_WIRE.items() if v is not None and v != []},
        },
        m.PeerJoined(1, BARE_PEER),
    ),
]


@pytest.mark.parametrize(("wire", "message"), ABSENT)
def test_absent_optional_fields_read_as_their_defaults(
    wire: dict[str, Any], message: m.Message
) -> None:
    assert m.parse(wire) == message


#: the fullest sample of each type, to break one field of
FULL: dict[str, dict[str, Any]] = {wire["type"]: wire for _, wire in WIRE}


def _with(kind: str, **fields: Any) -> dict[str, Any]:
    """The full *kind* frame with *fields* replaced (``from_`` stands for ``from``)."""
    return {**FULL[kind], **{key.removesuffix("_"): value for key, value in fields.items()}}


def _without(kind: str, key: str) -> dict[str, Any]:
    return {k: v for k, v in FULL[kind].items() if k != key}


def _peer(**fields: Any) -> dict[str, Any]:
    return _with("peer-joined", peer={**FULL_PEER_WIRE, **fields})


ID_TEXT = "must be a string of 1-128 characters"
FINGERPRINT = "must be 'sha256:' and 64 lowercase hex digits"
EITHER = "give either 'to' or 'from', not both"
REFUSAL_TEXT = "'message' must be a string of at most 1024 characters"
DIRECT_LIST = "'direct' must be a list of at most 8 {host, port} objects"
LOCAL_NAME = "'direct.host' must be an IP address literal"
NINE = [{"host": "10.0.0.1", "port": p} for p in range(1, 10)]

#: one fault each: (what is wrong, the frame, the error message sent back)
BAD_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("text absent", _without("tunnel-request", "request_id"), f"'request_id' {ID_TEXT}"),
    ("text not a string", _with("tunnel-request", request_id=5), f"'request_id' {ID_TEXT}"),
    ("text empty", _with("tunnel-request", request_id=""), f"'request_id' {ID_TEXT}"),
    ("text null", _with("tunnel-request", to=None), f"'to' {ID_TEXT}"),
    (
        "text too long",
        _with("stream-request", path="x" * 4097),
        "'path' must be a string of 1-4096 characters",
    ),
    ("optional text not a string", _with("hello", peer_id=7), f"'peer_id' {ID_TEXT}"),
    (
        "optional text too long",
        _with("hello", token="t" * 513),
        "'token' must be a string of 1-512 characters",
    ),
    ("integer absent", _without("peer-left", "seq"), "'seq' must be an integer >= 0"),
    ("integer a string", _with("hello", last_seq="1"), "'last_seq' must be an integer >= 0"),
    ("integer a bool", _with("hello", last_seq=True), "'last_seq' must be an integer >= 0"),
    ("integer negative", _with("hello", last_seq=-1), "'last_seq' must be an integer >= 0"),
    ("integer a float", _with("peer-left", seq=1.0), "'seq' must be an integer >= 0"),
    ("port zero", _with("file-stream-ready", port=0), "'port' must be an integer >= 1"),
    (
        "port too high",
        _with("tunnel-invite", port=65536),
        "'port' must be an integer between 1 and 65535",
    ),
    ("size negative", _with("file-stream-ready", size=-1), "'size' must be an integer >= 0"),
    (
        "number a string",
        _with("file-stream-ready", expires_in="soon"),
        "'expires_in' must be a number >= 0",
    ),
    (
        "number negative",
        _with("file-stream-ready", expires_in=-0.5),
        "'expires_in' must be a number >= 0",
    ),
    (
        "number a bool",
        _with("file-stream-ready", expires_in=False),
        "'expires_in' must be a number >= 0",
    ),
    (
        "number absent",
        _without("file-stream-ready", "expires_in"),
        "'expires_in' must be a number >= 0",
    ),
    ("reason", _with("peer-left", reason="bored"), "'reason' must be 'left' or 'expired'"),
    ("role", _with("tunnel-invite", role="both"), "'role' must be 'client' or 'server'"),
    ("route", _with("route-report", route=None), "'route' must be 'direct' or 'relay'"),
    (
        "fingerprint absent",
        _without("tunnel-invite", "fingerprint"),
        f"'fingerprint' {FINGERPRINT}",
    ),
    (
        "fingerprint upper case",
        _with("tunnel-invite", fingerprint=FP_A.upper()),
        f"'fingerprint' {FINGERPRINT}",
    ),
    (
        "optional fingerprint",
        _with("tunnel-invite", peer_fingerprint="sha1:0"),
        f"'peer_fingerprint' {FINGERPRINT}",
    ),
    ("peer fingerprint", _peer(fingerprint=7), f"'fingerprint' {FINGERPRINT}"),
    ("both directions", _with("stream-request", to="a"), EITHER),
    ("no direction", _without("file-stream-ready", "from"), "'to' is required"),
    ("both directions, refusal", _with("stream-error", to="b"), EITHER),
    ("direction not a string", _with("stream-error", from_=3), f"'from' {ID_TEXT}"),
    ("hello without token", _without("hello", "token"), "'peer_id' and 'token' go together"),
    ("hello without peer_id", _without("hello", "peer_id"), "'peer_id' and 'token' go together"),
    ("refusal text", _with("stream-error", message=3), REFUSAL_TEXT),
    ("refusal text too long", _with("tunnel-error", message="x" * 1025), REFUSAL_TEXT),
    ("refusal text null", _with("tunnel-error", message=None), REFUSAL_TEXT),
    (
        "refusal code absent",
        _without("tunnel-error", "code"),
        "'code' must be a string of 1-64 characters",
    ),
    ("error text", _with("error", message=["x"]), "'message' must be a string"),
    (
        "error code too long",
        _with("error", code="c" * 65),
        "'code' must be a string of 1-64 characters",
    ),
    ("peer not an object", _with("peer-joined", peer="p"), "'peer' must be an object"),
    ("peer absent", _without("peer-updated", "peer"), "'peer' must be an object"),
    ("peers not a list", _with("snapshot", peers={}), "'peers' must be a list"),
    ("peers item not an object", _with("snapshot", peers=[1]), "'peer' must be an object"),
    ("peer_server not an object", _peer(peer_server=[1]), "'peer_server' must be an object"),
    (
        "peer_server host absent",
        _peer(peer_server={"port": 1}),
        "'host' must be a string of 1-253 characters",
    ),
    (
        "peer_server port",
        _peer(peer_server={"host": "h", "port": 70000}),
        "'port' must be an integer between 1 and 65535",
    ),
    ("peer name too long", _peer(name="n" * 65), "'name' must be a string of 1-64 characters"),
    ("capabilities not an object", _peer(capabilities=[]), "'capabilities' must be an object"),
    (
        "registered_at empty",
        _peer(registered_at=""),
        "'registered_at' must be a string of 1-64 characters",
    ),
    ("direct not a list", _peer(direct={}), DIRECT_LIST),
    ("direct too many", _peer(direct=NINE), DIRECT_LIST),
    (
        "direct item not an object",
        _peer(direct=["10.0.0.1:80"]),
        "'direct' must be an object {host, port}",
    ),
    ("direct host a name", _peer(direct=[{"host": "example.com", "port": 1}]), LOCAL_NAME),
    ("direct host scoped", _peer(direct=[{"host": "fe80::1%eth0", "port": 1}]), LOCAL_NAME),
    (
        "direct port a bool",
        _peer(direct=[{"host": "10.0.0.1", "port": True}]),
        "'direct.port' must be an integer >= 1",
    ),
    ("reflexive not an object", _peer(reflexive=5), "'reflexive' must be an object {host, port}"),
    (
        "reflexive host not text",
        _peer(reflexive={"host": 1, "port": 1}),
        "'reflexive.host' must be a string of 1-64 characters",
    ),
    (
        "candidates port zero",
        _with("tunnel-invite", candidates=[{"host": "10.0.0.1", "port": 0}]),
        "'candidates.port' must be an integer >= 1",
    ),
]


@pytest.mark.parametrize(
    ("frame", "message"), [c[1:] for c in BAD_FIELDS], ids=[c[0] for c in BAD_FIELDS]
)
def test_each_kind_of_bad_field_gets_its_error(frame: dict[str, Any], message: str) -> None:
    with pytest.raises(m.ProtocolError) as caught:
        m.parse(frame)
    assert (caught.value.code, caught.value.message) == ("invalid_field", message)
    assert caught.value.reply == m.ErrorMessage("invalid_field", message)


@pytest.mark.parametrize(
    ("frame", "code", "message"),
    [
        ({"type": "bogus"}, "unknown_type", "unknown message type 'bogus'"),
        ({"type": 3}, "unknown_type", "unknown message type 3"),
        ("[1]", "invalid_message", "the message must be a JSON object"),
        ("{", "invalid_json", "the message is not valid JSON"),
        (
            '{"type":"error","code":"c","message":"\\ud800"}',
            "invalid_json",
            "the message has a lone surrogate escape",
        ),
    ],
)
def test_frames_that_are_not_messages(frame: Any, code: str, message: str) -> None:
    with pytest.raises(m.ProtocolError) as caught:
        m.parse(frame)
    assert (caught.value.code, caught.value.message) == (code, message)


def test_an_unknown_type_is_quoted_within_the_message_bound() -> None:
    with pytest.raises(m.ProtocolError) as caught:
        m.parse({"type": "x" * 2000})
    assert len(caught.value.message) == m.MAX_MESSAGE_CHARS


def test_secrets_stay_out_of_reprs() -> None:
    assert "secret" not in repr(m.Hello(last_seq=1, peer_id="p", token="secret"))
    invite = m.TunnelInvite("r", "p", FP_A, "client", "h", 1, "the-key")
    assert "the-key" not in repr(invite) and "'r'" in repr(invite)


# -- the codec on a record of its own ----------------------------------------------


@dataclass(frozen=True)
class _Toy:
    name: str = field(metadata=wire_codec.text(8))
    from_: str | None = field(default=None, metadata=wire_codec.text(8, omit_none=True))
    low: int = field(default=0, metadata=wire_codec.integer(1, 9, within="box"))
    high: int | None = field(default=None, metadata=wire_codec.integer(optional=True, within="box"))
    local: str = "not on the wire"


def test_the_codec_writes_fields_in_order_nested_and_left_off() -> None:
    toy = _Toy("a", "b", 2, None, local="kept")
    assert wire_codec.dump_fields(toy) == {
        "name": "a",
        "from": "b",
        "box": {"low": 2, "high": None},
    }
    assert list(wire_codec.dump_fields(_Toy("a", low=1))) == ["name", "box"]
    assert _Toy(**wire_codec.read_fields(_Toy, wire_codec.dump_fields(toy))) == _Toy("a", "b", 2)


def test_the_codec_reports_the_first_bad_field_in_declaration_order() -> None:
    with pytest.raises(m.ProtocolError, match="'name'"):
        wire_codec.read_fields(_Toy, {"name": "", "box": {"low": 0}})
    with pytest.raises(m.ProtocolError, match="'box' must be an object"):
        wire_codec.read_fields(_Toy, {"name": "a", "box": 1})
    with pytest.raises(m.ProtocolError, match="'low' must be an integer between 1 and 9"):
        wire_codec.read_fields(_Toy, {"name": "a", "box": {"low": 10, "high": -1}})
    assert wire_codec.read_fields(_Toy, {"name": "a", "from": None, "box": {"low": 1}}) == {
        "name": "a",
        "from_": None,
        "low": 1,
        "high": None,
    }


def test_the_readers_return_their_own_types() -> None:
    """``assert_type`` is checked by mypy: a reader returning ``Any`` fails it."""
    data: dict[str, Any] = {"s": "x", "i": 3, "n": 1.5, "o": {}, "f": FP_A, "c": "client"}
    assert assert_type(wire_codec.read_str(data, "s", max_chars=1), str) == "x"
    assert assert_type(wire_codec.read_int(data, "i", low=1, high=3), int) == 3
    assert assert_type(wire_codec.read_number(data, "n"), float | int) == 1.5
    assert assert_type(wire_codec.read_object(data, "o"), dict[str, Any]) == {}
    assert assert_type(wire_codec.read_fingerprint(data, "f"), str | None) == FP_A
    assert assert_type(wire_codec.read_required_fingerprint(data, "f"), str) == FP_A
    assert assert_type(wire_codec.read_choice(data, "c", ("client",)), str) == "client"
    assert assert_type(wire_codec.read_note(data, "absent"), str) == ""
    assert assert_type(m.read_candidates(data, "absent"), tuple[m.Candidate, ...]) == ()

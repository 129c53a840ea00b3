"""Request bodies of the tracker's HTTP API, checked before anything changes.

The field rules are the wire protocol's own readers
(:mod:`flashback.protocol.wire`: ``read_str``, ``read_int``,
``read_fingerprint``...), so a name, host, port or fingerprint means the same
in a registration as in a PEER on the feed. This module only adds what a
registration alone asks (a printable name, a real host, the capabilities
budget) and turns a :class:`~flashback.protocol.messages.ProtocolError` into
the HTTP answer: bad JSON is 400, a body of the wrong shape or a field out of
range is 422 (too large, 413, is the app's body cap) -- each a
:class:`~flashback.errors.FlashbackError`, so never a 500.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from flashback.errors import BadRequest, InvalidField
from flashback.protocol.hosts import MAX_HOST_CHARS, is_valid_host
from flashback.protocol.messages import MAX_ID_CHARS, MAX_NAME_CHARS, Candidate, read_candidates
from flashback.protocol.tunnel import dialable
from flashback.protocol.wire import (
    ProtocolError,
    decode_object,
    read_fingerprint,
    read_int,
    read_object,
    read_str,
)

MAX_BODY_BYTES: Final = 64 * 1024
MAX_CAPABILITIES_BYTES: Final = 4 * 1024
_BODY: Final = "the request body"


@dataclass(frozen=True)
class RegisterBody:
    """A checked ``POST /api/peers/register`` body (what the daemon gets back is
    :class:`flashback.daemon.tracker_api.Registration`)."""

    name: str
    host: str
    port: int
    capabilities: dict[str, Any]
    peer_id: str | None
    fingerprint: str | None = None
    #: its direct endpoint on each non-loopback local address (§10.2)
    direct: tuple[Candidate, ...] = ()


@contextmanager
def _http_errors() -> Iterator[None]:
    try:
        yield
    except ProtocolError as exc:
        if exc.code == "invalid_json":
            raise BadRequest(exc.message, code="invalid_json") from None
        raise InvalidField(exc.message) from None


def json_object(body: bytes) -> dict[str, Any]:
    with _http_errors():
        return decode_object(body, what=_BODY)


def peer_id_field(data: dict[str, Any]) -> str:
    with _http_errors():
        return read_str(data, "peer_id", max_chars=MAX_ID_CHARS)


def registration(body: bytes) -> RegisterBody:
    with _http_errors():
        data = decode_object(body, what=_BODY)
        name = read_str(data, "name", max_chars=MAX_NAME_CHARS)
        if "peer_server" not in data or not isinstance(data["peer_server"], dict):
            raise InvalidField("'peer_server' must be an object with 'host' and 'port'")
        server = data["peer_server"]
        host = read_str(server, "host", max_chars=MAX_HOST_CHARS, label="peer_server.host")
        port = read_int(server, "port", low=1, high=65535, label="peer_server.port")
        capabilities = read_object(data, "capabilities") if "capabilities" in data else {}
        peer_id = None if data.get("peer_id") is None else peer_id_field(data)
        fingerprint = read_fingerprint(data)
        direct = read_candidates(data, "direct")
    if not name.isprintable():
        raise InvalidField("'name' must be printable characters")
    if not is_valid_host(host):
        raise InvalidField("'peer_server.host' must be a host name (RFC 1123) or an IP address")
    encoded = json.dumps(capabilities, ensure_ascii=False, separators=(",", ":"))
    if len(encoded.encode()) > MAX_CAPABILITIES_BYTES:
        raise InvalidField(f"'capabilities' must be at most {MAX_CAPABILITIES_BYTES} bytes")
    # dropped rather than refused: the rest of a registration is still good
    direct = tuple(c for c in direct if dialable(c))
    return RegisterBody(name, host, port, capabilities, peer_id, fingerprint, direct)

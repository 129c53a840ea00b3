"""Request bodies of the tracker's HTTP API, checked before anything changes.

Bad JSON is 400, a body of the wrong shape or a field out of range is 422,
too large is 413 -- each a :class:`~flashback.errors.FlashbackError`, so the
answer is always the contract's JSON error, never a 500.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from flashback.errors import BadRequest, InvalidField
from flashback.protocol.fingerprint import is_fingerprint
from flashback.protocol.hosts import is_valid_host
from flashback.protocol.strict_json import loads_strict

MAX_BODY_BYTES: Final = 64 * 1024
MAX_CAPABILITIES_BYTES: Final = 4 * 1024
MAX_NAME_CHARS: Final = 64
MAX_HOST_CHARS: Final = 253
MAX_PEER_ID_CHARS: Final = 128


@dataclass(frozen=True)
class Registration:
    name: str
    host: str
    port: int
    capabilities: dict[str, Any]
    peer_id: str | None
    fingerprint: str | None = None


def json_object(body: bytes) -> dict[str, Any]:
    try:
        data = loads_strict(body)
    except (ValueError, RecursionError):
        raise BadRequest("the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidField("the request body must be a JSON object")
    if not is_valid_unicode(data):
        raise BadRequest("the request body has a lone surrogate escape", code="invalid_json")
    return data


def is_valid_unicode(data: Any) -> bool:
    """False when JSON escapes smuggled in lone surrogates, which UTF-8 cannot carry."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string(data: dict[str, Any], key: str, *, max_chars: int, label: str = "") -> str:
    value = data.get(key)
    label = label or key
    if not isinstance(value, str):
        raise InvalidField(f"{label!r} must be a string")
    if not 1 <= len(value) <= max_chars:
        raise InvalidField(f"{label!r} must be 1-{max_chars} characters long")
    return value


def peer_id_field(data: dict[str, Any]) -> str:
    return _string(data, "peer_id", max_chars=MAX_PEER_ID_CHARS)


def registration(body: bytes) -> Registration:
    data = json_object(body)
    name = _string(data, "name", max_chars=MAX_NAME_CHARS)
    if not name.isprintable():
        raise InvalidField("'name' must be printable characters")
    server = data.get("peer_server")
    if not isinstance(server, dict):
        raise InvalidField("'peer_server' must be an object with 'host' and 'port'")
    host = _string(server, "host", max_chars=MAX_HOST_CHARS, label="peer_server.host")
    if not is_valid_host(host):
        raise InvalidField("'peer_server.host' must be a host name (RFC 1123) or an IP address")
    port = server.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidField("'peer_server.port' must be an integer between 1 and 65535")
    capabilities = data.get("capabilities", {})
    if not isinstance(capabilities, dict):
        raise InvalidField("'capabilities' must be an object")
    encoded = json.dumps(capabilities, ensure_ascii=False, separators=(",", ":"))
    if len(encoded.encode()) > MAX_CAPABILITIES_BYTES:
        raise InvalidField(f"'capabilities' must be at most {MAX_CAPABILITIES_BYTES} bytes")
    peer_id = None if data.get("peer_id") is None else peer_id_field(data)
    fingerprint = data.get("fingerprint")
    if fingerprint is not None and not is_fingerprint(fingerprint):
        raise InvalidField("'fingerprint' must be 'sha256:' and 64 lowercase hex digits")
    return Registration(name, host, port, capabilities, peer_id, fingerprint)

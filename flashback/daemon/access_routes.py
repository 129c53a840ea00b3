"""The control socket's access routes (docs/INTERFACE.md §11), for ``allow``/``deny``/``forget``.

``GET /access`` (mode, lists, counters, recent refusals); ``POST
/access/allow`` and ``/access/deny`` with ``{"peer": PEER}`` (a peer id, a
name, or a full ``sha256:`` fingerprint); ``POST /access/remove`` with
``{"list": "allowed"|"denied", "fingerprint"}``; ``POST /access/forget``
with ``{"peer"}`` (the owner-side requester pins). Each answers the entry
(or entries) it changed; a name several peers have is ``409
ambiguous_peer`` naming them.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from flashback.daemon.access import AccessControl
from flashback.errors import BackendUnavailable, BadRequest
from flashback.protocol.strict_json import loads_strict
from flashback.web import json_response

MAX_KEY_CHARS = 128


def peer_key(body: object, field: str = "peer") -> str:
    if not isinstance(body, dict):
        raise BadRequest(f'expected a JSON object {{"{field}": str}}', code="invalid_json")
    key = body.get(field)
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable():
        raise BadRequest(f'"{field}" must be a peer id, a name or a sha256: fingerprint')
    return key


def install_access_routes(app: QuartTrio, access: AccessControl | None) -> None:
    def gate() -> AccessControl:
        if access is None:
            raise BackendUnavailable("this daemon has no access lists", code="no_access")
        return access

    async def body() -> Any:
        raw = await request.get_data(as_text=False)
        try:
            return loads_strict(raw if isinstance(raw, bytes) else raw.encode())
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the body is not JSON", code="invalid_json") from None

    @app.get("/access")
    async def access_status() -> Response:
        return json_response({**gate().status(), "recent": gate().recent()})

    @app.post("/access/allow")
    async def allow() -> Response:
        return json_response({"allowed": asdict(gate().allow(peer_key(await body())))})

    @app.post("/access/deny")
    async def deny() -> Response:
        return json_response({"denied": asdict(gate().deny(peer_key(await body())))})

    @app.post("/access/remove")
    async def remove() -> Response:
        raw = await body()
        which = peer_key(raw, "list")
        entry = gate().remove(which, peer_key(raw, "fingerprint"))
        return json_response({"removed": asdict(entry), "list": which})

    @app.post("/access/forget")
    async def forget() -> Response:
        removed = gate().forget(peer_key(await body()))
        return json_response({"forgotten": [asdict(pin) for pin in removed]})

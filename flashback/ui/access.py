"""The UI's "who can connect" page (docs/INTERFACE.md §11): refusals, allow, remove.

Routes: ``GET /access`` (the page), ``GET /api/access`` (mode, lists, recent
refusals as JSON), ``POST /api/access/allow`` ``{"fingerprint"}`` and ``POST
/api/access/remove`` ``{"list": "allowed"|"denied", "fingerprint"}``.

Every state-changing route is POST, needs the UI token cookie (the app's
``before_request``), and is refused with 403 JSON when the request comes
from another site: a foreign ``Origin`` (or ``Sec-Fetch-Site: cross-site``),
or a ``Host`` that is not this UI's own ``127.0.0.1:port``/``localhost:port``
-- the mark of DNS rebinding, where a page of evil.example re-points its
name at 127.0.0.1. :func:`cross_site_refusal` is that rule, pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Protocol

from quart import Response, render_template, request
from quart_trio import QuartTrio

from flashback.errors import BackendUnavailable, BadRequest, Forbidden
from flashback.protocol.fingerprint import is_fingerprint
from flashback.protocol.strict_json import loads_strict
from flashback.web import json_response

LOCAL_NAMES: Final = ("127.0.0.1", "localhost")
LISTS: Final = ("allowed", "denied")


class AccessView(Protocol):
    """What the page reads and changes: the daemon's gate and its lists."""

    def status(self) -> dict[str, Any]: ...

    def recent(self) -> list[dict[str, Any]]: ...

    def allow(self, key: str) -> object: ...

    def remove(self, which: str, fingerprint: str) -> object: ...


class HasAccess(Protocol):
    @property
    def access(self) -> AccessView | None: ...


def cross_site_refusal(headers: Mapping[str, str], own_port: int | None) -> str | None:
    """Why a state-changing request must be refused (None: it comes from this UI).

    *headers* lower-cased; *own_port* the port this UI listens on.
    """
    if own_port is None:
        return "this UI does not know its own address"
    own = {f"{name}:{own_port}" for name in LOCAL_NAMES}
    host = headers.get("host", "").lower()
    if host not in own:
        return f"Host {host[:80]!r} is not this UI's address"
    origin = headers.get("origin")
    if origin is not None and origin.lower() not in {f"http://{h}" for h in own}:
        return f"Origin {origin[:80]!r} is another site"
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return "the browser says this request comes from another site"
    return None


async def _json_body() -> Any:
    """The request's JSON, or a 400 (bytes that are not UTF-8 JSON are bad input)."""
    raw = await request.get_data(as_text=False)
    try:
        return loads_strict(raw if isinstance(raw, bytes) else raw.encode())
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON", code="invalid_json") from None


def _fingerprint(body: Any) -> str:
    value = body.get("fingerprint") if isinstance(body, dict) else None
    if not is_fingerprint(value):
        raise BadRequest('"fingerprint" must be a full sha256: fingerprint', code="bad_fingerprint")
    return str(value)


def install_access_pages(app: QuartTrio, ctx: HasAccess) -> None:
    def gate() -> AccessView:
        if ctx.access is None:
            raise BackendUnavailable("this daemon has no access lists", code="no_access")
        return ctx.access

    def refuse_cross_site() -> None:
        server = request.scope.get("server")
        port = server[1] if isinstance(server, tuple | list) and len(server) == 2 else None
        headers = {name.lower(): value for name, value in request.headers.items()}
        reason = cross_site_refusal(headers, port if isinstance(port, int) else None)
        if reason is not None:
            raise Forbidden(f"refused: {reason}", code="cross_site")

    def state() -> dict[str, Any]:
        return {**gate().status(), "recent": gate().recent()}

    @app.get("/access")
    async def access_page() -> str:
        return await render_template("access.html", state=state() if ctx.access else None)

    @app.get("/api/access")
    async def access_json() -> Response:
        return json_response(state())

    @app.post("/api/access/allow")
    async def allow() -> Response:
        refuse_cross_site()
        gate().allow(_fingerprint(await _json_body()))
        return json_response(state())

    @app.post("/api/access/remove")
    async def remove() -> Response:
        refuse_cross_site()
        body = await _json_body()
        which = body.get("list") if isinstance(body, dict) else None
        if which not in LISTS:
            raise BadRequest('"list" must be "allowed" or "denied"')
        gate().remove(str(which), _fingerprint(body))
        return json_response(state())

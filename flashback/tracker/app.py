"""The tracker's routes (CONTRACT.md §2) as a quart-trio app.

Thin on purpose: parse and check the request (:mod:`.validate`), call the
:class:`~flashback.tracker.service.Tracker`, answer JSON. Errors of every
kind leave as the contract's JSON body through :func:`install_json_errors`.
"""

from __future__ import annotations

from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestEntityTooLarge

from flashback.errors import PayloadTooLarge
from flashback.tracker import validate
from flashback.tracker.metrics import CONTENT_TYPE
from flashback.tracker.service import Tracker
from flashback.web import install_json_errors, json_response


async def _body() -> bytes:
    try:
        return await request.get_data(as_text=False)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(
            f"the request body must be at most {validate.MAX_BODY_BYTES} bytes"
        ) from None


def create_app(tracker: Tracker) -> QuartTrio:
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = validate.MAX_BODY_BYTES
    install_json_errors(app)

    @app.post("/api/peers/register")
    async def register() -> Response:
        registration = validate.registration(await _body())
        client = request.remote_addr or "unknown"
        answer = await tracker.register(registration, request.headers, client)
        return json_response(answer, status=201)

    @app.post("/api/peers/heartbeat")
    async def heartbeat() -> Response:
        peer_id = validate.peer_id_field(validate.json_object(await _body()))
        return json_response(tracker.heartbeat(peer_id, request.headers))

    @app.delete("/api/peers/<peer_id>")
    async def leave(peer_id: str) -> Response:
        await tracker.leave(peer_id, request.headers)
        return Response(b"", status=204)

    @app.get("/api/peers/list")
    async def peer_list() -> Response:
        return json_response(tracker.peer_list())

    @app.get("/api/relay/status")
    async def status() -> Response:
        return json_response(tracker.status())

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(tracker.metrics.render(), status=200, content_type=CONTENT_TYPE)

    @app.websocket("/api/peers/ws")
    async def link() -> None:
        await tracker.serve_link(websocket)  # type: ignore[arg-type]

    return app

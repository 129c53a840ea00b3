"""The tracker's routes (docs/INTERFACE.md §2) as a quart-trio app.

Thin on purpose: parse and check the request (:mod:`.validate`), call the
:class:`~flashback.tracker.service.Tracker`, answer JSON. Errors of every
kind leave as the contract's JSON body through :func:`install_json_errors`.
``GET /`` is a JSON 404 for API clients and a short HTML page for a browser.
"""

from __future__ import annotations

from typing import Any, Final

from quart import Response, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import RequestEntityTooLarge

from flashback import __version__
from flashback.errors import FlashbackError, NotFound, PayloadTooLarge, encode_json
from flashback.protocol.negotiate import prefers_html
from flashback.tracker import validate
from flashback.tracker.front import FRONT_CSP, front_page
from flashback.tracker.listing import LIST_PATH, PeerListCache, PeerListSender
from flashback.tracker.metrics import CONTENT_TYPE
from flashback.tracker.security import bearer_token
from flashback.tracker.service import Tracker
from flashback.web import JSON_MIMETYPE, install_json_errors, json_response


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body must be at most {validate.MAX_BODY_BYTES} bytes")


async def _body() -> bytes:
    try:
        return await request.get_data(cache=True, as_text=False, parse_form_data=False)
    except RequestEntityTooLarge:
        raise _too_large() from None


HEARTBEAT_PATH: Final = "/api/peers/heartbeat"


class HeartbeatFastPath:
    """ASGI wrapper answering ``POST /api/peers/heartbeat`` without Quart.

    Heartbeats are most of the tracker's HTTP traffic (every peer, every
    interval) and Quart's request machinery costs more than the heartbeat
    itself; the answers, errors included, are the same bytes Quart would send.
    Everything else goes to the Quart app.
    """

    def __init__(self, app: QuartTrio, tracker: Tracker) -> None:
        self.app = app
        self.tracker = tracker
        config = tracker.config
        cache = PeerListCache(tracker.peer_list, lambda: tracker.presence.seq, tracker.now)
        # the peer list, too, has its own raw path: see listing.py
        self.lists = PeerListSender(cache, config.max_send_bytes, config.max_peer_list_bytes)
        # the last 200 answer, encoded: heartbeats answer the same body every time
        self._ok_payload: dict[str, Any] | None = None
        self._ok_answer: tuple[bytes, list[tuple[bytes, bytes]]] = (b"", [])

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == LIST_PATH and scope["method"] == "GET":
            await self.lists.serve(scope, send)
            return
        if scope["type"] != "http" or scope["path"] != HEARTBEAT_PATH or scope["method"] != "POST":
            # Quart types scope/receive/send as hypercorn's TypedDicts; ours are plain ASGI dicts.
            await self.app(scope, receive, send)  # type: ignore[arg-type]
            return
        status, payload, headers = await self._answer(scope, receive)
        if status == 200 and payload == self._ok_payload:
            body, cached = self._ok_answer  # the same every time for one config
            raw_headers = list(cached)
        else:
            body = encode_json(payload)
            raw_headers = [
                (b"content-type", JSON_MIMETYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in headers.items()),
            ]
            if status == 200 and not headers:
                self._ok_payload, self._ok_answer = payload, (body, raw_headers)
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(
        self, scope: dict[str, Any], receive: Any
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        try:
            body = await _read_body(receive)
            headers = {"Authorization": ""}
            for name, value in scope["headers"]:
                if name == b"authorization":
                    headers["Authorization"] = value.decode("latin-1")
            if bearer_token(headers) is None:
                del headers["Authorization"]
            peer_id = validate.peer_id_field(validate.json_object(body))
            return 200, await self.tracker.heartbeat(peer_id, headers), {}
        except FlashbackError as error:
            return error.status, error.to_json(), error.headers()


async def _read_body(receive: Any) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > validate.MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _address(raw: Any) -> tuple[str, int] | None:
    """An ASGI scope's ``client``/``server`` pair, if it is one."""
    if isinstance(raw, list | tuple) and len(raw) == 2:
        return str(raw[0]), int(raw[1])
    return None


def create_asgi_app(tracker: Tracker) -> HeartbeatFastPath:
    """The app Hypercorn serves: the heartbeat fast path in front of Quart."""
    return HeartbeatFastPath(create_app(tracker), tracker)


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
        return json_response(await tracker.heartbeat(peer_id, request.headers))

    @app.delete("/api/peers/<peer_id>")
    async def leave(peer_id: str) -> Response:
        await tracker.leave(peer_id, request.headers)
        return Response(b"", status=204)

    @app.get("/")
    async def front() -> Response:
        # an API client keeps the JSON 404 of every unknown route; a browser gets a page
        if not prefers_html(request.headers.get("accept")):
            raise NotFound("the tracker's routes are under /api/ (and /metrics)")
        response = Response(front_page(__version__), mimetype="text/html")
        response.headers["Content-Security-Policy"] = FRONT_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/api/peers/list")
    async def peer_list() -> Response:
        return json_response(await tracker.peer_list())

    @app.get("/api/relay/status")
    async def status() -> Response:
        return json_response(tracker.status())

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(tracker.metrics.render(), status=200, content_type=CONTENT_TYPE)

    @app.websocket("/api/peers/ws")
    async def link() -> None:
        scope = websocket.scope
        await tracker.serve_link(
            websocket,
            host_header=websocket.headers.get("Host"),
            client=_address(scope.get("client")),
            server=_address(scope.get("server")),
        )

    return app

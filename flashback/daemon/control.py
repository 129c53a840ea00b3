"""The daemon's local control API, on a Unix socket in the state directory.

Only the same user can reach it: the state directory is 0700 and the socket
0600. Nothing on the peer server's TCP port controls the daemon.

Routes (HTTP/1.1 over the socket):
``GET /status``, ``GET /peers`` (the tracker list shape, merged with LAN and
peer-book peers, each row with its ``source``, §12), ``GET /ui`` (the
web UI's URL with its token), ``GET /events``
(newline-delimited JSON, one event per line, for ``peers --watch``; with
``?snapshot=1`` the first line is ``{"event": "peers-snapshot", ...}``), and
``POST /stream`` (ask a peer for a dedicated streaming port), and ``POST
/connect`` (a URL that reaches a peer, direct or through a tunnel; with
``"hold": true`` the answer streams and the forward lives while it is open);
``/access...`` (who may connect, :mod:`flashback.daemon.access_routes`).
"""

from __future__ import annotations

import json
from typing import Any

import trio
from quart import Response, request
from quart_trio import QuartTrio

from flashback.daemon.access_routes import install_access_routes
from flashback.daemon.connect import connect_peer, hold_lines, parse_connect_body
from flashback.daemon.context import DaemonContext
from flashback.daemon.directory import PeerDirectory
from flashback.daemon.stream_request import parse_stream_body, request_stream
from flashback.web import StreamedBody, install_json_errors, json_response


class EventStream(StreamedBody):
    """NDJSON lines from a hub subscription; unsubscribes when the client leaves."""

    def __init__(self, ctx: DaemonContext, *, snapshot: bool) -> None:
        self._ctx = ctx
        self._receive = ctx.hub.subscribe()
        self._pending: list[bytes] = []
        if snapshot:
            first = {"event": "peers-snapshot", **ctx.table.snapshot()}
            self._pending.append(_line(first))

    async def aclose(self) -> None:
        await self._receive.aclose()
        self._ctx.hub.unsubscribe_closed()

    async def __anext__(self) -> bytes:
        if self._pending:
            return self._pending.pop(0)
        try:
            event = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        return _line(event)


def _line(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, ensure_ascii=False) + "\n").encode("utf-8")


def create_control_app(ctx: DaemonContext) -> QuartTrio:
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    app.config["RESPONSE_TIMEOUT"] = None
    install_json_errors(app)
    install_access_routes(app, ctx.access)

    @app.get("/status")
    async def status() -> Response:
        return json_response(ctx.status())

    @app.get("/peers")
    async def peers() -> Response:
        return json_response(PeerDirectory(ctx).listing())

    @app.get("/ui")
    async def ui() -> Response:
        return json_response({"url": ctx.ui_url})

    @app.get("/events")
    async def events() -> Response:
        body = EventStream(ctx, snapshot=request.args.get("snapshot") == "1")
        response = Response(body, mimetype="application/x-ndjson")
        response.timeout = None
        return response

    @app.post("/connect")
    async def connect() -> Response:
        wanted = parse_connect_body(await request.get_json(force=True, silent=True))
        answer = await connect_peer(ctx, wanted)
        if not wanted.hold:
            return json_response(answer)
        response = Response(hold_lines(ctx, answer, wanted), mimetype="application/x-ndjson")
        response.timeout = None
        return response

    @app.post("/stream")
    async def stream() -> Response:
        peer, path = parse_stream_body(await request.get_json(force=True, silent=True))
        return json_response(await request_stream(ctx, peer, path))

    return app

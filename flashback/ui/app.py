"""The UI's Quart app: pages, the live event stream, and the peer proxy.

Routes (all behind the access token, see :mod:`flashback.ui.auth`):
``GET /`` the peer list; ``GET /events`` server-sent events (a snapshot,
then joins, leaves and tracker-link changes); ``GET /api/peers`` the same
list as JSON; ``GET /p/<peer>/browse/<dir>`` a folder (``?cursor=`` pages);
``GET /p/<peer>/view/<file>`` a file; ``GET /p/<peer>/content/<file>`` and
``/download/<file>`` streamed from the peer with ``Range``; ``/access`` who may
connect (:mod:`flashback.ui.access`). The list holds tracker, LAN and book
peers, each with its ``source`` (§12); ``<peer>`` is ``self``, a tracker
peer's id, or a LAN or book peer's fingerprint. Pages carry a strict CSP:
scripts and styles only from ``/static``, no inline script, nothing from
another origin.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Final

import httpx
import trio
from quart import Response, redirect, render_template, request
from quart_trio import QuartTrio
from werkzeug.wrappers.response import Response as WerkzeugResponse  # what redirect() builds

from flashback.errors import BadRequest, Forbidden, NotFound, RateLimited
from flashback.protocol.directory import KnownPeer
from flashback.protocol.messages import PeerInfo, ProtocolError
from flashback.protocol.paths import UnsafePath, split_request_path
from flashback.ui.access import install_access_pages
from flashback.ui.auth import COOKIE_NAME, check_access
from flashback.ui.kinds import view_kind
from flashback.ui.proxy import StreamLimiter, fetch_listing, fetch_text, proxy_file
from flashback.ui.reach import PeerRoute, peer_route, route_label
from flashback.ui.rendering import MarkdownRenderer, renderable
from flashback.ui.urls import SELF_KEY, ui_url
from flashback.ui.view import DaemonView
from flashback.web import StreamedBody, install_json_errors, json_response

MAX_EVENT_STREAMS: Final = 8
PAGE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
LIVE_EVENTS: Final = frozenset(
    {
        "peer-joined",
        "peer-updated",
        "peer-left",
        "tracker-connected",
        "tracker-disconnected",
        "access-denied",
        "lan-peer-found",
        "lan-peer-lost",
    }
)
HERE: Final = Path(__file__).parent


def peer_row(peer: PeerInfo, ctx: DaemonView) -> dict[str, Any]:
    """A tracker peer's row; its ``key`` (what its links name) is its peer id."""
    mine = ctx.identity is not None and peer.peer_id == ctx.identity.peer_id
    key = SELF_KEY if mine else peer.peer_id
    return {
        "key": peer.peer_id,
        "peer_id": peer.peer_id,
        "name": peer.name,
        "fingerprint": peer.fingerprint,
        "source": "tracker",
        "address": f"{peer.host}:{peer.port}",
        "route": "local" if mine else route_label(peer),
        "self": mine,
        "browse": ui_url(key, "browse"),
    }


def known_row(known: KnownPeer) -> dict[str, Any]:
    """A LAN or book peer's row (§12): linked by its fingerprint, which tells apart
    peers of one name; its address is the first candidate it was heard at."""
    first = known.candidates[0] if known.candidates else None
    return {
        "key": known.key,
        "peer_id": known.peer_id,
        "name": known.name,
        "fingerprint": known.fingerprint,
        "source": known.source,
        "address": f"{first.host}:{first.port}" if first else "-",
        "route": "direct",
        "self": False,
        "browse": ui_url(known.key, "browse"),
    }


def peer_rows(ctx: DaemonView) -> list[dict[str, Any]]:
    """Every peer the daemon knows of, as ``flashback peers`` lists them: tracker
    rows while the link is up, then what only the LAN or the book knows."""
    rows: list[dict[str, Any]] = []
    for known in ctx.known_peers():
        info = ctx.table.peers.get(known.peer_id or "") if known.source == "tracker" else None
        if info is not None:
            rows.append(peer_row(info, ctx))
        elif known.source != "tracker":
            rows.append(known_row(known))
    return rows


def snapshot(ctx: DaemonView) -> dict[str, Any]:
    return {
        "event": "snapshot",
        "self": {
            "name": ctx.config.name,
            "peer_id": ctx.identity.peer_id if ctx.identity else None,
            "browse": ui_url(SELF_KEY, "browse"),
        },
        "tracker": {"url": ctx.config.tracker_url, "connected": ctx.tracker_connected},
        "peers": peer_rows(ctx),
    }


def browser_event(event: dict[str, Any], ctx: DaemonView) -> dict[str, Any] | None:
    """The hub's event as the page needs it (rows ready to show), or None if irrelevant."""
    kind = event.get("event")
    if kind not in LIVE_EVENTS:
        return None
    if kind in ("peer-joined", "peer-updated"):
        try:
            peer = PeerInfo.parse(event.get("peer"))
        except (ProtocolError, ValueError):
            return None  # the hub only relays parsed peers; never let one end the stream
        return {"event": kind, "peer": peer_row(peer, ctx)}
    if kind == "peer-left":
        return {"event": kind, "peer_id": event.get("peer_id")}
    if kind == "access-denied":  # the access page fetches the list again (§11)
        return {"event": kind}
    if kind in ("lan-peer-found", "lan-peer-lost"):
        # the page fetches the merged list again: a LAN peer may stand for, or be
        # hidden by, a tracker or book row of the same fingerprint (§12)
        return {"event": kind}
    return {"event": kind, "connected": kind == "tracker-connected"}


class EventCounter:
    def __init__(self) -> None:
        self.open = 0


class UiEventStream(StreamedBody):
    """Server-sent events from a hub subscription (bounded; the hub drops a laggard).

    The subscription and the count of open views belong to the body's
    context, which Quart enters only once the response really starts: a
    client gone before that leaves nothing behind.
    """

    def __init__(self, ctx: DaemonView, counter: EventCounter) -> None:
        self._ctx = ctx
        self._counter = counter
        self._receive: trio.MemoryReceiveChannel[dict[str, Any]] | None = None
        self._pending: list[bytes] = []

    async def __aenter__(self) -> UiEventStream:
        # checked again here: several requests may have passed the route's check at once
        if self._counter.open < MAX_EVENT_STREAMS:
            self._counter.open += 1
            self._receive = self._ctx.hub.subscribe()
            self._pending.append(_sse(snapshot(self._ctx)))
        return self

    async def aclose(self) -> None:
        if self._receive is not None:
            self._counter.open -= 1
            await self._receive.aclose()
            self._receive = None
            self._ctx.hub.unsubscribe_closed()

    async def __anext__(self) -> bytes:
        while not self._pending:
            if self._receive is None:
                raise StopAsyncIteration  # over the cap: an empty stream
            try:
                event = await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                # dropped for falling behind: the browser reconnects and gets a snapshot
                raise StopAsyncIteration from None
            shown = browser_event(event, self._ctx)
            if shown is not None:
                self._pending.append(_sse(shown))
        return self._pending.pop(0)


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def _parts(raw: str) -> tuple[str, ...]:
    try:
        return split_request_path(raw)
    except UnsafePath:
        raise NotFound(f"no such path: {raw}") from None


def crumbs(route: PeerRoute, parts: tuple[str, ...], *, file: bool) -> list[dict[str, str | None]]:
    """Breadcrumbs from the path: the peer's root, each folder, then the file (no link)."""
    items: list[dict[str, str | None]] = [{"label": route.name, "url": ui_url(route.key, "browse")}]
    folders = parts[:-1] if file else parts
    for depth, name in enumerate(folders, 1):
        items.append({"label": name, "url": ui_url(route.key, "browse", parts[:depth])})
    if file and parts:
        items.append({"label": parts[-1], "url": None})
    if not file:
        items[-1]["url"] = None
    return items


def _request_headers() -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


def create_ui_app(ctx: DaemonView, token: str, http: httpx.AsyncClient) -> QuartTrio:
    app = QuartTrio(
        __name__,
        template_folder=str(HERE / "templates"),
        static_folder=str(HERE / "static"),
    )
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024
    app.config["RESPONSE_TIMEOUT"] = None
    app.url_map.strict_slashes = False
    install_json_errors(app)
    limiter = StreamLimiter()
    markdown = MarkdownRenderer()
    streams = EventCounter()

    @app.before_request
    async def require_token() -> Response | WerkzeugResponse | None:
        decision = check_access(request.args.get("token"), request.cookies, token)
        if not decision.allowed:
            raise Forbidden("this page needs the URL that `flashback ui` prints")
        if decision.set_cookie:
            rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
            # the still-encoded path: a decoded "?" or "#" in a file name must stay a name
            raw_path = request.scope.get("raw_path") or request.path.encode()
            location = str(httpx.URL(path=raw_path.decode("ascii", "replace"), params=rest or None))
            response = redirect(location, 303)
            response.set_cookie(COOKIE_NAME, token, httponly=True, samesite="Strict", path="/")
            return response
        return None

    @app.after_request
    async def security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if response.mimetype == "text/html" and "Content-Security-Policy" not in response.headers:
            response.headers["Content-Security-Policy"] = PAGE_CSP
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/")
    async def index() -> str:
        return await render_template("index.html", state=snapshot(ctx))

    @app.get("/api/peers")
    async def api_peers() -> Response:
        return json_response(snapshot(ctx))

    @app.get("/events")
    async def events() -> Response:
        if streams.open >= MAX_EVENT_STREAMS:
            raise RateLimited("too many live views are open", retry_after_s=5)
        response = Response(UiEventStream(ctx, streams), mimetype="text/event-stream")
        response.headers["Cache-Control"] = "no-store"
        response.timeout = None
        return response

    @app.get("/p/<peer>/browse/")
    @app.get("/p/<peer>/browse/<path:sub>")
    async def browse(peer: str, sub: str = "") -> str:
        route = await peer_route(ctx, peer)
        parts = _parts(sub)
        cursor = request.args.get("cursor")
        if cursor is not None and (not cursor or len(cursor) > 1024):
            raise BadRequest("bad cursor", code="bad_cursor")
        listing = await fetch_listing(http, route, parts, cursor)
        for item in listing.dirs:
            item["url"] = ui_url(route.key, "browse", item["parts"])
        for item in listing.files:
            item["url"] = ui_url(route.key, "view", item["parts"])
            item["download"] = ui_url(route.key, "download", item["parts"])
        more = (
            ui_url(route.key, "browse", parts, cursor=listing.next_cursor)
            if listing.next_cursor
            else None
        )
        return await render_template(
            "browse.html",
            route=route,
            crumbs=crumbs(route, parts, file=False),
            listing=listing,
            more=more,
            first=ui_url(route.key, "browse", parts) if cursor else None,
        )

    @app.get("/p/<peer>/view/<path:sub>")
    async def view(peer: str, sub: str) -> str:
        route = await peer_route(ctx, peer)
        parts = _parts(sub)
        if not parts:
            raise NotFound("no file named")
        kind = view_kind(parts[-1])
        html = text = None
        cut = too_big = False
        if kind in ("markdown", "text"):
            fetched = await fetch_text(http, route, parts)
            text, cut = fetched.text, fetched.cut
            if kind == "markdown" and (cut or not renderable(text)):
                kind, too_big = "text", True  # rendering it could cost seconds of CPU
            elif kind == "markdown":
                html = await markdown.render(
                    route.key, parts, fetched.etag, text, partial(ui_url, route.key)
                )
        return await render_template(
            "view.html",
            route=route,
            crumbs=crumbs(route, parts, file=True),
            name=parts[-1],
            kind=kind,
            html=html,
            text=text,
            cut=cut,
            too_big=too_big,
            content=ui_url(route.key, "content", parts),
            download=ui_url(route.key, "download", parts),
        )

    @app.get("/p/<peer>/content/<path:sub>")
    async def content(peer: str, sub: str) -> Response:
        route = await peer_route(ctx, peer)
        return await proxy_file(
            http, limiter, route, _parts(sub), _request_headers(), download=False
        )

    @app.get("/p/<peer>/download/<path:sub>")
    async def download(peer: str, sub: str) -> Response:
        route = await peer_route(ctx, peer)
        return await proxy_file(
            http, limiter, route, _parts(sub), _request_headers(), download=True
        )

    install_access_pages(app, ctx)
    app.extensions["flashback_limiter"] = limiter
    app.extensions["flashback_markdown"] = markdown
    return app

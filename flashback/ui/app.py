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
another origin; ``/favicon.ico`` is the UI's own SVG. A peer may also be
named by its name (:func:`~flashback.ui.reach.peer_route`).

A folder page sorts (``?sort=name|size|mtime&order=asc|desc``) and filters
(``?q=``, a case-insensitive part of the name) the page of entries it shows,
without script; it shows image thumbnails through the UI's own proxy and
previews the folder's ``index.md``. Errors are the contract's JSON for API
clients and an HTML page with a way back for a browser (``Accept``, see
:mod:`flashback.protocol.negotiate`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

import httpx
import trio
from quart import Response, redirect, render_template, request, send_file
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers.response import Response as WerkzeugResponse  # what redirect() builds

from flashback.errors import BadRequest, FlashbackError, Forbidden, NotFound, RateLimited
from flashback.protocol.directory import KnownPeer
from flashback.protocol.messages import PeerInfo, ProtocolError
from flashback.protocol.negotiate import prefers_html
from flashback.protocol.paths import UnsafePath, split_request_path
from flashback.ui.access import install_access_pages
from flashback.ui.auth import COOKIE_NAME, check_access
from flashback.ui.kinds import view_kind
from flashback.ui.present import (
    exact_size,
    filter_text,
    has_thumbnail,
    human_ago,
    human_date,
    human_size,
    icon_for,
    matches,
    short_fingerprint,
    sort_spec,
    sorted_entries,
)
from flashback.ui.proxy import Listing, StreamLimiter, fetch_listing, fetch_text, proxy_file
from flashback.ui.reach import AmbiguousPeer, PeerRoute, peer_route
from flashback.ui.rendering import MarkdownRenderer, renderable
from flashback.ui.urls import SELF_KEY, ui_url
from flashback.ui.view import DaemonView
from flashback.web import (
    StreamedBody,
    error_response,
    http_error_response,
    install_json_errors,
    json_response,
)

MAX_EVENT_STREAMS: Final = 8
PAGE_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
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
FAVICON: Final = HERE / "static" / "favicon.svg"
SVG_CSP: Final = "default-src 'none'"
INDEX_PREVIEW: Final = "index.md"
#: the one page shown without the token has no stylesheet (that is behind the token
#: too): a few inline rules, allowed by their hash alone
OUTSIDE_STYLE: Final = (
    "body{margin:0;font:15px/1.5 system-ui,sans-serif;color:#1d232a;background:#fbfcfd}"
    "header{padding:.7em 1.5em;border-bottom:1px solid #dde2e7;background:#fff}"
    "header a{font-weight:700;color:#1d232a;text-decoration:none}"
    "main{max-width:40em;padding:1em 1.5em}h1{font-size:1.4em;color:#a0211b}"
    "code{background:#eef1f4;padding:.1em .3em;border-radius:.2em}.muted{color:#6b7580}"
)
OUTSIDE_CSP: Final = PAGE_CSP.replace(
    "style-src 'self'",
    "style-src 'sha256-"
    + base64.b64encode(hashlib.sha256(OUTSIDE_STYLE.encode()).digest()).decode()
    + "'",
)


NOT_REACHED: Final = "not yet used"


def _seen(human: str, exact: str) -> dict[str, str]:
    return {"last_seen_human": human, "last_seen": exact}


def _ago(stamp: str) -> str:
    return human_ago(stamp, datetime.now(UTC)) if stamp else "-"


def _known_seen(known: KnownPeer, ctx: DaemonView) -> dict[str, str]:
    """A LAN peer is heard now (its announcement lives while it does); a book peer
    was last reached when the book says."""
    if known.source == "lan":
        return _seen("on the LAN now", "announced on the local network now")
    when = ctx.last_reached(known.fingerprint) if known.fingerprint else None
    if when is None:
        return _seen("-", "")
    stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return _seen(_ago(stamp), f"last reached {stamp}")


def peer_row(peer: PeerInfo, ctx: DaemonView) -> dict[str, Any]:
    """A tracker peer's row; its ``key`` (what its links name) is its peer id. The
    route is the one this daemon last used to it (as ``peers`` shows it)."""
    mine = ctx.identity is not None and peer.peer_id == ctx.identity.peer_id
    key = SELF_KEY if mine else peer.peer_id
    return {
        "key": peer.peer_id,
        "peer_id": peer.peer_id,
        "name": peer.name,
        "fingerprint": peer.fingerprint,
        "fingerprint_short": short_fingerprint(peer.fingerprint),
        "source": "tracker",
        "address": f"{peer.host}:{peer.port}",
        "route": "local" if mine else ctx.last_route(peer.peer_id) or NOT_REACHED,
        # the daemon's copy of last_seen moves only with changes (heartbeats are none);
        # while the link is up, being listed is the news: the tracker drops the unheard
        **_seen(
            "online now" if ctx.tracker_connected else _ago(peer.last_seen),
            f"listed by the tracker, which drops a peer unheard for its TTL;"
            f" registered {peer.registered_at or '?'}, record of {peer.last_seen or '?'}",
        ),
        "self": mine,
        "browse": ui_url(key, "browse"),
    }


def known_row(known: KnownPeer, ctx: DaemonView) -> dict[str, Any]:
    """A LAN or book peer's row (§12): linked by its fingerprint, which tells apart
    peers of one name; its address is the first candidate it was heard at."""
    first = known.candidates[0] if known.candidates else None
    return {
        "key": known.key,
        "peer_id": known.peer_id,
        "name": known.name,
        "fingerprint": known.fingerprint,
        "fingerprint_short": short_fingerprint(known.fingerprint),
        "source": known.source,
        "address": f"{first.host}:{first.port}" if first else "-",
        "route": ctx.last_route(known.peer_id or known.key) or NOT_REACHED,
        **_known_seen(known, ctx),
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
            rows.append(known_row(known, ctx))
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


SORT_COLUMNS: Final = (("name", "name"), ("size", "size"), ("mtime", "modified"))


def folder_page(
    route: PeerRoute,
    parts: tuple[str, ...],
    listing: Listing,
    args: Mapping[str, str],
    *,
    cursor: str | None,
) -> dict[str, Any]:
    """What browse.html shows of one listing page: sorted, filtered, sizes and dates
    for people (the exact values beside them), icons, thumbnails, the ``..`` row,
    counts, the sort links and the paging links (which keep the sort and filter)."""
    key, descending = sort_spec(args.get("sort"), args.get("order"))
    needle = filter_text(args.get("q"))
    keep = {"sort": key, "order": "desc" if descending else "asc"} if "sort" in args else {}
    keep |= {"q": needle} if needle else {}
    now = datetime.now(UTC)

    def shown(item: Mapping[str, Any], folder: bool) -> dict[str, Any]:
        row = dict(item)
        row["icon"] = icon_for(item["name"], folder=folder)
        row["date"] = human_date(item["mtime"], now) if item["mtime"] else ""
        if folder:
            row["url"] = ui_url(route.key, "browse", item["parts"])
            return row
        row["url"] = ui_url(route.key, "view", item["parts"])
        row["download"] = ui_url(route.key, "download", item["parts"])
        row["human_size"], row["exact_size"] = human_size(item["size"]), exact_size(item["size"])
        if has_thumbnail(item["name"]):
            row["thumbnail"] = ui_url(route.key, "content", item["parts"])
        return row

    def pick(items: list[dict[str, Any]], folder: bool) -> list[dict[str, Any]]:
        chosen = [i for i in items if matches(i["name"], needle)]
        # folders have no size: by name among themselves when sorting by size
        by = "name" if folder and key == "size" else key
        return [shown(i, folder) for i in sorted_entries(chosen, by, descending)]

    dirs, files = pick(listing.dirs, True), pick(listing.files, False)
    sorts = []
    for column, label in SORT_COLUMNS:
        flip = column == key and not descending
        params = {"sort": column, "order": "desc" if flip else "asc"} | (
            {"q": needle} if needle else {}
        )
        sorts.append(
            {
                "column": column,
                "label": label,
                "url": ui_url(route.key, "browse", parts, **params),
                "state": ("descending" if descending else "ascending") if column == key else "none",
            }
        )
    more = listing.next_cursor
    return {
        "listing": listing,
        "dirs": dirs,
        "files": files,
        "parent": ui_url(route.key, "browse", parts[:-1]) if parts else None,
        "counts": {
            "dirs": len(dirs),
            "files": len(files),
            "bytes": human_size(sum(f["size"] for f in files)),
            "hidden": len(listing.dirs) + len(listing.files) - len(dirs) - len(files),
        },
        "needle": needle,
        "sort": {"key": key, "order": "desc" if descending else "asc", "given": "sort" in args},
        "sorts": sorts,
        "more": ui_url(route.key, "browse", parts, cursor=more, **keep) if more else None,
        "first": ui_url(route.key, "browse", parts, **keep) if cursor else None,
        "paged": bool(more or cursor),
    }


def ways_back(path: str, error: FlashbackError | HTTPException) -> list[dict[str, str]]:
    """Links out of an error page: the folder above the one asked for, the peer's
    share, the peer list; for a name several peers carry, each of them."""
    ways: list[dict[str, str]] = []
    segments = path.split("/")
    if len(segments) >= 4 and segments[1] == "p":
        peer = segments[2]
        action = (
            segments[3] if segments[3] in ("browse", "view", "content", "download") else "browse"
        )
        try:
            parts = split_request_path("/".join(segments[4:]))
        except UnsafePath:
            parts = ()
        if isinstance(error, AmbiguousPeer):
            for key in error.keys:
                ways.append(
                    {"label": f"{error.name} ({key[:20]}…)", "url": ui_url(key, action, parts)}
                )
        elif not (isinstance(error, FlashbackError) and error.code == "unknown_peer"):
            up = parts[:-1]
            if parts:
                label = "/" + "/".join(up) if up else "the top of the share"
                ways.append({"label": f"up to {label}", "url": ui_url(peer, "browse", up)})
            if up:
                ways.append({"label": "the top of the share", "url": ui_url(peer, "browse")})
    ways.append({"label": "all peers", "url": "/"})
    return ways


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
        elif response.mimetype == "image/svg+xml":
            response.headers["Content-Security-Policy"] = SVG_CSP
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
        page = folder_page(route, parts, listing, request.args, cursor=cursor)
        if cursor is None and any(f["name"] == INDEX_PREVIEW for f in listing.files):
            page["preview"] = await preview(route, (*parts, INDEX_PREVIEW))
        return await render_template(
            "browse.html", route=route, crumbs=crumbs(route, parts, file=False), **page
        )

    async def preview(route: PeerRoute, parts: tuple[str, ...]) -> dict[str, str] | None:
        """The folder's index.md rendered, or None (too big, or the peer did not send it:
        the folder page is shown all the same)."""
        try:
            fetched = await fetch_text(http, route, parts)
        except FlashbackError:
            return None
        if fetched.cut or not renderable(fetched.text):
            return None
        html = await markdown.render(
            route.key, parts, fetched.etag, fetched.text, partial(ui_url, route.key)
        )
        return {"html": html, "url": ui_url(route.key, "view", parts)}

    async def error_page(error: FlashbackError | HTTPException) -> Response:
        if isinstance(error, FlashbackError):
            status, code, message = error.status, error.code, error.message
            headers = error.headers()
        else:
            status = error.code or 500
            code, message, headers = "error", error.description or error.name, {}
        authed = status != 403 or check_access(None, request.cookies, token).allowed
        html = await render_template(
            "error.html",
            status=status,
            code=code,
            message=message,
            authed=authed,
            ways=ways_back(request.path, error) if authed else [],
            outside_style=OUTSIDE_STYLE,
        )
        response = Response(html, status=status, mimetype="text/html")
        response.headers.update(headers)
        if not authed:
            response.headers["Content-Security-Policy"] = OUTSIDE_CSP
        return response

    @app.errorhandler(FlashbackError)
    async def flashback_error(error: FlashbackError) -> Response:
        if prefers_html(request.headers.get("accept")):
            return await error_page(error)
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        if prefers_html(request.headers.get("accept")):
            return await error_page(error)
        return http_error_response(error)

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return await send_file(FAVICON, mimetype="image/svg+xml")

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

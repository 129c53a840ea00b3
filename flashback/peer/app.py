"""The peer server's Quart app: listings, file content, downloads, info.

Routes (INTERFACE §3): ``GET /api/files[/<dir>]``, ``GET|HEAD /content/<path>``,
``GET|HEAD /download/<path>``, ``GET /api/info``, ``GET /api/digest/<path>`` (§7),
and ``POST /api/stream`` (§4, §12): a stream port asked for over the direct
endpoint, answered through the daemon's :class:`StreamDoor`. ``GET /`` is a
JSON 404 for API clients and a short HTML page for a browser.
Every refusal -- missing, outside the root, hidden, not a regular file -- is
the same JSON 404. A request whose ``Host`` is not an IP literal,
``localhost`` or a name the server serves is 421 (a DNS-rebinding page).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import trio
from quart import Response, request
from quart_trio import QuartTrio

from flashback import __version__
from flashback.digests import DigestService, DigestUnavailable
from flashback.errors import BackendUnavailable, BadRequest, FlashbackError, NotFound
from flashback.peer.files import OpenedFile, build_file_response, open_file
from flashback.peer.front import FRONT_CSP, front_page
from flashback.peer.index_md import INDEX_NAME, refresh_index_md
from flashback.peer.listing import decode_cursor, list_directory, parse_limit
from flashback.protocol.digest import repr_digest_header
from flashback.protocol.hosts import host_header_allowed
from flashback.protocol.messages import MAX_PATH_CHARS, FileStreamReady, StreamError
from flashback.protocol.negotiate import prefers_html
from flashback.protocol.paths import UnsafePath, open_under_root, real_root
from flashback.web import ZeroCopyHTTPConnection, install_json_errors, json_response

MAX_REQUEST_BODY_BYTES = 64 * 1024


class MisdirectedRequest(FlashbackError):
    status = 421
    default_code = "misdirected_request"


class ServiceUnavailable(FlashbackError):
    status = 503
    default_code = "digest_unavailable"


@dataclass
class LocalInfo:
    """What ``/api/info`` tells about this peer; the daemon fills in ``peer_id``
    once registered. (A peer as the tracker lists it is
    :class:`flashback.protocol.messages.PeerInfo`.)"""

    name: str
    peer_id: str | None = None


#: (path, the client address the connection came from) -> the owner's answer
OpenStream = Callable[[str, tuple[str, int] | None], Awaitable[FileStreamReady | StreamError]]
_STREAM_ERROR_STATUS = {"not_found": 404, "forbidden": 403, "busy": 503, "unavailable": 503}


@dataclass
class StreamDoor:
    """How ``POST /api/stream`` asks the daemon for a stream port: *open* is set
    once the daemon's stream ports run (503 until then). The daemon decides who
    asked from the client address: only a connection its own direct endpoint or
    a tunnel carried here, whose requester proved a fingerprint, is answered."""

    open: OpenStream | None = None


@dataclass(frozen=True)
class ShareSettings:
    root: Path
    show_hidden: bool = False
    info: LocalInfo = field(default_factory=lambda: LocalInfo(name=""))
    #: host names (lower case) a ``Host`` header may carry besides IP literals and localhost
    host_names: frozenset[str] = frozenset()
    streams: StreamDoor = field(default_factory=StreamDoor)


def _request_headers() -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def create_peer_app(settings: ShareSettings, digests: DigestService) -> QuartTrio:
    """*digests* must be running (its ``run`` in a nursery) while the app serves."""
    settings = replace(settings, root=real_root(settings.root))
    app = QuartTrio(__name__)
    app.asgi_http_class = ZeroCopyHTTPConnection  # file bodies go by sendfile
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BODY_BYTES
    # A file download ends when the client has it, however slow: no response timeout.
    app.config["RESPONSE_TIMEOUT"] = None
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    install_json_errors(app)

    @app.before_request
    async def only_our_own_names() -> None:
        if not host_header_allowed(request.headers.get("host"), settings.host_names):
            raise MisdirectedRequest("this server does not serve that host name")

    def _list_blocking(raw: str, limit: int, after: str | None) -> dict[str, object]:
        try:
            relative, dir_fd, _ = open_under_root(
                settings.root, raw, show_hidden=settings.show_hidden, directory=True
            )
        except UnsafePath:
            raise NotFound(f"no such directory: {raw}") from None
        try:
            page = list_directory(
                settings.root,
                PurePosixPath(relative).parts,
                dir_fd,
                limit=limit,
                after=after,
                show_hidden=settings.show_hidden,
            )
        finally:
            os.close(dir_fd)
        return page.to_json()

    @app.get("/api/files")
    @app.get("/api/files/<path:subpath>")
    async def list_files(subpath: str = "") -> Response:
        limit = parse_limit(request.args.get("limit"))
        cursor = request.args.get("cursor")
        after = decode_cursor(cursor) if cursor is not None else None
        payload = await trio.to_thread.run_sync(_list_blocking, subpath, limit, after)
        return json_response(payload)

    async def _serve_file(subpath: str, *, attachment: bool) -> Response:
        request_method = request.method
        headers = _request_headers()

        def blocking() -> OpenedFile:
            if subpath.strip("/") == INDEX_NAME:  # generated: list what is there now
                refresh_index_md(settings.root, show_hidden=settings.show_hidden)
            return open_file(settings.root, subpath, show_hidden=settings.show_hidden)

        opened = await trio.to_thread.run_sync(blocking)
        try:
            manifest = await digests.for_response(opened.fd, opened.info)
        except BaseException:
            os.close(opened.fd)
            raise
        return build_file_response(
            opened,
            method=request_method,
            headers=headers,
            attachment=attachment,
            repr_digest=repr_digest_header(manifest.sha256) if manifest else None,
        )

    @app.get("/api/digest/<path:subpath>")
    async def digest(subpath: str) -> Response:
        opened = await trio.to_thread.run_sync(
            lambda: open_file(settings.root, subpath, show_hidden=settings.show_hidden)
        )
        try:
            manifest = await digests.wait(opened.fd, opened.info)
        except DigestUnavailable as exc:
            raise ServiceUnavailable(str(exc)) from None
        finally:
            os.close(opened.fd)
        return json_response(manifest.to_json(opened.relative))

    @app.get("/content/<path:subpath>")
    async def content(subpath: str) -> Response:
        return await _serve_file(subpath, attachment=False)

    @app.get("/download/<path:subpath>")
    async def download(subpath: str) -> Response:
        return await _serve_file(subpath, attachment=True)

    @app.get("/")
    async def front() -> Response:
        # an API client keeps the JSON 404 of every unknown route; a browser gets a page
        if not prefers_html(request.headers.get("accept")):
            raise NotFound("the peer server's routes are /api/files, /content/ and /download/")
        response = Response(front_page(settings.info.name, __version__), mimetype="text/html")
        response.headers["Content-Security-Policy"] = FRONT_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.post("/api/stream")
    async def stream_port() -> Response:
        # JSON only: a cross-site page cannot send it without a preflight it never passes
        if request.mimetype != "application/json":
            raise BadRequest('expected a JSON body {"path": str}', code="invalid_json")
        body = await request.get_json(force=True, silent=True)
        if body is None:
            raise BadRequest("the body is not JSON", code="invalid_json")
        path = body.get("path") if isinstance(body, dict) else None
        if not isinstance(path, str) or not 1 <= len(path) <= MAX_PATH_CHARS:
            raise BadRequest('"path" must be a non-empty string')
        door = settings.streams.open
        if door is None:
            raise BackendUnavailable("stream ports are not up yet", code="unavailable")
        answer = await door(path, request.scope.get("client"))
        if isinstance(answer, StreamError):
            status = _STREAM_ERROR_STATUS.get(answer.code, 502)
            refusal = FlashbackError(answer.message, code=answer.code)
            return json_response(refusal.to_json(), status=status)
        return json_response(answer.dump())

    @app.get("/api/info")
    async def info() -> Response:
        return json_response(
            {"name": settings.info.name, "peer_id": settings.info.peer_id, "version": __version__}
        )

    return app

"""What both HTTP servers share: JSON errors and serving a Quart app on Hypercorn.

The peer server and the tracker are Quart apps (quart-trio) served by
Hypercorn's trio worker inside a nursery the caller owns. Every error leaves
as the contract's JSON body, whatever raised it: our own
:class:`~flashback.errors.FlashbackError`, a werkzeug HTTP exception from
routing (404, 405, 413), or a bug (500, logged, no traceback sent).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, cast

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.logging import Logger as HypercornLogger
from hypercorn.typing import ASGISendCallable, ASGISendEvent, ResponseSummary, WWWScope
from quart import Quart, Response
from quart.typing import ResponseTypes
from quart.utils import encode_headers
from quart.wrappers.response import ResponseBody
from quart_trio.asgi import TrioASGIHTTPConnection
from werkzeug.exceptions import HTTPException

from flashback.errors import FlashbackError, encode_json
from flashback.httpserver import ZERO_COPY_SEND, serve_bounded
from flashback.protocol.hosts import WILDCARDS
from flashback.protocol.ranges import ByteRange
from flashback.shutdown import Shutdown

log = logging.getLogger(__name__)

JSON_MIMETYPE: Final = "application/json"
ACCESS_LOG_FORMAT: Final = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(L)ss'


#: escaped like every other line by :func:`flashback.logs.setup_logging`'s formatter
ACCESS_LOG: Final = logging.getLogger("flashback.access")


class QuietAccessLogger(HypercornLogger):
    """Hypercorn's logger, building an access line only when it will be written.

    Hypercorn builds the line's atoms -- every request and response header,
    every environment variable, a ``strftime`` -- before the access logger
    looks at its level. Without ``-v`` that logger is at WARNING and drops
    the line, so each request paid for a line nobody saw (about a tenth of a
    heartbeat's CPU in the tracker, measured in docs/BENCHMARKS.md).
    """

    async def access(
        self, request: WWWScope, response: ResponseSummary, request_time: float
    ) -> None:
        if self.access_logger is not None and self.access_logger.isEnabledFor(logging.INFO):
            await super().access(request, response, request_time)


def error_response(error: FlashbackError) -> Response:
    response = json_response(error.to_json(), status=error.status)
    response.headers.update(error.headers())
    return response


def json_response(payload: Any, *, status: int = 200) -> Response:
    return Response(encode_json(payload), status=status, mimetype=JSON_MIMETYPE)


def _code_from_http_exception(exc: HTTPException) -> str:
    name = exc.name or "error"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "error"


def http_error_response(error: HTTPException) -> Response:
    """A werkzeug HTTP exception (routing's 404, 405, 413) as the contract's JSON."""
    status = error.code or 500
    message = error.description or error.name or "error"
    payload = FlashbackError(message, code=_code_from_http_exception(error)).to_json()
    response = json_response(payload, status=status)
    if status == 405 and error.response is None:
        valid = getattr(error, "valid_methods", None)
        if valid:
            response.headers["Allow"] = ", ".join(sorted(valid))
    return response


def install_json_errors(app: Quart) -> None:
    """Make every error the app can produce a JSON body with the contract's shape."""

    @app.errorhandler(FlashbackError)
    async def _flashback_error(error: FlashbackError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        return http_error_response(error)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error while answering a request")
        internal = FlashbackError("internal server error", code="internal_error")
        return json_response(internal.to_json(), status=500)


class StreamedBody(ResponseBody):
    """A body Quart pulls chunk by chunk, with one ``aclose`` for every way it ends.

    A plain async iterator rather than an async generator: a client that goes
    away mid-response leaves no suspended generator for the GC to finalize.
    Quart enters the body, iterates it and exits it whether the response
    finished or the client left; subclasses say what to free in ``aclose``.
    """

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Free what the body holds; called once Quart is done with it."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        raise NotImplementedError

    async def make_conditional(self, begin: int, end: int | None) -> int:  # pragma: no cover
        raise NotImplementedError("ranges are planned before the body is built")


class FileRangesBody(StreamedBody):
    """A body made of byte ranges of one open file, with literal bytes between them.

    Iterated, it reads the file (Quart's test client, any server without the
    extension); :class:`ZeroCopyHTTPConnection` instead hands each range to
    the server as one zero-copy send.
    """

    def fileno(self) -> int:
        raise NotImplementedError

    def pieces(self) -> Iterator[bytes | ByteRange]:
        raise NotImplementedError


class ZeroCopyHTTPConnection(TrioASGIHTTPConnection):
    """Quart's HTTP handler, sending a :class:`FileRangesBody` by ``sendfile`` when offered.

    Set as an app's ``asgi_http_class``. Served by :mod:`flashback.httpserver`,
    every request is offered ASGI's ``http.response.zerocopysend``; the
    file's bytes then never enter Python (the peer server's downloads ran at
    0.45x nginx through the iterated body).
    """

    async def _send_response(self, send: ASGISendCallable, response: ResponseTypes) -> None:
        body = getattr(response, "response", None)
        offered = ZERO_COPY_SEND in self.scope.get("extensions", {})
        if not offered or not isinstance(body, FileRangesBody):
            await super()._send_response(send, response)
            return
        start = {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": encode_headers(response.headers),
        }
        await send(cast("ASGISendEvent", start))
        async with body:
            for piece in body.pieces():
                if isinstance(piece, bytes):
                    message: dict[str, object] = {"type": "http.response.body", "body": piece}
                else:  # the extension's "file" is anything with a fileno(): the body is
                    message = {
                        "type": ZERO_COPY_SEND,
                        "file": body,
                        "offset": piece.first,
                        "count": piece.length,
                    }
                await send(cast("ASGISendEvent", {**message, "more_body": True}))
        end = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(cast("ASGISendEvent", end))


@dataclass(frozen=True)
class BoundAddress:
    """Where a server really listens (the port is the OS's choice for port 0)."""

    host: str
    port: int

    @property
    def listens_everywhere(self) -> bool:
        return self.host in WILDCARDS

    @property
    def url(self) -> str:
        """A URL one can open: bound to every address (``0.0.0.0``, ``::``), no
        machine can dial the wildcard itself, so it names this machine's loopback
        of that family; ``host`` keeps the bind as it is."""
        host = (
            ("::1" if ":" in self.host else "127.0.0.1") if self.listens_everywhere else self.host
        )
        # From parts (brackets for IPv6 come from httpx), as every URL here is.
        return str(httpx.URL(scheme="http", host=host, port=self.port)).rstrip("/")


def parse_bind(bind: str) -> BoundAddress:
    """Turn Hypercorn's ``http://HOST:PORT`` bind string into a :class:`BoundAddress`."""
    rest = bind.split("://", 1)[-1]
    if rest.startswith("unix:"):
        return BoundAddress(rest[len("unix:") :], 0)
    host, _, port = rest.rpartition(":")
    return BoundAddress(host.strip("[]"), int(port))


def hypercorn_config(host: str, port: int, *, backlog: int = 100) -> HypercornConfig:
    """A Hypercorn config for one bind; ``host="unix:/path"`` binds a Unix socket (0600)."""
    config = HypercornConfig()
    if host.startswith("unix:"):
        config.bind = [host]
        config.umask = 0o177
    else:
        bind_host = f"[{host}]" if ":" in host else host
        config.bind = [f"{bind_host}:{port}"]
    # One line per request; shown with -v (logs.setup_logging sets the level).
    # The path only (%(U)s): a query string may carry a token.
    config.accesslog = ACCESS_LOG
    config.access_log_format = ACCESS_LOG_FORMAT
    config.logger_class = QuietAccessLogger
    config.errorlog = logging.getLogger("hypercorn.error")
    config.backlog = backlog
    # Long downloads must never be cut: Hypercorn itself has no response
    # timeout, but keep-alive and read timeouts stay at their defaults.
    # The grace when a server is cancelled rather than shut down; a shutdown
    # brings its own deadline (flashback.shutdown).
    config.graceful_timeout = 2.0
    return config


async def serve_quart(
    app: Quart,
    config: HypercornConfig,
    *,
    shutdown: Shutdown | None = None,
    task_status: trio.TaskStatus[BoundAddress] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *app* until cancelled, or until *shutdown* is set and its deadline passes.

    Reports the first bound address through ``task_status`` once the socket
    really listens, so callers can announce the port the OS picked.
    """

    async def _serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
        await serve_bounded(app, config, shutdown=shutdown, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(_serve)
        task_status.started(parse_bind(binds[0]))

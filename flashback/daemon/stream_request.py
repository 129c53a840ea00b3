"""The requester side, behind the control API's ``POST /stream``.

Resolve PEER, send ``stream-request`` (over the tracker link, or straight to
our own manager when PEER is this daemon), wait -- bounded -- for the
``file-stream-ready`` or ``stream-error`` the link delivers, and return the
notice in wire shape with ``from`` set to the owner. A LAN or book peer (the
tracker down, or not listing it) is asked over its direct endpoint instead:
``POST /api/stream`` on its peer server through ``OPEN peer-server``
(docs/INTERFACE.md §12), so nothing waits on the tracker. Every failure is a
:class:`~flashback.errors.FlashbackError`, so the control API answers it as
the contract's JSON error and ``flashback stream`` exits 1 with its message.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

import httpx
import trio

from flashback.daemon.connect import resolve_any
from flashback.daemon.context import DaemonContext
from flashback.daemon.directory import reach_known
from flashback.daemon.stream_ports import LOCAL_REQUESTER
from flashback.errors import (
    BackendUnavailable,
    BadRequest,
    FlashbackError,
    NotFound,
    PeerUnreachable,
)
from flashback.protocol.directory import KnownPeer
from flashback.protocol.messages import (
    FileStreamReady,
    Message,
    PeerInfo,
    ProtocolError,
    StreamError,
    StreamRequest,
    parse,
)
from flashback.protocol.strict_json import loads_strict
from flashback.terminal import printable
from flashback.transfer import at

#: how long the daemon waits for the owner's answer
STREAM_WAIT_S: Final = 15.0
#: a file-stream-ready is a few hundred bytes; an owner's answer past this is no answer
MAX_ANSWER_BYTES: Final = 64 * 1024
_STATUS_FOR_CODE: Final = {"not_found": 404, "unknown_peer": 404, "busy": 503}


class NoTracker(FlashbackError):
    status = 503
    default_code = "no_tracker"


class StreamTimeout(FlashbackError):
    status = 504
    default_code = "timeout"


class StreamRefused(FlashbackError):
    """The owner (or the tracker) answered ``stream-error``."""

    def __init__(self, error: StreamError) -> None:
        super().__init__(error.message or error.code, code=error.code)
        self.status = _STATUS_FOR_CODE.get(error.code, 502)  # type: ignore[misc]  # per instance: the owner's code picks it


def parse_stream_body(body: object) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object {"peer": str, "path": str}', code="invalid_json")
    peer, path = body.get("peer"), body.get("path")
    if not isinstance(peer, str) or not peer or not isinstance(path, str) or not path:
        raise BadRequest('"peer" and "path" must be non-empty strings')
    return peer, path


def _target(ctx: DaemonContext, key: str) -> PeerInfo | KnownPeer | None:
    """The owner *key* names (None: this daemon itself)."""
    try:
        return resolve_any(ctx, key)
    except NotFound:
        if not ctx.tracker_connected:  # we cannot know who is online
            raise NoTracker("no tracker connection") from None
        raise


async def _request_direct(
    ctx: DaemonContext, known: KnownPeer, path: str, wait_s: float
) -> dict[str, Any]:
    """Ask a LAN or book peer over its direct endpoint: ``POST /api/stream``."""
    reached = await reach_known(ctx, known)  # mutual TLS, its fingerprint proven
    name = printable(known.name)
    try:
        with trio.fail_after(wait_s):
            status, raw = await _post(at(reached.url, "/api/stream"), {"path": path})
    except (httpx.TimeoutException, trio.TooSlowError):
        raise StreamTimeout(f"no answer from {known.key!r} within {wait_s:g} s") from None
    except httpx.HTTPError as exc:
        raise PeerUnreachable(f"cannot reach peer {name!r}: {exc}") from None
    try:
        body = loads_strict(raw) if raw is not None else None
    except ValueError:
        body = None
    if status != 200:
        error = body.get("error") if isinstance(body, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        code = code if isinstance(code, str) and code.isidentifier() else "refused"
        text = printable(message[:200]) if isinstance(message, str) else code
        raise StreamRefused(StreamError("-", code[:32], f"peer {name!r}: {text}"))
    try:
        answer = parse(body) if isinstance(body, dict) else None
    except ProtocolError:
        answer = None
    if not isinstance(answer, FileStreamReady):
        raise PeerUnreachable(f"peer {name!r} answered no stream port")
    payload = answer.dump()
    payload.pop("to", None)
    payload["from"] = known.key  # what `connect` resolves to reach the port
    return payload


async def _post(url: httpx.URL, body: dict[str, Any]) -> tuple[int, bytes | None]:
    """The status and body (None past MAX_ANSWER_BYTES: read no further) of one POST."""
    async with (
        httpx.AsyncClient(timeout=None) as http,  # the caller bounds the time
        http.stream("POST", url, json=body) as response,
    ):
        raw = b""
        async for chunk in response.aiter_bytes():
            raw += chunk
            if len(raw) > MAX_ANSWER_BYTES:
                return response.status_code, None
        return response.status_code, raw


async def request_stream(
    ctx: DaemonContext, key: str, path: str, *, wait_s: float = STREAM_WAIT_S
) -> dict[str, Any]:
    peer = _target(ctx, key)
    if isinstance(peer, KnownPeer):  # LAN or book only: its endpoint, not the tracker
        return await _request_direct(ctx, peer, path, wait_s)
    if peer is not None and not ctx.tracker_connected:
        raise NoTracker("no tracker connection")
    target = peer.peer_id if peer is not None else None
    request_id = secrets.token_urlsafe(12)
    send, receive = trio.open_memory_channel[Message](1)
    ctx.stream_waiters[request_id] = send
    try:
        try:
            if target is None:
                ctx.stream_requests_send.send_nowait(
                    StreamRequest(request_id, path, from_=LOCAL_REQUESTER)
                )
            else:
                ctx.outgoing_send.send_nowait(StreamRequest(request_id, path, to=target))
        except trio.WouldBlock:
            raise BackendUnavailable("too many stream requests in flight", code="busy") from None
        with trio.move_on_after(wait_s):
            answer = await receive.receive()
            if isinstance(answer, StreamError):
                raise StreamRefused(answer)
            assert isinstance(answer, FileStreamReady)
            payload = answer.dump()
            payload.pop("to", None)
            own = ctx.identity.peer_id if ctx.identity else None
            payload["from"] = target if target is not None else own
            return payload
        raise StreamTimeout(f"no answer from {key!r} within {wait_s:g} s")
    finally:
        ctx.stream_waiters.pop(request_id, None)
        send.close()
        receive.close()

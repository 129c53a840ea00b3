"""The requester side, behind the control API's ``POST /stream``.

Resolve PEER, send ``stream-request`` (over the tracker link, or straight to
our own manager when PEER is this daemon), wait -- bounded -- for the
``file-stream-ready`` or ``stream-error`` the link delivers, and return the
notice in wire shape with ``from`` set to the owner. Every failure is a
:class:`~flashback.errors.FlashbackError`, so the control API answers it as
the contract's JSON error and ``flashback stream`` exits 1 with its message.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

import trio

from flashback.daemon.connect import resolve_any
from flashback.daemon.context import DaemonContext
from flashback.daemon.directory import reach_known
from flashback.daemon.stream_ports import LOCAL_REQUESTER
from flashback.errors import BackendUnavailable, BadRequest, FlashbackError, NotFound
from flashback.protocol.directory import KnownPeer
from flashback.protocol.messages import FileStreamReady, Message, StreamError, StreamRequest

#: how long the daemon waits for the owner's answer
STREAM_WAIT_S: Final = 15.0
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


async def _target(ctx: DaemonContext, key: str) -> str | None:
    """The owner's peer id, or None when *key* names this daemon itself."""
    try:
        peer = resolve_any(ctx, key)
    except NotFound:
        if not ctx.tracker_connected:  # we cannot know who is online
            raise NoTracker("no tracker connection") from None
        raise
    if peer is None:
        return None
    if not ctx.tracker_connected:  # a stream request to another peer goes by the tracker
        raise NoTracker("no tracker connection")
    if isinstance(peer, KnownPeer):  # LAN or book only: its endpoint, not the tracker
        await reach_known(ctx, peer)
        raise NoTracker(f"peer {key!r} is not on the tracker")
    return peer.peer_id


async def request_stream(
    ctx: DaemonContext, key: str, path: str, *, wait_s: float = STREAM_WAIT_S
) -> dict[str, Any]:
    target = await _target(ctx, key)
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

"""Talking to peer servers for the UI: bounded listings, bounded text, streamed content.

Everything a peer sends is hostile. A listing is read up to
:data:`MAX_LISTING_BYTES` and checked field by field; text for the file view
is at most :data:`MAX_TEXT_BYTES` (asked for with ``Range`` and cut anyway);
content and downloads stream through in chunks, never buffered, with
``Range`` passed on so the browser's player can seek. At most
:data:`MAX_STREAMS` streams run at once, a fair share per peer
(:data:`MAX_STREAMS_PER_PEER`, :class:`~flashback.protocol.fairshare.FairShare`):
a peer's newest stream past its share ends its own oldest, and when all are
taken the heaviest peer's oldest ends -- so a peer that drips its files
cannot hold every slot. A peer that stalls longer than
:data:`READ_TIMEOUT_S` ends that one stream.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

import httpx
import trio
from quart import Response

from flashback.errors import NotFound, PeerUnreachable, RateLimited
from flashback.protocol.conditional import content_disposition
from flashback.protocol.fairshare import FairShare
from flashback.protocol.paths import is_servable_name
from flashback.protocol.strict_json import loads_strict
from flashback.ui.kinds import served_as
from flashback.ui.reach import PeerRoute
from flashback.ui.urls import peer_url
from flashback.web import StreamedBody

MAX_LISTING_BYTES: Final = 4 * 1024 * 1024
MAX_TEXT_BYTES: Final = 1024 * 1024
MAX_CURSOR_CHARS: Final = 1024
MAX_STREAMS: Final = 16
MAX_STREAMS_PER_PEER: Final = 8
PAGE_LIMIT: Final = 200
CONNECT_TIMEOUT_S: Final = 5.0
READ_TIMEOUT_S: Final = 30.0
#: a whole listing page or view text, however it trickles in (the read timeout
#: restarts with every byte)
FETCH_DEADLINE_S: Final = 60.0
TIMEOUT: Final = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)

#: request headers passed on to the peer (what a player and a cache send)
FORWARDED_REQUEST: Final = ("range", "if-range", "if-none-match", "if-modified-since")
#: response headers passed back (no Content-Type, Set-Cookie or CSP of the peer's choosing)
FORWARDED_RESPONSE: Final = (
    "content-length",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
)
PASSED_STATUSES: Final = frozenset({200, 206, 304, 416})


@dataclass(frozen=True)
class Listing:
    path: str
    dirs: list[dict[str, Any]]
    files: list[dict[str, Any]]
    next_cursor: str | None


def _parse_entries(payload: Any, parts: tuple[str, ...]) -> Listing:
    """Keep only well-formed entries a request could name; recompute their paths ourselves."""
    if not isinstance(payload, dict) or not isinstance(payload.get("entries"), list):
        raise PeerUnreachable("the peer sent a listing that is not one")
    dirs: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    for entry in payload["entries"][: PAGE_LIMIT * 2]:
        if not isinstance(entry, dict):
            continue
        name, kind, size = entry.get("name"), entry.get("type"), entry.get("size")
        if not isinstance(name, str) or len(name) > 255 or not is_servable_name(name):
            continue
        if not name.isprintable() or "/" in name:
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            size = 0
        raw_mtime = entry.get("mtime")
        mtime = raw_mtime[:40] if isinstance(raw_mtime, str) else ""
        item = {"name": name, "parts": (*parts, name), "size": size, "mtime": mtime}
        if kind == "dir":
            dirs.append(item)
        elif kind == "file":
            files.append(item)
    cursor = payload.get("next_cursor")
    if not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR_CHARS:
        cursor = None
    return Listing("/".join(parts), dirs, files, cursor)


async def _read_capped(response: httpx.Response, cap: int) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk
        if len(body) >= cap:
            break
    return bytes(body[:cap])


async def fetch_listing(
    http: httpx.AsyncClient, route: PeerRoute, parts: tuple[str, ...], cursor: str | None
) -> Listing:
    params = {"limit": str(PAGE_LIMIT)} | ({"cursor": cursor} if cursor else {})
    url = peer_url(route.base, "api/files", parts).copy_merge_params(params)
    raw = b""
    with trio.move_on_after(FETCH_DEADLINE_S) as deadline:
        try:
            async with http.stream("GET", url, timeout=TIMEOUT) as response:
                if response.status_code == 404:
                    raise NotFound(f"{route.name} has no folder /{'/'.join(parts)}")
                if response.status_code != 200:
                    raise PeerUnreachable(f"the peer answered HTTP {response.status_code}")
                raw = await _read_capped(response, MAX_LISTING_BYTES + 1)
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"the peer does not answer ({exc.__class__.__name__})") from exc
    if deadline.cancelled_caught:
        raise PeerUnreachable(f"the peer took over {FETCH_DEADLINE_S:.0f} s to list the folder")
    if len(raw) > MAX_LISTING_BYTES:
        raise PeerUnreachable("the peer's listing is too large")
    try:
        payload = loads_strict(raw)
    except ValueError:
        raise PeerUnreachable("the peer sent a listing that is not JSON") from None
    return _parse_entries(payload, parts)


@dataclass(frozen=True)
class Text:
    text: str
    cut: bool  # the file is longer than MAX_TEXT_BYTES
    etag: str | None  # the peer's validator (a cache key, never shown)


async def fetch_text(http: httpx.AsyncClient, route: PeerRoute, parts: tuple[str, ...]) -> Text:
    """The file's first :data:`MAX_TEXT_BYTES` as text, whether it was cut, its ETag."""
    url = peer_url(route.base, "content", parts)
    headers = {"range": f"bytes=0-{MAX_TEXT_BYTES}"}
    raw, etag = b"", None
    with trio.move_on_after(FETCH_DEADLINE_S) as deadline:
        try:
            async with http.stream("GET", url, headers=headers, timeout=TIMEOUT) as response:
                if response.status_code == 404:
                    raise NotFound(f"{route.name} has no file /{'/'.join(parts)}")
                if response.status_code not in (200, 206):
                    raise PeerUnreachable(f"the peer answered HTTP {response.status_code}")
                etag = response.headers.get("etag")
                raw = await _read_capped(response, MAX_TEXT_BYTES + 1)
        except httpx.HTTPError as exc:
            raise PeerUnreachable(f"the peer does not answer ({exc.__class__.__name__})") from exc
    if deadline.cancelled_caught:
        raise PeerUnreachable(f"the peer took over {FETCH_DEADLINE_S:.0f} s to send the file")
    cut = len(raw) > MAX_TEXT_BYTES
    return Text(raw[:MAX_TEXT_BYTES].decode("utf-8", errors="replace"), cut, etag)


class StreamSlot:
    """One proxied stream's place in the :class:`StreamLimiter`; evicting it ends the stream."""

    def __init__(self) -> None:
        self.evicted = False
        self._scope: trio.CancelScope | None = None

    def evict(self) -> None:
        self.evicted = True
        if self._scope is not None:
            self._scope.cancel()

    def running(self) -> trio.CancelScope:
        """The scope of the stream's next step (the request, one chunk): eviction
        cancels it (a step begun after the eviction is cancelled at once)."""
        self._scope = trio.CancelScope()
        if self.evicted:
            self._scope.cancel()
        return self._scope


class StreamLimiter:
    """At most *limit* proxied streams at once, *per_peer* of them per peer; the
    stream that makes room for a newcomer is ended (the rule of FairShare)."""

    def __init__(self, limit: int = MAX_STREAMS, per_peer: int = MAX_STREAMS_PER_PEER) -> None:
        self._share: FairShare[str, StreamSlot] = FairShare(limit, per_peer)

    def acquire(self, peer: str) -> StreamSlot:
        slot = StreamSlot()
        evicted = self._share.admit(peer, slot).evicted
        if evicted is not None:
            evicted[1].evict()
        return slot

    def release(self, slot: StreamSlot) -> None:
        self._share.release(slot)

    @property
    def in_use(self) -> int:
        return len(self._share)


class ProxiedBody(StreamedBody):
    """The peer's body, chunk by chunk; closes the upstream response and frees the slot."""

    def __init__(self, upstream: httpx.Response, limiter: StreamLimiter, slot: StreamSlot) -> None:
        self._upstream = upstream
        self._limiter: StreamLimiter | None = limiter
        self._slot = slot
        # httpx implements aiter_raw as an async generator but declares an
        # AsyncIterator; we need aclose() so the generator never outlives us.
        self._chunks = cast("AsyncGenerator[bytes, None]", upstream.aiter_raw())

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self._chunks.aclose()
            await self._upstream.aclose()
        if self._limiter is not None:
            self._limiter.release(self._slot)
            self._limiter = None

    async def __anext__(self) -> bytes:
        chunk: bytes | None = None
        with self._slot.running():
            try:
                chunk = await self._chunks.__anext__()
            except httpx.HTTPError:
                # the peer went away mid-file: end this response, nothing else
                raise StopAsyncIteration from None
        if chunk is None:  # evicted to make room for another stream: it ends here
            raise StopAsyncIteration
        return chunk


async def proxy_file(
    http: httpx.AsyncClient,
    limiter: StreamLimiter,
    route: PeerRoute,
    parts: tuple[str, ...],
    request_headers: Mapping[str, str],
    *,
    download: bool,
) -> Response:
    """Stream the peer's ``/content`` (or ``/download``) of *parts*, Range and all."""
    url = peer_url(route.base, "download" if download else "content", parts)
    headers = {k: v for k in FORWARDED_REQUEST if (v := request_headers.get(k)) is not None}
    if "," in headers.get("range", ""):
        # several ranges come back as multipart/byteranges, whose type (and boundary)
        # we would have to take from the peer: a player asks for one range; send all
        del headers["range"]
    slot = limiter.acquire(route.key)
    upstream: httpx.Response | None = None
    try:
        with slot.running():
            request = http.build_request("GET", url, headers=headers)
            upstream = await http.send(request, stream=True)
    except httpx.HTTPError as exc:
        limiter.release(slot)
        raise PeerUnreachable(f"the peer does not answer ({exc.__class__.__name__})") from exc
    except BaseException:
        limiter.release(slot)
        raise
    if upstream is None:  # evicted before the peer answered
        limiter.release(slot)
        raise RateLimited("too many files are streaming through the UI at once", retry_after_s=1)
    if upstream.status_code not in PASSED_STATUSES:
        status = upstream.status_code
        with trio.CancelScope(shield=True):
            await upstream.aclose()
        limiter.release(slot)
        if status == 404:
            raise NotFound(f"{route.name} has no file /{'/'.join(parts)}")
        raise PeerUnreachable(f"the peer answered HTTP {status}")
    response = Response(ProxiedBody(upstream, limiter, slot), status=upstream.status_code)
    response.timeout = None  # a long video is not a slow response
    for header in FORWARDED_RESPONSE:
        value = upstream.headers.get(header)
        if value is not None:
            response.headers[header] = value
    # Shown on the UI's own origin, a shared file must never run script here: the
    # type, policy and disposition are ours, from the name, whatever the peer said.
    name = parts[-1] if parts else "file"
    served = served_as(name)
    response.headers["Content-Type"] = served.content_type
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = served.csp
    if download or served.attachment:
        response.headers["Content-Disposition"] = content_disposition("attachment", name)
    return response

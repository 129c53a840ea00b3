"""``GET /api/peers/list`` without amplification: one encoding, bounded sends.

The list is the largest thing a stranger can ask for (up to
``max_peer_list_bytes``, 16 MiB by default) and asking is free. So:

- it is encoded **once per change** (``seq``) and second -- a linked peer's
  ``last_seen`` is "now", so a list is at most a second stale -- and every
  request shares those bytes (:class:`PeerListCache`; a burst of requests
  waits for the one encoding in progress);
- it is sent in :data:`CHUNK_BYTES` pieces, so a client that does not read
  pins one piece in the server, not a copy of the whole list;
- every response in flight is charged its full size to its client address
  in a :class:`~flashback.protocol.byteshare.ByteShare` of
  :attr:`PeerListSender.budget` (a slow response keeps an older encoding
  alive): past an address's share its own oldest response is cut, past the
  budget the heaviest address's oldest is -- never the newcomer's.

A cut response gives its bytes back at once and its connection is reset
(:mod:`.abort`: a send blocked on a client that does not read cannot be
cancelled); the client sees the connection end early, as after any network
error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from flashback.errors import FlashbackError, encode_json
from flashback.protocol.byteshare import ByteShare
from flashback.protocol.fairshare import share_address
from flashback.tracker.abort import Address, SocketAborter
from flashback.web import JSON_MIMETYPE

LIST_PATH: Final = "/api/peers/list"
CHUNK_BYTES: Final = 64 * 1024
CACHE_S: Final = 1.0
#: an address may have this share of the in-flight budget (at least one whole list)
SHARE_DIVISOR: Final = 4

ListSource = Callable[[], Awaitable[dict[str, Any]]]


class PeerListCache:
    """The encoded list, rebuilt when ``seq`` moved or a second passed."""

    def __init__(
        self, source: ListSource, seq: Callable[[], int], clock: Callable[[], float]
    ) -> None:
        self._source = source
        self._seq = seq
        self._clock = clock
        self._lock = trio.Lock()
        self._cached: tuple[int, float, bytes] | None = None
        self.encodings = 0  # how often the list was encoded (tests, metrics)

    def _fresh(self) -> bytes | None:
        cached = self._cached
        if cached is None or cached[0] != self._seq():
            return None
        if self._clock() - cached[1] >= CACHE_S:
            return None
        return cached[2]

    async def get(self) -> bytes:
        body = self._fresh()
        if body is not None:
            return body
        async with self._lock:  # one encoding at a time; the others share it
            body = self._fresh()
            if body is not None:
                return body
            seq, now = self._seq(), self._clock()
            body = encode_json(await self._source())
            self.encodings += 1
            self._cached = (seq, now, body)
            return body


class _Response:
    """One list response in flight; *body* is dropped when it is cut."""

    def __init__(self, body: bytes, client: Address | None, server: Address | None) -> None:
        self.body: bytes | None = body
        self.client, self.server = client, server


def _address(raw: Any) -> Address | None:
    if isinstance(raw, list | tuple) and len(raw) == 2:
        return str(raw[0]), int(raw[1])
    return None


class PeerListSender:
    """Answers ``GET /api/peers/list`` as raw ASGI, out of the in-flight budget."""

    def __init__(self, cache: PeerListCache, budget_bytes: int, max_list_bytes: int) -> None:
        self.cache = cache
        share = max(budget_bytes // SHARE_DIVISOR, max_list_bytes + CHUNK_BYTES)
        self.budget: ByteShare[str, _Response] = ByteShare(budget_bytes, share)
        self.aborter = SocketAborter()
        self.cut = 0  # responses cut for the budget

    async def serve(self, scope: dict[str, Any], send: Any) -> None:
        try:
            body = await self.cache.get()
        except FlashbackError as error:
            payload = error.body()
            await _start(send, error.status, len(payload), error.headers())
            await send({"type": "http.response.body", "body": payload})
            return
        client = _address(scope.get("client"))
        holder = share_address(client[0]) if client else "unknown"
        response = _Response(body, client, _address(scope.get("server")))
        if not self._admit(holder, response, len(body)):
            payload = FlashbackError("too many lists in flight", code="tracker_busy").body()
            await _start(send, 503, len(payload), {"Retry-After": "1"})
            await send({"type": "http.response.body", "body": payload})
            return
        del body  # from here only the response holds the list (a cut drops it)
        try:
            await _start(send, 200, len(response.body or b""), {})
            offset = 0
            while response.body is not None and offset < len(response.body):
                chunk = response.body[offset : offset + CHUNK_BYTES]
                offset += len(chunk)
                last = offset >= len(response.body)
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
        finally:
            self.budget.release(response)

    def _admit(self, holder: str, response: _Response, size: int) -> bool:
        admission = self.budget.admit(holder, response, size)
        for _, victim in admission.victims:
            # a cut response holds one piece at most: its bytes are back at once
            victim.body = None
            self.budget.release(victim)
            self.aborter.abort(victim.client, victim.server)
            self.cut += 1
        if self.budget.state(response) == "live":
            return True
        self.budget.release(response)
        return False


async def _start(send: Any, status: int, length: int, headers: dict[str, str]) -> None:
    raw = [
        (b"content-type", JSON_MIMETYPE.encode()),
        (b"content-length", str(length).encode()),
        *((k.lower().encode(), v.encode()) for k, v in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})

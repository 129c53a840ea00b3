"""Markdown views at a bounded cost: a size cap, a few renders at once, a cache.

markdown-it's cost grows with its input and hostile input is cheap to make:
a 512 KiB file of repeated ``![`` took 6 s of CPU (25 s on a loaded
machine) per view, and every open tab could ask for one. So:

* a file over :data:`MAX_RENDER_BYTES` is shown as text, never rendered
  (about 0.9 s of CPU for the worst input we know at that size);
* at most :data:`MAX_RENDERS` renders run at once, in worker threads (a
  :class:`trio.CapacityLimiter`: the event loop keeps serving);
* a rendered page is kept by (peer, path, ETag) -- a strong validator from
  the peer, so a changed file is rendered again -- up to
  :data:`CACHE_ENTRIES` pages and :data:`CACHE_BYTES` in all, least recently
  used out first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import trio

from flashback.ui.markdown import UrlFor, render_markdown

MAX_RENDER_BYTES: Final = 64 * 1024
MAX_RENDERS: Final = 2
CACHE_ENTRIES: Final = 64
CACHE_BYTES: Final = 16 * 1024 * 1024

Render = Callable[[str, tuple[str, ...], UrlFor], str]
CacheKey = tuple[str, tuple[str, ...], str]


def renderable(text: str) -> bool:
    """Small enough to render (else the view shows it as text)."""
    return len(text.encode("utf-8", "replace")) <= MAX_RENDER_BYTES


class MarkdownRenderer:
    def __init__(
        self,
        *,
        render: Render = render_markdown,
        max_renders: int = MAX_RENDERS,
        cache_entries: int = CACHE_ENTRIES,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self._render = render
        self._limiter = trio.CapacityLimiter(max_renders)
        self._cache: OrderedDict[CacheKey, str] = OrderedDict()
        self._cache_entries, self._cache_bytes = cache_entries, cache_bytes
        self._cached_bytes = 0
        self.renders = 0  # how many were really rendered (the rest came from the cache)

    @property
    def waiting(self) -> int:
        """Renders waiting for a slot."""
        return self._limiter.statistics().tasks_waiting

    async def render(
        self, peer: str, parts: tuple[str, ...], etag: str | None, text: str, url_for: UrlFor
    ) -> str:
        """Safe HTML for *text* (which must be :func:`renderable`)."""
        key = (peer, parts, etag) if etag is not None and _strong(etag) else None
        if key is not None and (html := self._cache.get(key)) is not None:
            self._cache.move_to_end(key)
            return html
        async with self._limiter:
            html = await trio.to_thread.run_sync(self._render, text, parts, url_for)
        self.renders += 1
        if key is not None:
            self._remember(key, html)
        return html

    def _remember(self, key: CacheKey, html: str) -> None:
        if len(html) > self._cache_bytes:
            return
        old = self._cache.pop(key, None)
        if old is not None:
            self._cached_bytes -= len(old)
        self._cache[key] = html
        self._cached_bytes += len(html)
        while len(self._cache) > self._cache_entries or self._cached_bytes > self._cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= len(dropped)


def _strong(etag: str) -> bool:
    return len(etag) <= 200 and etag.startswith('"') and etag.endswith('"') and len(etag) > 1

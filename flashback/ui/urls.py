"""The UI's own URLs, built from components (each one percent-encoded), never pasted."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

import httpx

#: the key of this daemon's own share in UI URLs (peer ids never contain it)
SELF_KEY = "self"


def _join(segments: Iterable[str]) -> str:
    return "/" + "/".join(quote(segment, safe="") for segment in segments)


def ui_url(peer: str, action: str, parts: tuple[str, ...] = (), **params: str) -> str:
    """``/p/<peer>/<action>/<parts...>`` with query *params*, as a relative URL string."""
    path = _join(("p", peer, action, *parts))
    if action == "browse":
        path += "/"
    return str(httpx.URL(path=path, params=params or None))


def peer_url(base: httpx.URL, route: str, parts: tuple[str, ...]) -> httpx.URL:
    """``<base>/<route>/<parts...>`` on a peer server (route: api/files, content, download)."""
    return base.copy_with(path=_join((*route.split("/"), *parts)))

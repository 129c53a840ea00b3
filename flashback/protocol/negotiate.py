"""Who asks: a person's browser (HTML) or an API client (JSON)? From ``Accept`` alone.

Pure. A browser's navigation sends ``text/html,...,*/*;q=0.8``; curl, httpx,
``fetch()`` and ``EventSource`` send ``*/*``, nothing or another type. Only a
request that ranks ``text/html`` strictly above ``application/json`` gets a
page; a tie (``*/*``) keeps the contract's JSON.
"""

from __future__ import annotations

from typing import Final

MAX_ACCEPT_CHARS: Final = 2048


def _quality(params: list[str]) -> float:
    for param in params:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


def _rank(accept: str, wanted: str) -> float:
    """The quality *accept* gives the media type *wanted* (the most specific range wins)."""
    kind = wanted.partition("/")[0]
    best: tuple[int, float] = (-1, 0.0)  # (specificity, quality)
    for item in accept[:MAX_ACCEPT_CHARS].split(","):
        media, *params = item.split(";")
        media = media.strip().lower()
        if media == wanted:
            specificity = 2
        elif media == f"{kind}/*":
            specificity = 1
        elif media == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best[0]:
            best = (specificity, _quality(params))
    return best[1]


def prefers_html(accept: str | None) -> bool:
    """True when *accept* (an ``Accept`` header, or None) ranks HTML above JSON."""
    if not accept:
        return False
    return _rank(accept, "text/html") > _rank(accept, "application/json")

"""Browser or API client, from the Accept header alone (pure)."""

from __future__ import annotations

import pytest

from flashback.protocol.negotiate import prefers_html

CHROMIUM = (
    "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    "image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
)


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (CHROMIUM, True),
        ("text/html", True),
        ("text/*", True),
        ("text/html;q=0.5, application/json", False),
        ("*/*", False),  # curl, httpx, fetch(): the contract's JSON
        (None, False),
        ("", False),
        ("application/json", False),
        ("text/event-stream", False),
        ("text/html;q=x", False),
        ("text/html;q=7", False),
        ("text/html, application/json", False),  # a tie keeps JSON
        ("application/json;q=0.1, text/html", True),
    ],
)
def test_prefers_html(accept: str | None, html: bool) -> None:
    assert prefers_html(accept) is html

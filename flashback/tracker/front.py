"""What a person sees who opens the tracker's printed URL in a browser.

The tracker is an API (INTERFACE §2): ``/`` stays a JSON 404 for API
clients. A browser asking for HTML gets this short page: what the tracker is,
how daemons use it, and its public routes. No script, no style, nothing
loaded (``FRONT_CSP``).
"""

from __future__ import annotations

from html import escape
from typing import Final

FRONT_CSP: Final = "default-src 'none'; base-uri 'none'; form-action 'none'"


def front_page(version: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Flashback relay tracker</title></head>
<body>
<h1>Flashback relay tracker</h1>
<p>This address is a Flashback tracker: it knows which peers are online and
introduces them to each other; it never sees the files. Point a daemon at it:
<code>flashback daemon --root DIR --tracker URL</code>, with this page's address
as URL. The web interface is each daemon's own: run <code>flashback ui</code>.</p>
<ul>
<li><a href="/api/peers/list">/api/peers/list</a>: the peers online, as JSON</li>
<li><a href="/api/relay/status">/api/relay/status</a>: the tracker's status</li>
<li><a href="/metrics">/metrics</a>: Prometheus metrics</li>
</ul>
<p><small>Flashback {escape(version)}</small></p>
</body></html>
"""

"""What a person sees who opens a peer server's address in a browser.

The peer server is an API (INTERFACE §3): ``/`` has no JSON of its own and
stays a JSON 404 for API clients. A browser asking for HTML -- the first
thing a newcomer does with the printed URL -- gets this short page instead:
what the server is, where the files are, and where the web interface is.
No script, no style, nothing loaded (``FRONT_CSP``); the name is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Final

FRONT_CSP: Final = "default-src 'none'; base-uri 'none'; form-action 'none'"


def front_page(name: str, version: str) -> str:
    who = escape(name) if name else "this machine"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Flashback peer server: {who}</title></head>
<body>
<h1>Flashback peer server: {who}</h1>
<p>This address serves {who}'s shared folder to other Flashback peers and to
tools such as curl. It is not the web interface: run <code>flashback ui</code>
on the machine of the daemon and open the address it prints (it carries an
access token).</p>
<ul>
<li><a href="/api/files">/api/files</a> lists the shared folder as JSON
(<code>/api/files/FOLDER</code> for a folder in it)</li>
<li><code>/content/PATH</code> shows a file, <code>/download/PATH</code> downloads it</li>
<li><a href="/api/info">/api/info</a> names this peer</li>
</ul>
<p><small>Flashback {escape(version)}</small></p>
</body></html>
"""

"""Which address to tell other peers to dial.

A daemon bound to a wildcard (``0.0.0.0`` or ``::``) listens everywhere, but
"0.0.0.0" is no address another machine can connect to. We announce the
local address the kernel would use to reach the tracker: the interface other
peers most likely share with us. A UDP ``connect`` only consults the routing
table; no packet is sent.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from flashback.protocol.hosts import WILDCARDS


def announce_host(bound_host: str, tracker_url: str | None) -> str:
    """*bound_host* unless it is a wildcard; then the route towards the tracker. Blocking."""
    if bound_host not in WILDCARDS:
        return bound_host
    family = socket.AF_INET6 if bound_host == "::" else socket.AF_INET
    loopback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    if not tracker_url:
        return loopback
    parts = urlsplit(tracker_url)
    target = parts.hostname or "localhost"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((target, port))
            return str(probe.getsockname()[0])
    except OSError:
        return loopback

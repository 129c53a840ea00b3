"""What a peer may announce as its host: a DNS name or an IP literal, nothing else.

A host ends up in URLs other peers fetch from, so anything that could carry
a port, a path or a query (``::1]:3912/internal/admin?x=``) is refused here,
once, for the tracker (on registration) and the daemon (on what it reads).
Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

MAX_HOST_CHARS: Final = 253
#: bind addresses that mean "every interface": no other machine can dial them
WILDCARDS: Final = frozenset({"0.0.0.0", "::", ""})
MAX_LABEL_CHARS: Final = 63
_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_valid_host(host: str) -> bool:
    """True for an IPv4/IPv6 literal (no brackets, no zone) or an RFC 1123 host name."""
    if not isinstance(host, str) or not 1 <= len(host) <= MAX_HOST_CHARS:
        return False
    if is_ip_literal(host):
        return "%" not in host  # a zone id means nothing to another machine
    name = host[:-1] if host.endswith(".") else host
    if not name:
        return False
    return all(_LABEL.match(label) for label in name.split("."))


#: names that always mean this machine (RFC 6761 §6.3); a rebinding page cannot own them
LOCAL_NAMES: Final = frozenset({"localhost"})


def host_of_header(value: str) -> str | None:
    """The host of a ``Host`` header (port and brackets removed, lower case), or None."""
    value = value.strip()
    if value.startswith("["):
        host, closed, rest = value[1:].partition("]")
        if not closed or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return host.lower()
    host, colon, port = value.partition(":")
    if colon and not port.isdigit():
        return None  # (an unbracketed IPv6 literal is no Host either)
    return host.lower()


def host_header_allowed(value: str | None, served_names: frozenset[str] = frozenset()) -> bool:
    """Whether a request with this ``Host`` is meant for us (DNS rebinding defence).

    A page from ``evil.example`` whose name the attacker re-points at our
    address sends ``Host: evil.example``: only IP literals, ``localhost`` and
    the names this server is told it serves (*served_names*, lower case) pass.
    A request without a ``Host`` (HTTP/1.0) comes from no browser: it passes.
    """
    if value is None or not value.strip():
        return True
    host = host_of_header(value)
    if host is None:
        return False
    host = host.removesuffix(".")
    if is_ip_literal(host):
        return True
    return host in LOCAL_NAMES or host in served_names

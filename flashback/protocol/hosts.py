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

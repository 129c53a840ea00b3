"""What ``status`` and ``peers`` print for a person (``--json`` prints the daemon's answer).

Peers that share a name get a short fingerprint after it, here and in the
"several peers are named" error; a peer's loopback address means nothing on
another machine, so only an address this daemon proved (its route's) or a
routable one is shown. When the tracker is not connected the reason is given,
never an empty list that looks like a quiet network.
"""

from __future__ import annotations

import ipaddress
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Final, TextIO

import httpx

from flashback.protocol.hosts import is_valid_host
from flashback.terminal import printable

HEADER: Final = f"{'NAME':<24} {'PEER ID':<20} {'ROUTE':<6} {'ADDRESS':<28} SOURCE"


def short_fingerprint(fingerprint: str) -> str:
    """``sha256:851897b6...`` -> ``851897b6``: enough to tell two peers of one name apart."""
    return fingerprint.removeprefix("sha256:")[:8]


def labels(peers: Iterable[Mapping[str, Any]]) -> list[str]:
    """Each peer's name, with `` (851897b6)`` after it where two peers share the name."""
    rows = list(peers)
    counts = Counter(str(row.get("name")) for row in rows)
    shown = []
    for row in rows:
        name = str(row.get("name"))
        key = row.get("fingerprint") or row.get("peer_id")
        if counts[name] > 1 and isinstance(key, str):
            shown.append(f"{name} ({short_fingerprint(key)})")
        else:
            shown.append(name)
    return shown


def _hostport(host: Any, port: Any) -> str | None:
    """``host:port`` if it is an address at all (an IPv6 one in brackets), else None."""
    try:
        if not is_valid_host(str(host)):
            return None
        return httpx.URL(scheme="http", host=str(host), port=int(port)).netloc.decode()
    except (httpx.InvalidURL, ValueError, TypeError):
        return None


def _is_local_only(host: Any) -> bool:
    try:
        address = ipaddress.ip_address(str(host))
    except ValueError:
        return str(host).lower() == "localhost"
    return address.is_loopback or address.is_unspecified or address.is_link_local


def _where(peer: Mapping[str, Any], route: str) -> str:
    address = peer.get("address")
    if isinstance(address, str) and route != "-":
        return address  # what the route used: proven to be this peer
    server = peer.get("peer_server")
    if isinstance(server, Mapping):
        if _is_local_only(server.get("host")):
            return "-"  # its own loopback: meaningless from another machine
        return _hostport(server.get("host"), server.get("port")) or "(invalid address)"
    candidates = peer.get("candidates") or []
    shown = [
        _hostport(c.get("host"), c.get("port")) or "(invalid address)"
        for c in candidates
        if isinstance(c, Mapping)
    ]
    return ", ".join(shown) or "-"


def format_peer(peer: Mapping[str, Any], *, label: str | None = None) -> str:
    """One row: name, peer id (or fingerprint), route, address, source."""
    name = label if label is not None else str(peer["name"])
    peer_id = str(peer.get("peer_id") or peer.get("fingerprint") or "-")
    route = peer.get("route") if isinstance(peer.get("route"), str) else "-"
    source = peer.get("source") if isinstance(peer.get("source"), str) else "tracker"
    where = _where(peer, str(route))
    return printable(f"{name:<24} {peer_id:<20} {route:<6} {where:<28} {source}").rstrip()


def tracker_state(tracker: Mapping[str, Any] | None) -> str:
    """``connected``, or why not: ``not connected: <reason>`` / ``never connected: ...``."""
    tracker = tracker or {}
    if tracker.get("connected"):
        return "connected"
    reason = tracker.get("reason")
    state = "not connected" if tracker.get("ever_connected") else "never connected"
    return f"{state}: {reason}" if reason else state


def peers_lines(listing: Mapping[str, Any]) -> tuple[list[str], list[str], int]:
    """(stdout lines, stderr lines, exit status) of ``flashback peers``."""
    peers = [p for p in listing.get("peers") or [] if isinstance(p, Mapping)]
    tracker = listing.get("tracker") or {}
    url = tracker.get("url")
    notes: list[str] = []
    down = bool(url) and not tracker.get("connected")
    if down and not peers:
        what = "never connected" if not tracker.get("ever_connected") else "not connected"
        reason = tracker.get("reason")
        line = f"flashback: {what} to the tracker at {url}" + (f": {reason}" if reason else "")
        return [], [printable(line)], 1
    if down:
        reason = tracker.get("reason")
        notes.append(
            printable(
                f"flashback: no connection to the tracker at {url}"
                + (f" ({reason})" if reason else "")
                + "; these peers are remembered or found on the LAN, not a live list"
            )
        )
    if not peers:
        return ["no peers online" if url else "no peers known (no tracker, none on the LAN)"], [], 0
    rows = [HEADER]
    rows += [
        format_peer(peer, label=label) for peer, label in zip(peers, labels(peers), strict=True)
    ]
    return rows, notes, 0


def print_peers(listing: Mapping[str, Any], *, out: TextIO | None = None) -> int:
    rows, notes, code = peers_lines(listing)
    for note in notes:
        print(note, file=sys.stderr)
    for row in rows:
        print(row, file=out or sys.stdout)
    return code


def format_event(event: Mapping[str, Any]) -> str | None:
    """A ``peers --watch`` line for a person."""
    kind = event.get("event")
    if kind == "peer-joined":
        return "+ " + format_peer(event["peer"])
    if kind == "peer-updated":
        return "~ " + format_peer(event["peer"])
    if kind == "peer-left":
        return printable(f"- {event['peer_id']} ({event['reason']})")
    if kind in ("tracker-connected", "tracker-disconnected"):
        return printable(f"* {kind} {event.get('url') or ''}".rstrip())
    return None


def print_status(status: Mapping[str, Any]) -> None:
    tracker = status["tracker"]
    print(printable(f"name:     {status['name']}"))
    print(printable(f"peer id:  {status['peer_id'] or '(not registered)'}"))
    print(printable(f"serving:  {status.get('root', '')} on {status['url']}"))
    if tracker.get("url"):
        print(printable(f"tracker:  {tracker['url']} ({tracker_state(tracker)})"))
    else:
        print("tracker:  (none)")
    print(printable(f"identity: {status.get('identity') or '(none)'}"))
    print(printable(f"fingerprint: {status.get('fingerprint') or '(none)'}"))
    print_access(status.get("access"))


def describe_entry(entry: Mapping[str, Any]) -> str:
    name, peer_id = entry.get("name"), entry.get("peer_id")
    who = " ".join(str(part) for part in (name, f"({peer_id})" if peer_id else None) if part)
    return printable(f"{who + ' ' if who else ''}{entry.get('fingerprint')}")


def print_access(access: Mapping[str, Any] | None) -> None:
    """The ``status`` lines for §11: the mode, then the allowed and denied peers."""
    if not isinstance(access, Mapping):
        return
    print(printable(f"share with: {access.get('share_with')}"))
    for title in ("allowed", "denied"):
        entries = access.get(title) or []
        print(f"{title}:{'' if entries else ' (none)'}")
        for entry in entries:
            print("  " + describe_entry(entry))

"""LAN discovery rules (§12), pure: what we announce, and what we believe of the LAN.

A daemon announces the DNS-SD service ``_flashback._tcp.local.`` (RFC 6763)
with its endpoint port in the SRV record and TXT keys ``id`` (its tracker
peer id, empty when it has none), ``name`` and ``fp``. Anyone on the
network can announce anything, so every announcement is checked before it
reaches the LAN table (:func:`parse_announcement`):

- the whole TXT record at most :data:`MAX_TXT_BYTES`, each value at most
  :data:`MAX_TXT_VALUE_BYTES` (a huge record is ignored, not truncated);
- ``fp`` exactly a fingerprint, ``name`` a registration-style name (1-64
  printable characters), ``id`` empty or a printable peer id, the port
  1-65535;
- candidates only from routable-looking addresses: no loopback, unspecified,
  multicast or scoped (link-local IPv6) address, so no stranger can make us
  dial our own machine's services.

The table itself (:class:`LanTable`) is bounded by
:class:`~flashback.protocol.fairshare.FairShare`: per announced address at
most :data:`MAX_LAN_PER_ADDRESS` services, at most :data:`MAX_LAN_PEERS`
overall, the heaviest address paying for a newcomer. (mDNS as the library
hands it to us carries no packet source: the address a service announces --
the one we would dial -- is the holder.)

Names still reach humans, so every line that shows one goes through
:func:`flashback.terminal.printable`; this module only guarantees they are
printable by :meth:`str.isprintable` and short.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from flashback.protocol.book import is_peer_id, is_peer_name
from flashback.protocol.fairshare import FairShare
from flashback.protocol.fingerprint import FINGERPRINT_PREFIX, is_fingerprint
from flashback.protocol.messages import MAX_CANDIDATES, Candidate

SERVICE_TYPE: Final = "_flashback._tcp.local."
MAX_TXT_BYTES: Final = 1024
MAX_TXT_VALUE_BYTES: Final = 256
MAX_LAN_PEERS: Final = 256
MAX_LAN_PER_ADDRESS: Final = 4
#: RFC 6763 §4.1.1: an instance label is at most 63 bytes
MAX_INSTANCE_LABEL_BYTES: Final = 63


class Ignored(ValueError):
    """An announcement we do not believe; the message says why (for a debug log)."""


@dataclass(frozen=True)
class LanPeer:
    """A peer as a valid announcement describes it."""

    service: str  # the full DNS-SD service name: the table's key
    peer_id: str | None
    name: str
    fingerprint: str
    candidates: tuple[Candidate, ...]

    def dump(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "name": self.name,
            "fingerprint": self.fingerprint,
            "candidates": [c.dump() for c in self.candidates],
        }


def txt_record(peer_id: str | None, name: str, fingerprint: str) -> dict[str, str]:
    return {"id": peer_id or "", "name": name, "fp": fingerprint}


def instance_label(name: str, fingerprint: str) -> str:
    """Our DNS-SD instance name: the peer name made label-safe plus 12 hex digits of the
    fingerprint, so two daemons of one name never collide (nor rename each other)."""
    suffix = fingerprint.removeprefix(FINGERPRINT_PREFIX)[:12]
    safe = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:40] or "flashback"
    return f"{safe}-{suffix}"


def parse_announcement(
    service: str,
    properties: Mapping[bytes, bytes | None],
    addresses: Iterable[str],
    port: int | None,
    *,
    text_bytes: int,
) -> LanPeer:
    """The peer a resolved service describes, or :class:`Ignored`.

    *text_bytes* is the size of the raw TXT record (zeroconf parses it into
    *properties*; the size is checked before anything in it is read).
    """
    if text_bytes > MAX_TXT_BYTES:
        raise Ignored(f"TXT record of {text_bytes} bytes (limit {MAX_TXT_BYTES})")
    if len(service.encode("utf-8", "replace")) > 255:
        raise Ignored("service name over 255 bytes")
    values: dict[str, str] = {}
    for key in (b"id", b"name", b"fp"):
        raw = properties.get(key)
        if raw is None:
            if key == b"id":
                values["id"] = ""
                continue
            raise Ignored(f"no TXT {key.decode()!r}")
        if len(raw) > MAX_TXT_VALUE_BYTES:
            raise Ignored(f"TXT {key.decode()!r} of {len(raw)} bytes")
        try:
            values[key.decode()] = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Ignored(f"TXT {key.decode()!r} is not UTF-8") from None
    if not is_fingerprint(values["fp"]):
        raise Ignored("TXT 'fp' is not a fingerprint")
    if not is_peer_name(values["name"]):
        raise Ignored("TXT 'name' is not 1-64 printable characters")
    peer_id = values["id"] or None
    if peer_id is not None and not is_peer_id(peer_id):
        raise Ignored("TXT 'id' is not a peer id")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise Ignored(f"port {port!r}")
    candidates = tuple(Candidate(host, port) for host in _dialable(addresses)[:MAX_CANDIDATES])
    if not candidates:
        raise Ignored("no dialable address")
    return LanPeer(service, peer_id, values["name"], values["fp"], candidates)


def _dialable(addresses: Iterable[str]) -> list[str]:
    out: list[str] = []
    for text in addresses:
        if "%" in text:  # scoped: means nothing off this link's interface
            continue
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if (
            address.is_loopback
            or address.is_unspecified
            or address.is_multicast
            or address.is_link_local
        ):
            continue
        if str(address) not in out:
            out.append(str(address))
    return out


class LanTable:
    """Who the LAN says is there, keyed by service name, bounded per address and overall.

    Our own announcement comes back to us too: *own_fingerprint* is never listed.
    """

    def __init__(
        self,
        own_fingerprint: str | None,
        *,
        capacity: int = MAX_LAN_PEERS,
        per_address: int = MAX_LAN_PER_ADDRESS,
    ) -> None:
        self.own_fingerprint = own_fingerprint
        self._share: FairShare[str, str] = FairShare(capacity, per_address)
        self._peers: dict[str, LanPeer] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, service: object) -> bool:
        return service in self._peers

    def seen(self, peer: LanPeer) -> list[LanPeer]:
        """Add or refresh *peer*; returns the peers evicted to make room."""
        if peer.fingerprint == self.own_fingerprint:
            return []
        admitted = self._share.admit(peer.candidates[0].host, peer.service)
        self._peers[peer.service] = peer
        if admitted.evicted is None:
            return []
        return [self._peers.pop(admitted.evicted[1])]

    def gone(self, service: str) -> LanPeer | None:
        self._share.release(service)
        return self._peers.pop(service, None)

    def peers(self) -> list[LanPeer]:
        return sorted(self._peers.values(), key=lambda p: (p.name, p.fingerprint))

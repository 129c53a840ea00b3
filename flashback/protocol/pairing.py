"""Whether a ``tunnel-request`` becomes a pair of invites (§6.2), pure.

A requester linked to this tracker instance asks for a tunnel to the owner
``to``. The session lives on this instance; each side gets one
``tunnel-invite`` naming this instance's tunnel port. Otherwise the
requester hears one ``tunnel-error``, with the first reason that applies:

1. :func:`request_refusal` -- before anything is spent:
   ``forbidden`` (a watcher has no peer id), ``disabled`` (no tunnel port),
   ``unknown_peer`` (the owner is not online), ``no_fingerprint`` (the owner
   registered no key to prove itself with). Then the request is charged to
   the requester's relay budget (``rate_limited``: the shell's step).
2. :func:`pairing_hosts` -- which host each side dials: the requester the
   one its own websocket reached; an owner linked here likewise; an owner
   linked to another instance of a cluster an address the server names
   (:func:`~flashback.protocol.tunnel.cluster_tunnel_host`), never one from
   the requester's ``Host`` header (TURN, RFC 8656). None known: ``disabled``.
3. :func:`delivery_refusal` -- once the session exists and the invites were
   offered: ``busy`` (an owner linked here whose queue is full keeps its
   link), ``unknown_peer`` (the owner or the requester cannot be reached).
   The shell closes the session on any of these.

No I/O: the shell passes what it looked up, tests pass plain values.
"""

from __future__ import annotations

from dataclasses import dataclass

from flashback.protocol.feed import not_online_text
from flashback.protocol.tunnel import cluster_tunnel_host


@dataclass(frozen=True, slots=True)
class Refusal:
    """The ``tunnel-error`` the requester hears: its ``code`` and ``message``."""

    code: str
    text: str


@dataclass(frozen=True, slots=True)
class Hosts:
    """Where each side of a session dials the tunnel port."""

    owner: str
    requester: str


def request_refusal(
    *,
    requester: str | None,
    tunnels_enabled: bool,
    owner: str,
    owner_online: bool,
    owner_fingerprint: str | None,
) -> Refusal | None:
    """Why a request for a tunnel to *owner* is refused before it costs anything, or None."""
    if requester is None:
        return Refusal("forbidden", "only an identified peer may open tunnels")
    if not tunnels_enabled:
        return Refusal("disabled", "this tracker has no tunnel port")
    if not owner_online:
        return Refusal("unknown_peer", not_online_text(owner))
    if owner_fingerprint is None:
        return Refusal("no_fingerprint", f"peer {owner!r} has no key to prove itself with")
    return None


def no_tunnel_host_text(*, remote_owner: bool) -> str:
    if remote_owner:
        return (
            "the owner is linked to another tracker instance and this one has no address "
            "to give it: set RELAY_TUNNEL_ADVERTISE (or bind the tracker to one address)"
        )
    return "no address to offer for the tunnel port"


def pairing_hosts(
    *,
    requester_host: str | None,
    owner_linked_here: bool,
    owner_link_host: str | None,
    advertise: str | None,
    bind_host: str,
) -> Hosts | Refusal:
    """The hosts the two sides dial, or the ``disabled`` refusal when one has none.

    *requester_host* and *owner_link_host* are what each link's own upgrade
    request named (:func:`~flashback.protocol.tunnel.advertise_host`);
    *owner_link_host* counts only for an owner linked here.
    """
    owner_host = owner_link_host if owner_linked_here else cluster_tunnel_host(advertise, bind_host)
    if requester_host is None or owner_host is None:
        return Refusal("disabled", no_tunnel_host_text(remote_owner=not owner_linked_here))
    return Hosts(owner=owner_host, requester=requester_host)


def delivery_refusal(
    owner: str, *, owner_linked_here: bool, owner_invited: bool, requester_invited: bool
) -> Refusal | None:
    """After offering the invites (the owner's first, the requester's only if that
    one went): None when both went, else why the session is called off."""
    if not owner_invited and owner_linked_here:
        # as for a relayed message: a full owner keeps its link, the requester hears busy
        return Refusal("busy", f"peer {owner!r} is busy")
    if not owner_invited or not requester_invited:
        return Refusal("unknown_peer", f"peer {owner!r} cannot be reached now")
    return None

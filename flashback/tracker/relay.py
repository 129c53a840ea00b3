"""What the tracker passes between peers: relayed messages and tunnels (§2, §6.2).

:class:`Relay` forwards ``stream-request``/``file-stream-ready``/``stream-error``
with ``from`` in place of ``to`` (to a link here, or through a shared
presence to the instance holding the target's link), delivers what another
instance relayed for a link here, and pairs ``tunnel-request``s into
sessions on this instance's tunnel port (:class:`~.tunnels.TunnelRelay`),
with the decision of :mod:`flashback.protocol.pairing`. Every relayed
message and tunnel request is paid out of the sender's relay budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flashback.config import TrackerConfig
from flashback.errors import BackendUnavailable
from flashback.protocol import pairing
from flashback.protocol.feed import Forwardable, forwarded, not_online_text, refusal, route_relay
from flashback.protocol.messages import (
    ErrorMessage,
    FileStreamReady,
    Message,
    StreamError,
    StreamRequest,
    TunnelErrorMessage,
    TunnelInvite,
    TunnelRequest,
)
from flashback.protocol.token_bucket import TokenBucket
from flashback.protocol.tunnel import TunnelError
from flashback.tracker import direct
from flashback.tracker.hub import Connection, Hub
from flashback.tracker.metrics import TrackerMetrics
from flashback.tracker.presence import Presence
from flashback.tracker.tunnels import TunnelRelay

log = logging.getLogger(__name__)


class Relay:
    """Relay and tunnel pairing for the links of one tracker instance."""

    def __init__(
        self,
        config: TrackerConfig,
        hub: Hub,
        presence: Presence,
        metrics: TrackerMetrics,
        *,
        tunnels: TunnelRelay | None,
        introductions: direct.Introductions,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.hub = hub
        self.presence = presence
        self.metrics = metrics
        self.tunnels = tunnels
        self.introductions = introductions
        self.clock = clock
        #: the tunnel port once it listens (serve.py); None: no invites yet
        self.tunnel_port: int | None = None

    def budget_for(self, peer_id: str | None) -> TokenBucket | None:
        """One relay budget per peer, shared by all its links here: a second
        link is not a second allowance. (Anonymous links may not relay.)"""
        if peer_id is None:
            return None
        linked = self.hub.link_for(peer_id)
        if linked is not None and linked.relay_budget is not None:
            return linked.relay_budget
        return TokenBucket(self.config.relay_rate_per_s, self.config.relay_burst)

    async def deliver_relayed(self, to: str, message: Message) -> None:
        """A message another instance relayed for *to*: deliver it, or bounce it."""
        if isinstance(message, TunnelErrorMessage) and not self._relayed_decline(to, message):
            return  # only the owner invited to a session of ours may decline it
        link = self.hub.link_for(to)
        route = route_relay(
            online=self.presence.is_online(to), linked_here=link is not None, relayed=True
        )
        # As a local relay: a full target keeps its link, the sender hears busy.
        code, why = "unknown_peer", not_online_text(to)
        if route == "deliver" and link is not None:
            if self.hub.relay(link, message):
                return
            code, why = "busy", f"peer {to!r} is busy"
        if not isinstance(message, StreamRequest | FileStreamReady | TunnelInvite):
            return
        sender = message.from_
        bounce = refusal(message.request_id, message, code, why)
        if sender is None or bounce is None:
            return
        local = self.hub.link_for(sender)
        if local is not None:
            self.hub.send(local, bounce)
        else:
            await self.presence.relay(sender, bounce)

    async def relay(
        self, sender: Connection, message: StreamRequest | FileStreamReady | StreamError
    ) -> None:
        """Forward with ``from`` in place of ``to``; the tracker never looks inside."""
        if sender.peer_id is None:
            reply = ErrorMessage("forbidden", "only an identified peer may relay streams")
            self.hub.send(sender, reply)
            return
        if message.to is None:
            self.hub.send(sender, ErrorMessage("invalid_field", "'to' is required"))
            return
        if not await self.spend_relay_budget(sender):
            self._refuse_relay(sender, message, "rate_limited", "too many relayed messages")
            return
        target = self.hub.link_for(message.to)
        route = route_relay(
            online=self.presence.is_online(message.to),
            linked_here=target is not None,
            relayed=False,
        )
        out = forwarded(message, sender.peer_id)
        if route == "deliver" and target is not None:
            if self.hub.relay(target, out):
                self.metrics.relayed.inc()
            else:  # the target is busy: the sender hears it, the target keeps its link
                self._refuse_relay(sender, message, "busy", f"peer {message.to!r} is busy")
            return
        try:
            if await self.presence.relay(message.to, out):
                self.metrics.relayed.inc()
                return
        except BackendUnavailable as exc:
            log.info("cannot relay to %s: %s", message.to, exc.message)
        self._refuse_relay(sender, message, "unknown_peer", not_online_text(message.to))

    async def spend_relay_budget(self, sender: Connection) -> bool:
        """One relayed message or tunnel request out of the sender's relay budget: its
        links' bucket here, and the cluster-wide bucket of its peer id (one per cluster,
        not one per instance)."""
        budget = sender.relay_budget
        config = self.config
        if (budget is None or budget.take(self.clock())) and not await self.presence.take_token(
            f"relay:{sender.peer_id}", config.relay_rate_per_s, config.relay_burst
        ):
            return True
        self.metrics.rate_limited.inc()
        return False

    def _refuse_relay(self, sender: Connection, message: Forwardable, code: str, why: str) -> None:
        bounce = refusal(message.request_id, message, code, why)
        if bounce is not None:
            self.hub.send(sender, bounce)

    # -- tunnels (§6.2) -------------------------------------------------------------

    async def tunnel_request(self, sender: Connection, message: TunnelRequest) -> None:
        """Pair *sender* with the owner *to*: two single-use keys, one invite each.

        The session lives on this instance, so both invites name this tunnel
        port. An owner linked to another instance of a Redis cluster gets its
        invite through the cluster's relay, and dials this instance at
        ``RELAY_TUNNEL_ADVERTISE`` (or this instance's own bind address).
        """

        def refuse(why: pairing.Refusal) -> None:
            self.hub.send(sender, TunnelErrorMessage(message.request_id, why.code, why.text))

        owner_info = self.presence.peer(message.to, self.clock())
        refused = pairing.request_refusal(
            requester=sender.peer_id,
            tunnels_enabled=self.tunnels is not None and self.tunnel_port is not None,
            owner=message.to,
            owner_online=owner_info is not None,
            owner_fingerprint=None if owner_info is None else owner_info.fingerprint,
        )
        if refused is not None:
            refuse(refused)
            return
        assert sender.peer_id is not None and self.tunnels is not None
        assert self.tunnel_port is not None and owner_info is not None
        if not await self.spend_relay_budget(sender):  # a request costs what a message does
            refuse(pairing.Refusal("rate_limited", "too many tunnel requests"))
            return
        owner = self.hub.link_for(message.to)
        hosts = pairing.pairing_hosts(
            requester_host=sender.advertise_host,
            owner_linked_here=owner is not None,
            owner_link_host=None if owner is None else owner.advertise_host,
            advertise=self.config.tunnel_advertise,
            bind_host=self.config.host,
        )
        if isinstance(hosts, pairing.Refusal):
            refuse(hosts)
            return
        try:
            session = self.tunnels.invite(
                request_id=message.request_id,
                client_peer=sender.peer_id,
                server_peer=message.to,
                client_address=sender.address,
            )
        except TunnelError as exc:
            refuse(pairing.Refusal(exc.code, exc.message))
            return

        to_owner, to_requester = direct.introduction_invites(
            message.request_id,
            session,
            self.tunnel_port,
            owner=(owner_info, hosts.owner),
            requester=(self.presence.peer(sender.peer_id, self.clock()), hosts.requester),
        )
        if owner is not None:
            invited = self.hub.relay(owner, to_owner)
        else:
            try:
                invited = await self.presence.relay(message.to, to_owner)
            except BackendUnavailable as exc:
                log.info("cannot invite %s: %s", message.to, exc.message)
                invited = False
        refused = pairing.delivery_refusal(
            message.to,
            owner_linked_here=owner is not None,
            owner_invited=invited,
            requester_invited=invited and self.hub.send(sender, to_requester),
        )
        if refused is not None:
            self.tunnels.table.close(session)
            refuse(refused)
            return
        self.introductions.introduced(message.request_id, sender.peer_id, message.to)

    async def tunnel_decline(self, sender: Connection, message: TunnelErrorMessage) -> None:
        """An owner said no: end the session and tell the requester, from the owner.

        The session lives on the requester's instance. Declined here, it ends
        here; otherwise the decline crosses the cluster's relay (bounded by the
        owner's relay budget) and that instance checks it against its session
        (:meth:`_relayed_decline`) before the requester hears of it.
        """
        if sender.peer_id is None or message.to is None or self.tunnels is None:
            return
        out = forwarded(message, sender.peer_id)
        if self.tunnels.decline(
            request_id=message.request_id, client_peer=message.to, server_peer=sender.peer_id
        ):
            requester = self.hub.link_for(message.to)
            if requester is not None:
                self.hub.send(requester, out)
            return
        if self.hub.link_for(message.to) is not None:
            return  # linked here but no such session: nothing to forward
        if not await self.spend_relay_budget(sender):
            return
        try:
            await self.presence.relay(message.to, out)
        except BackendUnavailable as exc:
            log.info("cannot forward a decline to %s: %s", message.to, exc.message)

    def _relayed_decline(self, to: str, message: TunnelErrorMessage) -> bool:
        """A decline another instance relayed: True if it ends a session of ours."""
        return (
            self.tunnels is not None
            and message.from_ is not None
            and self.tunnels.decline(
                request_id=message.request_id, client_peer=to, server_peer=message.from_
            )
        )

"""Prometheus metrics of one tracker, in its own CollectorRegistry.

Not the global registry: a test run builds many trackers in one process,
and each must count only its own.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from flashback.tracker.tunnels import TunnelCounters

PREFIX = "flashback_tracker_"
CONTENT_TYPE = CONTENT_TYPE_LATEST


class TrackerMetrics:
    def __init__(
        self,
        *,
        peers_online: Callable[[], float],
        connections: Callable[[], float],
        seq: Callable[[], float],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Gauge(PREFIX + "peers_online", "Peers registered and not expired", registry=r).set_function(
            peers_online
        )
        Gauge(PREFIX + "websocket_connections", "Open websocket links", registry=r).set_function(
            connections
        )
        Gauge(PREFIX + "seq", "The current change counter", registry=r).set_function(seq)
        self.registrations = Counter(
            PREFIX + "registrations", "Successful registrations (new or returning)", registry=r
        )
        self.heartbeats = Counter(PREFIX + "heartbeats", "Accepted heartbeats", registry=r)
        self.departures = Counter(PREFIX + "departures", "Peers that left (DELETE)", registry=r)
        self.expiries = Counter(PREFIX + "expiries", "Peers dropped by the TTL", registry=r)
        self.relayed = Counter(
            PREFIX + "messages_relayed", "Stream messages forwarded between peers", registry=r
        )
        self.evictions = Counter(
            PREFIX + "watchers_evicted", "Websockets closed for falling behind", registry=r
        )
        self.rejected = Counter(
            PREFIX + "auth_failures", "Requests refused for a missing or wrong token", registry=r
        )
        self.rate_limited = Counter(
            PREFIX + "rate_limited", "Registrations refused by the rate limit", registry=r
        )

    def add_tunnels(self, counters: TunnelCounters, active: Callable[[], float]) -> None:
        """The tunnel port's figures (INTERFACE §6.2): sessions active, outcomes, bytes."""
        r = self.registry
        Gauge(
            PREFIX + "tunnels_active", "Tunnel sessions pending or paired", registry=r
        ).set_function(active)
        Gauge(
            PREFIX + "tunnel_bytes_copied", "Bytes copied between paired tunnel ends", registry=r
        ).set_function(lambda: counters.bytes_copied)
        Gauge(
            PREFIX + "tunnel_copy_fallbacks",
            "Tunnel sessions copied through a buffer: the kernel refused a large pipe",
            registry=r,
        ).set_function(lambda: counters.copy_fallbacks)
        Gauge(
            PREFIX + "tunnel_reflections",
            "FLASHBACK-REFLECT lines answered with the address seen",
            registry=r,
        ).set_function(lambda: counters.reflections)
        outcomes = Counter(
            PREFIX + "tunnel_sessions", "Tunnel sessions by outcome", ["outcome"], registry=r
        )
        counters.on_outcome = lambda outcome: outcomes.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

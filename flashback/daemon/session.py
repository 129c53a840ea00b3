"""Staying registered: register (with backoff), heartbeat, register again.

A tracker that is down or unreachable delays nothing else in the daemon:
this task retries on its own schedule and only ever logs failures.
"""

from __future__ import annotations

import logging
import random
from typing import Final, NoReturn
from urllib.parse import urlsplit

import trio

from flashback.daemon.context import DaemonContext
from flashback.daemon.identity import Identity, IdentityStore
from flashback.daemon.tracker_api import (
    IdentityRejected,
    RegistrationRefused,
    RetryLater,
    TrackerAPI,
    UnknownPeer,
)
from flashback.protocol.backoff import Backoff, RandomSource
from flashback.shutdown import Shutdown

log = logging.getLogger(__name__)

HEARTBEAT_JITTER_FRACTION = 0.1
#: the goodbye's own limit; the shutdown's deadline may end it sooner
UNREGISTER_TIMEOUT_S: Final = 2.0


async def heartbeat_loop(
    api: TrackerAPI,
    identity: Identity,
    interval_s: float,
    *,
    rng: RandomSource,
    lost: trio.Event | None = None,
) -> NoReturn:
    """Beat every *interval_s* on an absolute schedule (``sleep_until``: no drift).

    Each beat comes up to 10% early, never late. Network failures are logged
    and the schedule goes on; :class:`UnknownPeer` / :class:`IdentityRejected`
    end the loop so the caller registers again, as does *lost* being set.
    """
    if lost is None:
        lost = trio.Event()
    next_at = trio.current_time() + interval_s
    while True:
        with trio.move_on_at(next_at - rng.random() * HEARTBEAT_JITTER_FRACTION * interval_s):
            await lost.wait()
            raise UnknownPeer("the tracker link reported us unknown")
        try:
            interval_s = await api.heartbeat(identity)
        except RetryLater as exc:
            log.warning("heartbeat failed (will retry): %s", exc)
        next_at += interval_s


def _tracker_tunnel(tracker_url: str | None, port: int | None) -> tuple[str, int] | None:
    """The tunnel port the registration answer named, on the tracker URL's host."""
    host = urlsplit(tracker_url).hostname if tracker_url else None
    return (host, port) if host and port is not None else None


async def maintain_registration(
    ctx: DaemonContext,
    api: TrackerAPI,
    store: IdentityStore,
    *,
    rng: RandomSource | None = None,
) -> NoReturn:
    rng = rng or random.Random()
    backoff = Backoff(rng=rng)
    identity = store.load()
    assert ctx.address is not None, "the peer server binds before registration"
    while True:
        try:
            registration = await api.register(
                ctx.config.name,
                ctx.announce_host or ctx.address.host,
                ctx.address.port,
                identity=identity,
                fingerprint=ctx.fingerprint,
                direct=ctx.direct,
            )
        except IdentityRejected:
            log.warning("the tracker refused our identity; registering as a new peer")
            store.forget()
            identity = None
            ctx.set_identity(None)
            continue
        except (RetryLater, RegistrationRefused) as exc:
            delay = backoff.next_delay_s()
            if isinstance(exc, RetryLater) and exc.retry_after_s is not None:
                delay = max(delay, exc.retry_after_s)
            log.warning("registration failed: %s; retrying in %.1f s", exc, delay)
            ctx.tracker_failed(str(exc))
            await trio.sleep(delay)
            continue
        backoff.reset()
        identity = registration.identity
        store.save(identity)
        ctx.tracker_tunnel = _tracker_tunnel(ctx.config.tracker_url, registration.tunnel_port)
        ctx.set_identity(identity)
        log.info("registered with %s as %s", ctx.config.tracker_url, identity.peer_id)
        ctx.reregister = trio.Event()
        try:
            await heartbeat_loop(
                api, identity, registration.heartbeat_interval_s, rng=rng, lost=ctx.reregister
            )
        except UnknownPeer:
            log.info("the tracker no longer knows us; registering again")
        except IdentityRejected:
            log.warning("the tracker refused our token; registering as a new peer")
            store.forget()
            identity = None
            ctx.set_identity(None)


async def unregister(
    ctx: DaemonContext,
    api: TrackerAPI,
    shutdown: Shutdown,
    *,
    timeout_s: float = UNREGISTER_TIMEOUT_S,
) -> None:
    """Say goodbye (peer-left reason ``left``), shielded, within the shutdown's deadline.

    Best effort, not a must-finish step: a tracker that is down or slow
    expires us by TTL anyway, so a cut goodbye is logged and we still exit 0.
    """
    identity = ctx.identity
    if identity is None:
        return
    with shutdown.shielded(timeout_s) as scope:
        try:
            await api.leave(identity)
            log.info("unregistered from the tracker")
        except Exception as exc:  # shutdown goes on whatever the tracker says
            log.warning("could not unregister: %s", exc)
    if scope.cancelled_caught:
        log.warning("could not unregister in time; the tracker will expire us")

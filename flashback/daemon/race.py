"""The route race for one carried connection (docs/INTERFACE.md §10.3), as a thin shell.

In the manner of RFC 8305 (rules in ``protocol/direct.py``):

1. a peer reached directly before is dialled **plainly** at the addresses that
   worked, at once -- this needs no tracker;
2. the introduction (``tunnel-request``; 250 ms later when step 1 runs) brings
   an invite: its candidates are dialled from the endpoint's own port at once
   (each dial opens with the INTRO line), INTRO connections the other side's
   dials make to our endpoint join in, and the relay join starts 250 ms after
   the invite unless a direct connection has already authenticated;
3. the first attempt whose TLS handshake, fingerprint and pin checks pass (and
   whose ``OPEN`` was answered ``OK``) wins; every other attempt is closed.

Each side reports the winning route (``route-report``); the route book
remembers it for next time.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import trio

from flashback.daemon.direct import DirectEndpoint, Handoff
from flashback.daemon.endpoint_bind import close_abortively
from flashback.daemon.tunnel_ends import Opened, TunnelFailed, open_over
from flashback.daemon.tunnels import TunnelService
from flashback.protocol.direct import (
    HANDSHAKE_TIMEOUT_S,
    PUNCH_WINDOW_S,
    Race,
    RouteBook,
    hostport,
    intro_line,
    introduction_candidates,
)
from flashback.protocol.messages import Candidate, TunnelInvite
from flashback.protocol.tunnel import OpenTarget

log = logging.getLogger(__name__)

#: a refusal that is the answer, whichever route carried it
DECISIVE: Final = ("forbidden", "fingerprint_mismatch")
MAX_PROVEN: Final = 1024


@dataclass
class _Attempts:
    race: Race
    scope: trio.CancelScope
    winner: Opened | None = None
    winner_candidate: Candidate | None = None
    errors: list[TunnelFailed] = field(default_factory=list)

    def offer(self, label: str, opened: Opened, candidate: Candidate | None) -> bool:
        if self.race.claim(label) and self.winner is None:
            self.winner, self.winner_candidate = opened, candidate
            self.scope.cancel()
            return True
        return False

    def failure(self) -> TunnelFailed:
        for error in self.errors:
            if error.code in DECISIVE:
                return error
        if self.errors:
            return self.errors[-1]
        return TunnelFailed("unreachable", "no route to the peer worked")


class RouteRacer:
    """Opens each carried connection by the race; *service* is the relay side."""

    def __init__(
        self,
        service: TunnelService,
        endpoint: DirectEndpoint | None,
        *,
        client_context: Callable[[], ssl.SSLContext],
        check_pin: Callable[[str, str], None],
        book: RouteBook | None = None,
        before_punch: Callable[[TunnelInvite], None] = lambda _invite: None,
        candidates_of: Callable[[str], tuple[Candidate, ...]] = lambda _peer_id: (),
        linked: Callable[[], bool] = lambda: True,
    ) -> None:
        self._service = service
        self._endpoint = endpoint
        self._client_context = client_context
        self._check_pin = check_pin
        self.book = book or RouteBook()
        self._before_punch = before_punch
        self._candidates_of = candidates_of
        self._linked = linked
        # the owner fingerprint each peer proved on a direct route (for plain dials)
        self._proven: dict[str, str] = {}

    def know(self, peer_key: str, fingerprint: str, candidates: Iterable[Candidate]) -> None:
        """A peer known without the tracker (LAN, peer book, §12): dial *candidates*
        plainly, and accept only an owner that proves *fingerprint*."""
        self._proven[peer_key] = fingerprint
        self.book.learn_direct(peer_key, candidates)

    async def open(self, peer_id: str, target: OpenTarget) -> Opened:
        remembered = self.book.direct_first(peer_id)
        fingerprint = self._proven.get(peer_id)
        plain = remembered if fingerprint is not None else ()
        with trio.CancelScope() as scope:
            attempts = _Attempts(Race(), scope)
            async with trio.open_nursery() as nursery:
                # With the tracker down a plain dial leaves from the endpoint's port
                # (a NAT that saw that pair may let it through) and, at once, from any
                # port: the endpoint pair may still be closing from the last route
                # (the owner's side of it then breaks the handshake), and an open
                # owner takes either. The first to authenticate wins.
                ports = (
                    (True, False) if self._endpoint is not None and not self._linked() else (False,)
                )
                for candidate in plain:
                    assert fingerprint is not None
                    for from_endpoint in ports:
                        nursery.start_soon(
                            self._plain,
                            peer_id,
                            target,
                            candidate,
                            fingerprint,
                            attempts,
                            from_endpoint,
                        )
                nursery.start_soon(
                    self._introduce,
                    peer_id,
                    target,
                    attempts,
                    attempts.race.relay_delay_s if plain else 0.0,
                )
        now = trio.current_time()
        opened = attempts.winner
        if opened is None:
            raise attempts.failure()
        if opened.route == "direct" and attempts.winner_candidate is not None:
            self.book.remember_direct(peer_id, attempts.winner_candidate, now)
        else:
            for candidate in plain:
                self.book.forget_direct(peer_id, candidate)
        return opened

    async def _plain(
        self,
        peer_id: str,
        target: OpenTarget,
        candidate: Candidate,
        fingerprint: str,
        attempts: _Attempts,
        from_endpoint: bool,
    ) -> None:
        address = hostport(candidate.host, candidate.port)
        try:
            with trio.fail_after(PUNCH_WINDOW_S + HANDSHAKE_TIMEOUT_S):
                tcp = await self._dial_plain(candidate, from_endpoint)
                close_abortively(tcp)
                stream, leftover = await open_over(
                    tcp,
                    context=self._client_context(),
                    expected_fingerprint=fingerprint,
                    check_pin=lambda actual: self._check_pin(peer_id, actual),
                    target=target,
                )
        except (OSError, trio.TooSlowError) as exc:
            attempts.errors.append(TunnelFailed("unreachable", f"{address}: {exc}"))
            return
        except TunnelFailed as exc:
            attempts.errors.append(exc)
            return
        opened = Opened(stream, leftover, "direct", address, False)
        if not attempts.offer(f"plain {address}", opened, candidate):
            await trio.aclose_forcefully(stream)

    async def _dial_plain(self, candidate: Candidate, from_endpoint: bool) -> trio.SocketStream:
        """From the endpoint's port (only while the tracker is down: with it up, the
        introduction's dials use that port pair, and a plain dial on it would meet
        the owner's INTRO dial in a simultaneous open), or from any port."""
        endpoint = self._endpoint
        if from_endpoint and endpoint is not None and endpoint.can_dial(candidate.host):
            return await endpoint.dial_from(candidate)
        return await trio.open_tcp_stream(candidate.host, candidate.port)

    async def _introduce(
        self, peer_id: str, target: OpenTarget, attempts: _Attempts, delay_s: float
    ) -> None:
        if delay_s:
            await trio.sleep(delay_s)
        try:
            invite = await self._service.request_invite(peer_id)
        except TunnelFailed as exc:
            attempts.errors.append(exc)
            return
        invited_at = trio.current_time()
        candidates = self._punchable(peer_id, invite, invited_at)
        self._before_punch(invite)
        tried: list[Candidate] = []
        try:
            await self._race_invite(
                peer_id, target, invite, candidates, attempts, invited_at, tried
            )
        finally:
            winner = attempts.winner
            if winner is not None:
                self._service.report_route(invite.request_id, winner.route)
                if winner.route == "direct":
                    self._remember_proof(peer_id, invite.fingerprint)
                elif candidates is not None or self.book.last(peer_id) is None:
                    self.book.remember_relay(
                        peer_id, winner.address, trio.current_time(), tried=tried
                    )

    def _punchable(
        self, peer_id: str, invite: TunnelInvite, now: float
    ) -> tuple[Candidate, ...] | None:
        """The invite's candidates to dial (None: no punching for this introduction)."""
        if self._endpoint is None:
            return None
        try:
            intro_line(invite.request_id)
        except ValueError:
            return None
        candidates = introduction_candidates(invite.candidates, tunnel_host=invite.host)
        if not self.book.may_punch(peer_id, now, candidates):
            return None
        return candidates

    async def _race_invite(
        self,
        peer_id: str,
        target: OpenTarget,
        invite: TunnelInvite,
        candidates: tuple[Candidate, ...] | None,
        attempts: _Attempts,
        invited_at: float,
        tried: list[Candidate],
    ) -> None:
        async def use(
            stream: trio.SocketStream, address: str, release: Callable[[], None] | None = None
        ) -> bool:
            close_abortively(stream)
            proven = [False]  # the other end showed the invite's certificate

            def pin(actual: str) -> None:
                proven[0] = True
                self._check_pin(peer_id, actual)

            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                    tls, leftover = await open_over(
                        stream,
                        context=self._client_context(),
                        expected_fingerprint=invite.fingerprint,
                        check_pin=pin,
                        target=target,
                    )
            except TunnelFailed as exc:
                # whoever reached an INTRO connection without the owner's key is a
                # stranger, not the owner's answer: it must not decide the error
                if proven[0]:
                    attempts.errors.append(exc)
                return False
            except trio.TooSlowError:
                return False
            opened = Opened(tls, leftover, "direct", address, True, release or (lambda: None))
            host, _, port = address.rpartition(":")
            candidate = Candidate(host.strip("[]"), int(port))
            if attempts.offer(f"punched {address}", opened, candidate):
                return True
            await trio.aclose_forcefully(tls)
            return False

        async def use_handoff(handoff: Handoff) -> None:
            kept = False
            try:
                kept = await use(handoff.stream, handoff.address, handoff.done.set)
            finally:
                if not kept:  # lost, failed or cancelled: its endpoint handler closes it
                    handoff.done.set()

        endpoint = self._endpoint
        punched = trio.Event()
        async with contextlib.AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            if endpoint is not None and candidates is not None:
                handoffs = await stack.enter_async_context(endpoint.expect(invite.request_id))

                async def take_handoffs() -> None:
                    async for handoff in handoffs:
                        nursery.start_soon(use_handoff, handoff)

                def more() -> tuple[Candidate, ...]:
                    return introduction_candidates(
                        self._candidates_of(peer_id), tunnel_host=invite.host
                    )

                async def punch() -> None:
                    try:
                        tried.extend(await endpoint.punch(invite.request_id, candidates, use, more))
                    finally:
                        punched.set()

                nursery.start_soon(take_handoffs)
                nursery.start_soon(punch)
            else:
                punched.set()
            await trio.sleep_until(attempts.race.relay_start(invited_at, len(candidates or ())))
            if attempts.race.should_join_relay():
                try:
                    stream, leftover = await self._service.join_relay(invite, target)
                except TunnelFailed as exc:
                    attempts.errors.append(exc)
                else:
                    address = hostport(invite.host, invite.port)
                    opened = Opened(stream, leftover, "relay", address, False)
                    if not attempts.offer("relay", opened, None):
                        await trio.aclose_forcefully(stream)
            # the relay failed: direct attempts may still win until their dials end
            # (each bounded by the window and a handshake); a winner cancels all this
            await punched.wait()
            nursery.cancel_scope.cancel()

    def _remember_proof(self, peer_id: str, fingerprint: str) -> None:
        self._proven[peer_id] = fingerprint
        while len(self._proven) > MAX_PROVEN:
            self._proven.pop(next(iter(self._proven)))

"""Who may connect to me (docs/INTERFACE.md §11): the owner's decision, and its memory.

The owner decides on the fingerprint the requester *proved* in the TLS
handshake, never on the tracker's word alone. :func:`decide` is the whole
rule, a pure function of plain values, in this order:

1. no certificate proved                         -> ``no_certificate``
2. the fingerprint is denied                     -> ``denied`` (whatever the mode)
3. the invite's peer id was accepted before with
   another fingerprint (the owner's pin)          -> ``key_changed`` (until ``forget``)
4. the fingerprint is allowed                    -> serve (both modes)
5. ``allowed`` mode                              -> ``forbidden``
6. ``tracker`` mode, with an invite: the fingerprint
   the tracker lists for the invite's peer id     -> serve, else ``forbidden``
7. ``tracker`` mode, a plain dial (no invite): a
   fingerprint the tracker lists for some online
   peer, one this owner accepted before, or one
   its peer book holds as vouched (the tracker
   listed it when this daemon reached or served
   that peer: §12, how a LAN-found peer passes
   with the tracker down)                        -> serve, else ``forbidden``

A served requester with an invite is pinned (``Verdict.pin``): its peer id
keeps that fingerprint. :class:`EventThrottle` keeps the ``access-denied``
event to once per fingerprint per minute, with time as an argument.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Hashable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

Mode = Literal["tracker", "allowed"]
Reason = Literal["no_certificate", "denied", "key_changed", "forbidden"]
MODES: Final[tuple[Mode, ...]] = ("tracker", "allowed")
REASONS: Final[tuple[Reason, ...]] = ("no_certificate", "denied", "key_changed", "forbidden")
#: what goes on the wire (``ERR forbidden``) for every refusal: a stranger learns no more
WIRE_REFUSAL: Final = "forbidden"


@dataclass(frozen=True, slots=True)
class Verdict:
    """``refusal`` None means serve; ``pin`` is the (peer id, fingerprint) to remember."""

    refusal: Reason | None
    pin: tuple[str, str] | None = None

    @property
    def serve(self) -> bool:
        return self.refusal is None


def decide(
    presented: str | None,
    *,
    mode: Mode,
    invite_peer: str | None,
    invite_fingerprint: str | None,
    allowed: Collection[str],
    denied: Collection[str],
    pins: Mapping[str, str],
    accepted_before: Collection[str],
    online: Collection[str],
    booked: Collection[str] = (),
) -> Verdict:
    """The rule of the module docstring.

    *pins*: peer id -> the fingerprint this owner accepted it with;
    *accepted_before*: every fingerprint accepted before (the pins' values,
    as a set the caller keeps); *online*: the fingerprints the tracker lists
    for online peers; *booked*: the peer book's vouched fingerprints. What the
    LAN announces is in none of these: a LAN stranger passes only if allowed.
    """
    if presented is None:
        return Verdict("no_certificate")
    if presented in denied:
        return Verdict("denied")
    pinned = pins.get(invite_peer) if invite_peer is not None else None
    if pinned is not None and pinned != presented:
        return Verdict("key_changed")
    pin = (invite_peer, presented) if invite_peer is not None and pinned is None else None
    if presented in allowed:
        return Verdict(None, pin)
    if mode == "allowed":
        return Verdict("forbidden")
    if invite_peer is not None:
        vouched = invite_fingerprint is not None and presented == invite_fingerprint
        return Verdict(None, pin) if vouched else Verdict("forbidden")
    if presented in online or presented in accepted_before or presented in booked:
        return Verdict(None)
    return Verdict("forbidden")


class EventThrottle:
    """At most one event per key per *window_s*; remembers at most *capacity* keys.

    The least recently *emitted* key is forgotten first (LRU): a flood of new
    fingerprints only makes old ones eligible sooner, it never grows memory.
    """

    def __init__(self, *, window_s: float = 60.0, capacity: int = 1024) -> None:
        if capacity < 1 or window_s <= 0:
            raise ValueError("capacity >= 1 and window_s > 0")
        self.window_s = window_s
        self.capacity = capacity
        self._last: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def allow(self, key: Hashable, now: float) -> bool:
        """True (and remembered) if *key* had no event in the last *window_s*."""
        last = self._last.get(key)
        if last is not None and now - last < self.window_s:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)
        return True

"""Which issued identities the tracker keeps, and whose go when there are too many.

Every new peer is an identity in the store (its token's hash, name and
capabilities), kept so it can come back under its id. Registering and
leaving costs a stranger nothing, so the identities of peers that are
**offline** are a :class:`~flashback.protocol.fairshare.FairShare` by the
address they registered from (:func:`~flashback.protocol.fairshare.share_address`):
``RELAY_MAX_IDENTITIES`` in all, ``RELAY_MAX_IDENTITIES_PER_ADDRESS`` each.
Past an address's share its own oldest offline identity is forgotten; past
the cap the heaviest address's oldest -- never another address's only one,
never the newcomer's. An online peer's identity is never in the table (the
peers online are bounded where they register), so it is never forgotten; a
peer whose identity was forgotten registers anew (its old id answers 401).

In a Redis cluster each instance bounds the identities that went offline
through it; identities a store kept from an earlier run are loaded as
offline when the tracker starts (:meth:`load`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flashback.errors import BackendUnavailable
from flashback.protocol.fairshare import FairShare
from flashback.tracker.store import IdentityStore

log = logging.getLogger(__name__)


class IdentityBook:
    def __init__(
        self,
        store: IdentityStore,
        is_online: Callable[[str], bool],
        *,
        capacity: int,
        per_address: int,
        online_cap: int,
    ) -> None:
        self.store = store
        self._is_online = is_online
        self.offline: FairShare[str, str] = FairShare(capacity, per_address)
        # peers registered through this instance and (last we heard) online
        self._online: dict[str, str] = {}
        self._online_cap = max(1, online_cap)

    def __len__(self) -> int:
        return len(self.offline)

    async def load(self) -> None:
        """The identities a store kept from an earlier run: all offline now."""
        for peer_id, address in await self.store.known():
            if not self._is_online(peer_id):
                await self._admit_offline(peer_id, address)

    async def registered(self, peer_id: str, address: str) -> None:
        """*peer_id* registered from *address* (a share address) and is online."""
        self.offline.release(peer_id)
        self._online.pop(peer_id, None)
        self._online[peer_id] = address
        if len(self._online) > self._online_cap:
            # peers that went offline without a word here (another instance
            # expired them, a registration failed half-way): offline now
            for gone in [p for p in self._online if not self._is_online(p)]:
                await self.gone(gone)

    async def gone(self, peer_id: str) -> None:
        """*peer_id* left or expired: its identity joins the offline share."""
        address = self._online.pop(peer_id, None)
        if address is not None:
            await self._admit_offline(peer_id, address)

    async def _admit_offline(self, peer_id: str, address: str) -> None:
        evicted = self.offline.admit(address, peer_id).evicted
        if evicted is None:
            return
        try:
            await self.store.forget(evicted[1])
        except BackendUnavailable as exc:
            log.warning("could not forget the identity of %s: %s", evicted[1], exc.message)

"""A tracker that lies: the real one, except that it lists the fingerprint written
in the file ``FLASHBACK_TEST_LIE_FILE`` (read again each time, so a test can change
the lie) for the peer named ``FLASHBACK_TEST_LIE_ABOUT`` -- in its peer list, and in
every invite it sends an owner about that peer.

Run as ``python -m tests.lying_tracker tracker ...`` (the ``flashback`` arguments).
It is how the access tests show that an owner in ``allowed`` mode decides on
the requester's certificate, never on the tracker's word (§11).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from flashback.cli import main
from flashback.protocol.messages import PeerInfo, TunnelInvite

LIE_FILE = Path(os.environ["FLASHBACK_TEST_LIE_FILE"])
ABOUT = os.environ["FLASHBACK_TEST_LIE_ABOUT"]
_honest_invite = TunnelInvite.dump
_honest_peer = PeerInfo.dump
#: peer ids of the peer the lie is about, learnt as the tracker lists it
_liars_target: set[str] = set()


def _lie() -> str:
    return LIE_FILE.read_text().strip()


def _lying_peer(self: PeerInfo) -> dict[str, Any]:
    data = _honest_peer(self)
    if self.name == ABOUT:
        _liars_target.add(self.peer_id)
        data["fingerprint"] = _lie()
    return data


def _lying_invite(self: TunnelInvite) -> dict[str, Any]:
    data = _honest_invite(self)
    if self.role == "server" and self.from_ in _liars_target:
        data["peer_fingerprint"] = _lie()
    return data


PeerInfo.dump = _lying_peer  # type: ignore[method-assign]  # the lie this stand-in tracker tells
TunnelInvite.dump = _lying_invite  # type: ignore[method-assign,assignment]  # the lie this stand-in tracker tells

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

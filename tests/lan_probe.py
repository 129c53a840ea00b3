"""Run inside a network namespace by test_lan.py: LAN discovery in one process.

Two daemons' worth of :func:`flashback.daemon.lan.run_lan` (alice, bob) on
one address, and a stranger on another that announces hostile services
(escapes in a name, a bogus fingerprint, a huge TXT value, and a flood).
Prints one JSON object: who found whom, what the tables hold, and which
threads were alive before, during and after.
"""

from __future__ import annotations

import json
import sys
import threading
from functools import partial
from typing import Any

import trio
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from flashback.daemon.lan import run_lan
from flashback.protocol.lan import MAX_LAN_PER_ADDRESS, SERVICE_TYPE, LanTable
from flashback.shutdown import Shutdown

FP = {"alice": "sha256:" + "a" * 64, "bob": "sha256:" + "b" * 64}
FLOOD = 3 * MAX_LAN_PER_ADDRESS


def _hostile(address: str) -> list[ServiceInfo]:
    def info(label: str, props: dict[str, str]) -> ServiceInfo:
        return ServiceInfo(
            SERVICE_TYPE,
            f"{label}.{SERVICE_TYPE}",
            port=4000,
            properties=props,
            server=f"{label}.local.",
            parsed_addresses=[address],
        )

    fp = "sha256:" + "e" * 64
    out = [
        info("escape", {"id": "", "name": "ev\x1b[2Jil\x07", "fp": fp}),
        info("badfp", {"id": "", "name": "badfp", "fp": "sha256:XYZ"}),
        info("huge", {"id": "", "name": "x" * 250, "fp": fp, "pad": "y" * 250}),
    ]
    out += [
        info(f"flood{n}", {"id": "", "name": f"flood{n}", "fp": f"sha256:{n:064x}"})
        for n in range(FLOOD)
    ]
    return out


async def main(honest: str, stranger: str) -> dict[str, Any]:
    before = sorted(t.name for t in threading.enumerate())
    shutdown = Shutdown()
    tables = {name: LanTable(fp) for name, fp in FP.items()}
    events: list[tuple[str, str, dict[str, Any]]] = []
    during: list[str] = []
    changed = trio.Event()

    def emit(who: str, event: str, **fields: Any) -> None:
        nonlocal changed
        events.append((who, event, fields))
        changed.set()
        changed = trio.Event()

    def settled() -> bool:
        # the flood fills the stranger's share (and no more); alice and bob see each other
        return all(
            len(t) == 1 + MAX_LAN_PER_ADDRESS
            and sum(p.candidates[0].host == stranger for p in t.peers()) == MAX_LAN_PER_ADDRESS
            for t in tables.values()
        )

    async with trio.open_nursery() as nursery:
        for name, fp in FP.items():
            await nursery.start(
                partial(
                    run_lan,
                    name=name,
                    fingerprint=fp,
                    port=4242,
                    table=tables[name],
                    shutdown=shutdown,
                    emit=partial(emit, name),
                    interfaces=[honest],
                )
            )
        zc = await trio.to_thread.run_sync(
            lambda: Zeroconf(interfaces=[stranger], ip_version=IPVersion.V4Only)
        )
        try:
            for info in _hostile(stranger):
                await trio.to_thread.run_sync(
                    lambda info=info: zc.register_service(info, cooperating_responders=True)  # type: ignore[misc]  # binds the loop variable
                )
            with trio.fail_after(20):
                while not settled():
                    await changed.wait()
            during = sorted(t.name for t in threading.enumerate())
            listed = {
                name: sorted(p.name for p in t.peers() if p.candidates[0].host == honest)
                for name, t in tables.items()
            }
            stranger_rows = [p.name for p in tables["bob"].peers() if p.name.startswith("flood")]
        finally:
            await trio.to_thread.run_sync(zc.close)
        shutdown.set()
    after = sorted(t.name for t in threading.enumerate())
    return {
        "listed": listed,
        "stranger_rows": stranger_rows,
        "after_stranger_left": sorted({p.name for t in tables.values() for p in t.peers()}),
        "events": events,
        "threads": {"before": before, "during": during, "after": after},
    }


if __name__ == "__main__":
    print(json.dumps(trio.run(main, sys.argv[1], sys.argv[2])))

"""One timed, verified ``flashback get`` with the CPU each process spent on it.

Shared by the benches that fetch one big file between two daemons (by the
tunnel, directly, through a NAT lab): the route each one checks is its own.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from proc_cpu import children_cpu_s, cpu_s  # bench/, the scripts' directory

from flashback.client.local import part_paths
from tests.procs import run_cli


def remove_output(out: Path) -> None:
    for path in (out, *part_paths(out)):
        path.unlink(missing_ok=True)


async def timed_get(
    name: str,
    *,
    bob_env: dict[str, str],
    prefix: Sequence[str],
    pids: Mapping[str, int],
    roles: Iterable[str],
    out: Path,
    timeout_s: float,
) -> tuple[float, dict[str, float]]:
    """Seconds for ``get alice big.bin`` into *out*, and CPU seconds per role
    (*pids*' processes plus ``client``, the get itself); exits on any failure."""
    remove_output(out)
    before = {role: cpu_s(pid) for role, pid in pids.items()}
    before["client"] = children_cpu_s()
    t0 = time.perf_counter()
    got = await run_cli(
        ["get", "alice", "big.bin", "-o", str(out)],
        env=bob_env,
        prefix=prefix,
        timeout_s=timeout_s,
    )
    elapsed = time.perf_counter() - t0
    after = {role: cpu_s(pid) for role, pid in pids.items()}
    after["client"] = children_cpu_s()
    if got.returncode != 0:
        raise SystemExit(f"{name} get failed: {got.stderr.decode(errors='replace')}")
    done = json.loads(got.stdout.decode().strip().splitlines()[-1])
    if done.get("event") != "download-complete" or done.get("verified") is not True:
        raise SystemExit(f"{name} get did not verify: {done}")
    return elapsed, {role: after[role] - before[role] for role in roles}

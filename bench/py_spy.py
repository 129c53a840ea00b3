"""One more ``flashback get`` with py-spy sampling every process involved.

Shared by the benches that fetch one big file between two daemons: each
daemon (and the tracker) is sampled by ``py-spy record --pid``, the ``get``
client is started under ``py-spy record --``; the top self-time leaves of
each process are printed.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import trio
from timed_get import remove_output  # bench/, the scripts' directory

from tests.procs import run_cli

PROFILE_TOP: Final = 12


def summarize_raw(path: Path, top: int = PROFILE_TOP) -> list[tuple[float, str]]:
    """Self time per leaf function (share of samples) from py-spy's raw (collapsed) output."""
    counts: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        leaf = stack.rsplit(";", 1)[-1]
        counts[leaf] = counts.get(leaf, 0) + int(n)
        total += int(n)
    ranked = sorted(((c / total, leaf) for leaf, c in counts.items()), reverse=True)
    return ranked[:top]


async def profile_get(
    name: str,
    *,
    py_spy: str,
    bob_env: dict[str, str],
    prefix: Sequence[str],
    pids: Mapping[str, int],
    out: Path,
    work: Path,
    timeout_s: float,
) -> None:
    """``get alice big.bin`` into *out* with py-spy on *pids* and on the client."""
    remove_output(out)
    files = {role: work / f"{name}-{role}.txt" for role in (*pids, "client")}
    recorders = []
    for role, pid in pids.items():
        recorders.append(await trio.lowlevel.open_process(
            [py_spy, "record", "--nonblocking", "--format", "raw", "-o", str(files[role]),
             "--pid", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    await trio.sleep(1.0)  # py-spy needs a moment to attach
    record = [py_spy, "record", "--nonblocking", "--format", "raw", "-o"]
    record += [str(files["client"]), "--"]
    got = await run_cli(
        ["get", "alice", "big.bin", "-o", str(out)],
        env=bob_env,
        prefix=[*prefix, *record],
        timeout_s=timeout_s,
    )
    for recorder in recorders:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
    for recorder in recorders:
        await recorder.wait()
    remove_output(out)
    if got.returncode != 0:
        raise SystemExit(f"profiled {name} get failed: {got.stderr.decode(errors='replace')}")
    for role, path in files.items():
        if not path.exists():
            print(f"py-spy {name} {role}: no samples")
            continue
        print(f"py-spy {name} {role}: top self time (share of this process's samples)")
        for share, leaf in summarize_raw(path):
            print(f"  {share * 100:5.1f} %  {leaf}")

"""trio.SSLStream vs flashback's BulkTLSStream: one TLS 1.3 stream over loopback TCP.

Two processes, the daemons' own contexts (``PeerTLS``): a sender (TLS server)
``send_all``s ``--size-mib`` MiB in 256 KiB writes, a receiver (TLS client)
``receive_some(256 KiB)``s until the end and throws the bytes away. Prints
MB/s, how many receives it took and their mean size, and each side's CPU
(user+sys of its own process). The receiving side is what a tunnel's or a
direct route's requester does for every byte of a ``get``. Usage::

    PYTHONPATH=. .venv/bin/python bench/bench_tls_stream.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import trio

from flashback.daemon.bulk_tls import BulkTLSStream
from flashback.daemon.keys import load_or_create
from flashback.daemon.peer_tls import PeerTLS

CHUNK: Final = 256 * 1024
KINDS: Final = ("trio", "bulk")


def wrap(kind: str, stream: trio.SocketStream, tls: PeerTLS, server: bool) -> trio.abc.Stream:
    context = tls.server_context() if server else tls.client_context()
    if kind == "trio":
        if server:
            return trio.SSLStream(stream, context, server_side=True)
        return trio.SSLStream(stream, context, server_hostname=None)
    return BulkTLSStream(stream, context, server_side=server)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def side(kind: str, role: str, port_file: Path, total: int) -> None:
    tls = PeerTLS(load_or_create(Path(tempfile.mkdtemp(prefix="fb-tls-bench-"))))
    if role == "send":
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        await trio.Path(port_file).write_text(str(listener.socket.getsockname()[1]))
        tcp = await listener.accept()
        stream = wrap(kind, tcp, tls, server=True)
        await stream.do_handshake()  # type: ignore[attr-defined]
        block = os.urandom(CHUNK)
        start = cpu_s()
        for _ in range(total // CHUNK):
            await stream.send_all(block)
        await stream.aclose()
        print(f"send {cpu_s() - start:.2f}")
        return
    tcp = await trio.open_tcp_stream("127.0.0.1", int(await trio.Path(port_file).read_text()))
    stream = wrap(kind, tcp, tls, server=False)
    await stream.do_handshake()  # type: ignore[attr-defined]
    got = receives = 0
    start, t0 = cpu_s(), trio.current_time()
    try:
        while data := await stream.receive_some(CHUNK):
            got += len(data)
            receives += 1
    except trio.BrokenResourceError:
        pass
    elapsed = trio.current_time() - t0
    print(f"recv {cpu_s() - start:.2f} {got} {receives} {elapsed:.3f}")


def one(kind: str, size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        me = [sys.executable, __file__, "--side", kind]
        sender = subprocess.Popen([*me, "send", str(port_file), str(size)], stdout=subprocess.PIPE)
        while not port_file.exists() or not port_file.read_text():
            if sender.poll() is not None:
                raise SystemExit("the sender ended before listening")
            time.sleep(0.02)
        receiver = subprocess.run(
            [*me, "recv", str(port_file), str(size)], stdout=subprocess.PIPE, check=True
        )
        out, _ = sender.communicate()
    _, recv_cpu, got, receives, elapsed = receiver.stdout.decode().split()
    return {
        "MB/s": int(got) / float(elapsed) / 1e6,
        "receives": int(receives),
        "KiB/receive": int(got) / int(receives) / 1024,
        "recv CPU s/GiB": float(recv_cpu) * (1 << 30) / int(got),
        "send CPU s/GiB": float(out.decode().split()[1]) * (1 << 30) / int(got),
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--side":
        kind, role, port_file, total = sys.argv[2:6]
        trio.run(side, kind, role, Path(port_file), int(total))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * 1024 * 1024
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    rows: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for run in range(args.runs):
        for kind in KINDS if run % 2 == 0 else KINDS[::-1]:
            rows[kind].append(one(kind, size))
    print(f"\n{args.size_mib} MiB through one TLS 1.3 stream on loopback, {args.runs} runs "
          "each, interleaved (medians)")  # fmt: skip
    keys = list(rows[KINDS[0]][0])
    print(f"{'stream':6} " + " ".join(f"{k:>15}" for k in keys))
    for kind, runs in rows.items():
        medians = [sorted(r[k] for r in runs)[len(runs) // 2] for k in keys]
        print(f"{kind:6} " + " ".join(f"{m:15.2f}" for m in medians))
    print("load average at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

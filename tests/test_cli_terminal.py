"""The command line as a person at a terminal sees it: real ``flashback`` processes
in a pty, against a real tracker and daemons on loopback; each case asserts the
one line it leaves on the screen and its exit code."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path

import trio

from tests.procs import daemon_env, run_cli
from tests.pty_session import at_terminal, run_at_terminal
from tests.test_daemon_system import (
    FakePeerServer,
    joined,
    register_fake_peer,
    start_daemon,
    start_tracker,
)

KEPT = "is kept: run the same command again to resume"


async def test_get_at_a_terminal_is_one_summary_line_json_with_flag_or_pipe(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    data = os.urandom(300_000)
    bob_env = daemon_env(tmp_path, "bob")
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker(stack, nursery, tmp_path)
            files = {"big.bin": data, "docs/a.txt": b"a\n", "docs/b.txt": b"bb\n"}
            await start_daemon(stack, nursery, tmp_path, "alice", url, files)
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await bob.wait_event(joined("alice"))

            out = tmp_path / "big.bin"
            code, lines = await run_at_terminal(
                ["get", "alice", "big.bin", "-o", str(out)], env=bob_env
            )
            sha = hashlib.sha256(data).hexdigest()
            assert (code, lines[-1]) == (
                0,
                f"saved {out} (293.0 KiB from alice, sha256 {sha[:12]}\u2026 verified)",
            )
            assert not any(line.startswith("{") for line in lines), lines
            assert out.read_bytes() == data

            folder = tmp_path / "docs"
            code, lines = await run_at_terminal(
                ["get", "alice", "docs", "-o", str(folder)], env=bob_env
            )
            assert (code, lines[-1]) == (0, f"saved {folder}/ (2 files, 5 B from alice)")

            again = tmp_path / "again.bin"
            code, lines = await run_at_terminal(
                ["get", "alice", "big.bin", "-o", str(again), "--json"], env=bob_env
            )
            assert code == 0
            events = [json.loads(line) for line in lines if line.startswith("{")]
            assert [e["event"] for e in events] == ["download-started", "download-complete"]
            assert events[-1]["sha256"] == sha

            piped = await run_cli(
                ["get", "alice", "big.bin", "-o", str(tmp_path / "p.bin")], env=bob_env
            )
            assert piped.returncode == 0, piped.stderr
            assert json.loads(piped.stdout.splitlines()[-1])["event"] == "download-complete"


async def test_misleading_lines_are_precise_at_a_terminal(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    bob_env = daemon_env(tmp_path, "bob")
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker(stack, nursery, tmp_path)
            files = {"big.bin": b"x" * 1000, "docs/index.md": b"# hi\n"}
            await start_daemon(stack, nursery, tmp_path, "alice", url, files)
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await bob.wait_event(joined("alice"))

            async def screen(*args: str) -> tuple[int, str]:
                code, lines = await run_at_terminal(list(args), env=bob_env)
                assert len(lines) == 1, lines
                return code, lines[0]

            assert await screen("stream", "alcie", "big.bin") == (
                1,
                "flashback: no peer 'alcie' is online (did you mean 'alice'?)",
            )
            assert await screen("stream", "alice", "docs") == (
                2,
                "flashback: error: 'docs' is a folder on peer 'alice'; stream sends one file: "
                "fetch a folder with flashback get",
            )
            assert await screen("ls", "alice", "docs/index.md") == (
                2,
                "flashback: error: 'docs/index.md' is a file on peer 'alice', not a directory: "
                "fetch it with flashback get",
            )
            assert await screen("get", "alice", "../etc/passwd") == (
                2,
                "flashback: error: '../etc/passwd' leaves the peer's share "
                "('..' is not allowed in PATH)",
            )
            assert await screen("get", "alice", "nope.bin", "-o", str(tmp_path / "n")) == (
                1,
                "flashback: no file or folder 'nope.bin' on peer 'alice'",
            )
            code, line = await screen("get", "alice", "big.bin", "-o", "/proc/x")
            assert code == 1 and line.startswith("flashback: cannot use /proc/x.part"), line
            into = tmp_path / "into"
            into.mkdir()
            code, line = await screen("get", "alice", "docs/index.md", "-o", str(into))
            assert code == 0 and line.startswith(f"saved {into / 'index.md'} (5 B from alice")
            assert (into / "index.md").read_bytes() == b"# hi\n"


class StallingPeer(FakePeerServer):
    """Sends a third of the file, then holds the connection open; a resume gets the rest."""

    ETAG = '"stall-v1"'

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ranges: list[str | None] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = await stream.receive_some()
            if not chunk:
                return
            raw += chunk
        head = raw.split(b"\r\n\r\n")[0].decode().split("\r\n")
        if await self.answered_info(stream, head[0].split(" ")[1]):
            return
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        self.ranges.append(headers.get("range"))
        size = len(self.data)
        first = int(headers.get("range", "bytes=0-").removeprefix("bytes=").rstrip("-"))
        digest = base64.b64encode(hashlib.sha256(self.data).digest()).decode()
        status = "206 Partial Content" if first else "200 OK"
        extra = f"Content-Range: bytes {first}-{size - 1}/{size}\r\n" if first else ""
        await stream.send_all(
            f"HTTP/1.1 {status}\r\nContent-Length: {size - first}\r\nETag: {self.ETAG}\r\n"
            f"{extra}Repr-Digest: sha-256=:{digest}:\r\nAccept-Ranges: bytes\r\n"
            f"Connection: close\r\n\r\n".encode()
        )
        if first:
            await stream.send_all(self.data[first:])
            await stream.aclose()
            return
        await stream.send_all(self.data[: size // 3])
        await trio.sleep_forever()  # the requester's Ctrl-C ends this


async def test_ctrl_c_during_get_keeps_the_part_says_so_and_resumes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    data = os.urandom(1024 * 1024)
    peer = StallingPeer(data)
    listeners = await nursery.start(partial(trio.serve_tcp, peer.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    bob_env = daemon_env(tmp_path, "bob")
    out = tmp_path / "file.bin"
    part = tmp_path / "file.bin.part"
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker(stack, nursery, tmp_path)
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await nursery.start(register_fake_peer, url, "slow", port, peer)
            await bob.wait_event(joined("slow"))

            args = ["get", "slow", "file.bin", "-o", str(out)]
            async with at_terminal(args, env=bob_env) as session:
                await session.wait_for("%")  # the progress bar runs
                # another process writes the part: no event to wait on but its size
                while not part.exists() or part.stat().st_size < len(data) // 3:  # noqa: ASYNC110
                    await trio.sleep(0.02)
                session.ctrl_c()
            assert (session.returncode, session.last_line()) == (
                130,
                f"flashback: interrupted; the partial file {part} {KEPT}",
            )
            text = "\n".join(session.lines())
            assert "Traceback" not in text and "never awaited" not in text, text
            assert part.stat().st_size == len(data) // 3 and not out.exists()

            code, lines = await run_at_terminal(args, env=bob_env)
            assert code == 0, lines
            assert lines[-1].startswith(f"saved {out} (1.0 MiB from slow, sha256 ")
            assert lines[-1].endswith("verified, resumed at 341.3 KiB)"), lines[-1]
            assert peer.ranges[-1] == f"bytes={len(data) // 3}-"
            assert out.read_bytes() == data

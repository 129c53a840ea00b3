"""``flashback stream`` as users run it: a tracker and two daemon processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import trio

from flashback.protocol.conditional import make_etag
from flashback.transfer import resume_key
from tests.procs import daemon_env, event_is, run_cli
from tests.test_daemon_system import joined, start_daemon, start_tracker


async def test_stream_between_two_daemons(tmp_path: Path, nursery: trio.Nursery) -> None:
    data = os.urandom(2 * 1024 * 1024 + 5)
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            tracker, url = await start_tracker(stack, nursery, tmp_path)
            alice = await start_daemon(stack, nursery, tmp_path, "alice", url, {"v/film.bin": data})
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            await bob.wait_event(joined("alice"))
            out = tmp_path / "out.bin"
            bob_env = daemon_env(tmp_path, "bob")

            result = await run_cli(["stream", "alice", "v/film.bin", "-o", str(out)], env=bob_env)
            assert result.returncode == 0, result.stderr
            lines = [json.loads(line) for line in result.stdout.splitlines()]
            notice = lines[0]
            assert notice["event"] == "file-stream-ready"
            assert notice["path"] == "v/film.bin" and notice["size"] == len(data)
            assert notice["host"] == "127.0.0.1" and notice["token"]
            assert lines[-1] == {
                "event": "download-complete",
                "path": str(out),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "verified": True,
                "repaired_blocks": 0,
            }
            assert out.read_bytes() == data

            ready = await alice.wait_event(event_is("file-stream-ready", port=notice["port"]))
            assert ready["path"] == "v/film.bin" and ready["size"] == len(data)
            closed = await alice.wait_event(event_is("stream-closed", port=notice["port"]))
            assert closed["reason"] == "completed" and closed["bytes_sent"] == len(data)
            assert not any(notice["token"] in json.dumps(e) for e in alice.events)
            await bob.wait_event(event_is("file-stream-ready", port=notice["port"]))

            # a partial copy from an earlier run resumes on a new port (new token)
            # and that port completes when the rest has gone out
            source = tmp_path / "alice" / "share" / "v" / "film.bin"
            info = source.stat()
            resumed = tmp_path / "resumed.bin"
            part = tmp_path / "resumed.bin.part"
            part.write_bytes(data[:700_000])
            (tmp_path / "resumed.bin.part.json").write_text(
                json.dumps(
                    {
                        "key": resume_key(notice["peer_id"], "v/film.bin"),
                        "etag": make_etag(
                            info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns
                        ),
                    }
                )
            )
            again = await run_cli(
                ["stream", "alice", "v/film.bin", "-o", str(resumed)], env=bob_env
            )
            assert again.returncode == 0, again.stderr
            port = json.loads(again.stdout.splitlines()[0])["port"]
            started = next(
                json.loads(line)
                for line in again.stdout.splitlines()
                if b"download-started" in line
            )
            assert started["offset"] == 700_000
            assert resumed.read_bytes() == data
            closed = await alice.wait_event(event_is("stream-closed", port=port))
            assert closed["reason"] == "completed"
            assert closed["bytes_sent"] == len(data) - 700_000

            missing = await run_cli(["stream", "alice", ".hidden", "-o", "x"], env=bob_env)
            assert missing.returncode == 1 and b"no such file" in missing.stderr
            unknown = await run_cli(["stream", "nobody", "x"], env=bob_env)
            assert unknown.returncode == 1 and b"nobody" in unknown.stderr
            usage = await run_cli(["stream", "alice"], env=bob_env)
            assert usage.returncode == 2

            tracker.signal(signal.SIGTERM)
            await bob.wait_event(event_is("tracker-disconnected"))
            offline = await run_cli(["stream", "alice", "v/film.bin", "-o", "y"], env=bob_env)
            assert offline.returncode == 1
            assert offline.stderr.decode().strip() == "flashback: no tracker connection"
            # a daemon streaming to itself needs no tracker
            own = await run_cli(
                ["stream", "bob", "bob.txt", "-o", str(tmp_path / "own.txt")], env=bob_env
            )
            assert own.returncode == 0, own.stderr
            assert (tmp_path / "own.txt").read_bytes() == b"I am bob\n"

            for proc in (alice, bob):
                proc.signal(signal.SIGTERM)
                assert await proc.wait_exit(timeout_s=5) == 0

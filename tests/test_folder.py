"""Folder ``get`` (INTERFACE §8) against a real peer server, and against an evil one.

The first tests run the fetcher in-process against ``serve_peer`` on a
loopback port (real HTTP, real files). The evil peer is a tiny HTTP server
of its own: once in-process (case-insensitive disks, endless listings), and
once registered with a real tracker and fetched by the real ``flashback
get`` through a real daemon, proving nothing lands outside OUT.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from quart import Response, request
from quart_trio import QuartTrio

from flashback.folder import (
    FolderFailed,
    FolderFetch,
    FolderProgress,
    FolderResult,
    is_case_insensitive,
)
from flashback.peer.app import LocalInfo, ShareSettings
from flashback.peer.serve import serve_peer
from flashback.protocol import folder as folder_rules
from flashback.protocol.digest import block_size_for
from flashback.protocol.folder import part_name
from flashback.transfer import DownloadResult, resume_key
from flashback.web import hypercorn_config, serve_quart
from tests.abuse_support import register_fake_peer, start_tracker_proc
from tests.procs import daemon_env, event_is, run_cli, start

MIB = 1024 * 1024


def make_tree(root: Path) -> dict[str, bytes]:
    """3 levels, 200 small files, 3 of 8 MiB, spaces and non-ASCII, an empty
    directory, hidden files: what should arrive (relative path -> bytes)."""
    rng = random.Random(15)
    expected: dict[str, bytes] = {}
    dirs = ["", "docs", "docs/ünïcödé names", "docs/ünïcödé names/level three", "b c", "b c/d"]
    for n in range(200):
        rel = f"{dirs[n % len(dirs)]}/file {n:03d} é.txt".lstrip("/")
        expected[rel] = rng.randbytes(rng.randrange(0, 3000))
    for n in range(3):
        expected[f"b c/big {n}.bin"] = rng.randbytes(8 * MIB)
    for rel, data in expected.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "docs" / "empty dir").mkdir()
    (root / ".hidden.txt").write_text("not fetched")
    (root / "docs" / ".git").mkdir()
    (root / "docs" / ".git" / "config").write_text("not fetched either")
    return expected


@asynccontextmanager
async def peer_server(root: Path, *, show_hidden: bool = False) -> AsyncIterator[httpx.URL]:
    settings = ShareSettings(root, show_hidden=show_hidden, info=LocalInfo(name="p"))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(partial(serve_peer, settings, "127.0.0.1", 0))
        yield httpx.URL(address.url)
        nursery.cancel_scope.cancel()


async def fetch(
    base: httpx.URL, remote: str, out: Path, **options: Any
) -> tuple[FolderResult, list[DownloadResult]]:
    done: list[DownloadResult] = []
    async with httpx.AsyncClient(timeout=30) as http:
        result = await FolderFetch(
            http, base, remote, out, owner="peer-1", on_complete=done.append, **options
        ).run()
    return result, done


def tree_of(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


async def test_a_tree_arrives_whole_and_a_second_run_fetches_only_what_changed(
    tmp_path: Path,
) -> None:
    share = tmp_path / "share"
    expected = make_tree(share)
    out = tmp_path / "out"
    # show_hidden: the peer lists its dot files, and the client still does not fetch them
    with trio.fail_after(60):
        async with peer_server(share, show_hidden=True) as base:
            result, done = await fetch(base, "", out)
            expected["index.md"] = (share / "index.md").read_bytes()  # the server made it
            assert tree_of(out) == expected
            assert (out / "docs" / "empty dir").is_dir()
            assert not any(p.name.startswith(".") for p in out.rglob("*"))
            assert (result.files, result.skipped, result.failed) == (len(expected), 0, 0)
            assert result.bytes == sum(len(data) for data in expected.values())
            assert sorted(str(d.path.relative_to(out)) for d in done) == sorted(expected)
            for d in done:
                assert (
                    d.sha256 == hashlib.sha256(expected[str(d.path.relative_to(out))]).hexdigest()
                )
            some = "docs/file 001 é.txt"
            assert os.stat(out / some).st_mtime == int(os.stat(share / some).st_mtime)

            again, done = await fetch(base, "", out)
            assert (again.files, again.skipped, done) == (0, len(expected), [])

            changed, deleted, touched = "b c/d/file 005 é.txt", "b c/big 1.bin", "file 000 é.txt"
            assert expected[changed]
            (out / changed).write_bytes(bytes(len(expected[changed])))  # same size, other bytes
            (out / deleted).unlink()
            os.utime(out / touched, (1, 1))  # other mtime, same bytes: digest compared, kept
            third, done = await fetch(base, "", out)
            assert sorted(str(d.path.relative_to(out)) for d in done) == sorted([changed, deleted])
            assert (third.files, third.skipped) == (2, len(expected) - 2)
            assert tree_of(out) == expected
            assert os.stat(out / touched).st_mtime == int(os.stat(share / touched).st_mtime)


async def test_a_directory_swapped_for_a_link_after_its_check_is_not_walked_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the parent's listing (where docs/ was checked) and walking docs/, a local
    process puts a symlink there: the walk refuses it instead of writing through it."""
    share = tmp_path / "share"
    make_tree(share)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "docs").symlink_to(elsewhere)
    # the parent's check saw a missing directory: the swap happens after it
    monkeypatch.setattr("flashback.folder.decide_dir", lambda local: folder_rules.Action.FETCH)
    with trio.fail_after(60):
        async with peer_server(share) as base:
            result, _ = await fetch(base, "", out)
    assert os.listdir(elsewhere) == []
    assert result.refused >= 1 and result.failed == 0
    assert (out / "file 000 é.txt").is_file()  # the rest of the tree still came


async def test_a_directory_of_2500_files_is_paged(tmp_path: Path, nursery: trio.Nursery) -> None:
    share = tmp_path / "share"
    (share / "many").mkdir(parents=True)
    for n in range(2500):
        (share / "many" / f"{n:04d}").write_bytes(b"%d" % n)
    out = tmp_path / "many"
    with trio.fail_after(60):
        # the server in its own process (flashback serve), so it has a CPU of its own
        async with start(nursery, ["serve", "--root", str(share)], env={}, name="serve") as serve:
            ready = await serve.wait_event(event_is("peer-server-ready"))
            result, _ = await fetch(httpx.URL(ready["url"]), "many", out)
    assert result.pages == 3  # 1000 + 1000 + 500: every page followed
    assert result.files == 2500 and len(os.listdir(out)) == 2500
    assert (out / "2499").read_bytes() == b"2499"


async def test_a_part_left_by_a_broken_run_is_resumed_and_repaired(tmp_path: Path) -> None:
    share = tmp_path / "share"
    (share / "d").mkdir(parents=True)
    data = random.Random(1).randbytes(3 * MIB)
    (share / "d" / "x.bin").write_bytes(data)
    out = tmp_path / "d"
    out.mkdir()
    with trio.fail_after(30):
        async with peer_server(share) as base:
            async with httpx.AsyncClient() as http:
                etag = (await http.head(base.join("/download/d/x.bin"))).headers["etag"]
            part = out / part_name("x.bin")
            damaged = bytearray(data[: 2 * MIB])
            damaged[10] ^= 0xFF  # a broken first run, and a bad byte in its first block
            part.write_bytes(damaged)
            record = {"key": resume_key("peer-1", "d/x.bin"), "etag": etag}
            part.with_name(part.name + ".json").write_text(json.dumps(record))
            progress = FolderProgress("d", enabled=True)  # the bar a terminal would show
            result, done = await fetch(base, "d", out, progress=progress)
    assert progress.files_done == 1 and progress._bar.total == len(data)
    assert progress._bar.n == len(data)  # resumed bytes counted once, repairs not at all
    assert (out / "x.bin").read_bytes() == data
    assert done[0].resumed_from == 2 * MIB and done[0].repaired_blocks == 1
    assert block_size_for(len(data)) == MIB and result.files == 1
    assert not part.exists()


def test_the_disk_is_asked_whether_it_ignores_case(tmp_path: Path) -> None:
    assert is_case_insensitive(tmp_path) is False  # ext4/tmpfs here
    assert os.listdir(tmp_path) == []  # the probe is gone


# -- the evil peer -------------------------------------------------------------------------

GOOD = b"a good file\n"
LOOP_FILE = b"in the loop\n"


def _digest(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def evil_app(requests: list[str], me: dict[str, str]) -> QuartTrio:
    """An attacker's peer server: names that climb out, absolute ones, backslashes, NUL,
    case twins, a listing that points into itself, one that never ends, one too big,
    one nested past the JSON parser, a Content-Range of 5,000 digits."""
    app = QuartTrio("evil-folder")
    files = {
        "evil/ok.txt": GOOD,
        "evil/README": b"upper\n",
        "evil/readme": b"lower\n",
        "badrange/ok.txt": GOOD,
    }

    def entry(path: str, kind: str = "file", size: int = 3, **over: Any) -> dict[str, Any]:
        return {
            "name": path.rsplit("/", 1)[-1],
            "path": path,
            "type": kind,
            "size": size,
            "mtime": "2026-01-01T00:00:00Z",
            "mime": None,
            **over,
        }

    @app.get("/api/info")
    async def info() -> Any:
        return {"name": "evil", "peer_id": me.get("peer_id"), "version": "0"}

    @app.get("/api/files/<path:sub>")
    async def listing(sub: str) -> Any:
        requests.append(f"list {sub}")
        if sub == "evil":
            entries = [
                entry("evil/..", name=".."),
                entry("/etc/passwd", name="passwd"),
                entry("evil/../../escaped.txt", name="escaped.txt"),
                entry("evil/a\\..\\..\\b.txt", name="a\\..\\..\\b.txt"),
                entry("evil/nul\x00.txt", name="nul\x00.txt"),
                entry("evil/x", name="../x"),
                entry("evil/README", size=6),
                entry("evil/deep", "dir"),
                entry("evil/loop", "dir"),
                entry("evil/ok.txt", size=len(GOOD)),
                entry("evil/readme", size=6),
                entry("evil", "dir", name="evil"),  # the listing itself, by another name
            ]
            return {"path": "evil", "entries": entries, "next_cursor": None}
        if sub.startswith("evil/loop"):  # every level lists the same: a link back
            entries = [entry(f"{sub}/f.txt", size=len(LOOP_FILE)), entry(f"{sub}/loop", "dir")]
            return {"path": sub, "entries": entries, "next_cursor": None}
        if sub.startswith("evil/deep"):  # directories all the way down
            return {"path": sub, "entries": [entry(f"{sub}/d", "dir")], "next_cursor": None}
        if sub == "endless":
            n = int(request.args.get("cursor") or 0) + 1
            hidden = entry(f"endless/.f{n}")  # never fetched: only the listing goes on
            return {"path": sub, "entries": [hidden], "next_cursor": str(n)}
        if sub == "huge":
            return Response(b'{"path": "huge", "entries": [' + b" " * (9 * MIB) + b"]}")
        if sub == "nested":
            return Response(b"[" * 100_000, content_type="application/json")
        if sub == "badrange":
            entries = [entry("badrange/lies.txt"), entry("badrange/ok.txt", size=len(GOOD))]
            return {"path": sub, "entries": entries, "next_cursor": None}
        return {"error": {"code": "not_found", "message": "no"}}, 404

    @app.route("/download/<path:sub>", methods=["GET", "HEAD"])
    async def download(sub: str) -> Any:
        requests.append(f"get {sub}")
        if sub == "badrange/lies.txt":  # int() of it raises ValueError
            headers = {"Content-Range": "bytes 0-2/" + "9" * 5000, "ETag": '"e"'}
            return Response(b"abc", status=206, headers=headers)
        data = files.get(sub, LOOP_FILE if sub.startswith("evil/loop") else None)
        if data is None:
            return {"error": {"code": "not_found", "message": "no"}}, 404
        return Response(data, headers={"Repr-Digest": f"sha-256=:{_digest(data)}:", "ETag": '"e"'})

    return app


# A page over the bound is left mid-body: httpx's nested async generators are then
# collected unexhausted, which trio reports as a ResourceWarning (as in test_ui_http).
@pytest.mark.filterwarnings(
    r"ignore:Async generator 'http(x|core)\._.*' was garbage collected:ResourceWarning"
)
async def test_case_twins_on_a_case_insensitive_disk_and_endless_listings(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests: list[str] = []
    evil = await nursery.start(
        serve_quart, evil_app(requests, {}), hypercorn_config("127.0.0.1", 0)
    )
    base = httpx.URL(evil.url)
    out = tmp_path / "out"
    with trio.fail_after(30):
        result, done = await fetch(base, "evil", out, case_insensitive=True)
    assert (out / "README").read_bytes() == b"upper\n"  # the first of the twins
    assert not (out / "readme").exists() and "get evil/readme" not in requests
    assert (out / "ok.txt").read_bytes() == GOOD
    assert result.failed == 0 and len(done) == 3  # README, ok.txt, loop/f.txt
    assert result.refused == 10  # the 9 of the CLI test below, and the case twin

    monkeypatch.setattr(folder_rules, "MAX_DIR_PAGES", 20)
    with trio.fail_after(30), pytest.raises(FolderFailed, match="goes on for over 20 pages"):
        await fetch(base, "endless", tmp_path / "endless")
    assert requests.count("list endless") == 20
    assert os.listdir(tmp_path / "endless") == []
    with trio.fail_after(30), pytest.raises(FolderFailed, match="over 8 MiB"):
        await fetch(base, "huge", tmp_path / "huge")
    assert not (tmp_path / "huge").exists()  # OUT is made once its listing is accepted
    with trio.fail_after(30), pytest.raises(FolderFailed, match="not JSON"):
        await fetch(base, "nested", tmp_path / "nested")  # was a RecursionError traceback
    with trio.fail_after(30):
        result, done = await fetch(base, "badrange", tmp_path / "badrange")
    assert result.failed == 1 and "range we did not ask for" in result.first_failure
    assert (tmp_path / "badrange" / "ok.txt").read_bytes() == GOOD  # the others go on
    assert not (tmp_path / "badrange" / "lies.txt").exists()


def snapshot(base: Path, *, skip: tuple[Path, ...]) -> set[str]:
    return {
        str(p.relative_to(base))
        for p in base.rglob("*")
        if not any(p.is_relative_to(s) for s in skip)
    }


async def test_an_evil_peer_registered_with_the_tracker_writes_nothing_outside_out(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    requests: list[str] = []
    me: dict[str, str] = {}
    work = tmp_path / "work"
    work.mkdir()
    (work / "victim.txt").write_text("mine\n")
    before = snapshot(tmp_path, skip=(tmp_path / "bob",))
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker_proc(stack, nursery, tmp_path, {"RELAY_PEER_TTL": "120"})
            (tmp_path / "bob" / "share").mkdir(parents=True)
            bob = await stack.enter_async_context(
                start(
                    nursery,
                    ["daemon", "--root", str(tmp_path / "bob" / "share"), "--tracker", url,
                     "--name", "bob"],
                    env=daemon_env(tmp_path, "bob"),
                    name="bob",
                )
            )  # fmt: skip
            await bob.wait_event(event_is("tracker-connected"))
            await register_fake_peer(nursery, url, evil_app(requests, me), me, seen_by=bob)
            env = daemon_env(tmp_path, "bob")
            out = work / "out"

            got = await run_cli(["get", "evil", "evil", "-o", str(out), "--jobs", "2"], env=env)
            assert got.returncode == 0, got.stderr
            events = [json.loads(line) for line in got.stdout.decode().splitlines()]
            assert events[-1] == {
                "event": "folder-complete",
                "path": str(out),
                "files": 4,
                "bytes": len(GOOD) + 6 + 6 + len(LOOP_FILE),
                "skipped": 0,
                "refused": 9,  # 7 names, the link back, the depth
            }
            completed = sorted(e["path"] for e in events if e["event"] == "download-complete")
            wanted = ("README", "readme", "ok.txt", "loop/f.txt")  # this disk keeps case
            assert completed == sorted(str(out / p) for p in wanted)
            assert tree_of(out) == {
                "README": b"upper\n",
                "readme": b"lower\n",
                "ok.txt": GOOD,
                "loop/f.txt": LOOP_FILE,
            }
            warnings = got.stderr.decode().splitlines()
            assert all(line.startswith("flashback: warning: skipped ") for line in warnings)
            assert any("a link back" in line for line in warnings)
            assert any("deeper than 64 levels" in line for line in warnings)
            assert "\x00" not in got.stderr.decode() and "\\x00" in got.stderr.decode()
            # only what the walk built from accepted names was ever asked for (and
            # PATH itself, first as a file: that is how get tells a directory)
            asked = [r.split(" ", 1)[1] for r in requests if r.startswith("get ")]
            assert asked[0] == "evil"
            assert sorted(asked[1:]) == [
                "evil/README",
                "evil/loop/f.txt",
                "evil/ok.txt",
                "evil/readme",
            ]

            bad_jobs = await run_cli(["get", "evil", "evil", "--jobs", "0"], env=env)
            assert bad_jobs.returncode == 2 and len(bad_jobs.stderr.splitlines()) == 1

            huge = await run_cli(["get", "evil", "huge", "-o", str(work / "huge")], env=env)
            assert huge.returncode == 1
            assert huge.stderr.decode().splitlines() == [
                "flashback: the peer sent a listing page of 'huge' over 8 MiB"
            ]
            for proc in (bob,):
                proc.signal()
                assert await proc.wait_exit() == 0
    assert not (work / "huge").exists()
    assert snapshot(tmp_path, skip=(tmp_path / "bob", out)) == before
    assert (work / "victim.txt").read_text() == "mine\n"


def slow_app() -> QuartTrio:
    """A peer whose listing of ``trickle`` never ends (a byte every 20 s, under any
    read timeout) and whose files in ``busy`` take 60 s each to start."""
    app = QuartTrio("slow-folder")
    app.config["RESPONSE_TIMEOUT"] = None  # Quart's own 60 s would cut the trickle first

    @app.get("/api/files/<path:sub>")
    async def listing(sub: str) -> Any:
        if sub == "trickle":

            async def body() -> AsyncIterator[bytes]:
                yield b'{"path": "trickle", "entries": ['
                while True:
                    await trio.sleep(20)
                    yield b" "

            return Response(body(), content_type="application/json")
        n = int(request.args.get("cursor") or 0)
        entry = {"name": f"f{n}", "path": f"busy/f{n}", "type": "file", "size": 2, "mtime": None}
        return {"path": "busy", "entries": [entry], "next_cursor": str(n + 1) if n < 11 else None}

    @app.get("/download/<path:sub>")
    async def download(sub: str) -> Any:
        await trio.sleep(20)  # under the client's read timeout
        return Response(b"ok", headers={"Repr-Digest": f"sha-256=:{_digest(b'ok')}:"})

    return app


@pytest.mark.filterwarnings(
    r"ignore:Async generator 'http(x|core)\._.*' was garbage collected:ResourceWarning"
)
async def test_listing_time_is_bounded_but_waiting_for_workers_is_not(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = await nursery.start(serve_quart, slow_app(), hypercorn_config("127.0.0.1", 0))
    base = httpx.URL(server.url)
    start_s = trio.current_time()
    # a page that barely moves meets the rate floor (60 s) before the listing's 120 s
    with pytest.raises(FolderFailed, match="listing of 'trickle' at under 64 KiB in 60 s"):
        await fetch(base, "trickle", tmp_path / "trickle")
    assert trio.current_time() - start_s == pytest.approx(60, abs=21)

    # one job, twelve 20 s files, a channel of two: the walk waits ~180 s for the
    # worker (over the 120 s a listing may take) and ~0 s for its pages
    start_s = trio.current_time()
    result, done = await fetch(base, "busy", tmp_path / "busy", jobs=1, page_entries=1)
    assert (result.files, result.pages, len(done)) == (12, 12, 12)
    assert trio.current_time() - start_s == pytest.approx(240, abs=1)


def swapping_app(out: Path, outside: Path) -> QuartTrio:
    """A peer whose ``sub/f.txt`` arrives only after ``OUT/sub`` -- checked and walked
    already -- was moved away and replaced by a symlink to *outside* (what a local
    writer in OUT could do at any moment)."""
    app = QuartTrio("swapping-folder")
    body = b"written where?\n"

    @app.get("/api/files")
    @app.get("/api/files/<path:sub>")
    async def listing(sub: str = "") -> Any:
        if sub == "":
            entry = {"name": "sub", "path": "sub", "type": "dir", "size": 0, "mtime": None}
        else:
            entry = {"name": "f.txt", "path": "sub/f.txt", "type": "file",
                     "size": len(body), "mtime": None}  # fmt: skip
        return {"path": sub, "entries": [entry], "next_cursor": None}

    @app.get("/download/<path:sub>")
    async def download(sub: str) -> Any:
        (out / "sub").rename(out / "sub-moved")
        (out / "sub").symlink_to(outside, target_is_directory=True)
        return Response(body, headers={"Repr-Digest": f"sha-256=:{_digest(body)}:"})

    return app


async def test_a_directory_swapped_for_a_symlink_gets_nothing_written_through_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    server = await nursery.start(
        serve_quart, swapping_app(out, outside), hypercorn_config("127.0.0.1", 0)
    )
    result, done = await fetch(httpx.URL(server.url), "", out)
    assert list(outside.iterdir()) == []  # nothing went through the link
    assert (out / "sub").is_symlink()
    # the file went into the directory that was checked, wherever it is now
    assert (out / "sub-moved" / "f.txt").read_bytes() == b"written where?\n"
    assert (result.files, len(done)) == (1, 1)

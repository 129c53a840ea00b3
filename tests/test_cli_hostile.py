"""Local commands against hostile surroundings: a squatted state directory, an evil peer.

The system tests run the real ``flashback`` command against real sockets: a
fake daemon another user planted, and a peer server that sends terminal
escapes and a listing that never ends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio
from quart import request
from quart_trio import QuartTrio

from flashback.config import check_private
from flashback.daemon.client import (
    MAX_LIST_ENTRIES,
    MAX_LIST_PAGES,
    ListingPaging,
    resolve_peer,
)
from flashback.daemon.peer_lines import format_event, format_peer
from flashback.errors import ConfigError, FlashbackError
from flashback.terminal import printable
from tests.abuse_support import register_fake_peer, start_tracker_proc
from tests.procs import Proc, daemon_env, event_is, run_cli, start

OTHER_UID = 65534  # nobody
EVIL_NAME = "ev\x1b[2Jil\x07\r\u202e"  # the tracker refuses it; a hostile tracker need not
EVIL_FILE = "\x1b]0;pwned\x07list\rx\x9b31m.txt"
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\x9b", "\u202e")

# -- pure parts --------------------------------------------------------------------------


def test_printable_escapes_c0_del_c1_and_bidi_only() -> None:
    assert printable("a\x1b[2Jb\x07c\rd\x7fe\x9bf\u202eg\x00") == (
        "a\\x1b[2Jb\\x07c\\x0dd\\x7fe\\x9bf\\u202eg\\x00"
    )
    assert printable("Ünïcødé ファイル.txt") == "Ünïcødé ファイル.txt"
    assert printable(printable(EVIL_NAME)) == printable(EVIL_NAME)  # idempotent
    assert not any(c in printable(EVIL_FILE) for c in RAW_CONTROLS)


def _page(n: int, cursor: str | None, *, path: str = "") -> dict[str, Any]:
    entries = [{"name": f"f{n}-{i}", "type": "file", "size": 1, "mtime": "x"} for i in range(2)]
    return {"path": path, "entries": entries, "next_cursor": cursor}


def test_paging_collects_pages_until_the_cursor_ends() -> None:
    paging = ListingPaging()
    paging.add(_page(0, "a", path="docs"))
    paging.add(_page(1, None))
    assert paging.path == "docs" and len(paging.entries) == 4 and paging.pages == 2


def test_paging_refuses_a_repeated_cursor_too_many_pages_or_entries() -> None:
    paging = ListingPaging()
    paging.add(_page(0, "a"))
    paging.add(_page(1, "b"))
    with pytest.raises(FlashbackError, match="repeats a cursor"):
        paging.add(_page(2, "a"))
    paging = ListingPaging()
    with pytest.raises(FlashbackError, match=f"over {MAX_LIST_PAGES} pages"):
        for n in range(MAX_LIST_PAGES + 1):
            paging.add(_page(n, f"c{n}"))
    assert paging.pages == MAX_LIST_PAGES
    big = {"path": "", "entries": _page(0, None)["entries"] * (MAX_LIST_ENTRIES // 2 + 1)}
    with pytest.raises(FlashbackError, match=f"over {MAX_LIST_ENTRIES} entries"):
        ListingPaging().add(big | {"next_cursor": None})


@pytest.mark.parametrize(
    "page",
    [
        [],
        {"entries": "x"},
        {"entries": [{"name": 1, "type": "file", "size": 1}]},
        {"entries": [{"name": "a", "type": "file", "size": -1}]},
        {"entries": [{"name": "a", "type": "link"}]},
        {"entries": [], "next_cursor": 5},
        {"entries": [], "next_cursor": "c" * 5000},
    ],
)
def test_paging_refuses_malformed_pages(page: Any) -> None:
    with pytest.raises(FlashbackError, match="the peer sent"):
        ListingPaging().add(page)


def _peer(name: str, peer_id: str) -> dict[str, Any]:
    server = {"host": "127.0.0.1", "port": 1}
    times = {"registered_at": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z"}
    return {"peer_id": peer_id, "name": name, "peer_server": server, "capabilities": {}} | times


def test_a_typo_gets_a_suggestion_escaped() -> None:
    listing = {"peers": [_peer("alice", "p1"), _peer("bob", "p2")]}
    with pytest.raises(FlashbackError) as caught:
        resolve_peer(listing, "alcie")
    assert caught.value.message == "no peer 'alcie' is online (did you mean 'alice'?)"
    with pytest.raises(FlashbackError) as caught:
        resolve_peer({"peers": [_peer("ali\x1bce", "p1")]}, "alice")
    assert caught.value.message == "no peer 'alice' is online (did you mean 'ali\\x1bce'?)"
    with pytest.raises(FlashbackError) as caught:
        resolve_peer(listing, "zzzzzz")
    assert "did you mean" not in caught.value.message


def test_a_name_the_tracker_lists_once_wins_over_remembered_peers_of_that_name() -> None:
    remembered = {
        "peer_id": "p-old",
        "name": "alice",
        "fingerprint": "sha256:" + "a" * 64,
        "source": "book",
    }
    live = _peer("alice", "p-new") | {"source": "tracker"}
    assert resolve_peer({"peers": [remembered, live]}, "alice").peer_id == "p-new"
    with pytest.raises(ConfigError, match="several peers"):
        resolve_peer({"peers": [live, _peer("alice", "p-3") | {"source": "tracker"}]}, "alice")


def test_check_private_refuses_another_owner_and_loose_modes(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    check_private(mine, mine.stat())
    mine.chmod(0o755)  # readable by others is fine; writable is not
    check_private(mine, mine.stat())
    for mode in (0o720, 0o702, 0o777):
        mine.chmod(mode)
        with pytest.raises(ConfigError, match="writable by other users"):
            check_private(mine, mine.stat())
    mine.chmod(0o700)
    os.chown(mine, OTHER_UID, -1)
    with pytest.raises(ConfigError, match=f"belongs to another user \\(uid {OTHER_UID}\\)"):
        check_private(mine, mine.stat())


# -- a squatted state directory ------------------------------------------------------------

# The fake daemon runs as `nobody`, who may not be able to run the venv's interpreter.
SYSTEM_PYTHON = "/usr/bin/python3"
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")


def test_peer_lines_escape_what_a_hostile_tracker_sends() -> None:
    peer = _peer(EVIL_NAME, "id\x1b[1m") | {"peer_server": {"host": "h\x07", "port": 1}}
    for line in (
        format_peer(peer),
        format_event({"event": "peer-joined", "peer": peer}),
        format_event({"event": "peer-left", "peer_id": "\x1b", "reason": "\r"}),
    ):
        assert line is not None
        assert not any(c in line for c in RAW_CONTROLS), line
    assert format_peer(peer).startswith("ev\\x1b[2Jil\\x07\\x0d\\u202e")


def _fallback_env(tmp_path: Path) -> dict[str, str]:
    """No FLASHBACK_STATE_DIR, no XDG_RUNTIME_DIR: the /tmp fallback, under tmp_path (TMPDIR)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("FLASHBACK_STATE_DIR", "XDG_RUNTIME_DIR")
    }
    return {**env, "TMPDIR": str(tmp_path), "HOME": str(tmp_path)}


async def _run_cli_clean_env(
    args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(
            [sys.executable, "-m", "flashback", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )


@needs_root
@pytest.mark.parametrize(
    ("squat", "commands"),
    [
        ("other-owner", ["status", "peers", "get", "stream"]),
        ("mode-0777", ["get"]),
        ("socket-other-owner", ["stream"]),
    ],
)
async def test_local_commands_refuse_a_squatted_state_dir(
    tmp_path: Path, squat: str, commands: list[str]
) -> None:
    state = tmp_path / f"flashback-{os.getuid()}"
    state.mkdir(mode=0o700)
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(state / "control.sock"))
    listener.listen(16)
    connections: list[object] = []

    async def record() -> None:
        while True:
            conn, _ = await listener.accept()
            connections.append(conn)

    async with trio.open_nursery() as fake:
        fake.start_soon(record)
        if squat == "other-owner":
            os.chown(state, OTHER_UID, OTHER_UID)
        elif squat == "mode-0777":
            state.chmod(0o777)
        else:
            os.chown(state / "control.sock", OTHER_UID, OTHER_UID)
        env = _fallback_env(tmp_path)
        out = tmp_path / "out.bin"
        for command in commands:
            args = (
                [command, "alice", "a.txt", "-o", str(out)]
                if command in ("get", "stream")
                else [command]
            )
            result = await _run_cli_clean_env(args, env)
            lines = result.stderr.decode().splitlines()
            assert result.returncode == 2, (args, result.stderr)
            assert len(lines) == 1 and "refusing" in lines[0], lines
            assert str(state) in lines[0] and not result.stdout
        assert connections == [] and not out.exists()
        fake.cancel_scope.cancel()
    listener.close()


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    line = b""
    while not line.endswith(b"\n") and (chunk := await stream.receive_some(1)):
        line += chunk
    return line


@needs_root
@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"no {SYSTEM_PYTHON}")
async def test_local_commands_refuse_a_daemon_of_another_uid(tmp_path: Path) -> None:
    """The directory and socket file look right; the process behind the socket is not us."""
    state = tmp_path / f"flashback-{os.getuid()}"
    state.mkdir(mode=0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(state / "control.sock"))  # the file is ours; listen() happens as `nobody`
    fake = (
        f"import socket; s = socket.socket(fileno={sock.fileno()}); s.listen(4);"
        "print('ready', flush=True);"
        "c, _ = s.accept(); data = b''\n"
        "while chunk := c.recv(4096): data += chunk\n"
        "print(len(data), flush=True)"
    )
    process = await trio.lowlevel.open_process(
        [SYSTEM_PYTHON, "-c", fake],
        stdout=subprocess.PIPE,
        cwd="/",
        pass_fds=[sock.fileno()],
        user=OTHER_UID,
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(10):
            assert await _read_line(process.stdout) == b"ready\n"
        result = await _run_cli_clean_env(["status"], _fallback_env(tmp_path))
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and f"runs as uid {OTHER_UID}" in lines[0], lines
        with trio.fail_after(10):
            assert await _read_line(process.stdout) == b"0\n"  # connected to, sent nothing
    finally:
        process.kill()
        await process.wait()
        assert process.stdout is not None
        await process.stdout.aclose()
        sock.close()


# -- an evil peer --------------------------------------------------------------------------


def evil_peer_app(requests: list[str], me: dict[str, str]) -> QuartTrio:
    """A peer server whose names are terminal escapes and whose root listing never ends.

    It answers ``/api/info`` with its peer id (*me*, filled once registered),
    as a real one does, so the daemon's route to it is direct."""
    app = QuartTrio("evil")

    @app.get("/api/info")
    async def info() -> Any:
        return {"name": "evil", "peer_id": me.get("peer_id"), "version": "0"}

    @app.get("/api/files/")
    async def endless() -> Any:
        requests.append(request.args.get("cursor", ""))
        n = int(request.args.get("cursor") or 0) + 1
        entry = {"name": f"{EVIL_FILE}{n}", "type": "file", "size": 1, "mtime": "\x1b[31m"}
        return {"path": "", "entries": [entry], "next_cursor": str(n)}

    @app.get("/api/files/clean")
    async def finite() -> Any:
        entries = [
            {"name": EVIL_FILE, "type": "file", "size": 3, "mtime": "2026-01-01T00:00:00Z"},
            {"name": "\x1b[8mdir", "type": "dir", "size": 0, "mtime": "\x07"},
        ]
        return {"path": "clean", "entries": entries, "next_cursor": None}

    return app


def assert_no_raw_controls(output: bytes) -> None:
    text = output.decode()
    assert not any(c in text for c in RAW_CONTROLS), text


async def test_an_evil_peer_cannot_reach_the_terminal_or_loop_ls(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    requests: list[str] = []
    me: dict[str, str] = {}
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker_proc(stack, nursery, tmp_path, {"RELAY_PEER_TTL": "120"})
            root = tmp_path / "share"
            root.mkdir()
            alice: Proc = await stack.enter_async_context(
                start(
                    nursery,
                    ["daemon", "--root", str(root), "--tracker", url, "--name", "alice"],
                    env=daemon_env(tmp_path, "alice"),
                    name="alice",
                )
            )
            await alice.wait_event(event_is("tracker-connected"))
            peer_id = await register_fake_peer(
                nursery, url, evil_peer_app(requests, me), me, seen_by=alice
            )
            env = daemon_env(tmp_path, "alice")

            ls = await run_cli(["ls", peer_id, "clean"], env=env)
            assert ls.returncode == 0, ls.stderr
            assert "\\x1b]0;pwned\\x07list\\x0dx\\x9b31m.txt" in ls.stdout.decode()
            assert_no_raw_controls(ls.stdout)
            as_json = await run_cli(["ls", peer_id, "clean", "--json"], env=env)
            assert_no_raw_controls(as_json.stdout)
            assert json.loads(as_json.stdout)["entries"][0]["name"] == EVIL_FILE

            endless = await run_cli(["ls", peer_id], env=env)
            lines = endless.stderr.decode().splitlines()
            assert endless.returncode == 1 and not endless.stdout
            assert lines == [
                f"flashback: the peer's listing goes on for over {MAX_LIST_PAGES} pages"
            ]
            assert len(requests) == MAX_LIST_PAGES

            typo = await run_cli(["ls", "alcie"], env=env)
            assert typo.returncode == 1
            assert typo.stderr.decode().splitlines() == [
                "flashback: no peer 'alcie' is online (did you mean 'alice'?)"
            ]
            alice.signal()
            assert await alice.wait_exit() == 0


def test_log_messages_are_escaped_but_tracebacks_keep_their_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import logging

    from flashback.logs import setup_logging

    setup_logging(verbose=False)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("t").exception("peer %s said %s", EVIL_NAME, "\x1b[2J")
    err = capsys.readouterr().err
    assert not any(c in err for c in RAW_CONTROLS), err
    assert "peer ev\\x1b[2Jil\\x07\\x0d\\u202e said \\x1b[2J" in err
    assert "\nTraceback (most recent call last):\n" in err


def test_every_argument_has_help_and_the_epilog_names_the_state_dir() -> None:
    import argparse

    from flashback.cli import build_parser

    parser = build_parser()
    assert "FLASHBACK_STATE_DIR" in parser.format_help()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, (name, action.dest)
        if name == "forget":  # edits the pins in the data directory, no daemon involved
            assert "FLASHBACK_DATA_DIR" in sub.format_help()
        elif name not in ("tracker", "serve"):  # the two that never touch the state directory
            assert "FLASHBACK_STATE_DIR" in sub.format_help(), name

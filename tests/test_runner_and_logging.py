"""Process plumbing: crash -> exit 1 with a log line, journald-friendly logs, watch formatting."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.lowlevel

from flashback.daemon.peer_lines import format_event
from flashback.errors import ConfigError
from flashback.runner import run_service
from flashback.shutdown import Shutdown


def test_crashing_service_exits_1_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    async def main(shutdown: Shutdown) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise RuntimeError("boom")

    with caplog.at_level(logging.CRITICAL):
        assert run_service(main) == 1
    assert any("RuntimeError('boom')" in r.getMessage() for r in caplog.records)


def test_config_error_inside_the_service_is_raised_bare() -> None:
    async def main(shutdown: Shutdown) -> None:
        async with trio.open_nursery():
            raise ConfigError("bad root")

    with pytest.raises(ConfigError, match="bad root"):
        run_service(main)


def test_service_returning_is_exit_0() -> None:
    async def main(shutdown: Shutdown) -> None:
        await trio.lowlevel.checkpoint()

    assert run_service(main) == 0


def test_journald_lines_carry_priority_and_no_timestamp(tmp_path: Path) -> None:
    env = dict(os.environ, JOURNAL_STREAM="8:1234")
    result = subprocess.run(
        [sys.executable, "-m", "flashback", "serve", "--root", str(tmp_path), "--port", "99999"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2  # bad port: one line, no logging involved
    crash = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging; from flashback.cli import setup_logging; setup_logging(False);"
            "logging.getLogger('x').warning('careful'); logging.getLogger('y').info('fyi')",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert crash.stderr.splitlines() == ["<4>x: careful", "<6>y: fyi"]
    plain = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging; from flashback.cli import setup_logging; setup_logging(False);"
            "logging.getLogger('x').warning('careful')",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if k != "JOURNAL_STREAM"},
        timeout=30,
        check=False,
    )
    line = plain.stderr.strip()
    assert line.endswith("WARNING x: careful") and line[:4].isdigit()  # timestamped


def test_watch_lines_for_humans() -> None:
    peer = {"peer_id": "p1", "name": "alice", "peer_server": {"host": "192.0.2.7", "port": 5}}
    assert cast(str, format_event({"event": "peer-joined", "seq": 1, "peer": peer})).startswith(
        "+ alice"
    )
    updated = cast(str, format_event({"event": "peer-updated", "seq": 2, "peer": peer}))
    assert " 192.0.2.7:5 " in updated
    # a peer's own loopback means nothing on another machine: not shown as an address
    local = peer | {"peer_server": {"host": "127.0.0.1", "port": 5}}
    assert "127.0.0.1" not in cast(
        str, format_event({"event": "peer-updated", "seq": 2, "peer": local})
    )
    assert format_event({"event": "peer-left", "seq": 3, "peer_id": "p1", "reason": "expired"}) == (
        "- p1 (expired)"
    )
    assert format_event({"event": "tracker-connected", "url": "http://t"}) == (
        "* tracker-connected http://t"
    )
    assert format_event({"event": "something-else"}) is None


async def test_access_line_is_built_only_when_the_access_log_writes_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Hypercorn builds a line's atoms (every header, every environment variable)
    # before the level is looked at: without -v that was paid on every request.
    from hypercorn.logging import Logger

    from flashback.web import ACCESS_LOG, hypercorn_config

    built: list[int] = []
    real_atoms = Logger.atoms

    def counting_atoms(self: Logger, *args: object) -> object:
        built.append(1)
        return real_atoms(self, *args)  # type: ignore[arg-type]  # hypercorn's own arguments, passed through

    monkeypatch.setattr(Logger, "atoms", counting_atoms)
    scope = {"type": "http", "method": "GET", "path": "/api/info", "query_string": b"",
             "headers": [], "http_version": "1.1", "scheme": "http",
             "client": ("127.0.0.1", 5)}  # fmt: skip
    response = {"status": 200, "headers": [(b"content-length", b"2")]}
    logger = hypercorn_config("127.0.0.1", 0).log
    monkeypatch.setattr(ACCESS_LOG, "level", logging.WARNING)
    await logger.access(scope, response, 0.001)  # type: ignore[arg-type]  # plain dicts for hypercorn's ASGI scope types
    assert built == []
    with caplog.at_level(logging.INFO, logger=ACCESS_LOG.name):
        await logger.access(scope, response, 0.001)  # type: ignore[arg-type]  # plain dicts for hypercorn's ASGI scope types
    assert built == [1]
    assert '"GET /api/info" 200 2' in caplog.text

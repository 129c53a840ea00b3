"""Shared fixtures: a real peer server on a loopback port chosen by the OS."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio.testing import MockClock

from flashback.peer.app import LocalInfo, ShareSettings
from flashback.peer.serve import serve_peer
from flashback.web import BoundAddress

BIG_FILE_BYTES = 5 * 1024 * 1024 + 123  # more than a few 1 MiB chunks, odd tail

# Every tracker process a test starts inherits this: its tunnel port is the
# OS's choice, never the fixed default 3001 (tests must not use fixed ports).
os.environ.setdefault("RELAY_TUNNEL_PORT", "0")
# ...and no daemon a test starts sends mDNS on this machine's real networks:
# the LAN tests turn it on inside network namespaces of their own.
os.environ["FLASHBACK_LAN"] = "off"


# How long every task must have been blocked, in real seconds, before the
# autojump clock jumps. pytest-trio's own ``autojump_clock`` uses 0, and trio's
# docs warn against that with real I/O: the clock would jump to the next
# deadline while a loopback peer, a worker thread or another process is still
# delivering, and a read timeout fires that no real run could hit. The tests
# with this clock run real sockets and threads, so they get a threshold above
# zero. Virtual time stays exact (the clock's rate is 0): only real time waits.
AUTOJUMP_THRESHOLD_S = 0.01


@pytest.fixture
def autojump_clock() -> MockClock:
    """pytest-trio's fixture of that name, with a threshold safe for real I/O."""
    return MockClock(autojump_threshold=AUTOJUMP_THRESHOLD_S)


@pytest.fixture
def share(tmp_path: Path) -> Path:
    """A shared root with text, binary, nested, hidden, unicode and symlinked entries."""
    root = tmp_path / "share"
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "hello.txt").write_text("hello, world\n")
    (root / "docs" / "readme.md").write_text("# Docs\n")
    (root / "docs" / "deep" / "x.bin").write_bytes(b"\x00\x01\x02")
    (root / ".secret").write_text("top secret\n")
    (root / ".hiddendir").mkdir()
    (root / ".hiddendir" / "inner.txt").write_text("inner\n")
    (root / "résumé.txt").write_text("unicode name\n")
    (root / "page.html").write_text("<script>alert(1)</script>\n")
    (root / "big.bin").write_bytes(os.urandom(BIG_FILE_BYTES))
    (root / "empty.txt").write_bytes(b"")
    outside = tmp_path / "share_evil"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    (root / "escape").symlink_to(outside / "passwd")
    (root / "escape-dir").symlink_to(outside)
    (root / "alias.txt").symlink_to(root / "hello.txt")
    return root


@pytest.fixture
async def peer_url(nursery: trio.Nursery, share: Path) -> str:
    settings = ShareSettings(share, show_hidden=False, info=LocalInfo(name="test-peer"))
    address: BoundAddress = await nursery.start(partial(serve_peer, settings, "127.0.0.1", 0))
    return address.url


@pytest.fixture
async def client(peer_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=peer_url, timeout=10) as http:
        yield http


# In CI every tool a test needs is installed by `make test` (namespaces,
# Chromium, Redis, curl...): a skip there means a check that did not run, so
# `.ci/run` sets FLASHBACK_NO_SKIP=1 and a skip becomes a failure.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("FLASHBACK_NO_SKIP") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped where FLASHBACK_NO_SKIP=1 (CI): {reason}"

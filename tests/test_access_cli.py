"""``allow``/``deny``/``forget`` and ``--share-with`` on a real daemon: bad input is one
line and exit 2, a change holds at once, ``status`` shows it (§11)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from flashback.config import daemon_from_sources
from flashback.errors import ConfigError
from tests.procs import daemon_env, event_is, run_cli, start

BOB = "sha256:" + "b" * 64


def one_line(stderr: bytes) -> str:
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


async def test_allow_deny_forget_and_status(tmp_path: Path, nursery: trio.Nursery) -> None:
    env = daemon_env(tmp_path, "alice")
    (tmp_path / "share").mkdir()
    args = ["daemon", "--root", str(tmp_path / "share"), "--name", "alice"]
    async with start(nursery, [*args, "--share-with", "allowed"], env=env, name="alice") as alice:
        await alice.wait_event(event_is("peer-server-ready"))
        with trio.fail_after(60):
            for bad in ("sha256:abc", "sha256:" + "B" * 64, ""):
                refused = await run_cli(["allow", bad], env=env)
                assert refused.returncode == 2, (bad, refused.stderr)
                one_line(refused.stderr)
            unknown = await run_cli(["deny", "nobody"], env=env)
            assert unknown.returncode == 1 and "nobody" in one_line(unknown.stderr)

            allowed = await run_cli(["allow", BOB], env=env)
            assert allowed.returncode == 0 and BOB in allowed.stdout.decode()
            text = (await run_cli(["status"], env=env)).stdout.decode()
            assert "share with: allowed" in text and f"allowed:\n  {BOB}" in text
            assert "denied: (none)" in text
            denied = await run_cli(["deny", BOB], env=env)
            assert denied.returncode == 0
            status = json.loads((await run_cli(["status", "--json"], env=env)).stdout)
            assert status["access"]["allowed"] == []
            assert [e["fingerprint"] for e in status["access"]["denied"]] == [BOB]
            assert status["access"]["counters"]["accepted"] == 0

            socket_path = tmp_path / "alice" / "state" / "control.sock"
            async with httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(uds=str(socket_path)), base_url="http://fb"
            ) as control:
                for raw in (b"\xff", b"[1]", b'{"peer": 5}'):
                    answer = await control.post("/access/allow", content=raw)
                    assert answer.status_code == 400, raw
                    assert answer.json()["error"]["code"] in ("invalid_json", "bad_request")

            nothing = await run_cli(["forget", "bob"], env=env)
            assert nothing.returncode == 1 and "no pinned fingerprint" in one_line(nothing.stderr)
        alice.signal()
        assert await alice.wait_exit() == 0
    saved = json.loads(
        (tmp_path / "alice" / "data" / "identities" / "alice" / "access.json").read_text()
    )
    assert [e["fingerprint"] for e in saved["denied"]] == [BOB]
    # no daemon: forget edits the file itself (here it has no requester to drop)
    assert (await run_cli(["forget", BOB], env=env)).returncode == 1
    assert (await run_cli(["allow", BOB], env=env)).returncode == 1  # allow needs the daemon


def test_share_with_flag_env_file_and_bad_values(tmp_path: Path) -> None:
    def mode(flags: dict[str, Any], env: dict[str, str], file: dict[str, Any]) -> str:
        return daemon_from_sources({"root": str(tmp_path), **flags}, env, file).share_with

    assert mode({}, {}, {}) == "tracker"
    assert mode({}, {}, {"shareWith": "allowed"}) == "allowed"
    assert mode({}, {"FLASHBACK_SHARE_WITH": "Allowed"}, {"shareWith": "tracker"}) == "allowed"
    assert mode({"share_with": "tracker"}, {"FLASHBACK_SHARE_WITH": "allowed"}, {}) == "tracker"
    for bad in ("everyone", 3, "allowed-only"):
        with pytest.raises(ConfigError, match="tracker or allowed"):
            mode(
                {},
                {"FLASHBACK_SHARE_WITH": bad} if isinstance(bad, str) else {},
                {"shareWith": bad},
            )


async def test_a_refused_listing_page_says_why(nursery: trio.Nursery) -> None:
    """A forward refused mid-command answers 403 with a JSON error: ``ls`` shows its words."""
    from quart import Response
    from quart_trio import QuartTrio

    from flashback.daemon.client import _fetch_page
    from flashback.errors import FlashbackError
    from flashback.web import hypercorn_config, serve_quart

    app = QuartTrio(__name__)

    @app.get("/api/files/")
    async def refused() -> Response:
        body = {
            "error": {"code": "forbidden", "message": "the owner does not share with this peer"}
        }
        return Response(json.dumps(body), status=403, mimetype="application/json")

    address = await nursery.start(serve_quart, app, hypercorn_config("127.0.0.1", 0))
    async with httpx.AsyncClient() as http:
        with pytest.raises(FlashbackError) as info:
            await _fetch_page(
                http, httpx.URL(f"http://127.0.0.1:{address.port}/api/files/"), {}, "alice", ""
            )
    assert "does not share with this peer" in info.value.message

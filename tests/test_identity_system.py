"""Issue 11 as a user meets it: real tracker and daemon processes sharing one data directory."""

from __future__ import annotations

import json
import shutil
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import httpx
import trio

from flashback.daemon.pins import PinStore
from flashback.protocol.fingerprint import is_fingerprint
from tests.procs import Proc, event_is, run_cli, start
from tests.test_daemon_system import make_share, start_tracker


def shared_data_env(base: Path, who: str) -> dict[str, str]:
    """Own state directory (own control socket), the SAME data directory for everyone."""
    return {
        "FLASHBACK_STATE_DIR": str(base / who / "state"),
        "FLASHBACK_DATA_DIR": str(base / "shared-data"),
        "XDG_CONFIG_HOME": str(base / who / "config"),
    }


async def start_twin(
    stack: AsyncExitStack, nursery: trio.Nursery, base: Path, who: str, url: str, *extra: str
) -> Proc:
    root = base / who / "share"
    if not root.exists():
        make_share(base, who, {f"{who}.txt": b"hi\n"})
    return await stack.enter_async_context(
        start(
            nursery,
            ["daemon", "--root", str(root), "--tracker", url, "--name", "twin", *extra],
            env=shared_data_env(base, who),
            name=who,
        )
    )


async def status_of(base: Path, who: str) -> dict[str, Any]:
    result = await run_cli(["status", "--json"], env=shared_data_env(base, who))
    assert result.returncode == 0, result.stderr
    return cast(dict[str, Any], json.loads(result.stdout))


async def listed(url: str) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url) as client:
        peers = (await client.get("/api/peers/list")).json()["peers"]
    return {p["peer_id"]: p for p in peers}


async def start_both_together(
    stack: AsyncExitStack, nursery: trio.Nursery, base: Path, url: str
) -> tuple[list[Proc], dict[str, dict[str, Any]]]:
    """Two daemons, same name, same data directory, launched at once: who each one is."""
    procs = [await start_twin(stack, nursery, base, who, url) for who in ("one", "two")]
    for proc in procs:
        await proc.wait_event(event_is("tracker-connected"))
    return procs, {who: await status_of(base, who) for who in ("one", "two")}


async def stop(proc: Proc) -> None:
    proc.signal(signal.SIGTERM)
    assert await proc.wait_exit() == 0


async def test_two_daemons_one_data_dir_are_two_peers_and_keep_it_on_restart(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    with trio.fail_after(90):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker(stack, nursery, tmp_path)
            async with AsyncExitStack() as daemons:
                procs, first = await start_both_together(daemons, nursery, tmp_path, url)
                one, two = first["one"], first["two"]
                assert one["peer_id"] != two["peer_id"]
                assert is_fingerprint(one["fingerprint"]) and is_fingerprint(two["fingerprint"])
                assert one["fingerprint"] != two["fingerprint"]
                assert {one["identity"], two["identity"]} == {"twin", "twin-2"}
                peers = await listed(url)
                assert {pid: p["fingerprint"] for pid, p in peers.items()} == {
                    one["peer_id"]: one["fingerprint"],
                    two["peer_id"]: two["fingerprint"],
                }

                # peers --json through a daemon shows the same fingerprints
                seen = await run_cli(["peers", "--json"], env=shared_data_env(tmp_path, "one"))
                assert seen.returncode == 0, seen.stderr
                by_id = {p["peer_id"]: p["fingerprint"] for p in json.loads(seen.stdout)["peers"]}
                assert by_id[two["peer_id"]] == two["fingerprint"]

                human = await run_cli(["status"], env=shared_data_env(tmp_path, "two"))
                assert f"fingerprint: {two['fingerprint']}" in human.stdout.decode()

                # A third daemon pointed at an identity in use: one line, exit 2, no harm.
                taken = one["identity"]
                third = await daemons.enter_async_context(
                    start(
                        nursery,
                        ["daemon", "--root", str(tmp_path / "one" / "share"), "--tracker", url,
                         "--name", "third", "--identity", taken],
                        env=shared_data_env(tmp_path, "third"),
                        name="third",
                    )
                )  # fmt: skip
                assert await third.wait_exit() == 2
                lines = third.stderr.decode().strip().splitlines()
                assert len(lines) == 1 and "in use" in lines[0] and taken in lines[0], lines
                assert set(await listed(url)) == {one["peer_id"], two["peer_id"]}
                for proc in procs:
                    await stop(proc)

            # Restart both, together again: the same two identities come back.
            async with AsyncExitStack() as daemons:
                procs, again = await start_both_together(daemons, nursery, tmp_path, url)
                before = {(s["identity"], s["peer_id"], s["fingerprint"]) for s in first.values()}
                after = {(s["identity"], s["peer_id"], s["fingerprint"]) for s in again.values()}
                assert after == before
                peers = await listed(url)
                assert {pid: p["fingerprint"] for pid, p in peers.items()} == {
                    pid: fp for _, pid, fp in before
                }


async def test_an_upgrading_user_keeps_the_peer_id_of_the_old_identity_json(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    data = tmp_path / "shared-data"
    with trio.fail_after(60):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker(stack, nursery, tmp_path)
            async with AsyncExitStack() as daemons:
                proc = await start_twin(daemons, nursery, tmp_path, "one", url)
                await proc.wait_event(event_is("tracker-connected"))
                old = await status_of(tmp_path, "one")
                await stop(proc)
            # Make the layout of the versions before instances: one shared file.
            (data / "identities" / "twin" / "identity.json").rename(data / "identity.json")
            shutil.rmtree(data / "identities")
            async with AsyncExitStack() as daemons:
                proc = await start_twin(daemons, nursery, tmp_path, "one", url)
                await proc.wait_event(event_is("tracker-connected"))
                new = await status_of(tmp_path, "one")
                assert new["peer_id"] == old["peer_id"]  # the tracker took the old token
                assert not (data / "identity.json").exists()
                assert set(await listed(url)) == {old["peer_id"]}
                await stop(proc)


async def test_forget_on_the_command_line(tmp_path: Path) -> None:
    env = shared_data_env(tmp_path, "one")
    PinStore(tmp_path / "shared-data").check("p-bob", "sha256:" + "b0" * 32, name="bob\x1b[2J")
    forgot = await run_cli(["forget", "bob\x1b[2J"], env=env)
    assert forgot.returncode == 0, forgot.stderr
    out = forgot.stdout.decode()
    assert out.count("\n") == 1 and "p-bob" in out and "\x1b" not in out
    assert PinStore(tmp_path / "shared-data").get("p-bob") is None
    again = await run_cli(["forget", "p-bob"], env=env)
    assert again.returncode == 1
    assert again.stderr.decode().count("\n") == 1 and b"no pinned fingerprint" in again.stderr


async def test_an_impostor_under_a_pinned_name_is_refused_until_forget(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """alice is offline; a stranger registers as "alice" with its own key: ``get alice``
    names both fingerprints and fetches nothing until ``flashback forget alice``."""
    from tests.procs import daemon_env
    from tests.test_daemon_system import joined, start_daemon

    bob_env = daemon_env(tmp_path, "bob")
    with trio.fail_after(120):
        async with AsyncExitStack() as stack:
            _, url = await start_tracker(stack, nursery, tmp_path)
            bob = await start_daemon(stack, nursery, tmp_path, "bob", url)
            async with AsyncExitStack() as alice_stack:
                alice = await start_daemon(
                    alice_stack, nursery, tmp_path, "alice", url, {"report.txt": b"real\n"}
                )
                await bob.wait_event(joined("alice"))
                real_fp = next(p["fingerprint"] for p in (await listed(url)).values()
                               if p["name"] == "alice")  # fmt: skip
                first = await run_cli(
                    ["get", "alice", "report.txt", "-o", str(tmp_path / "first")], env=bob_env
                )
                assert first.returncode == 0, first.stderr
                seen = len(bob.events)
                alice.signal(signal.SIGTERM)
                assert await alice.wait_exit() == 0
                await bob.wait_event(event_is("peer-left"), after=seen)

            fake_root = make_share(tmp_path, "impostor", {"report.txt": b"forged\n"})
            seen = len(bob.events)
            await stack.enter_async_context(
                start(
                    nursery,
                    ["daemon", "--root", str(fake_root), "--tracker", url, "--name", "alice"],
                    env=daemon_env(tmp_path, "impostor"),
                    name="impostor",
                )
            )
            await bob.wait_event(joined("alice"), after=seen, timeout_s=30)
            fake_fp = next(p["fingerprint"] for p in (await listed(url)).values()
                           if p["name"] == "alice")  # fmt: skip
            assert fake_fp != real_fp
            out = tmp_path / "got"
            refused = await run_cli(["get", "alice", "report.txt", "-o", str(out)], env=bob_env)
            assert refused.returncode == 1
            lines = refused.stderr.decode().strip().splitlines()
            assert len(lines) == 1, lines
            assert real_fp in lines[0] and fake_fp in lines[0] and "forget alice" in lines[0]
            assert not out.exists()
            listing = await run_cli(["ls", "alice"], env=bob_env)
            assert listing.returncode == 1 and b"forged" not in listing.stdout

            forgot = await run_cli(["forget", "alice"], env=bob_env)
            assert forgot.returncode == 0, forgot.stderr
            trusted = await run_cli(["get", "alice", "report.txt", "-o", str(out)], env=bob_env)
            assert trusted.returncode == 0, trusted.stderr
            assert out.read_bytes() == b"forged\n"

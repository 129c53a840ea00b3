"""The README's walkthrough ("Five minutes, two peers"), run exactly as written.

Each shell block the README marks with ``<!-- walkthrough: NAME -->`` is taken
from README.md as it stands and given to ``bash -e`` unchanged: real
``flashback`` processes (the command on PATH is this tree's package), real
files, bob's copy checked against alice's by SHA-256.

- ``one-machine``: one block, pasted into one shell: a tracker on loopback on
  ports the OS picks, alice's and bob's daemons with their own state and data
  directories, ``get``, then every process stopped by the block itself. The
  "already running" refusal the README quotes is checked against the real one.
- ``tracker-machine``, ``alice-machine``, ``bob-machine-daemon``,
  ``bob-machine-get``: the two-machine case in the NAT lab (tests/nat_lab.py):
  the tracker on the internet namespace's 203.0.113.1 with its default ports,
  alice and bob on hosts behind two masquerading home routers. Each "machine"
  has its own home directory and runtime directory, as a real one would.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.nat_lab import nat_lab, require_nat_lab
from tests.procs import Proc, event_is, start

README = Path(__file__).resolve().parent.parent / "README.md"
FILE_NAME = "holiday.bin"
FILE_BYTES = 20_000_000  # what the README's `head -c` writes


def walkthrough_block(name: str) -> str:
    """The ```sh block right after ``<!-- walkthrough: NAME -->`` in README.md."""
    text = README.read_text(encoding="utf-8")
    marker = f"<!-- walkthrough: {name} -->"
    assert text.count(marker) == 1, f"README.md must mark exactly one block {marker}"
    match = re.match(r"\s*```sh\n(.*?)\n```\n", text.split(marker, 1)[1], re.DOTALL)
    assert match, f"no ```sh block right after {marker}"
    return match.group(1) + "\n"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def flashback_on_path(tmp_path: Path) -> str:
    """A ``flashback`` command for the blocks: this interpreter, this tree's package."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "flashback"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m flashback "$@"\n')
    shim.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"


def machine_env(tmp_path: Path, machine: str, path: str) -> dict[str, str]:
    """What a user's login gives a shell: a home and a private runtime directory,
    nothing of Flashback's own settings (the blocks say what they need)."""
    home = tmp_path / machine / "home"
    runtime = tmp_path / machine / "run"
    home.mkdir(parents=True)
    runtime.mkdir(parents=True, mode=0o700)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "FLASHBACK_"))}
    env.update(
        PATH=path,
        HOME=str(home),
        XDG_RUNTIME_DIR=str(runtime),
        TMPDIR=str(tmp_path / machine),
        # tests never announce on this machine's real networks (tests/conftest.py)
        FLASHBACK_LAN="off",
    )
    env.pop("RELAY_TUNNEL_PORT", None)  # the blocks run trackers as written
    return env


def only_machine_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests.procs.start adds os.environ to a process's env: take Flashback's
    settings (and the tests' RELAY_TUNNEL_PORT=0) out of it for this test."""
    for key in list(os.environ):
        if key.startswith(("XDG_", "FLASHBACK_")) or key == "RELAY_TUNNEL_PORT":
            monkeypatch.delenv(key)


@contextlib.contextmanager
def process_group_reaped(process: trio.Process) -> Iterator[None]:
    """Whatever a block left running (it runs in its own session) is killed."""
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def group_is_empty(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_the_one_machine_walkthrough_as_written(tmp_path: Path) -> None:
    block = walkthrough_block("one-machine")
    env = machine_env(tmp_path, "me", flashback_on_path(tmp_path))
    with trio.fail_after(180):
        process = await trio.lowlevel.open_process(
            ["bash", "-e", "-c", block],
            cwd=tmp_path / "me" / "home",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        with process_group_reaped(process):
            assert process.stdout is not None and process.stderr is not None
            out, err = bytearray(), bytearray()
            async with trio.open_nursery() as nursery:

                async def drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
                    async for chunk in stream:
                        into += chunk

                nursery.start_soon(drain, process.stdout, out)
                nursery.start_soon(drain, process.stderr, err)
                code = await process.wait()
            stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
            assert code == 0, f"the walkthrough failed ({code}):\n{stdout}\n{stderr}"
            # the block stopped every process it started (daemons exit 0, then the tracker)
            assert group_is_empty(process.pid)

    (scratch,) = (tmp_path / "me").glob("tmp.*")  # the block's `cd "$(mktemp -d)"`
    alice_file, bob_file = scratch / "alice-share" / FILE_NAME, scratch / FILE_NAME
    assert bob_file.stat().st_size == FILE_BYTES
    assert sha256_of(bob_file) == sha256_of(alice_file)
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    done = [e for e in events if e.get("event") == "download-complete"]
    assert len(done) == 1 and done[0]["verified"] is True
    assert done[0]["sha256"] == sha256_of(alice_file)
    sums = re.findall(r"^([0-9a-f]{64})  (\S+)$", stdout, re.MULTILINE)
    assert [name for _, name in sums] == [f"alice-share/{FILE_NAME}", FILE_NAME]
    assert sums[0][0] == sums[1][0] == sha256_of(alice_file)
    assert FILE_NAME in stdout.split("download-started")[0]  # `flashback ls alice` listed it
    # the daemons' own directories are where the block put them, and nowhere else
    assert (scratch / "alice" / "state").is_dir() and (scratch / "bob" / "data").is_dir()
    assert not (tmp_path / "me" / "run" / "flashback").exists()


async def test_the_already_running_refusal_reads_as_the_readme_says(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second daemon that forgot its own state directory stops with the line the
    walkthrough quotes (the README's example path stands for the user's own)."""
    text = README.read_text(encoding="utf-8")
    quoted = re.search(
        r"^flashback: error: a flashback daemon is already running \(socket (\S+)\); "
        r"to run a second one on this machine, give it its own FLASHBACK_STATE_DIR "
        r"and FLASHBACK_DATA_DIR$",
        text,
        re.MULTILINE,
    )
    assert quoted, "the walkthrough quotes the refusal"
    only_machine_env(monkeypatch)
    env = machine_env(tmp_path, "me", flashback_on_path(tmp_path))
    runtime = Path(env["XDG_RUNTIME_DIR"])
    for name in ("alice-share", "bob-share"):
        (tmp_path / name).mkdir()
    alice_args = ["daemon", "--root", str(tmp_path / "alice-share"), "--name", "alice"]
    with trio.fail_after(60):
        async with start(nursery, alice_args, env=env, name="alice") as alice:
            await alice.wait_event(event_is("peer-server-ready"), timeout_s=30)
            bob = await trio.run_process(
                [sys.executable, "-m", "flashback", "daemon", "--root",
                 str(tmp_path / "bob-share"), "--name", "bob"],
                env=env, capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
    socket_path = runtime / "flashback" / "control.sock"
    expected = quoted.group(0).replace(quoted.group(1), str(socket_path))
    assert bob.returncode == 2
    assert bob.stderr.decode().strip().splitlines()[-1] == expected
    assert bob.stdout == b""


@pytest.mark.slow
async def test_the_two_machine_walkthrough_as_written(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tracker on the lab's 203.0.113.1 (the README's address), alice and bob at
    home behind two ordinary masquerading routers."""
    require_nat_lab()
    only_machine_env(monkeypatch)
    path = flashback_on_path(tmp_path)
    envs = {m: machine_env(tmp_path, m, path) for m in ("tracker", "alice", "bob")}
    blocks = {
        name: walkthrough_block(name)
        for name in ("tracker-machine", "alice-machine", "bob-machine-daemon", "bob-machine-get")
    }
    assert "http://203.0.113.1:3000" in blocks["alice-machine"]
    with nat_lab({"alice": "cone", "bob": "cone"}) as lab, trio.fail_after(240):
        assert lab.tracker_addr == "203.0.113.1"

        def shell(
            block: str, machine: str, prefix: list[str]
        ) -> contextlib.AbstractAsyncContextManager[Proc]:
            return start(
                nursery, [], env=envs[machine], name=machine, prefix=prefix,
                program=["bash", "-e", "-c", block],
            )  # fmt: skip

        async with shell(blocks["tracker-machine"], "tracker", lab.internet_prefix) as tracker:
            ready = await tracker.wait_event(event_is("tracker-ready"), timeout_s=30)
            assert (ready["port"], ready["tunnel_port"]) == (3000, 3001)  # the defaults
            async with shell(blocks["alice-machine"], "alice", lab["alice"].prefix) as alice:
                await alice.wait_event(event_is("tracker-connected"), timeout_s=60)
                async with shell(
                    blocks["bob-machine-daemon"], "bob", lab["bob"].prefix
                ) as bob_daemon:
                    await bob_daemon.wait_event(event_is("tracker-connected"), timeout_s=60)
                    bob_home = Path(envs["bob"]["HOME"])
                    got = await trio.run_process(
                        [*lab["bob"].prefix, "bash", "-e", "-c", blocks["bob-machine-get"]],
                        cwd=bob_home, env=envs["bob"],
                        capture_stdout=True, capture_stderr=True, check=False,
                    )  # fmt: skip
                    stdout = got.stdout.decode(errors="replace")
                    assert got.returncode == 0, f"{stdout}\n{got.stderr.decode()}"
                    opened = await bob_daemon.wait_event(event_is("tunnel-opened"))
    alice_file = Path(envs["alice"]["HOME"]) / "Shared" / FILE_NAME
    bob_file = bob_home / FILE_NAME
    assert bob_file.stat().st_size == FILE_BYTES
    assert sha256_of(bob_file) == sha256_of(alice_file)
    done = [json.loads(line) for line in stdout.splitlines() if "download-complete" in line]
    assert len(done) == 1 and done[0]["sha256"] == sha256_of(alice_file)
    # the second `peers` names the route bob's daemon took, as the README says
    assert opened["route"] in ("direct", "relay")
    assert opened["route"] in stdout.split("download-complete")[1].split()

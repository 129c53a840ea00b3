"""A real ``flashback`` command at a terminal: a pty is its controlling terminal.

What a person sees is what is asserted: stdout and stderr both go to the pty,
Ctrl-C is the byte ``\\x03`` typed into it (the line discipline sends SIGINT
to the command's process group, as a shell's terminal does), and the lines
are read as the screen shows them once carriage returns have overwritten
the progress bar.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import struct
import termios
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from tests.procs import FLASHBACK

_ESCAPE = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def _become_terminal_owner() -> None:  # runs in the child, before exec
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtySession:
    def __init__(self, process: trio.Process, master: int) -> None:
        self.process = process
        self.master = master
        self.output = bytearray()
        self._changed = trio.Event()

    async def _read(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.master)
            try:
                chunk = os.read(self.master, 65536)
            except OSError as exc:  # EIO: every holder of the pty's other end is gone
                if exc.errno != errno.EIO:
                    raise
                chunk = b""
            if not chunk:
                break
            self.output += chunk
            self._changed.set()
            self._changed = trio.Event()
        self._changed.set()

    def lines(self) -> list[str]:
        """The screen's non-empty lines: for each, what is left after its last ``\\r``."""
        text = _ESCAPE.sub(b"", bytes(self.output)).decode(errors="replace")
        shown = [line.rstrip("\r").rsplit("\r", 1)[-1].strip() for line in text.split("\n")]
        return [line for line in shown if line]

    def last_line(self) -> str:
        lines = self.lines()
        return lines[-1] if lines else ""

    async def wait_for(self, text: str, *, timeout_s: float = 30) -> None:
        with trio.fail_after(timeout_s):
            while text.encode() not in self.output:
                if self.process.returncode is not None:
                    raise AssertionError(f"exited without {text!r}: {self.lines()}")
                await self._changed.wait()

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def ctrl_c(self) -> None:
        self.type(b"\x03")

    @property
    def returncode(self) -> int | None:
        return self.process.returncode


@asynccontextmanager
async def at_terminal(
    args: Sequence[str],
    *,
    env: dict[str, str],
    columns: int = 120,
    program: Sequence[str] = FLASHBACK,
    cwd: str | None = None,
) -> AsyncIterator[PtySession]:
    """Run ``flashback ARGS`` with a pty as its terminal (stdin, stdout, stderr).

    Leaving the block waits for the command's end and reads all it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    try:
        process = await trio.lowlevel.open_process(
            [*program, *args],
            cwd=cwd,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**os.environ, **env},
            preexec_fn=_become_terminal_owner,
        )
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    os.close(slave)
    session = PtySession(process, master)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session._read)
            try:
                yield session
                with trio.fail_after(30):
                    await process.wait()
            finally:
                with trio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.kill()
                    await process.wait()
    finally:
        os.close(master)


async def run_at_terminal(
    args: Sequence[str], *, env: dict[str, str], timeout_s: float = 60
) -> tuple[int, list[str]]:
    """Run to the end at a terminal: (exit code, the screen's lines)."""
    with trio.fail_after(timeout_s):
        async with at_terminal(args, env=env) as session:
            code = await session.process.wait()
    return code, session.lines()

"""Ctrl-C during a transfer, with a real SIGINT to this process: the outcome decides."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from flashback.daemon.fetch import Outcome, until_interrupted
from flashback.errors import Interrupted


async def test_a_ctrl_c_once_the_file_is_in_place_reports_completion() -> None:
    async def work(outcome: Outcome) -> None:
        outcome.finished = True  # reported, as right after the rename
        signal.raise_signal(signal.SIGINT)
        await trio.sleep_forever()  # e.g. the HTTP client's close

    assert await until_interrupted(work) == 0


async def test_a_ctrl_c_mid_transfer_names_the_kept_part(tmp_path: Path) -> None:
    out = tmp_path / "big.bin"

    async def work(outcome: Outcome) -> None:
        outcome.file = out
        (tmp_path / "big.bin.part").write_bytes(b"half")
        signal.raise_signal(signal.SIGINT)
        await trio.sleep_forever()

    with pytest.raises(Interrupted) as caught:
        await until_interrupted(work)
    assert caught.value.message == (
        f"interrupted; the partial file {out}.part is kept: run the same command again to resume"
    )


async def test_a_ctrl_c_before_any_byte_says_so_and_errors_stay_one_line() -> None:
    async def early(outcome: Outcome) -> None:
        signal.raise_signal(signal.SIGINT)
        await trio.sleep_forever()

    with pytest.raises(Interrupted, match=r"^interrupted before the download began$"):
        await until_interrupted(early)

    async def failing(outcome: Outcome) -> None:
        raise Interrupted("not wrapped in a group")

    with pytest.raises(Interrupted, match="not wrapped"):
        await until_interrupted(failing)

"""What ``get`` and ``stream`` print: JSON event lines for scripts, one line for people.

The rule (docs/INTERFACE.md §1): with ``--json``, or when stdout is not a
terminal (a pipe, a file, a test's capture), every event is a JSON line, the
last ``download-complete`` / ``folder-complete``. At a terminal the progress
bar runs on stderr and stdout gets one summary line when the transfer is done.
"""

from __future__ import annotations

import sys
from typing import Any, Final, TextIO

from flashback.events import emit
from flashback.terminal import printable

_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def wants_json(flag: bool, stdout: TextIO | None = None) -> bool:
    """JSON lines unless a person reads stdout at a terminal and did not ask for JSON."""
    out = stdout if stdout is not None else sys.stdout
    try:
        return flag or not out.isatty()
    except ValueError:  # a closed stdout is no terminal
        return True


def human_bytes(count: int) -> str:
    """``524288000`` -> ``500.0 MiB`` (binary units, as the progress bar counts)."""
    value = float(count)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def saved_file_line(
    path: str, size: int, sha256: str, *, peer: str, resumed_from: int = 0, repaired: int = 0
) -> str:
    """``saved big.bin (190.7 MiB from alice, sha256 f443c6a60349… verified)``."""
    notes = [f"{human_bytes(size)} from {peer}", f"sha256 {sha256[:12]}\u2026 verified"]
    if resumed_from:
        notes.append(f"resumed at {human_bytes(resumed_from)}")
    if repaired:
        notes.append(f"{repaired} block{'s' if repaired != 1 else ''} repaired")
    return printable(f"saved {path} ({', '.join(notes)})")


def saved_folder_line(
    path: str, files: int, size: int, *, peer: str, skipped: int = 0, refused: int = 0
) -> str:
    """``saved docs/ (3 files, 1.2 KiB from alice)``, with what was skipped or refused."""
    notes = [f"{files} file{'s' if files != 1 else ''}", f"{human_bytes(size)} from {peer}"]
    if skipped:
        notes.append(f"{skipped} already here")
    if refused:
        notes.append(f"{refused} refused")
    return printable(f"saved {path.rstrip('/')}/ ({', '.join(notes)})")


class Report:
    """Where a transfer's events go: JSON lines (*as_json*) or a person's summary."""

    def __init__(self, *, as_json: bool, peer: str, stdout: TextIO | None = None) -> None:
        self.as_json = as_json
        self.peer = peer
        self._out = stdout

    @property
    def out(self) -> TextIO:
        return self._out if self._out is not None else sys.stdout

    def event(self, name: str, fields: dict[str, Any]) -> None:
        """A progress event (``download-started``, ``file-stream-ready``): JSON only."""
        if self.as_json:
            emit(name, stream=self.out, **fields)

    def file_done(
        self, fields: dict[str, Any], *, resumed_from: int = 0, summary: bool = True
    ) -> None:
        """``download-complete``; at a terminal one line, unless a folder's file (*summary*)."""
        if self.as_json:
            emit("download-complete", stream=self.out, **fields)
        elif summary:
            self._line(
                saved_file_line(
                    str(fields["path"]),
                    int(fields["bytes"]),
                    str(fields["sha256"]),
                    peer=self.peer,
                    resumed_from=resumed_from,
                    repaired=int(fields.get("repaired_blocks") or 0),
                )
            )

    def folder_done(self, fields: dict[str, Any]) -> None:
        if self.as_json:
            emit("folder-complete", stream=self.out, **fields)
        else:
            self._line(
                saved_folder_line(
                    str(fields["path"]),
                    int(fields["files"]),
                    int(fields["bytes"]),
                    peer=self.peer,
                    skipped=int(fields.get("skipped") or 0),
                    refused=int(fields.get("refused") or 0),
                )
            )

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

"""Byte progress on stderr: a tqdm bar when stderr is a terminal, nothing otherwise."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

#: called with each chunk's byte count (a folder's one bar, instead of a bar per file)
ProgressFn = Callable[[int], None]


def byte_bar(label: str, *, total: int, initial: int = 0, enabled: bool | None = None) -> Any:
    """A tqdm bar of bytes on stderr; None when stderr is no terminal (or not *enabled*)."""
    if not (enabled if enabled is not None else sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=label,
        file=sys.stderr,
        leave=False,
    )


class Progress:
    """A progress bar on stderr when it is a terminal (tqdm), silent otherwise."""

    def __init__(self, total: int, initial: int, label: str) -> None:
        self._bar: Any = byte_bar(label, total=total, initial=initial)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

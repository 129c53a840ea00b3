"""Whether a body still moves: the least a peer must send to keep a download.

A hostile or broken peer can send one byte just inside every read timeout
and hold a download (and, in a folder get, every worker) forever. A body
that brings fewer than ``min_bytes`` in a window of ``window_s`` is given up
(its part stays, to resume from another run). Time is an argument: the
rule is tested with plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: 64 KiB a minute: about 1 KiB/s, far below any link worth waiting on
MIN_BYTES_PER_WINDOW: Final = 64 * 1024
WINDOW_S: Final = 60.0


@dataclass
class RateFloor:
    min_bytes: int = MIN_BYTES_PER_WINDOW
    window_s: float = WINDOW_S
    _window_start: float | None = None
    _window_bytes: int = 0

    def too_slow(self, now: float, nbytes: int) -> bool:
        """Count *nbytes* that arrived at *now*; True once a whole window brought too few.

        The first call starts the first window, so waiting for the first byte
        (an owner hashing a big file first) is not counted against the peer.
        """
        if self._window_start is None:
            self._window_start = now
        self._window_bytes += nbytes
        if now - self._window_start < self.window_s:
            return False
        slow = self._window_bytes < self.min_bytes
        self._window_start, self._window_bytes = now, 0
        return slow

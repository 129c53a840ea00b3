"""Machine-readable events: one JSON object per line on stdout.

Humans read stderr (logging); scripts and supervisors read these lines.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO


def format_event(event: str, **fields: Any) -> str:
    """One JSON line; ASCII only, so no control or bidi character from a peer reaches a tty."""
    return json.dumps({"event": event, **fields}, ensure_ascii=True, separators=(", ", ": "))


def emit(event: str, *, stream: TextIO | None = None, **fields: Any) -> None:
    out = stream if stream is not None else sys.stdout
    out.write(format_event(event, **fields) + "\n")
    out.flush()

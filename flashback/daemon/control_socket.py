"""Where the daemon's control socket lives, and whether a daemon already holds it.

Kept apart from :mod:`flashback.daemon.control` so that local commands find the
socket without importing the control server (Quart, Hypercorn).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Final

from flashback.errors import ConfigError

CONTROL_SOCKET: Final = "control.sock"


def control_socket_path(state_dir: Path) -> Path:
    return state_dir / CONTROL_SOCKET


def refuse_if_running(path: Path) -> None:
    """Hypercorn replaces an existing socket file: make sure no daemon owns it."""
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return  # stale socket from a daemon that died: safe to replace
    raise ConfigError(
        f"a flashback daemon is already running (socket {path}); to run a second one on "
        "this machine, give it its own FLASHBACK_STATE_DIR and FLASHBACK_DATA_DIR"
    )

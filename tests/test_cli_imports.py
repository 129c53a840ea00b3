"""Local commands stay light: they talk to the daemon's socket and never import its servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import sys
from flashback.cli import main
try:
    code = main(["status"])
except SystemExit as exit:
    code = exit.code
heavy = sorted(n for n in ("quart", "quart_trio", "hypercorn", "flask") if n in sys.modules)
print(code, ",".join(heavy) or "-")
"""


def test_status_without_a_daemon_imports_no_server_library(tmp_path: Path) -> None:
    env = {**os.environ, "FLASHBACK_STATE_DIR": str(tmp_path / "state")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["1", "-"], done.stdout + done.stderr
    assert "no flashback daemon is running" in done.stderr

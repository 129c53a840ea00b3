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


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path) -> None:
    """``flashback peers | grep -q alice``: grep exits at the first match, the next
    write meets a closed pipe; before, that printed 'flashback: BrokenPipeError'."""
    probe = (
        "import sys\n"
        "import flashback.cli as cli\n"
        "def run(args):\n"
        "    for _ in range(100000):\n"
        "        print('alice  sha256:0123  direct  192.0.2.7:4000')\n"
        "    return 0\n"
        "cli._run_status = run\n"
        "sys.exit(cli.main(['status']))\n"
    )
    reader = subprocess.Popen(
        ["head", "-c", "10"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    assert reader.stdin is not None
    writer = subprocess.run(
        [sys.executable, "-c", probe], stdout=reader.stdin, stderr=subprocess.PIPE, timeout=60
    )
    reader.stdin.close()
    assert reader.wait(timeout=10) == 0
    assert writer.stderr == b"", writer.stderr.decode()
    assert writer.returncode == 1

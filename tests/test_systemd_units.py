"""Every unit in systemd/ passes ``systemd-analyze verify``, as the manager it is for.

``verify`` also checks that ExecStart='s program exists, and ours points at
``~/.local/bin/flashback``, which a test machine does not have. Rather than
silence that check, each unit is copied into tmp_path with the flashback
command swapped for the one installed in this environment, so the rest of
the unit (and the existence check itself) is verified for real. The user
manager needs no running systemd, only an ``$XDG_RUNTIME_DIR``.

``systemd-analyze`` comes with Debian's ``systemd`` package; without it these
tests are skipped, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
VERIFY_TIMEOUT_S = 60

# unit -> the service managers it is written for. A drop-in named user.conf in
# <unit>.d/ applies to the user manager only (it turns a system unit into a user one).
MANAGERS = {
    "flashback.service": ("user",),
    "flashback-tracker.service": ("system", "user"),
}

# ExecStart= of the flashback command, wherever it is installed: the program is
# the first word (after systemd's prefix characters) and its name is "flashback".
_EXEC_START_RE = re.compile(r"^(ExecStart=[-+!@:|]*)(\S*/flashback)(\s.*)?$", re.MULTILINE)

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not found (Debian/Ubuntu: apt-get install systemd)",
)


def _installed_flashback() -> Path:
    """The flashback command of the environment running the tests."""
    candidate = Path(sys.executable).parent / "flashback"
    found = candidate if candidate.is_file() else shutil.which("flashback")
    assert found, "the flashback command is not installed (pip install -e .)"
    return Path(found).absolute()


def _unit_files() -> list[str]:
    return sorted(path.name for path in SYSTEMD_DIR.glob("*.service"))


def _parse(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, repeated keys kept, in order."""
    entries = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def _values(unit: str, section: str, key: str) -> list[str]:
    text = (SYSTEMD_DIR / unit).read_text()
    return [v for s, k, v in _parse(text) if (s, k) == (section, key)]


def _copy_for_verify(unit: str, manager: str, dest: Path) -> Path:
    """Copy *unit* and the drop-ins *manager* reads into *dest*, retargeting ExecStart=."""
    flashback = str(_installed_flashback())
    dest.mkdir(parents=True)

    def retarget(text: str) -> str:
        new, count = _EXEC_START_RE.subn(lambda m: m[1] + flashback + (m[3] or ""), text)
        return new if count else text

    target = dest / unit
    target.write_text(retarget((SYSTEMD_DIR / unit).read_text()))
    dropins = SYSTEMD_DIR / f"{unit}.d"
    for conf in sorted(dropins.glob("*.conf")):
        if conf.name == "user.conf" and manager != "user":
            continue
        (dest / dropins.name).mkdir(exist_ok=True)
        (dest / dropins.name / conf.name).write_text(retarget(conf.read_text()))
    return target


def _verify(path: Path, manager: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    env = dict(os.environ)
    command = [SYSTEMD_ANALYZE]
    if manager == "user":
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        # Only the unit under test: not the runner's own ~/.config/systemd/user.
        env.update(
            XDG_RUNTIME_DIR=str(runtime),
            XDG_CONFIG_HOME=str(tmp_path / "config"),
            XDG_DATA_HOME=str(tmp_path / "data"),
        )
        command.append("--user")
    env.update(SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="")
    command += ["verify", "--man=no", "--recursive-errors=no", str(path)]
    return subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=VERIFY_TIMEOUT_S,
        check=False,
    )


def _complaints(result: subprocess.CompletedProcess[str], tmp_path: Path) -> list[str]:
    """Output lines about our units (not about the host's own units it loaded)."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if "flashback" in line or str(tmp_path) in line]


def test_every_unit_has_a_manager() -> None:
    assert _unit_files(), f"no units in {SYSTEMD_DIR}"
    assert set(_unit_files()) == set(MANAGERS)


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("unit", "manager"),
    [(unit, manager) for unit, managers in MANAGERS.items() for manager in managers],
)
def test_unit_verifies_cleanly(unit: str, manager: str, tmp_path: Path) -> None:
    path = _copy_for_verify(unit, manager, tmp_path / "units")
    assert f"ExecStart={_installed_flashback()} " in path.read_text()
    result = _verify(path, manager, tmp_path)
    complaints = _complaints(result, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert complaints == []


@needs_systemd_analyze
def test_verify_reports_what_we_filter_for(tmp_path: Path) -> None:
    """The check is live: a typo and a missing program are both reported."""
    units = tmp_path / "units"
    units.mkdir()
    broken = units / "flashback-broken.service"
    broken.write_text(
        "[Service]\nType=notify\nWatchdogSecs=30\nExecStart=/nonexistent/flashback daemon\n"
    )
    result = _verify(broken, "user", tmp_path)
    complaints = "\n".join(_complaints(result, tmp_path))
    assert "WatchdogSecs" in complaints
    assert "/nonexistent/flashback" in complaints
    assert result.returncode != 0


def test_exec_start_is_rewritten_in_drop_ins_too(tmp_path: Path) -> None:
    path = _copy_for_verify("flashback-tracker.service", "user", tmp_path / "units")
    dropin = (path.parent / "flashback-tracker.service.d" / "user.conf").read_text()
    assert f"ExecStart={_installed_flashback()} tracker" in dropin
    assert "ExecStart=\n" in dropin  # the reset line is left alone


@pytest.mark.parametrize("unit", sorted(MANAGERS))
def test_unit_is_a_watched_notify_service(unit: str) -> None:
    assert _values(unit, "Service", "Type") == ["notify"]
    assert _values(unit, "Service", "NotifyAccess") == ["main"]
    assert _values(unit, "Service", "WatchdogSec") == ["30s"]
    assert _values(unit, "Service", "Restart") == ["on-failure"]
    assert _values(unit, "Service", "NoNewPrivileges") == ["yes"]
    assert _values(unit, "Service", "ProtectSystem") == ["strict"]
    assert _values(unit, "Service", "PrivateTmp") == ["yes"]
    assert any(value.startswith("-") for value in _values(unit, "Service", "EnvironmentFile"))


def test_daemon_unit_runs_the_user_install_and_writes_only_its_dirs() -> None:
    unit = "flashback.service"
    assert _values(unit, "Service", "ExecStart") == ["%h/.local/bin/flashback daemon"]
    assert _values(unit, "Service", "RuntimeDirectory") == ["flashback"]
    assert _values(unit, "Service", "RuntimeDirectoryMode") == ["0700"]
    assert _values(unit, "Service", "ReadWritePaths") == ["%h/.local/share/flashback"]
    assert _values(unit, "Service", "ProtectHome") == ["read-only"]


def test_tracker_unit_sets_the_contract_variables() -> None:
    settings = dict(
        value.split("=", 1)
        for value in _values("flashback-tracker.service", "Service", "Environment")
    )
    assert settings["RELAY_PORT"] == "3000"
    assert settings["RELAY_BIND_ADDRESS"] == "0.0.0.0"
    assert settings["DATABASE_URL"].startswith("sqlite:///%S/")
    assert "RELAY_AUTH_TOKEN" not in settings  # a secret: EnvironmentFile= only

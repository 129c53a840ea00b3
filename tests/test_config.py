"""Settings: flag > environment > config file > default, and one clear error otherwise.

The ``*_from_sources`` functions take the flags, an environment mapping and the
file's table, so these tests never touch the real environment.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest

from flashback.config import (
    config_file_path,
    daemon_from_sources,
    data_dir,
    ensure_private_dir,
    load_config_file,
    state_dir,
    tracker_from_sources,
)
from flashback.errors import ConfigError

# -- the config file ---------------------------------------------------------------


def test_missing_file_is_an_empty_table(tmp_path: Path) -> None:
    assert load_config_file(tmp_path / "nope" / "config.toml") == {}


def test_file_is_read_as_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        'fileRootDirectory = "~/Shared"\ntracker = "http://t.example:3000"\nname = "café"\n',
        encoding="utf-8",
    )
    assert load_config_file(path) == {
        "fileRootDirectory": "~/Shared",
        "tracker": "http://t.example:3000",
        "name": "café",
    }


@pytest.mark.parametrize(
    "content",
    [
        b"fileRootDirectory = \n",
        b"name = 'unterminated\n",
        b"[table\n",
        b'name = "\xff\xfe"\n',  # not UTF-8: tomllib raises UnicodeDecodeError
    ],
)
def test_invalid_file_is_one_config_error_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    message = info.value.message
    assert message.startswith(f"invalid config file {path}: ")
    assert "\n" not in message


def test_unreadable_file_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text('name = "x"\n')

    def refuse(self: Path, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(self))

    # chmod 000 means nothing to root, so the refusal is simulated.
    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ConfigError, match=r"cannot read config file .*: Permission denied$"):
        load_config_file(path)


def test_a_directory_instead_of_a_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.mkdir()
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(path)


def test_config_file_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_file_path({"XDG_CONFIG_HOME": "/cfg"}) == Path("/cfg/flashback/config.toml")
    expected_default = tmp_path / "home" / ".config" / "flashback" / "config.toml"
    assert config_file_path({}) == expected_default
    assert config_file_path({"XDG_CONFIG_HOME": ""}) == expected_default
    # The XDG spec: a relative path is invalid and ignored.
    assert config_file_path({"XDG_CONFIG_HOME": "cfg"}) == expected_default


# -- daemon precedence ---------------------------------------------------------------


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    made = {}
    for source in ("flag", "env", "file"):
        made[source] = tmp_path / f"{source}-root"
        made[source].mkdir()
    return made


def _sources(
    roots: dict[str, Path], present: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    flags: dict[str, Any] = {}
    env: dict[str, str] = {}
    file: dict[str, Any] = {}
    if "flag" in present:
        flags.update(root=str(roots["flag"]), tracker="http://flag:1", name="flag-name")
    if "env" in present:
        env.update(
            FLASHBACK_ROOT=str(roots["env"]),
            FLASHBACK_TRACKER_URL="http://env:2",
            FLASHBACK_NAME="env-name",
        )
    if "file" in present:
        file.update(fileRootDirectory=str(roots["file"]), tracker="http://file:3", name="file-name")
    return flags, env, file


@pytest.mark.parametrize(
    ("present", "winner"),
    [
        (("flag", "env", "file"), "flag"),
        (("flag", "file"), "flag"),
        (("flag", "env"), "flag"),
        (("env", "file"), "env"),
        (("env",), "env"),
        (("file",), "file"),
    ],
)
def test_daemon_precedence(roots: dict[str, Path], present: tuple[str, ...], winner: str) -> None:
    flags, env, file = _sources(roots, present)
    cfg = daemon_from_sources(flags, env, file)
    assert cfg.root == roots[winner].resolve()
    assert (
        cfg.tracker_url
        == {"flag": "http://flag:1", "env": "http://env:2", "file": "http://file:3"}[winner]
    )
    assert cfg.name == f"{winner}-name"


def test_each_setting_falls_through_on_its_own(roots: dict[str, Path]) -> None:
    """Precedence is per setting: a flag for one does not hide the file for another."""
    cfg = daemon_from_sources(
        {"root": str(roots["flag"]), "tracker": None, "name": None},
        {"FLASHBACK_TRACKER_URL": "http://env:2", "FLASHBACK_NAME": ""},
        {"fileRootDirectory": str(roots["file"]), "name": "file-name"},
    )
    assert cfg.root == roots["flag"].resolve()
    assert cfg.tracker_url == "http://env:2"
    assert cfg.name == "file-name"  # an empty variable counts as unset


def test_daemon_defaults(
    roots: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("flashback.config.socket.gethostname", lambda: "this-host")
    env = {"FLASHBACK_ROOT": str(roots["env"]), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    cfg = daemon_from_sources({}, env, {})
    assert cfg.tracker_url is None
    assert cfg.name == "this-host"
    assert cfg.host == "127.0.0.1"
    assert cfg.port == 0
    assert cfg.show_hidden is False
    assert cfg.ui_port == 0
    assert cfg.state_dir == tmp_path / "run" / "flashback"


def test_daemon_flags_for_host_port_hidden(roots: dict[str, Path]) -> None:
    cfg = daemon_from_sources(
        {"root": str(roots["flag"]), "host": "0.0.0.0", "port": 8080, "show_hidden": True},
        {},
        {},
    )
    assert (cfg.host, cfg.port, cfg.show_hidden) == ("0.0.0.0", 8080, True)


def test_daemon_ui_port(roots: dict[str, Path]) -> None:
    flags = {"root": str(roots["flag"]), "ui_port": "8731"}
    assert daemon_from_sources(flags, {}, {}).ui_port == 8731
    with pytest.raises(ConfigError, match="--ui-port"):
        daemon_from_sources({**flags, "ui_port": "web"}, {}, {})


def test_root_expands_user_and_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / "Shared").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    cfg = daemon_from_sources({}, {}, {"fileRootDirectory": "~/Shared", "name": "n"})
    assert cfg.root == (home / "Shared").resolve()


def test_tracker_url_loses_its_trailing_slash(roots: dict[str, Path]) -> None:
    flags = {"root": str(roots["flag"]), "tracker": "https://t.example/"}
    assert daemon_from_sources(flags, {}, {}).tracker_url == "https://t.example"


@pytest.mark.parametrize(
    ("flags", "env", "file", "match"),
    [
        ({}, {}, {}, "no root directory"),
        ({}, {"FLASHBACK_ROOT": ""}, {}, "no root directory"),
        ({"root": "MISSING"}, {}, {}, "is not a directory"),
        ({}, {}, {"fileRootDirectory": 5}, "must be a directory path"),
        ({}, {}, {"fileRootDirectory": ["a"]}, "must be a directory path"),
        ({"root": "ROOT", "tracker": "ftp://t"}, {}, {}, "tracker URL must start with http"),
        ({"root": "ROOT"}, {"FLASHBACK_TRACKER_URL": "t.example:3000"}, {}, "tracker URL"),
        ({"root": "ROOT"}, {}, {"tracker": 3000}, "tracker URL"),
        ({"root": "ROOT", "name": "x" * 65}, {}, {}, "name must be 1-64 printable"),
        ({"root": "ROOT"}, {"FLASHBACK_NAME": "a\nb"}, {}, "name must be"),
        ({"root": "ROOT"}, {}, {"name": 42}, "name must be"),
        ({"root": "ROOT", "port": -1}, {}, {}, "between 0 and 65535"),
        ({"root": "ROOT", "port": 65536}, {}, {}, "between 0 and 65535"),
        ({"root": "ROOT", "port": "http"}, {}, {}, "must be a port number"),
    ],
)
def test_daemon_config_errors(
    tmp_path: Path,
    flags: dict[str, Any],
    env: dict[str, str],
    file: dict[str, Any],
    match: str,
) -> None:
    if flags.get("root") == "ROOT":
        flags = {**flags, "root": str(tmp_path)}
    if flags.get("root") == "MISSING":
        flags = {**flags, "root": str(tmp_path / "missing" / "dir")}
    with pytest.raises(ConfigError, match=match):
        daemon_from_sources(flags, env, file)


def test_a_file_root_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        daemon_from_sources({}, {}, {"fileRootDirectory": str(path)})


# -- where state and data live ------------------------------------------------------------


def test_state_dir_resolution() -> None:
    both = {"FLASHBACK_STATE_DIR": "/state", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert state_dir(both) == Path("/state")
    assert state_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}) == Path("/run/user/1000/flashback")
    per_user_tmp = Path(tempfile.gettempdir()) / f"flashback-{os.getuid()}"
    assert state_dir({}) == per_user_tmp
    assert state_dir({"FLASHBACK_STATE_DIR": "", "XDG_RUNTIME_DIR": ""}) == per_user_tmp
    # A relative XDG_RUNTIME_DIR is invalid (XDG spec): the daemon and a client
    # started in another directory would not find each other.
    assert state_dir({"XDG_RUNTIME_DIR": "run"}) == per_user_tmp


def test_data_dir_resolution() -> None:
    both = {"FLASHBACK_DATA_DIR": "/data", "XDG_DATA_HOME": "/home/u/.local/share"}
    assert data_dir(both) == Path("/data")
    assert data_dir({"XDG_DATA_HOME": "/home/u/.local/share"}) == Path(
        "/home/u/.local/share/flashback"
    )
    assert data_dir({}).name == "flashback"
    assert data_dir({"XDG_DATA_HOME": "share"}).is_absolute()


def test_ensure_private_dir_creates_and_tightens(tmp_path: Path) -> None:
    fresh = ensure_private_dir(tmp_path / "a" / "state")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    ensure_private_dir(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


def test_ensure_private_dir_reports_failure_as_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create directory"):
        ensure_private_dir(blocker / "state")


# -- tracker ----------------------------------------------------------------------------


def test_tracker_defaults() -> None:
    cfg = tracker_from_sources({}, {"FLASHBACK_DATA_DIR": "/data"})
    assert cfg.host == "0.0.0.0"
    assert cfg.port == 3000
    assert cfg.database_url == "sqlite:////data/tracker.sqlite3"
    assert cfg.auth_token is None
    assert cfg.peer_ttl_s == 30
    assert cfg.heartbeat_interval_s == 10


def test_tracker_reads_the_contract_variables() -> None:
    env = {
        "RELAY_PORT": "4000",
        "RELAY_BIND_ADDRESS": "127.0.0.1",
        "DATABASE_URL": "redis://r:6379/0",
        "RELAY_AUTH_TOKEN": "s3cret",
        "RELAY_PEER_TTL": "12.5",
        "RELAY_HEARTBEAT_INTERVAL": "4",
    }
    cfg = tracker_from_sources({}, env)
    assert (cfg.host, cfg.port, cfg.database_url) == ("127.0.0.1", 4000, "redis://r:6379/0")
    assert cfg.auth_token == "s3cret"
    assert (cfg.peer_ttl_s, cfg.heartbeat_interval_s) == (12.5, 4.0)


def test_tracker_flags_beat_environment() -> None:
    env = {"RELAY_PORT": "4000", "RELAY_BIND_ADDRESS": "127.0.0.1", "DATABASE_URL": "redis://r"}
    flags = {"port": 5000, "host": "::", "database_url": "memory://"}
    cfg = tracker_from_sources(flags, env)
    assert (cfg.host, cfg.port, cfg.database_url) == ("::", 5000, "memory://")


def test_tracker_empty_variables_count_as_unset() -> None:
    env = {
        "FLASHBACK_DATA_DIR": "/data",
        "RELAY_PORT": "",
        "RELAY_BIND_ADDRESS": "",
        "DATABASE_URL": "",
        "RELAY_AUTH_TOKEN": "",
        "RELAY_PEER_TTL": "",
    }
    cfg = tracker_from_sources({}, env)
    assert (cfg.host, cfg.port) == ("0.0.0.0", 3000)
    assert cfg.database_url == "sqlite:////data/tracker.sqlite3"
    assert cfg.auth_token is None
    assert cfg.peer_ttl_s == 30


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"RELAY_PORT": "http"}, "tracker port must be a port number"),
        ({"RELAY_PORT": "70000"}, "between 0 and 65535"),
        ({"RELAY_PORT": "-1"}, "between 0 and 65535"),
        ({"RELAY_PORT": "30.5"}, "must be a port number"),
        ({"RELAY_PEER_TTL": "0"}, "RELAY_PEER_TTL must be a positive number"),
        ({"RELAY_PEER_TTL": "-3"}, "RELAY_PEER_TTL"),
        ({"RELAY_PEER_TTL": "nan"}, "RELAY_PEER_TTL"),
        ({"RELAY_PEER_TTL": "inf"}, "RELAY_PEER_TTL"),
        ({"RELAY_HEARTBEAT_INTERVAL": "soon"}, "RELAY_HEARTBEAT_INTERVAL must be a number"),
        ({"RELAY_REGISTER_RATE": "0"}, "RELAY_REGISTER_RATE"),
        ({"RELAY_REGISTER_BURST": "x"}, "RELAY_REGISTER_BURST"),
    ],
)
def test_tracker_config_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        tracker_from_sources({}, env)


def test_tracker_bad_port_flag_is_an_error() -> None:
    with pytest.raises(ConfigError, match="between 0 and 65535"):
        tracker_from_sources({"port": 99999}, {"RELAY_PORT": "3000"})

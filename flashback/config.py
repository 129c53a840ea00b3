"""Settings for every role, resolved once: flag > environment > config file > default.

Each role gets a frozen dataclass; the ``*_from_sources`` functions are pure
(they take the parsed flags, an environment mapping and the config file's
table) so precedence is tested without touching the real environment.
Anything wrong raises :class:`~flashback.errors.ConfigError`, which the CLI
prints as one line before exiting with status 2.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import platformdirs

from flashback.errors import ConfigError
from flashback.protocol.access import MODES, Mode
from flashback.protocol.messages import MAX_PEER_LIST_BYTES

APP_NAME: Final = "flashback"
DEFAULT_PEER_HOST: Final = "127.0.0.1"
DEFAULT_TRACKER_HOST: Final = "0.0.0.0"
DEFAULT_TRACKER_PORT: Final = 3000
DEFAULT_PEER_TTL_S: Final = 30
DEFAULT_HEARTBEAT_INTERVAL_S: Final = 10
DEFAULT_REGISTER_RATE_PER_S: Final = 20.0
DEFAULT_REGISTER_BURST: Final = 100
# A watcher this many messages behind is dropped (it resumes by last_seq).
DEFAULT_WATCHER_QUEUE_MESSAGES: Final = 1024
# Changes kept for resuming watchers; the contract asks for at least 10,000.
DEFAULT_BACKLOG_CHANGES: Final = 16_384
DEFAULT_TUNNEL_PORT: Final = 3001
DEFAULT_TUNNEL_MAX_SESSIONS: Final = 256
# Abuse bounds: peers online, their records' bytes (at most what a
# daemon takes in one frame), relayed messages per link, and how long and how
# much a link that does not read may hold back.
DEFAULT_MAX_PEERS: Final = 10_000
# peers registered from one client address (a NAT may hide many daemons),
# and websocket links (every peer's daemon has one; watchers more)
DEFAULT_MAX_PEERS_PER_ADDRESS: Final = 1_000
DEFAULT_MAX_LINKS: Final = 20_000
DEFAULT_MAX_LINKS_PER_ADDRESS: Final = 1_024
# identities of peers offline, kept for when they come back (in all, per address)
DEFAULT_MAX_IDENTITIES: Final = 50_000
DEFAULT_MAX_IDENTITIES_PER_ADDRESS: Final = 1_000
DEFAULT_RELAY_RATE_PER_S: Final = 20.0
DEFAULT_RELAY_BURST: Final = 100
DEFAULT_SEND_TIMEOUT_S: Final = 10.0
DEFAULT_MAX_SEND_BYTES: Final = 256 * 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    root: Path
    host: str = DEFAULT_PEER_HOST
    port: int = 0
    show_hidden: bool = False
    name: str = ""


@dataclass(frozen=True)
class TrackerConfig:
    host: str = DEFAULT_TRACKER_HOST
    port: int = DEFAULT_TRACKER_PORT
    database_url: str = ""
    auth_token: str | None = None
    peer_ttl_s: float = DEFAULT_PEER_TTL_S
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    register_rate_per_s: float = DEFAULT_REGISTER_RATE_PER_S
    register_burst: int = DEFAULT_REGISTER_BURST
    # None: no tunnel port (the command line's default is 3001; in-process
    # trackers built by tests open none unless asked)
    tunnel_port: int | None = None
    tunnel_advertise: str | None = None
    tunnel_max_sessions: int = DEFAULT_TUNNEL_MAX_SESSIONS
    tunnel_rate_bytes_per_s: float | None = None
    # Not settable from outside: tuned here, overridden by tests and benchmarks.
    watcher_queue_messages: int = DEFAULT_WATCHER_QUEUE_MESSAGES
    backlog_changes: int = DEFAULT_BACKLOG_CHANGES
    max_peers: int = DEFAULT_MAX_PEERS
    max_peers_per_address: int = DEFAULT_MAX_PEERS_PER_ADDRESS
    max_links: int = DEFAULT_MAX_LINKS
    max_links_per_address: int = DEFAULT_MAX_LINKS_PER_ADDRESS
    max_identities: int = DEFAULT_MAX_IDENTITIES
    max_identities_per_address: int = DEFAULT_MAX_IDENTITIES_PER_ADDRESS
    max_peer_list_bytes: int = MAX_PEER_LIST_BYTES
    relay_rate_per_s: float = DEFAULT_RELAY_RATE_PER_S
    relay_burst: int = DEFAULT_RELAY_BURST
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S
    max_send_bytes: int = DEFAULT_MAX_SEND_BYTES


@dataclass(frozen=True)
class DaemonConfig:
    root: Path
    tracker_url: str | None
    name: str
    host: str = DEFAULT_PEER_HOST
    port: int = 0
    show_hidden: bool = False
    ui_port: int = 0
    state_dir: Path = Path()
    data_dir: Path = Path()
    # an identity instance to use (else the first free one of the name)
    identity: str | None = None
    # LAN discovery over mDNS (§12): on by default from the command line; a
    # config built in code (tests) announces nothing on any network unless asked
    lan: bool = False
    # who may connect (§11): "tracker" (whom the tracker lists) or "allowed" (only them)
    share_with: Mode = "tracker"
    # the direct endpoint (§10.1): None is ``off``; 0 the OS's choice, kept in data_dir
    direct_port: int | None = 0
    # None: 0.0.0.0 and :: where IPv6 works
    direct_host: str | None = None


# -- where things live ---------------------------------------------------------


def _xdg_dir(env: Mapping[str, str], name: str) -> Path | None:
    """An XDG base directory from *env*; relative ones are invalid and ignored (per the spec).

    Otherwise the daemon and a client started elsewhere would disagree on it.
    """
    value = env.get(name)
    if value and Path(value).is_absolute():
        return Path(value)
    return None


def config_file_path(env: Mapping[str, str]) -> Path:
    base = _xdg_dir(env, "XDG_CONFIG_HOME") or Path.home() / ".config"
    return base / APP_NAME / "config.toml"


def state_dir(env: Mapping[str, str]) -> Path:
    """The per-user directory through which local commands reach the daemon."""
    if env.get("FLASHBACK_STATE_DIR"):
        return Path(env["FLASHBACK_STATE_DIR"])
    runtime = _xdg_dir(env, "XDG_RUNTIME_DIR")
    if runtime is not None:
        return runtime / APP_NAME
    return Path(tempfile.gettempdir()) / f"{APP_NAME}-{os.getuid()}"


def data_dir(env: Mapping[str, str]) -> Path:
    """Persistent per-user data (daemon identity, tracker database)."""
    if env.get("FLASHBACK_DATA_DIR"):
        return Path(env["FLASHBACK_DATA_DIR"])
    data_home = _xdg_dir(env, "XDG_DATA_HOME")
    if data_home is not None:
        return data_home / APP_NAME
    return platformdirs.user_data_path(APP_NAME)


def check_private(path: Path, info: os.stat_result) -> None:
    """Refuse *path* unless it is ours and no other user can write it.

    The one rule for the state directory and its socket, shared by the daemon
    (before it binds) and the local commands (before they trust what answers):
    with ``XDG_RUNTIME_DIR`` unset the directory lives in ``/tmp``, where
    another user can create it first and put a fake daemon in it.
    """
    if info.st_uid != os.getuid():
        raise ConfigError(f"{path} belongs to another user (uid {info.st_uid}); refusing to use it")
    if info.st_mode & 0o022:
        mode = stat.S_IMODE(info.st_mode)
        raise ConfigError(f"{path} is writable by other users (mode {mode:04o}); refusing it")


def ensure_private_dir(path: Path) -> Path:
    """Create *path* (mode 0700) if needed and refuse one another user could use."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            path.chmod(0o700)  # ours but loose (an old umask): tighten rather than refuse
            info = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot create directory {path}: {exc.strerror}") from exc
    check_private(path, info)
    return path


def private_existing(path: Path) -> os.stat_result | None:
    """``stat`` of *path* checked by :func:`check_private`; None when it does not exist."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot inspect {path}: {exc.strerror}") from exc
    check_private(path, info)
    return info


def load_config_file(path: Path) -> dict[str, Any]:
    """Read the TOML config file; a missing file is an empty table."""
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid config file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:  # tomllib decodes before parsing
        raise ConfigError(f"invalid config file {path}: not UTF-8 ({exc.reason})") from exc


# -- validation helpers ----------------------------------------------------------


def parse_port(value: Any, *, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a port number, not {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} must be between 0 and 65535, not {port}")
    return port


def parse_positive(value: Any, *, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, not {value!r}") from None
    if not number > 0 or number != number or number == float("inf"):
        raise ConfigError(f"{what} must be a positive number, not {value!r}")
    return number


def existing_dir(value: Any, *, what: str) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value):
        raise ConfigError(f"{what} must be a directory path")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is not a directory")
    return path.resolve()


def _first(*values: Any) -> Any:
    for value in values:
        if value is not None and value != "":
            return value
    return None


# -- per role ------------------------------------------------------------------


def serve_from_sources(flags: Mapping[str, Any]) -> ServeConfig:
    if flags.get("root") is None:
        raise ConfigError("--root is required")
    return ServeConfig(
        root=existing_dir(flags["root"], what="--root"),
        host=flags.get("host") or DEFAULT_PEER_HOST,
        port=parse_port(_first(flags.get("port"), 0), what="--port"),
        show_hidden=bool(flags.get("show_hidden")),
        name=socket.gethostname(),
    )


def tracker_from_sources(flags: Mapping[str, Any], env: Mapping[str, str]) -> TrackerConfig:
    database_url = _first(flags.get("database_url"), env.get("DATABASE_URL"))
    if database_url is None:
        database_url = "sqlite:///" + str(data_dir(env) / "tracker.sqlite3")
    burst = parse_positive(
        _first(env.get("RELAY_REGISTER_BURST"), DEFAULT_REGISTER_BURST),
        what="RELAY_REGISTER_BURST",
    )
    return TrackerConfig(
        host=_first(flags.get("host"), env.get("RELAY_BIND_ADDRESS"), DEFAULT_TRACKER_HOST),
        port=parse_port(
            _first(flags.get("port"), env.get("RELAY_PORT"), DEFAULT_TRACKER_PORT),
            what="the tracker port",
        ),
        database_url=database_url,
        auth_token=env.get("RELAY_AUTH_TOKEN") or None,
        peer_ttl_s=parse_positive(
            _first(env.get("RELAY_PEER_TTL"), DEFAULT_PEER_TTL_S), what="RELAY_PEER_TTL"
        ),
        heartbeat_interval_s=parse_positive(
            _first(env.get("RELAY_HEARTBEAT_INTERVAL"), DEFAULT_HEARTBEAT_INTERVAL_S),
            what="RELAY_HEARTBEAT_INTERVAL",
        ),
        register_rate_per_s=parse_positive(
            _first(env.get("RELAY_REGISTER_RATE"), DEFAULT_REGISTER_RATE_PER_S),
            what="RELAY_REGISTER_RATE",
        ),
        register_burst=max(1, int(burst)),
        tunnel_port=parse_tunnel_port(
            _first(flags.get("tunnel_port"), env.get("RELAY_TUNNEL_PORT"), DEFAULT_TUNNEL_PORT)
        ),
        tunnel_advertise=env.get("RELAY_TUNNEL_ADVERTISE") or None,
        tunnel_max_sessions=max(
            1,
            int(
                parse_positive(
                    _first(env.get("RELAY_TUNNEL_MAX_SESSIONS"), DEFAULT_TUNNEL_MAX_SESSIONS),
                    what="RELAY_TUNNEL_MAX_SESSIONS",
                )
            ),
        ),
        tunnel_rate_bytes_per_s=(
            parse_positive(env["RELAY_TUNNEL_RATE"], what="RELAY_TUNNEL_RATE")
            if env.get("RELAY_TUNNEL_RATE")
            else None
        ),
        max_peers=_count(env, "RELAY_MAX_PEERS", DEFAULT_MAX_PEERS),
        max_peers_per_address=_count(
            env, "RELAY_MAX_PEERS_PER_ADDRESS", DEFAULT_MAX_PEERS_PER_ADDRESS
        ),
        max_links=_count(env, "RELAY_MAX_LINKS", DEFAULT_MAX_LINKS),
        max_links_per_address=_count(
            env, "RELAY_MAX_LINKS_PER_ADDRESS", DEFAULT_MAX_LINKS_PER_ADDRESS
        ),
        max_identities=_count(env, "RELAY_MAX_IDENTITIES", DEFAULT_MAX_IDENTITIES),
        max_identities_per_address=_count(
            env, "RELAY_MAX_IDENTITIES_PER_ADDRESS", DEFAULT_MAX_IDENTITIES_PER_ADDRESS
        ),
        max_peer_list_bytes=_count(
            env, "RELAY_MAX_PEER_LIST_BYTES", MAX_PEER_LIST_BYTES, high=MAX_PEER_LIST_BYTES
        ),
        relay_rate_per_s=parse_positive(
            _first(env.get("RELAY_MESSAGE_RATE"), DEFAULT_RELAY_RATE_PER_S),
            what="RELAY_MESSAGE_RATE",
        ),
        relay_burst=_count(env, "RELAY_MESSAGE_BURST", DEFAULT_RELAY_BURST),
        send_timeout_s=parse_positive(
            _first(env.get("RELAY_SEND_TIMEOUT"), DEFAULT_SEND_TIMEOUT_S),
            what="RELAY_SEND_TIMEOUT",
        ),
        max_send_bytes=_count(env, "RELAY_MAX_SEND_BYTES", DEFAULT_MAX_SEND_BYTES),
    )


def parse_tunnel_port(value: Any) -> int | None:
    """A port number, ``0`` for the OS's choice, or ``off`` (None): no tunnels."""
    if isinstance(value, str) and value.strip().lower() == "off":
        return None
    return parse_port(value, what="the tunnel port (RELAY_TUNNEL_PORT)")


def parse_direct_port(value: Any) -> int | None:
    """The direct endpoint's port: a number, ``0`` (the OS's choice, then kept), or ``off``."""
    if isinstance(value, str) and value.strip().lower() == "off":
        return None
    return parse_port(value, what="--direct-port (FLASHBACK_DIRECT_PORT)")


def parse_direct_host(value: Any) -> str | None:
    """An IP literal to bind the direct endpoint to (None: every interface)."""
    if value is None:
        return None
    try:
        return ipaddress.ip_address(str(value)).compressed
    except ValueError:
        raise ConfigError(f"--direct-host must be an IP address, not {value!r}") from None


def _count(env: Mapping[str, str], name: str, default: int, *, high: int | None = None) -> int:
    """A whole number >= 1 from *env*; above *high* is refused, naming the ceiling."""
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, not {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be at most {high} (what a daemon accepts), not {value}")
    return value


def daemon_from_sources(
    flags: Mapping[str, Any], env: Mapping[str, str], file: Mapping[str, Any]
) -> DaemonConfig:
    root = _first(flags.get("root"), env.get("FLASHBACK_ROOT"), file.get("fileRootDirectory"))
    if root is None:
        raise ConfigError("no root directory: pass --root, set FLASHBACK_ROOT or fileRootDirectory")
    tracker = _first(flags.get("tracker"), env.get("FLASHBACK_TRACKER_URL"), file.get("tracker"))
    if tracker is not None and (
        not isinstance(tracker, str) or not tracker.startswith(("http://", "https://"))
    ):
        raise ConfigError(f"tracker URL must start with http:// or https://, not {tracker!r}")
    name = _first(flags.get("name"), env.get("FLASHBACK_NAME"), file.get("name"))
    if name is None:
        name = socket.gethostname()
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isprintable():
        raise ConfigError("name must be 1-64 printable characters")
    return DaemonConfig(
        root=existing_dir(root, what="root directory"),
        tracker_url=tracker.rstrip("/") if tracker else None,
        name=name,
        host=_first(flags.get("host"), DEFAULT_PEER_HOST),
        port=parse_port(_first(flags.get("port"), 0), what="--port"),
        show_hidden=bool(flags.get("show_hidden")),
        ui_port=parse_port(_first(flags.get("ui_port"), 0), what="--ui-port"),
        state_dir=state_dir(env),
        data_dir=data_dir(env),
        identity=_first(flags.get("identity"), env.get("FLASHBACK_IDENTITY")),
        lan=parse_on_off(
            _first(flags.get("lan"), env.get("FLASHBACK_LAN"), file.get("lan"), "on"),
            what="--lan (FLASHBACK_LAN)",
        ),
        share_with=parse_share_with(
            _first(flags.get("share_with"), env.get("FLASHBACK_SHARE_WITH"), file.get("shareWith"))
        ),
        direct_port=parse_direct_port(
            _first(flags.get("direct_port"), env.get("FLASHBACK_DIRECT_PORT"), 0)
        ),
        direct_host=parse_direct_host(flags.get("direct_host")),
    )


def parse_on_off(value: Any, *, what: str) -> bool:
    """``on``/``off`` (also a TOML boolean): anything else is a usage error."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower() if isinstance(value, str) else None
    if text in ("on", "off"):
        return text == "on"
    raise ConfigError(f"{what} must be on or off, not {value!r}")


def parse_share_with(value: Any) -> Mode:
    """``tracker`` (the default) or ``allowed``; anything else is a one-line error."""
    if value is None:
        return "tracker"
    for mode in MODES:
        if isinstance(value, str) and value.strip().lower() == mode:
            return mode
    raise ConfigError(f"share-with must be tracker or allowed, not {str(value)[:40]!r}")

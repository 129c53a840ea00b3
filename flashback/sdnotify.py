"""sd_notify(3) for trio, without libsystemd: readiness, status, watchdog, stopping.

Why no dependency: the protocol is one datagram of newline-separated
``KEY=VALUE`` lines sent to the ``AF_UNIX``/``SOCK_DGRAM`` socket named by
``$NOTIFY_SOCKET`` -- a file system path, or ``@name`` for an abstract socket
(the ``@`` becomes a leading NUL byte). That is a few lines here, against a
C library or a package that would need trio adapters anyway.

Everything is a no-op when ``NOTIFY_SOCKET`` is unset (not under systemd), and a
failed send is logged and forgotten: telling systemd about ourselves must never
take the service down. Formatting and environment parsing are pure functions so
they are tested without sockets.

Used as::

    notifier = Notifier.from_env(os.environ)
    await notifier.notify({"READY": 1, "STATUS": f"serving on port {port}"})
    interval_s = watchdog_interval_s(os.environ)
    if interval_s is not None:
        nursery.start_soon(run_watchdog, notifier, interval_s)
    ...
    with trio.CancelScope(shield=True):       # in a cancelled finally
        await notifier.notify({"STOPPING": 1})
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping
from typing import Final, NoReturn, Protocol

import trio

__all__ = [
    "Notifier",
    "format_notification",
    "notify_socket_address",
    "run_watchdog",
    "watchdog_interval_s",
]

log = logging.getLogger(__name__)

# A send to a local datagram socket completes at once unless systemd's queue is
# full; past this we drop the message rather than stall the caller.
SEND_TIMEOUT_S: Final = 1.0
# systemd's own rule: ping at half the watchdog period, so one late ping is not fatal.
WATCHDOG_PING_FRACTION: Final = 0.5
MICROSECONDS_PER_S: Final = 1_000_000
# systemd reads one datagram into a buffer of this size (PIPE_BUF-ish); stay under it.
MAX_NOTIFICATION_BYTES: Final = 4096

# Variable names as sd_notify(3) documents them: READY, STATUS, MAINPID, X_CUSTOM...
_KEY_RE: Final = re.compile(r"[A-Z_][A-Z0-9_]*")

Address = str | bytes


def format_notification(fields: Mapping[str, str | int]) -> bytes:
    """Encode ``{"READY": 1, "STATUS": "..."}`` as ``b"READY=1\\nSTATUS=..."``.

    Values are checked, not cleaned: a newline in a STATUS (say a peer name
    someone chose) would otherwise smuggle in a second assignment such as
    ``READY=1``, so it is a ValueError, as are empty messages, odd key names,
    NUL bytes, booleans (``READY=True`` means nothing to systemd) and messages
    longer than systemd reads.
    """
    if not fields:
        raise ValueError("a notification needs at least one field")
    lines = []
    for key, value in fields.items():
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ValueError(f"invalid notification key {key!r}")
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"{key} must be a string or an integer, not {value!r}")
        text = str(value)
        if "\n" in text or "\0" in text:
            raise ValueError(f"{key} must not contain newlines or NUL bytes")
        lines.append(f"{key}={text}")
    data = "\n".join(lines).encode("utf-8")
    if len(data) > MAX_NOTIFICATION_BYTES:
        raise ValueError(f"notification is {len(data)} bytes, more than {MAX_NOTIFICATION_BYTES}")
    return data


def notify_socket_address(env: Mapping[str, str]) -> Address | None:
    """The socket address ``$NOTIFY_SOCKET`` names, or None when it is unset or empty.

    ``/path`` is a path socket, ``@name`` an abstract one (leading NUL). Anything
    else (systemd >= 253 also knows ``vsock:``) is a ValueError.
    """
    value = env.get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    raise ValueError(f"unsupported NOTIFY_SOCKET {value!r}")


def watchdog_interval_s(env: Mapping[str, str], *, pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None when no watchdog is asked for.

    Half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises. When
    ``$WATCHDOG_PID`` is set the watchdog is meant for that process only (a
    child that inherited the environment must not ping for its parent), so it
    counts only if it equals *pid* (default: ours). Unparsable or non-positive
    values mean no watchdog, as in libsystemd.
    """
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid_text = env.get("WATCHDOG_PID", "")
    if pid_text:
        try:
            watchdog_pid = int(pid_text)
        except ValueError:
            return None
        if watchdog_pid != (os.getpid() if pid is None else pid):
            return None
    return usec / MICROSECONDS_PER_S * WATCHDOG_PING_FRACTION


class Notifier:
    """Sends notifications to systemd; does nothing when there is no NOTIFY_SOCKET.

    Each message goes on a fresh socket, as libsystemd does: nothing to keep
    open, and it still works after systemd re-executes and recreates its socket.
    """

    def __init__(self, address: Address | None) -> None:
        self.address = address

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET``; a malformed value is logged and disables it."""
        try:
            address = notify_socket_address(env)
        except ValueError as exc:
            log.warning("not notifying systemd: %s", exc)
            address = None
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    async def notify(self, fields: Mapping[str, str | int]) -> bool:
        """Send *fields*; True if the datagram left, False if disabled or the send failed.

        Invalid fields are a programming error and raise ValueError even when
        disabled, so tests without systemd catch them. Cancellation propagates:
        send ``STOPPING=1`` from a shielded scope (the send is bounded).
        """
        data = format_notification(fields)
        if self.address is None:
            return False
        with trio.move_on_after(SEND_TIMEOUT_S) as scope:
            try:
                with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                    # Connected, a full systemd queue makes us wait for room
                    # instead of spinning on EAGAIN.
                    await sock.connect(self.address)
                    await sock.send(data)
            except OSError as exc:
                log.warning("could not notify systemd (%s): %s", _describe(fields), exc)
                return False
        if scope.cancelled_caught:
            log.warning("could not notify systemd (%s): timed out", _describe(fields))
            return False
        return True


def _describe(fields: Mapping[str, str | int]) -> str:
    return ", ".join(fields)


class SupportsNotify(Protocol):
    async def notify(self, fields: Mapping[str, str | int]) -> bool: ...


async def run_watchdog(
    notifier: SupportsNotify,
    interval_s: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Send ``WATCHDOG=1`` now and then every *interval_s* seconds, forever.

    This runs as an ordinary task on the event loop on purpose: if the loop
    stalls (a blocking call, a busy loop, a deadlock of every task) the pings
    stop, systemd's ``WatchdogSec=`` expires and the service is restarted --
    which is the point of a watchdog. A thread would keep pinging for a dead loop.
    A failed ping is logged by the notifier; the next one is tried on schedule.
    """
    if not interval_s > 0:
        raise ValueError(f"watchdog interval must be positive, not {interval_s!r}")
    task_status.started()
    while True:
        await notifier.notify({"WATCHDOG": 1})
        await trio.sleep(interval_s)

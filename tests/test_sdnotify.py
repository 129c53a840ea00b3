"""sd_notify: pure formatting and environment parsing, then real datagram sockets.

The socket tests bind an ``AF_UNIX``/``SOCK_DGRAM`` socket where systemd would
(a path in tmp_path, or an abstract name) and read what arrives. Local
datagrams never wait on real time, so the watchdog test runs them under
``autojump_clock`` and asserts exact ping times.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from flashback.sdnotify import (
    MAX_NOTIFICATION_BYTES,
    Notifier,
    format_notification,
    notify_socket_address,
    run_watchdog,
    watchdog_interval_s,
)

TEST_TIMEOUT_S = 5

# -- formatting ------------------------------------------------------------------


def test_format_single_and_multiple_fields_in_order() -> None:
    assert format_notification({"READY": 1}) == b"READY=1"
    assert format_notification({"READY": "1", "STATUS": "serving on port 8080"}) == (
        b"READY=1\nSTATUS=serving on port 8080"
    )
    assert format_notification({"STOPPING": 1, "STATUS": "bye"}) == b"STOPPING=1\nSTATUS=bye"
    assert format_notification({"WATCHDOG": 1}) == b"WATCHDOG=1"
    assert format_notification({"MAINPID": 4242}) == b"MAINPID=4242"
    assert format_notification({"X_FLASHBACK_PORT": 0}) == b"X_FLASHBACK_PORT=0"


def test_format_keeps_utf8_and_equals_signs_in_values() -> None:
    assert format_notification({"STATUS": "peer “café”: a=b"}) == (
        "STATUS=peer “café”: a=b".encode()
    )
    assert format_notification({"STATUS": ""}) == b"STATUS="


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"ready": 1},
        {"READY=1": 1},
        {"": 1},
        {"1READY": 1},
        {"STATUS": "two\nlines"},
        {"STATUS": "peer\nREADY=1"},
        {"STATUS": "nul\0byte"},
        {"READY": True},
        {"READY": 1.0},
        {"READY": None},
        {"STATUS": "x" * MAX_NOTIFICATION_BYTES},
    ],
)
def test_format_rejects_invalid_fields(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        format_notification(fields)  # type: ignore[arg-type]  # invalid fields, on purpose


# -- environment -----------------------------------------------------------------


def test_notify_socket_address() -> None:
    assert notify_socket_address({}) is None
    assert notify_socket_address({"NOTIFY_SOCKET": ""}) is None
    assert notify_socket_address({"NOTIFY_SOCKET": "/run/user/1000/systemd/notify"}) == (
        "/run/user/1000/systemd/notify"
    )
    assert notify_socket_address({"NOTIFY_SOCKET": "@/org/freedesktop/systemd1/notify/1"}) == (
        "\0/org/freedesktop/systemd1/notify/1"
    )


@pytest.mark.parametrize("value", ["relative/path", "@", "vsock:2:1234"])
def test_notify_socket_address_rejects_unsupported(value: str) -> None:
    with pytest.raises(ValueError):
        notify_socket_address({"NOTIFY_SOCKET": value})


def test_malformed_notify_socket_disables_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="flashback.sdnotify"):
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert "NOTIFY_SOCKET" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000"}, 0.0005),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1234"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "999"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""}, 15.0),
    ],
)
def test_watchdog_interval_s(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env, pid=1234) == expected


def test_watchdog_pid_defaults_to_our_own() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_s(env) == 1.0
    assert watchdog_interval_s({**env, "WATCHDOG_PID": str(os.getpid() + 1)}) is None


# -- real sockets ----------------------------------------------------------------


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A bound datagram socket standing in for systemd, and the env naming it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(TEST_TIMEOUT_S)
        yield sock, {"NOTIFY_SOCKET": str(path)}


@pytest.fixture
def abstract_listener() -> Iterator[tuple[socket.socket, dict[str, str]]]:
    name = f"flashback-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(TEST_TIMEOUT_S)
        yield sock, {"NOTIFY_SOCKET": "@" + name}


@pytest.fixture(params=["path", "abstract"])
def listener(
    request: pytest.FixtureRequest,
) -> tuple[socket.socket, dict[str, str]]:
    pair: tuple[socket.socket, dict[str, str]]
    pair = request.getfixturevalue(f"{request.param}_listener")
    return pair


def _pending(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued on *sock* (the sends have completed by now)."""
    received = []
    sock.setblocking(False)
    try:
        while True:
            received.append(sock.recv(65536))
    except BlockingIOError:
        return received


async def test_notify_sends_one_datagram_per_message(
    listener: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = listener
    notifier = Notifier.from_env(env)
    assert notifier.enabled
    with trio.fail_after(TEST_TIMEOUT_S):
        assert await notifier.notify({"READY": 1, "STATUS": "serving on port 8080"})
        assert await notifier.notify({"WATCHDOG": 1})
        assert await notifier.notify({"STOPPING": 1})
    assert _pending(sock) == [
        b"READY=1\nSTATUS=serving on port 8080",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]


async def test_unset_notify_socket_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    with trio.fail_after(TEST_TIMEOUT_S):
        assert await notifier.notify({"READY": 1}) is False
    # Invalid fields are still a programming error, systemd or not.
    with pytest.raises(ValueError):
        await notifier.notify({"STATUS": "a\nb"})


async def test_send_errors_are_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with (
        caplog.at_level(logging.WARNING, logger="flashback.sdnotify"),
        trio.fail_after(TEST_TIMEOUT_S),
    ):
        assert await notifier.notify({"READY": 1}) is False
        assert await notifier.notify({"STOPPING": 1}) is False
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "READY" in messages[0]
    assert "STOPPING" in messages[1]


async def test_watchdog_pings_at_exact_times(
    autojump_clock: trio.testing.MockClock,
    path_listener: tuple[socket.socket, dict[str, str]],
) -> None:
    sock, env = path_listener
    notifier = Notifier.from_env(env)
    receiver = trio.socket.from_stdlib_socket(sock)
    start = trio.current_time()
    times: list[float] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_watchdog, notifier, 15.0)
            for _ in range(4):
                assert await receiver.recv(65536) == b"WATCHDOG=1"
                times.append(trio.current_time() - start)
            nursery.cancel_scope.cancel()
    assert times == [0.0, 15.0, 30.0, 45.0]


class _RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[float, Mapping[str, str | int]]] = []

    async def notify(self, fields: Mapping[str, str | int]) -> bool:
        self.sent.append((trio.current_time(), dict(fields)))
        return True


async def test_watchdog_stops_pinging_while_the_loop_is_stalled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A loop that does not run cannot ping: the gap is what systemd notices."""
    notifier = _RecordingNotifier()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_watchdog, notifier, 5.0)
            await trio.sleep(12)
            # Stand-in for a blocking call: time passes, no task runs.
            autojump_clock.jump(20)
            await trio.sleep(8.5)
            nursery.cancel_scope.cancel()
    assert [fields for _, fields in notifier.sent] == [{"WATCHDOG": 1}] * 5
    assert [at for at, _ in notifier.sent] == [0.0, 5.0, 10.0, 32.0, 37.0]


async def test_watchdog_rejects_a_non_positive_interval() -> None:
    with pytest.raises(ValueError):
        await run_watchdog(_RecordingNotifier(), 0.0)

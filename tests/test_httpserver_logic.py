"""Pure parts of the HTTP layer: the accept-error log's rate and the limits from env."""

from __future__ import annotations

import errno
import logging

import pytest
import trio

from flashback.httpserver import (
    ACCEPT_ERROR_LOG_INTERVAL_S,
    ConnectionLimits,
    _AcceptErrorLog,
)


async def test_exhausted_accept_is_logged_once_per_interval(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    autojump_clock.autojump_threshold = 0  # no I/O and no thread: nothing is in flight
    errors = _AcceptErrorLog()
    with caplog.at_level(logging.ERROR, logger="flashback.httpserver"):
        for _ in range(50):  # five seconds of retries every 0.1 s
            errors.report(OSError(errno.EMFILE, "Too many open files"))
            await trio.sleep(0.1)
        assert len(caplog.records) == 1
        await trio.sleep(ACCEPT_ERROR_LOG_INTERVAL_S)
        errors.report(OSError(errno.EMFILE, "Too many open files"))
    assert len(caplog.records) == 2
    assert "(49 more since the last report)" in caplog.records[1].getMessage()


def test_limits_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHBACK_HTTP_BODY_TIMEOUT_S", "1.5")
    monkeypatch.setenv("FLASHBACK_HTTP_WRITE_TIMEOUT_S", "nan")  # ignored: the default stays
    monkeypatch.setenv("FLASHBACK_HTTP_MAX_CONNECTIONS", "7")
    limits = ConnectionLimits.from_env()
    assert limits.body_timeout_s == 1.5
    assert limits.write_timeout_s == ConnectionLimits().write_timeout_s
    assert limits.max_connections == 7

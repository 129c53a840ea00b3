"""Human logs on stderr, escaped, with sd-daemon(3) priorities under journald."""

from __future__ import annotations

import logging
import os
import sys

import h11
import trio

from flashback.terminal import printable


def setup_logging(verbose: bool) -> None:
    """Human logs on stderr; under journald no timestamp (it adds its own)."""
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "<%(syslog_level)s>%(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EscapingFormatter(fmt))
    handler.addFilter(_add_syslog_level)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # One line per HTTP request would drown what matters.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("flashback.access").setLevel(logging.INFO if verbose else logging.WARNING)
    hypercorn_errors = logging.getLogger("hypercorn.error")
    if shorten_protocol_errors not in hypercorn_errors.filters:
        hypercorn_errors.addFilter(shorten_protocol_errors)


class _EscapingFormatter(logging.Formatter):
    """Log messages quote peers (names, paths, errors): no control character reaches stderr.

    Only the message is escaped; a traceback appended after it keeps its lines.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


_SYSLOG_LEVELS = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def _add_syslog_level(record: logging.LogRecord) -> bool:
    """sd-daemon(3) prefixes: journald maps ``<N>`` to the priority of the line."""
    record.syslog_level = _SYSLOG_LEVELS.get(record.levelno, 6)
    return True


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def is_protocol_error(exc: BaseException | None) -> bool:
    """An h11 state error (and the cancellations it caused), nothing else."""
    leaves = _leaves(exc) if exc is not None else []
    protocol = [leaf for leaf in leaves if isinstance(leaf, h11.LocalProtocolError)]
    others = [
        leaf for leaf in leaves if not isinstance(leaf, h11.LocalProtocolError | trio.Cancelled)
    ]
    return bool(protocol) and not others


def shorten_protocol_errors(record: logging.LogRecord) -> bool:
    """Hypercorn 0.18 logs ~50 traceback lines per hostile packet after a websocket
    upgrade (see :mod:`flashback.httpserver`): make it one line."""
    if record.exc_info and is_protocol_error(record.exc_info[1]):
        record.msg = "connection in an h11 error state (a malformed client): ended"
        record.args = None
        record.exc_info = None
        record.levelno, record.levelname = logging.INFO, "INFO"
    return True

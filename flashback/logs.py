"""Human logs on stderr, escaped, with sd-daemon(3) priorities under journald."""

from __future__ import annotations

import logging
import os
import sys

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

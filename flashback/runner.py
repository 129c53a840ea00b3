"""Running a long-lived service from the CLI: signals, shutdown, exit codes.

``run_service(main)`` runs ``main(shutdown)`` under trio, where *shutdown* is
a :class:`trio.Event` set by the first SIGINT or SIGTERM; the service is
expected to wind down gracefully and return. A second signal cancels
everything at once. An ``OSError`` at start (port in use, permission denied)
is reported as one line and exit status 1.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

ServiceMain = Callable[[trio.Event], Awaitable[None]]


async def _watch_signals(shutdown: trio.Event, cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if shutdown.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                cancel_scope.cancel()
                return
            log.info("%s received: shutting down", signal.Signals(signum).name)
            shutdown.set()


async def _run(main: ServiceMain) -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope)
        await main(shutdown)
        nursery.cancel_scope.cancel()


def _find_oserror(exc: BaseException) -> OSError | None:
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_oserror(inner)
            if found is not None:
                return found
    return None


def run_service(main: ServiceMain) -> int:
    try:
        trio.run(_run, main)
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        oserror = _find_oserror(exc)
        if oserror is None or not isinstance(exc, OSError | BaseExceptionGroup):
            raise
        print(f"flashback: {oserror.strerror or oserror}", file=sys.stderr)
        return 1
    return 0

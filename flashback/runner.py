"""Running a long-lived service from the CLI: signals, shutdown, exit codes.

``run_service(main)`` runs ``main(shutdown)`` under trio, where *shutdown* is
a :class:`trio.Event` set by the first SIGINT or SIGTERM; the service is
expected to wind down gracefully and return. A second signal cancels
everything at once. An ``OSError`` at start (port in use, permission denied)
is reported as one line and exit status 1.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from flashback.errors import FlashbackError
from flashback.terminal import printable

log = logging.getLogger(__name__)

#: from the first SIGTERM/SIGINT to a forced exit (the contract says 5 s)
SHUTDOWN_LIMIT_S: Final = 4.5

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


async def _exit_if_stuck(shutdown: trio.Event, limit_s: float) -> None:
    """The promise is "exit within 5 s of SIGTERM", whatever clients do.

    Hypercorn writes response bodies inside a shielded cancel scope, so a
    client that stops reading holds its connection -- and our shutdown --
    open however we cancel. Past *limit_s* we say so and leave the hard way.
    """
    await shutdown.wait()
    await trio.sleep(limit_s)
    log.error(
        "still busy %.1f s after the shutdown signal (a client not reading?); exiting now", limit_s
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def _run(main: ServiceMain) -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope)
        nursery.start_soon(_exit_if_stuck, shutdown, SHUTDOWN_LIMIT_S)
        await main(shutdown)
        nursery.cancel_scope.cancel()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def run_service(main: ServiceMain) -> int:
    """Run *main* to completion; map what ends it to an exit status.

    A :class:`FlashbackError` (bad configuration found at start, say) is
    re-raised bare so the CLI prints its one line; an ``OSError`` (port in
    use) is one line and 1; anything else is a crash: logged with its
    traceback for the journal, then exit status 1 -- never a half-alive process.
    """
    try:
        trio.run(_run, main)
    except KeyboardInterrupt:
        return 0
    except BaseException as exc:
        leaves = [e for e in _leaves(exc) if not isinstance(e, KeyboardInterrupt)]
        if not leaves:
            return 0
        for leaf in leaves:
            if isinstance(leaf, FlashbackError):
                raise leaf from None
        for leaf in leaves:
            if isinstance(leaf, OSError):
                print(printable(f"flashback: {leaf.strerror or leaf}"), file=sys.stderr)
                return 1
        log.critical("crashed: %r", leaves[0], exc_info=exc)
        print(printable(f"flashback: crashed: {leaves[0]!r}"), file=sys.stderr)
        return 1
    return 0

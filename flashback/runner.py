"""Running a long-lived service from the CLI: signals, shutdown, exit codes.

``run_service(main)`` runs ``main(shutdown)`` under trio, where *shutdown* is
a :class:`~flashback.shutdown.Shutdown` set by the first SIGINT or SIGTERM,
which fixes the one deadline every shielded step of the wind-down fits in.
The service is expected to wind down by then and return. A second signal
cancels everything at once (shielded steps still end by that deadline). An
``OSError`` at start (port in use, permission denied) is one line and exit 1.

Exit status after a signal: 0 when every must-finish step completed; 1 when
one was cut or failed (the tracker's ``save_seq``, say), and 1 when the last
resort -- ``os._exit`` just past the deadline, for a task stuck where no
cancellation reaches (a thread, a shielded send we do not own) -- fires:
then we cannot know that nothing was lost, so we do not claim success.
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
from flashback.shutdown import Shutdown
from flashback.terminal import printable

log = logging.getLogger(__name__)

#: after the shutdown deadline, how long unwinding may take before the last
#: resort; deadline (SHUTDOWN_BUDGET_S, 4 s) + this stays inside the contract's 5 s
FORCED_EXIT_MARGIN_S: Final = 0.5
#: the status of a shutdown that lost something (a step cut, or the last resort)
EXIT_SHUTDOWN_INCOMPLETE: Final = 1

ServiceMain = Callable[[Shutdown], Awaitable[None]]


async def _watch_signals(shutdown: Shutdown, cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if shutdown.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                cancel_scope.cancel()
                return
            shutdown.set()
            log.info(
                "%s received: shutting down within %.1f s",
                signal.Signals(signum).name,
                shutdown.budget_s,
            )


def _hard_exit(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


async def exit_if_stuck(
    shutdown: Shutdown,
    *,
    margin_s: float = FORCED_EXIT_MARGIN_S,
    hard_exit: Callable[[int], None] = _hard_exit,
) -> None:
    """The last resort: the promise is "exit within 5 s of SIGTERM", whatever is stuck.

    Every shielded step we own ends by the shutdown's deadline; this fires
    only when something else holds the process past it (a worker thread, a
    bug). It says so and leaves with :data:`EXIT_SHUTDOWN_INCOMPLETE`.
    """
    await shutdown.wait()
    await trio.sleep_until(shutdown.deadline + margin_s)
    log.error(
        "still busy %.1f s after the shutdown deadline; exiting now with status %d",
        margin_s,
        EXIT_SHUTDOWN_INCOMPLETE,
    )
    hard_exit(EXIT_SHUTDOWN_INCOMPLETE)


async def _run(main: ServiceMain) -> Shutdown:
    shutdown = Shutdown()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, shutdown, nursery.cancel_scope)
        nursery.start_soon(exit_if_stuck, shutdown)
        await main(shutdown)
        nursery.cancel_scope.cancel()
    return shutdown


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def run_service(main: ServiceMain, *, clock: trio.abc.Clock | None = None) -> int:
    """Run *main* to completion; map what ends it to an exit status.

    A :class:`FlashbackError` (bad configuration found at start, say) is
    re-raised bare so the CLI prints its one line; an ``OSError`` (port in
    use) is one line and 1; anything else is a crash: logged with its
    traceback for the journal, then exit status 1 -- never a half-alive process.
    A shutdown whose must-finish steps did not all complete is 1 too.
    (*clock*: for tests on trio's MockClock.)
    """
    try:
        shutdown = trio.run(_run, main, clock=clock)
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
    if shutdown.failed_steps:
        log.error(
            "shutdown incomplete (%s); exit status %d",
            ", ".join(shutdown.failed_steps),
            EXIT_SHUTDOWN_INCOMPLETE,
        )
        return EXIT_SHUTDOWN_INCOMPLETE
    return 0

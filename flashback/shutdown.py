"""One shutdown for a process: a trigger, plus one deadline fixed when it fires.

Hypercorn's trio worker (``trio/run.py``) stops on a ``shutdown_trigger`` and
then gives what is left one graceful deadline. A flashback process has more
shielded steps after the signal than Hypercorn's grace -- the daemon's
unregister, the tracker link's close, every server's drain and its shielded
sends, the tracker's ``save_seq`` -- and the contract promises an exit within
5 s. Budgets kept per step (2 s + 3 s in the daemon, 2 + 2 + 3 s in the
tracker) never add up to that promise, so the deadline is computed once,
in :meth:`Shutdown.set`, and each step takes its own from it: a step that
must leave time for a later one asks for the deadline minus a reserve.

From the signal, on the trio clock::

    0 ............. set(): servers stop accepting, the tracker link and
                    unregister start; each step ends by its own deadline
    deadline - R .. the tracker's servers are cut (R = its save reserve)
    deadline ...... every shielded step is over (SHUTDOWN_BUDGET_S after 0)
    + margin ...... the runner's last resort: os._exit, logged, status 1

A step that *must* finish (the tracker's ``save_seq``) runs in
:meth:`Shutdown.must_finish`; if the deadline cuts it, or it fails, the
process does not claim success: :attr:`Shutdown.failed_steps` makes the
runner exit 1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from math import inf
from typing import Final

import trio

log = logging.getLogger(__name__)

#: from the first SIGTERM/SIGINT to the end of every shielded step; the
#: contract's 5 s minus time to unwind and for the runner's last resort
SHUTDOWN_BUDGET_S: Final = 4.0


class Shutdown:
    """The process's shutdown trigger and its one deadline (trio clock).

    Quacks like the :class:`trio.Event` it replaces (``set``, ``is_set``,
    ``wait``), so a task that only waits for shutdown need not change.
    Until :meth:`set` the deadline is infinite: steps that run outside a
    shutdown (a test cancelling its nursery) keep their own limits.
    """

    def __init__(self, budget_s: float = SHUTDOWN_BUDGET_S) -> None:
        self.budget_s = budget_s
        self.deadline = inf
        self.failed_steps: list[str] = []
        self._event = trio.Event()

    def set(self, *, deadline: float | None = None) -> None:
        """Start shutting down; the first call fixes the deadline, later ones change nothing."""
        if self._event.is_set():
            return
        self.deadline = deadline if deadline is not None else trio.current_time() + self.budget_s
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def deadline_minus(self, reserve_s: float) -> float:
        """The deadline of a step that must leave *reserve_s* to the steps after it."""
        return self.deadline - reserve_s

    def shielded(self, limit_s: float = inf, *, reserve_s: float = 0.0) -> trio.CancelScope:
        """A shielded scope for one step: it ends after *limit_s*, and never
        later than the deadline minus *reserve_s* (read now, so enter it after
        :meth:`set` when the step belongs to the shutdown)."""
        ends = min(trio.current_time() + limit_s, self.deadline_minus(reserve_s))
        return trio.CancelScope(shield=True, deadline=ends)

    @contextmanager
    def must_finish(self, step: str, limit_s: float = inf) -> Iterator[trio.CancelScope]:
        """Run *step* shielded within the deadline; note it if it is cut or fails.

        An exception from the step is logged and noted, not raised: the rest
        of the shutdown goes on, and the exit status says it went wrong.
        """
        scope = self.shielded(limit_s)
        try:
            with scope:
                yield scope
        except Exception as exc:
            log.error("shutdown: %s failed: %s", step, exc)
            self.failed_steps.append(step)
            return
        if scope.cancelled_caught:
            log.error("shutdown: %s was cut at its deadline", step)
            self.failed_steps.append(step)

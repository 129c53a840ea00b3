"""One shutdown deadline, on trio's MockClock: exact times, no real waiting.

The deadline is fixed once, when shutdown is set; every shielded step ends
by it (minus its reserve); a must-finish step that is cut or fails turns
the exit status to 1; the last resort fires just past the deadline, with 1.
"""

from __future__ import annotations

from math import inf

import pytest
import trio
import trio.testing

from flashback.httpserver import ShieldedSends
from flashback.runner import (
    EXIT_SHUTDOWN_INCOMPLETE,
    FORCED_EXIT_MARGIN_S,
    exit_if_stuck,
    run_service,
)
from flashback.shutdown import SHUTDOWN_BUDGET_S, Shutdown


def test_the_budgets_fit_the_contracts_five_seconds() -> None:
    assert SHUTDOWN_BUDGET_S + FORCED_EXIT_MARGIN_S < 5.0


async def test_the_deadline_is_fixed_once_when_shutdown_is_set(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shutdown = Shutdown(budget_s=4.0)
    assert shutdown.deadline == inf and not shutdown.is_set()
    await trio.sleep(1.0)
    shutdown.set()
    set_at = trio.current_time()
    assert shutdown.is_set()
    assert shutdown.deadline == set_at + 4.0
    await trio.sleep(1.0)
    shutdown.set()  # a second signal changes nothing
    assert shutdown.deadline == set_at + 4.0
    assert shutdown.deadline_minus(1.0) == set_at + 3.0


async def test_a_shielded_step_outlives_a_cancel_but_not_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shutdown = Shutdown(budget_s=4.0)
    shutdown.set()
    deadline = shutdown.deadline
    async with trio.open_nursery() as nursery:
        nursery.cancel_scope.cancel()  # the second signal
        with shutdown.shielded(10.0, reserve_s=1.0) as scope:
            await trio.sleep(inf)  # a step that never ends on its own
    assert scope.cancelled_caught
    assert trio.current_time() == deadline - 1.0
    with shutdown.shielded(0.25) as short:
        await trio.sleep(inf)  # a step that never ends on its own
    assert short.cancelled_caught
    assert trio.current_time() == deadline - 0.75  # its own limit came first


async def test_a_must_finish_step_cut_at_the_deadline_is_recorded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shutdown = Shutdown(budget_s=4.0)
    with shutdown.must_finish("quick", 3.0):
        await trio.sleep(1.0)
    assert shutdown.failed_steps == []
    shutdown.set()
    with shutdown.must_finish("slow store", 10.0):
        await trio.sleep(inf)  # a step that never ends on its own
    assert trio.current_time() == shutdown.deadline
    assert shutdown.failed_steps == ["slow store"]


async def test_a_must_finish_step_that_fails_is_recorded_not_raised() -> None:
    shutdown = Shutdown()
    with shutdown.must_finish("saving seq", 1.0):
        raise OSError("disk full")
    assert shutdown.failed_steps == ["saving seq"]  # type: ignore[unreachable]  # must_finish swallows it


async def test_the_last_resort_fires_just_past_the_deadline_and_says_1(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shutdown = Shutdown(budget_s=4.0)
    codes: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: exit_if_stuck(shutdown, hard_exit=codes.append))
        await trio.sleep(2.0)
        assert codes == []
        shutdown.set()
    assert codes == [EXIT_SHUTDOWN_INCOMPLETE] == [1]
    assert trio.current_time() == shutdown.deadline + FORCED_EXIT_MARGIN_S


@pytest.mark.parametrize(("step_s", "status"), [(1.0, 0), (60.0, EXIT_SHUTDOWN_INCOMPLETE)])
def test_the_exit_status_says_whether_every_must_finish_step_completed(
    step_s: float, status: int
) -> None:
    async def main(shutdown: Shutdown) -> None:
        shutdown.set()  # as the first SIGTERM does
        with shutdown.must_finish("saving seq", 10.0):
            await trio.sleep(step_s)

    assert run_service(main, clock=trio.testing.MockClock(autojump_threshold=0)) == status


async def test_shielded_sends_are_pulled_in_to_the_shutdown_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A send to a client that stopped reading: its write timeout, or the deadline if sooner."""
    sends = ShieldedSends()
    ended: dict[str, float] = {}

    async def stalled_send(name: str) -> None:
        with sends.bounded(60.0):
            await trio.sleep(inf)  # a step that never ends on its own
        ended[name] = trio.current_time()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stalled_send, "running")
        await trio.sleep(1.0)
        sends.cut_at(start + 3.0)
        assert not sends.past_shutdown_deadline()
        nursery.start_soon(stalled_send, "later")
    assert ended == {"running": start + 3.0, "later": start + 3.0}
    assert sends.past_shutdown_deadline()
    with sends.bounded(60.0) as scope:  # past the deadline: a new send ends at once
        await trio.sleep(inf)  # a step that never ends on its own
    assert scope.cancelled_caught and trio.current_time() == start + 3.0

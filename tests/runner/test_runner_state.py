"""Admission and lifecycle rules of `RunnerState` (pure logic, no processes).

We test these aspects: nothing is admitted before setup finishes or while draining; at most
``max_multiplexing`` slots are taken; released slots are reused; rejections are counted by reason;
a drain waits for the last admitted request and gives up at its timeout.
"""

from __future__ import annotations

import asyncio

from kubefal_runner import state


def test_admission_follows_phase_and_limit() -> None:
    runner_state = state.RunnerState(max_multiplexing=2)

    before_setup = runner_state.try_admit()
    runner_state.mark_ready()
    admitted = [runner_state.try_admit(), runner_state.try_admit()]
    at_limit = runner_state.try_admit()
    runner_state.release()
    after_release = runner_state.try_admit()
    runner_state.begin_drain()
    while_draining = runner_state.try_admit()

    assert before_setup is state.Rejection.NOT_READY
    assert admitted == [None, None]
    assert at_limit is state.Rejection.BUSY
    assert after_release is None
    assert while_draining is state.Rejection.DRAINING
    assert runner_state.in_flight == 2
    assert runner_state.rejected_total == {
        state.Rejection.NOT_READY: 1,
        state.Rejection.BUSY: 1,
        state.Rejection.DRAINING: 1,
        state.Rejection.UNHEALTHY: 0,
    }


def test_an_unhealthy_runner_admits_nothing_and_still_drains() -> None:
    runner_state = state.RunnerState(max_multiplexing=2)
    runner_state.mark_ready()
    assert runner_state.try_admit() is None

    runner_state.mark_unhealthy()

    assert not runner_state.ready
    assert runner_state.try_admit() is state.Rejection.UNHEALTHY
    assert runner_state.in_flight == 1
    runner_state.begin_drain()
    assert runner_state.phase is state.Phase.DRAINING


def test_a_drain_that_began_during_setup_never_becomes_ready() -> None:
    runner_state = state.RunnerState(max_multiplexing=1)

    runner_state.begin_drain()
    runner_state.mark_ready()

    assert runner_state.phase is state.Phase.DRAINING


async def test_wait_idle_returns_when_the_last_request_is_released() -> None:
    runner_state = state.RunnerState(max_multiplexing=2)
    runner_state.mark_ready()
    runner_state.try_admit()
    runner_state.begin_drain()

    waiter = asyncio.create_task(runner_state.wait_idle(timeout=60))
    await asyncio.sleep(0)
    still_waiting = not waiter.done()
    runner_state.release()

    assert still_waiting
    assert await waiter is True


async def test_wait_idle_gives_up_at_its_timeout() -> None:
    runner_state = state.RunnerState(max_multiplexing=1)
    runner_state.mark_ready()
    runner_state.try_admit()

    assert await runner_state.wait_idle(timeout=0.01) is False

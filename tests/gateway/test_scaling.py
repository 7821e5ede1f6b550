"""The scaling formula and the keep-alive state machine of kubefal_gateway.scaling."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubefal_api import v1alpha1
from kubefal_gateway import queueing, scaling


def spec(**fields: int) -> v1alpha1.ScalingSpec:
    defaults = {"min_concurrency": 0, "max_concurrency": 100, "keep_alive": 60}
    return v1alpha1.ScalingSpec(**(defaults | fields))


def stats(
    queued: int = 0, waiting: int | None = None, in_progress: int = 0
) -> queueing.AppQueueStats:
    return queueing.AppQueueStats(
        app_id="team/app",
        queued=queued,
        queued_waiting=queued if waiting is None else waiting,
        in_progress=in_progress,
        oldest_queued_at=None,
    )


@pytest.mark.parametrize(
    ("fields", "demand", "desired"),
    [
        ({}, 0, 0),
        ({}, 1, 1),
        ({}, 7, 7),
        ({"max_multiplexing": 4}, 1, 1),
        ({"max_multiplexing": 4}, 4, 1),
        ({"max_multiplexing": 4}, 5, 2),
        ({"max_multiplexing": 4}, 9, 3),
        ({"concurrency_buffer": 2}, 0, 2),
        ({"concurrency_buffer": 2}, 3, 5),
        ({"concurrency_buffer_perc": 50}, 3, 5),  # needed 3, buffer ceil(1.5) = 2
        ({"concurrency_buffer_perc": 10}, 1, 2),  # ceil(0.1) = 1
        ({"concurrency_buffer_perc": 10, "concurrency_buffer": 3}, 10, 13),
        ({"concurrency_buffer_perc": 50, "concurrency_buffer": 1}, 10, 15),
        ({"min_concurrency": 2}, 0, 2),
        ({"min_concurrency": 2}, 5, 5),
        ({"max_concurrency": 3}, 10, 3),
        ({"max_concurrency": 3, "concurrency_buffer": 5}, 0, 3),
        ({"max_multiplexing": 2, "concurrency_buffer_perc": 100, "max_concurrency": 10}, 7, 8),
    ],
)
def test_the_formula_matches_the_architecture_document(
    fields: dict[str, int], demand: int, desired: int
) -> None:
    assert scaling.desired_for_demand(spec(**fields), demand) == desired


def test_growth_is_immediate() -> None:
    signal = scaling.ScalingSignal(spec())

    assert signal.observe(stats(queued=3, in_progress=2), now=0.0) == 5


def test_queued_requests_younger_than_the_scaling_delay_do_not_grow_the_app() -> None:
    signal = scaling.ScalingSignal(spec(scaling_delay=30))

    young = signal.observe(stats(queued=4, waiting=0), now=0.0)
    aged = signal.observe(stats(queued=4, waiting=4), now=31.0)

    assert (young, aged) == (0, 4)
    assert signal.waiting_since(100.0) == 70.0


def test_young_queued_requests_keep_the_runners_that_exist() -> None:
    signal = scaling.ScalingSignal(spec(scaling_delay=30, keep_alive=0))
    signal.observe(stats(in_progress=2), now=0.0)

    desired = signal.observe(stats(queued=2, waiting=0), now=100.0)

    assert desired == 2


def test_runners_stay_for_keep_alive_after_the_last_request() -> None:
    signal = scaling.ScalingSignal(spec(keep_alive=60))
    signal.observe(stats(in_progress=3), now=0.0)
    signal.observe(stats(in_progress=3), now=10.0)

    # Demand counts as 3 until the observation at 11 saw it gone.
    during = [signal.observe(stats(), now=now) for now in (11.0, 40.0, 70.9)]
    after = signal.observe(stats(), now=71.0)

    assert during == [3, 3, 3]
    assert after == 0


def test_scaling_down_steps_to_the_largest_demand_still_within_keep_alive() -> None:
    signal = scaling.ScalingSignal(spec(keep_alive=60))
    signal.observe(stats(in_progress=5), now=0.0)
    signal.observe(stats(in_progress=2), now=30.0)
    signal.observe(stats(), now=50.0)

    assert signal.observe(stats(), now=89.0) == 5
    assert signal.observe(stats(), now=90.0) == 2
    assert signal.observe(stats(), now=110.0) == 0


def test_a_rare_observation_does_not_shrink_the_app_early() -> None:
    signal = scaling.ScalingSignal(spec(keep_alive=60))
    signal.observe(stats(in_progress=4), now=0.0)

    # Nothing observed in between: demand counts as 4 until this moment.
    assert signal.observe(stats(), now=1000.0) == 4
    assert signal.observe(stats(), now=1060.0) == 0


def test_the_buffer_stays_on_top_of_demand_and_min_concurrency_is_a_floor() -> None:
    signal = scaling.ScalingSignal(spec(min_concurrency=1, concurrency_buffer=1, keep_alive=0))

    assert signal.desired == 1
    assert signal.observe(stats(in_progress=3), now=0.0) == 4
    assert signal.observe(stats(), now=1.0) == 1


def test_a_new_spec_applies_at_the_next_observation() -> None:
    signal = scaling.ScalingSignal(spec(max_concurrency=10))
    signal.observe(stats(in_progress=8), now=0.0)

    signal.spec = spec(max_concurrency=5)

    assert signal.observe(stats(in_progress=8), now=1.0) == 5


def test_a_clock_step_backwards_does_not_shrink_the_app() -> None:
    signal = scaling.ScalingSignal(spec(keep_alive=60))
    signal.observe(stats(in_progress=2), now=100.0)

    assert signal.observe(stats(), now=50.0) == 2


specs = st.builds(
    lambda low, span, keep_alive, buffer, perc, multiplexing, delay: v1alpha1.ScalingSpec(
        min_concurrency=low,
        max_concurrency=max(1, low + span),
        keep_alive=keep_alive,
        concurrency_buffer=buffer,
        concurrency_buffer_perc=perc,
        max_multiplexing=multiplexing,
        scaling_delay=delay,
    ),
    st.integers(0, 5),
    st.integers(0, 20),
    st.integers(0, 120),
    st.integers(0, 4),
    st.integers(0, 100),
    st.integers(1, 8),
    st.integers(0, 30),
)
observations = st.lists(
    st.tuples(
        st.floats(0.0, 50.0, allow_nan=False),  # seconds since the previous observation
        st.integers(0, 40),  # queued
        st.integers(0, 40),  # of which waiting longer than the scaling delay
        st.integers(0, 40),  # in flight
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(policy=specs, steps=observations)
def test_desired_always_respects_bounds_demand_and_keep_alive(
    policy: v1alpha1.ScalingSpec, steps: list[tuple[float, int, int, int]]
) -> None:
    signal = scaling.ScalingSignal(policy)
    now = 0.0
    history: list[tuple[float, int]] = []  # (time, hold) of every observation
    previous = signal.desired
    for gap, queued, waiting_part, in_flight in steps:
        now += gap
        waiting = min(queued, waiting_part)
        decision = signal.decide(
            queued=queued, queued_waiting=waiting, in_flight=in_flight, now=now
        )
        hold = scaling.desired_for_demand(policy, queued + in_flight)
        history.append((now, hold))

        assert policy.min_concurrency <= decision.desired <= policy.max_concurrency
        assert decision.desired >= scaling.desired_for_demand(policy, waiting + in_flight)
        assert decision.desired <= max(previous, decision.growth)
        if decision.desired < previous:
            # Shrinking: nothing held within keepAlive (including the figure in effect when
            # the window opened) asks for more than the new count.
            window_start = now - policy.keep_alive
            in_window = [h for t, h in history if t > window_start]
            in_effect = [h for t, h in history if t <= window_start][-1:]
            assert max(in_window + in_effect) <= decision.desired
        previous = decision.desired


@settings(max_examples=200, deadline=None)
@given(policy=specs, busy_for=st.integers(0, 500), idle_steps=st.integers(1, 30))
def test_an_app_scales_to_its_floor_exactly_when_keep_alive_runs_out(
    policy: v1alpha1.ScalingSpec, busy_for: int, idle_steps: int
) -> None:
    signal = scaling.ScalingSignal(policy)
    signal.observe(stats(in_progress=10), now=0.0)
    signal.observe(stats(in_progress=10), now=busy_for)
    busy = signal.desired
    floor = scaling.desired_for_demand(policy, 0)

    # Idle from the first observation that sees nothing; then observations strictly inside the
    # keep-alive window (none when keepAlive is 0), then one exactly when it runs out.
    idle_from = busy_for + 0.5
    step = policy.keep_alive / idle_steps
    idle_values = [
        signal.observe(stats(), now=idle_from + index * step)
        for index in range(idle_steps if policy.keep_alive else 0)
    ]
    final = signal.observe(stats(), now=idle_from + policy.keep_alive)

    assert all(value == busy for value in idle_values)
    assert final == floor


def test_the_next_decrease_moment_is_when_the_last_demand_leaves_the_keep_alive_window() -> None:
    signal = scaling.ScalingSignal(spec(keep_alive=60))
    signal.observe(stats(in_progress=3), now=0.0)
    assert signal.next_decrease_at(0.0) is None  # nothing can drop while demand lasts
    signal.observe(stats(), now=11.0)
    moment = signal.next_decrease_at(11.0)

    assert moment == 71.0
    assert signal.observe(stats(), now=moment - 0.001) == 3
    assert signal.observe(stats(), now=moment) == 0
    assert signal.next_decrease_at(moment) is None


# ---- the countStarting policy (spec.scaling.policy) ----

COUNT_STARTING = v1alpha1.ScalingPolicy.COUNT_STARTING


def counting(**fields: int) -> v1alpha1.ScalingSpec:
    return spec(**fields).model_copy(update={"policy": COUNT_STARTING})


def known(
    ready: int = 0,
    ages: tuple[float, ...] = (),
    untimed: int = 0,
    request: float | None = 0.5,
    cold: float | None = 3.0,
) -> scaling.Capacity:
    return scaling.Capacity(
        ready=ready,
        starting_ages=ages,
        starting_untimed=untimed,
        mean_request_seconds=request,
        cold_start_seconds=cold,
    )


def test_the_policy_defaults_to_fal_and_parses_from_the_crd_name() -> None:
    assert v1alpha1.ScalingSpec().policy is v1alpha1.ScalingPolicy.FAL
    parsed = v1alpha1.ScalingSpec.model_validate({"policy": "countStarting"})
    assert parsed.policy is COUNT_STARTING
    with pytest.raises(ValueError, match="policy"):
        v1alpha1.ScalingSpec.model_validate({"policy": "greedy"})


def test_starting_runners_with_a_head_start_take_the_backlog_of_a_steady_cold_start() -> None:
    # The steady bench from zero: 3 req/s x 0.5 s, maxMultiplexing 1. At 0.67 s three requests
    # wait, two runners are starting (first seen 0.67 s and 0.33 s ago). fal asks for 3; the
    # first runner, ready 0.67 s before a runner started now, serves 1 + 0.67 / 0.5 requests
    # in that head start, the second 1 + 0.33 / 0.5: 4 in all, so no third runner.
    capacity = known(ages=(0.67, 0.33))

    needed = scaling.needed_counting_starting(3, capacity, max_multiplexing=1, committed=2)

    assert scaling.runners_needed(3, max_multiplexing=1) == 3
    assert needed == 2


def test_ready_runners_count_what_they_serve_during_one_cold_start() -> None:
    # The first runners are ready with 7 requests queued behind the 2 they serve: fal asks for
    # 9 runners, though 2 runners serve 2 x 3 s / 0.5 s = 12 more before a new one is ready.
    needed = scaling.needed_counting_starting(9, known(ready=2), max_multiplexing=1, committed=2)

    assert needed == 2


def test_demand_beyond_what_committed_runners_cover_asks_for_one_runner_per_slot_set() -> None:
    # 1 starting runner 1 s old, 4 slots, 0.5 s requests, cold start 3 s: it covers
    # 4 + 4 * 1 / 0.5 = 12 requests; 21 requests leave 9 uncovered, 3 new runners (4 slots).
    capacity = known(ages=(1.0,))

    needed = scaling.needed_counting_starting(21, capacity, max_multiplexing=4, committed=1)

    assert scaling.covered_requests(capacity, committed=1, max_multiplexing=4) == 12.0
    assert needed == 1 + 3


def test_a_head_start_is_at_most_twice_the_mean_cold_start() -> None:
    # A runner first seen 100 s ago (cold starts take 3 s) shows cold starts run late now, so
    # the horizon stretches, but to 2 x 3 s, not 100 s: a stuck pod cannot hold growth back.
    capacity = known(ages=(100.0,))

    assert scaling.cold_start_horizon(capacity) == 6.0
    assert scaling.covered_requests(capacity, committed=1, max_multiplexing=1) == 1 + 6 / 0.5
    assert scaling.needed_counting_starting(14, capacity, max_multiplexing=1, committed=1) == 2


def test_a_late_starting_runner_stretches_the_horizon_for_ready_runners_too() -> None:
    # Cold starts take 3 s on average, but one has been going for 4.5 s: a runner started now
    # would take that long too, so the ready runner serves 4.5 / 0.5 = 9 requests before it.
    late = known(ready=1, ages=(4.5,))
    usual = known(ready=1, ages=(1.0,))

    assert scaling.cold_start_horizon(late) == 4.5
    assert scaling.cold_start_horizon(usual) == 3.0
    assert scaling.covered_requests(late, committed=2, max_multiplexing=1) == 2 + (4.5 + 4.5) / 0.5
    assert scaling.covered_requests(usual, committed=2, max_multiplexing=1) == 2 + (3 + 1) / 0.5


def test_unscheduled_or_crash_looping_runners_count_only_as_capacity() -> None:
    capacity = known(untimed=2)

    assert scaling.covered_requests(capacity, committed=2, max_multiplexing=1) == 2.0
    assert scaling.needed_counting_starting(5, capacity, max_multiplexing=1, committed=0) == 5


def test_runners_asked_for_but_not_seen_yet_count_as_capacity() -> None:
    # The last decision asked for 3; the pods are not visible yet: 3 slots, no head start.
    needed = scaling.needed_counting_starting(5, known(), max_multiplexing=1, committed=3)

    assert needed == 5  # fal's answer: the 3 asked for plus 2


@pytest.mark.parametrize(
    "capacity",
    [
        known(ages=(2.0,), request=None),  # no request answered yet
        known(ages=(2.0,), cold=None),  # no cold start seen yet
        known(ages=(2.0,), request=0.0),
    ],
)
def test_without_a_mean_request_time_and_a_cold_start_time_it_is_fals_formula(
    capacity: scaling.Capacity,
) -> None:
    assert scaling.needed_counting_starting(7, capacity, max_multiplexing=1, committed=1) == 7


capacities = st.builds(
    scaling.Capacity,
    ready=st.integers(0, 20),
    starting_ages=st.lists(st.floats(0.0, 600.0, allow_nan=False), max_size=20).map(tuple),
    starting_untimed=st.integers(0, 5),
    mean_request_seconds=st.none() | st.floats(0.001, 600.0, allow_nan=False),
    cold_start_seconds=st.none() | st.floats(0.001, 600.0, allow_nan=False),
)


@settings(max_examples=500, deadline=None)
@given(
    demand=st.integers(0, 500),
    capacity=capacities,
    multiplexing=st.integers(1, 8),
    committed=st.integers(0, 40),
)
def test_the_policy_never_asks_for_more_than_fal_nor_for_fewer_than_demand_it_cannot_cover(
    demand: int, capacity: scaling.Capacity, multiplexing: int, committed: int
) -> None:
    fal = scaling.runners_needed(demand, max_multiplexing=multiplexing)
    needed = scaling.needed_counting_starting(
        demand, capacity, max_multiplexing=multiplexing, committed=committed
    )
    runners = max(committed, capacity.ready + capacity.starting)
    covered = scaling.covered_requests(capacity, committed=runners, max_multiplexing=multiplexing)

    assert 0 <= needed <= fal
    if capacity.mean_request_seconds is None or capacity.cold_start_seconds is None:
        assert needed == fal
    if needed < fal:  # what it leaves out, the runners it counts on cover
        assert demand <= covered + (needed - runners) * multiplexing + 1e-6


def test_the_signal_applies_the_policy_to_growth_and_keeps_fals_keep_alive_hold() -> None:
    signal = scaling.ScalingSignal(counting(keep_alive=10))
    signal.decide(queued=1, queued_waiting=1, in_flight=0, now=0.0)

    backlog = signal.decide(
        queued=3, queued_waiting=3, in_flight=0, now=0.67, capacity=known(ages=(0.67, 0.33))
    )
    ready = signal.decide(queued=7, queued_waiting=7, in_flight=2, now=3.0, capacity=known(ready=2))
    idle = signal.decide(queued=0, queued_waiting=0, in_flight=0, now=5.0, capacity=known(ready=2))
    gone = signal.decide(queued=0, queued_waiting=0, in_flight=0, now=15.0, capacity=known(ready=2))

    assert signal.desired == 0
    assert (backlog.desired, backlog.growth, backlog.hold) == (2, 2, 3)
    assert (ready.desired, ready.hold) == (2, 9)
    assert idle.desired == 2  # held for keepAlive, as under fal's formula
    assert gone.desired == 0


def test_under_fals_policy_the_capacity_changes_nothing() -> None:
    signal = scaling.ScalingSignal(spec())

    decision = signal.decide(
        queued=3, queued_waiting=3, in_flight=0, now=0.0, capacity=known(ages=(5.0, 5.0))
    )

    assert decision.desired == 3
    assert decision.covered == 2.0  # the starting runners' slots, without head starts


def test_the_buffer_goes_on_top_of_what_the_policy_needs() -> None:
    signal = scaling.ScalingSignal(counting(concurrency_buffer=1))
    signal.decide(queued=1, queued_waiting=1, in_flight=0, now=0.0)  # 1 + buffer 1

    decision = signal.decide(
        queued=6, queued_waiting=6, in_flight=0, now=1.0, capacity=known(ages=(1.0, 1.0))
    )

    assert decision.desired == 3  # the 2 starting runners cover 2 x (1 + 2) = 6; + buffer


def test_a_runner_asked_for_but_not_seen_yet_has_a_head_start_from_the_ask() -> None:
    # The pods of the runners asked for take a while to appear (operator, ReplicaSet, watch);
    # a new runner asked for now would take as long, so the head start counts from the ask.
    signal = scaling.ScalingSignal(counting(keep_alive=10))
    unseen = known(ages=())
    signal.decide(queued=1, queued_waiting=1, in_flight=0, now=0.0, capacity=unseen)

    second = signal.decide(queued=3, queued_waiting=3, in_flight=0, now=0.67, capacity=unseen)
    # asked at 0 and 0.67: 2 slots + (1.0 + 0.33) / 0.5 = 4.67 requests covered
    held = signal.decide(queued=4, queued_waiting=4, in_flight=0, now=1.0, capacity=unseen)
    # the first pod is seen now, 0.2 s old: the ask, 1.0 s ago, counts
    seen = signal.decide(
        queued=4, queued_waiting=4, in_flight=0, now=1.0, capacity=known(ages=(0.2,))
    )

    assert second.desired == 2  # 1 + 0.67 / 0.5 = 2.34 covered: one more runner for 3
    assert held.desired == 2
    assert held.covered == pytest.approx(2 + (1.0 + 0.33) / 0.5)
    assert seen.covered == pytest.approx(held.covered)


def test_head_start_ages_pair_the_oldest_pod_with_the_oldest_ask() -> None:
    capacity = scaling.Capacity(starting_ages=(0.5, 3.0), asked_ages=(2.0, 1.0, 0.1))
    stuck = scaling.Capacity(starting_untimed=1, asked_ages=(2.0, 1.0))

    assert scaling.head_start_ages(capacity) == [3.0, 1.0, 0.1]
    assert scaling.head_start_ages(stuck) == [2.0]  # the unscheduled one takes the newest ask


@settings(max_examples=300, deadline=None)
@given(
    policy=specs,
    steps=st.lists(
        st.tuples(
            st.floats(0.0, 20.0, allow_nan=False),  # seconds since the previous observation
            st.integers(0, 40),  # queued (all older than the scaling delay)
            st.integers(0, 40),  # in flight
            capacities,
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_count_starting_stays_in_bounds_below_fal_and_keeps_runners_for_keep_alive(
    policy: v1alpha1.ScalingSpec, steps: list[tuple[float, int, int, scaling.Capacity]]
) -> None:
    counting_policy = policy.model_copy(update={"policy": COUNT_STARTING})
    signal = scaling.ScalingSignal(counting_policy)
    fal = scaling.ScalingSignal(policy)
    now = 0.0
    previous = signal.desired
    for gap, queued, in_flight, capacity in steps:
        now += gap
        decision = signal.decide(
            queued=queued, queued_waiting=queued, in_flight=in_flight, now=now, capacity=capacity
        )
        fal_decision = fal.decide(
            queued=queued, queued_waiting=queued, in_flight=in_flight, now=now
        )

        assert policy.min_concurrency <= decision.desired <= policy.max_concurrency
        assert decision.growth <= fal_decision.growth
        assert decision.desired <= max(previous, fal_decision.growth)
        if decision.desired < previous:  # shrinking as keep-alive allows, as under fal's policy
            assert decision.desired >= min(previous, decision.held_for_keep_alive)
        previous = decision.desired

"""The desired runner count of an app: fal's scaling formula plus keep-alive, as pure code.

Why it exists: one formula drives all three actuators (builtin, KEDA, HPA; docs/architecture.md,
"The scaling signal"), so it lives in one pure place that the gateway feeds with queue figures and
the operator subscribes to. No I/O, no clocks: callers pass ``now``.

The formula (docs/architecture.md)::

    demand  = queued requests older than scalingDelay + in-flight requests
    needed  = ceil(demand / maxMultiplexing)
    buffer  = max(concurrencyBuffer, ceil(needed * concurrencyBufferPerc / 100))
    desired = clamp(needed + buffer, minConcurrency, maxConcurrency)

Keep-alive (fal's ``keep_alive``: a runner leaves only after ``keepAlive`` seconds without a
request) is what `ScalingSignal` adds on top:

* Growth follows the formula at once (``scalingDelay`` already holds back requests that might be
  served by the runners there are).
* The count only goes down to what has been *held* over the last ``keepAlive`` seconds, where the
  hold at a moment is the formula applied to *all* queued requests plus in-flight ones (a
  request younger than ``scalingDelay`` does not grow the app, but it does keep a runner that
  already exists). So a runner that served a request ``keepAlive`` seconds ago is still wanted,
  a burst keeps its runners for ``keepAlive`` after it ends, and an app scales to zero (with
  ``minConcurrency`` 0 and no buffer) only after ``keepAlive`` seconds with nothing queued and
  nothing in flight.
* Between two observations the figures are taken as constant (the last observation before the
  window still counts), so observing rarely never shrinks an app early.

``desired`` is always within ``[minConcurrency, maxConcurrency]`` and never below what current
demand needs (``needed + buffer``, clamped).

The ``countStarting`` policy (``spec.scaling.policy``; docs/design-decisions.md, "Cold starts
that do not overshoot") changes only ``needed`` in the growth term, through
`needed_counting_starting`: a runner started now is ready after the app's cold start time ``H``;
until then the runners the app has or has asked for take work off the queue (a ready runner
``m`` slots now and ``m * H / t`` more, a starting runner first seen ``age`` seconds ago ``m``
slots and ``m * min(age, H) / t`` more, since it will be ready that much earlier than a new
one, ``age`` counting from when it was asked for if its pod is not seen yet or appeared later;
``t`` is the mean request time). ``H`` is the app's mean cold start, stretched to the age
of the oldest starting runner (at most twice the mean) while cold starts run late. Only demand
beyond that asks for new runners. It never asks for more than fal's formula, and it is fal's
formula until both ``t`` and ``H`` are known.
Keep-alive is unchanged: what holds runners is still fal's formula over all requests.
"""

from __future__ import annotations

import dataclasses
import math

from kubefal_api import v1alpha1
from kubefal_gateway import queueing

HORIZON_STRETCH = 2.0
"""A starting runner older than the mean cold start stretches the horizon up to this factor."""
COVER_EPSILON = 1e-9
"""Slack for float sums in `needed_counting_starting` (4.000000001 requests are 4)."""


def runners_needed(demand: int, *, max_multiplexing: int) -> int:
    """``ceil(demand / maxMultiplexing)``: runners that ``demand`` concurrent requests fill."""
    if demand <= 0:
        return 0
    return -(-demand // max(1, max_multiplexing))


def buffer_runners(needed: int, *, concurrency_buffer: int, concurrency_buffer_perc: int) -> int:
    """``max(concurrencyBuffer, ceil(needed * concurrencyBufferPerc / 100))``."""
    return max(concurrency_buffer, math.ceil(needed * concurrency_buffer_perc / 100))


def desired_for_demand(
    spec: v1alpha1.ScalingSpec, demand: int, *, needed: int | None = None
) -> int:
    """The formula: runners wanted for ``demand`` requests (queued and in flight), or for
    ``needed`` runners when a policy decided that number (the buffer goes on top)."""
    if needed is None:
        needed = runners_needed(demand, max_multiplexing=spec.max_multiplexing)
    buffer = buffer_runners(
        needed,
        concurrency_buffer=spec.concurrency_buffer,
        concurrency_buffer_perc=spec.concurrency_buffer_perc,
    )
    return clamp(needed + buffer, spec=spec)


@dataclasses.dataclass(frozen=True, slots=True)
class Capacity:
    """What the countStarting policy knows of an app's runners (all zero/None: fal's formula)."""

    ready: int = 0
    """Runners taking requests now."""
    starting_ages: tuple[float, ...] = ()
    """Seconds since each starting runner (never ready yet, expected to be) was first seen."""
    starting_untimed: int = 0
    """Starting runners that get no head start (not scheduled yet, or restarted)."""
    mean_request_seconds: float | None = None
    """How long one request holds a runner slot, on average (None: not measured yet)."""
    cold_start_seconds: float | None = None
    """How long a new runner takes from first seen to ready, on average (None: not measured)."""
    asked_ages: tuple[float, ...] = ()
    """Seconds since the scaler was asked for each runner of the last decision that is not
    ready (newest asks; `ScalingSignal` fills it in). A runner asked for earlier is ready that
    much earlier than one asked for now, whose pod takes as long to appear."""

    @property
    def starting(self) -> int:
        return len(self.starting_ages) + self.starting_untimed


def covered_requests(capacity: Capacity, *, committed: int, max_multiplexing: int) -> float:
    """Requests (in flight or queued) that ``committed`` runners take before a runner started
    now could be ready: their slots, plus under a known mean request time ``t`` and cold start
    time ``H`` what each ready runner serves in ``H`` and each starting one in its head start
    ``min(age, H)`` (it is ready that much earlier than a new runner)."""
    slots = float(committed * max_multiplexing)
    seconds = capacity.mean_request_seconds
    horizon = cold_start_horizon(capacity)
    if seconds is None or horizon is None or seconds <= 0:
        return slots
    head_start = capacity.ready * horizon + sum(
        min(max(0.0, age), horizon) for age in head_start_ages(capacity)
    )
    return slots + max_multiplexing * head_start / seconds


def head_start_ages(capacity: Capacity) -> list[float]:
    """The age of each runner on its way: its pod's age since first seen or, when longer (or no
    pod is seen yet), the time since it was asked for; oldest with oldest. Runners not
    scheduled or backing off take the place of the newest asks and get no head start."""
    seen = sorted(capacity.starting_ages, reverse=True)
    asked = sorted(capacity.asked_ages, reverse=True)
    asked = asked[: max(0, len(asked) - capacity.starting_untimed)]
    return [
        max(seen[index] if index < len(seen) else 0.0, asked[index] if index < len(asked) else 0.0)
        for index in range(max(len(seen), len(asked)))
    ]


def cold_start_horizon(capacity: Capacity) -> float | None:
    """How long a runner started now is expected to take: the app's mean cold start, or, while
    a runner has been starting for longer, that long (cold starts are slower now: a shared
    bottleneck such as image pulls, node provisioning or a busy node slows every one), up to
    ``HORIZON_STRETCH`` times the mean, so a stuck pod cannot hold growth back for long."""
    cold = capacity.cold_start_seconds
    if cold is None or cold <= 0:
        return None
    oldest = max(capacity.starting_ages, default=0.0)
    return max(cold, min(oldest, HORIZON_STRETCH * cold))


def needed_counting_starting(
    demand: int, capacity: Capacity, *, max_multiplexing: int, committed: int
) -> int:
    """The countStarting policy's runners for ``demand`` (queued older than scalingDelay plus
    in flight), given the runners the app has or has asked for.

    ``committed`` is the runner count already asked for (the last decision); the ready and
    starting runners of ``capacity`` count when there are more of them. Demand the committed
    runners cover (`covered_requests`) asks for no new runner; each ``maxMultiplexing``
    requests beyond it ask for one. Never more than fal's ``ceil(demand / maxMultiplexing)``,
    which it equals without a mean request time and a cold start time.
    """
    fal = runners_needed(demand, max_multiplexing=max_multiplexing)
    committed = max(committed, capacity.ready + capacity.starting, 0)
    covered = covered_requests(capacity, committed=committed, max_multiplexing=max_multiplexing)
    uncovered = demand - covered
    if uncovered <= COVER_EPSILON:
        return min(fal, committed)
    return min(fal, committed + math.ceil(uncovered / max(1, max_multiplexing) - COVER_EPSILON))


def clamp(runners: int, *, spec: v1alpha1.ScalingSpec) -> int:
    """``runners`` bounded by ``[minConcurrency, maxConcurrency]``."""
    return max(spec.min_concurrency, min(spec.max_concurrency, runners))


@dataclasses.dataclass(frozen=True, slots=True)
class ScalingDecision:
    """One observation's outcome, for metrics and status."""

    desired: int
    """Runners the app should have now."""
    growth: int
    """The formula over requests older than scalingDelay plus in-flight ones."""
    hold: int
    """The formula over all queued plus in-flight requests (what keeps existing runners)."""
    held_for_keep_alive: int
    """The largest ``hold`` seen within the last keepAlive seconds."""
    covered: float = 0.0
    """Requests the runners the app has or has asked for take before a new one could be
    ready (`covered_requests`; without the head starts under the fal policy)."""


class ScalingSignal:
    """Per-app state machine: feed it `queueing.AppQueueStats`, read the desired runner count.

    Observe whenever the figures change or periodically (the scaling delay makes old queued
    requests count only as time passes, so observe at least every second or so while requests
    are queued). ``stats`` must have been taken with ``waiting_since = now - spec.scaling_delay``
    (`waiting_since`).
    """

    def __init__(self, spec: v1alpha1.ScalingSpec) -> None:
        self.spec = spec
        """May be replaced at any time (the FalApp changed); the next observation uses it."""
        self.desired = clamp(0, spec=spec)
        """The last decision (``minConcurrency`` before the first observation)."""
        self.last_decision: ScalingDecision | None = None
        self._holds: list[tuple[float, int]] = []
        """(time, hold) at each change of ``hold``, oldest first, pruned to the window."""
        self._asks: list[float] = []
        """When each runner of ``desired`` was first asked for, oldest first."""

    def waiting_since(self, now: float) -> float:
        """The ``waiting_since`` cutoff to pass to `queueing.QueueStore.stats`."""
        return now - self.spec.scaling_delay

    def observe(
        self, stats: queueing.AppQueueStats, now: float, capacity: Capacity | None = None
    ) -> int:
        """Record the app's figures at ``now`` and return the desired runner count."""
        return self.decide(
            queued=stats.queued,
            queued_waiting=stats.queued_waiting,
            in_flight=stats.in_progress,
            now=now,
            capacity=capacity,
        ).desired

    def decide(
        self,
        *,
        queued: int,
        queued_waiting: int,
        in_flight: int,
        now: float,
        capacity: Capacity | None = None,
    ) -> ScalingDecision:
        """`observe` with the figures spelled out; returns the full decision.

        ``capacity`` feeds the countStarting policy (ignored under fal's)."""
        if self._holds and now < self._holds[-1][0]:
            now = self._holds[-1][0]  # a clock step backwards: keep time monotonic
        capacity = capacity or Capacity()
        multiplexing = self.spec.max_multiplexing
        committed = max(self.desired, capacity.ready + capacity.starting)
        if self.spec.policy is v1alpha1.ScalingPolicy.COUNT_STARTING:
            on_the_way = max(0, self.desired - capacity.ready)
            capacity = dataclasses.replace(
                capacity,
                asked_ages=tuple(
                    now - asked for asked in self._asks[max(0, len(self._asks) - on_the_way) :]
                )
                if on_the_way
                else (),
            )
            needed = needed_counting_starting(
                queued_waiting + in_flight,
                capacity,
                max_multiplexing=multiplexing,
                committed=self.desired,
            )
            covered = covered_requests(capacity, committed=committed, max_multiplexing=multiplexing)
        else:
            needed = runners_needed(queued_waiting + in_flight, max_multiplexing=multiplexing)
            covered = float(committed * multiplexing)
        growth = desired_for_demand(self.spec, queued_waiting + in_flight, needed=needed)
        hold = desired_for_demand(self.spec, max(queued, queued_waiting) + in_flight)
        if not self._holds or self._holds[-1][1] != hold:
            self._holds.append((now, hold))
        window_start = now - self.spec.keep_alive
        # Drop change points superseded before the window opened; the last one before it is
        # still in effect at its start, so it stays.
        first_kept = 0
        while first_kept + 1 < len(self._holds) and self._holds[first_kept + 1][0] <= window_start:
            first_kept += 1
        if first_kept:
            del self._holds[:first_kept]
        held = max(value for _, value in self._holds)
        desired = clamp(max(growth, min(self.desired, held)), spec=self.spec)
        decision = ScalingDecision(
            desired=desired, growth=growth, hold=hold, held_for_keep_alive=held, covered=covered
        )
        if desired > len(self._asks):
            self._asks.extend([now] * (desired - len(self._asks)))
        else:
            del self._asks[desired:]
        self.desired = desired
        self.last_decision = decision
        return decision

    def next_decrease_at(self, now: float) -> float | None:
        """The next moment the keep-alive hold may drop (a change point leaves the window).

        Observing the app again at that moment makes a scale-down happen right when
        ``keepAlive`` runs out, instead of at the next periodic observation.
        """
        moments = [when + self.spec.keep_alive for when, _ in self._holds[1:]]
        later = [moment for moment in moments if moment > now]
        return min(later) if later else None

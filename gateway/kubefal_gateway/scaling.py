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
"""

from __future__ import annotations

import dataclasses
import math

from kubefal_api import v1alpha1
from kubefal_gateway import queueing


def runners_needed(demand: int, *, max_multiplexing: int) -> int:
    """``ceil(demand / maxMultiplexing)``: runners that ``demand`` concurrent requests fill."""
    if demand <= 0:
        return 0
    return -(-demand // max(1, max_multiplexing))


def buffer_runners(needed: int, *, concurrency_buffer: int, concurrency_buffer_perc: int) -> int:
    """``max(concurrencyBuffer, ceil(needed * concurrencyBufferPerc / 100))``."""
    return max(concurrency_buffer, math.ceil(needed * concurrency_buffer_perc / 100))


def desired_for_demand(spec: v1alpha1.ScalingSpec, demand: int) -> int:
    """The formula: runners wanted for ``demand`` requests (queued and in flight)."""
    needed = runners_needed(demand, max_multiplexing=spec.max_multiplexing)
    buffer = buffer_runners(
        needed,
        concurrency_buffer=spec.concurrency_buffer,
        concurrency_buffer_perc=spec.concurrency_buffer_perc,
    )
    return clamp(needed + buffer, spec=spec)


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

    def waiting_since(self, now: float) -> float:
        """The ``waiting_since`` cutoff to pass to `queueing.QueueStore.stats`."""
        return now - self.spec.scaling_delay

    def observe(self, stats: queueing.AppQueueStats, now: float) -> int:
        """Record the app's figures at ``now`` and return the desired runner count."""
        return self.decide(
            queued=stats.queued,
            queued_waiting=stats.queued_waiting,
            in_flight=stats.in_progress,
            now=now,
        ).desired

    def decide(
        self, *, queued: int, queued_waiting: int, in_flight: int, now: float
    ) -> ScalingDecision:
        """`observe` with the figures spelled out; returns the full decision."""
        if self._holds and now < self._holds[-1][0]:
            now = self._holds[-1][0]  # a clock step backwards: keep time monotonic
        growth = desired_for_demand(self.spec, queued_waiting + in_flight)
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
            desired=desired, growth=growth, hold=hold, held_for_keep_alive=held
        )
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

"""Scaling signals per app: queue depth, in-flight, idle runners and the desired runner count.

The operator (or KEDA/HPA adapters) reads them at `GET /_kubefal/apps/{ns}/{name}/scaling` or
subscribes to `GET /_kubefal/scaling/watch` (server-sent events). Changes are pushed at once
(coalesced to one recomputation per `min_interval`), so a request that arrives while an app has no
runner starts a scale-up immediately instead of at the next poll; every app is also re-observed
each second, because the scaling delay and keep-alive move with time. The desired count comes from
the per-app state machine in `scaling.py` (fal's formula plus keep-alive, or the countStarting
policy, fed with the starting runners and cold-start times of the runner table and the mean
request time of the app's slots); sync requests waiting for or holding a slot count as in flight.

Several gateway replicas on one Redis each serve the same signal, counted once: queued and
in-progress jobs come from the shared store, and the other replicas' sync requests and runner
slots from the shared slot ledger (slot_ledger.py, refreshed every second), so whichever replica
the operator, KEDA or the HPA asks gets the whole app's figures, not its own share.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

import orjson

from kubefal_gateway import apps, dispatch, metrics, queueing, runners, scaling, slot_ledger

LOGGER = logging.getLogger(__name__)
KEEP_ALIVE_EPSILON = 0.01
"""Seconds past a keep-alive expiry at which the app is observed again."""


@dataclasses.dataclass(frozen=True)
class AppSignal:
    app_id: str
    queued: int
    in_flight: int
    ready_runners: int
    idle_runners: int
    runners: int
    desired_runners: int
    starting_runners: int = 0
    """Runners seen but never ready yet (pods starting)."""
    policy: str = "fal"
    """The app's ``spec.scaling.policy``."""
    covered_requests: float = dataclasses.field(default=0.0, compare=False)
    """Requests the runners the app has or asked for take before a new one could be ready
    (scaling.covered_requests); it moves with time, so alone it is no change worth a push."""
    mean_request_seconds: float | None = dataclasses.field(default=None, compare=False)
    cold_start_seconds: float | None = dataclasses.field(default=None, compare=False)
    runner_states: tuple[tuple[str, bool, bool], ...] = ()
    """(id, busy, ready) per runner: a change here is pushed."""
    runner_details: tuple[dict[str, object], ...] = dataclasses.field(default=(), compare=False)
    """Per runner: id (pod name), ip, inFlight, idleSeconds, ready; the operator removes idle
    runners first on scale-down. Idle time alone changing is not a change worth a push."""

    def to_json(self) -> dict[str, object]:
        return {
            "app": self.app_id,
            "queued": self.queued,
            "inFlight": self.in_flight,
            "readyRunners": self.ready_runners,
            "idleRunners": self.idle_runners,
            "runners": self.runners,
            "desiredRunners": self.desired_runners,
            "startingRunners": self.starting_runners,
            "policy": self.policy,
            "coveredRequests": round(self.covered_requests, 3),
            "meanRequestSeconds": _rounded(self.mean_request_seconds),
            "coldStartSeconds": _rounded(self.cold_start_seconds),
            "runnerDetails": list(self.runner_details),
        }

    def to_sse(self) -> bytes:
        return b"event: scaling\ndata: " + orjson.dumps(self.to_json()) + b"\n\n"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class Signals:
    """Computes signals and fans changes out to subscribers."""

    def __init__(
        self,
        *,
        store: queueing.QueueStore,
        registry: apps.AppRegistry,
        table: runners.RunnerTable,
        forwarder: dispatch.Forwarder,
        gauges: metrics.Metrics,
        min_interval: float = 0.05,
    ) -> None:
        self.store = store
        self.registry = registry
        self.table = table
        self.forwarder = forwarder
        self.metrics = gauges
        self.min_interval = min_interval
        self.last: dict[str, AppSignal] = {}
        self.subscribers: set[asyncio.Queue[AppSignal]] = set()
        self.dirty: set[str] = set()
        self.flush_handle: asyncio.TimerHandle | None = None
        self.flushing: asyncio.Task[None] | None = None
        self.last_flush = 0.0
        self.machines: dict[str, scaling.ScalingSignal] = {}
        self.expiry_timers: dict[str, asyncio.TimerHandle] = {}
        self.ledger: slot_ledger.RedisSlotLedger | None = None
        """Gateway replicas on one Redis: the other replicas' sync requests and runner slots."""
        self.always_compute = False
        """Keep `last` current even without subscribers (KEDA or the external metrics API read
        it synchronously)."""

    async def compute(self, app: apps.AppConfig) -> AppSignal:
        now = time.time()
        machine = self.machines.get(app.app_id)
        if machine is None:
            machine = self.machines[app.app_id] = scaling.ScalingSignal(app.scaling)
        elif machine.spec != app.scaling:
            machine.spec = app.scaling
        stats = await self.store.stats(app.app_id, waiting_since=machine.waiting_since(now))
        slots = self.forwarder.slots.get(app.app_id)
        sync_requests = 0 if slots is None else slots.sync_requests
        if self.ledger is not None:  # queued jobs in progress are shared already (the store)
            sync_requests += self.ledger.others_sync.get(app.app_id, 0)
        app_runners = list(self.table.runners(app.app_id).values())
        busy = {runner.runner_id: runner.in_flight + runner.elsewhere for runner in app_runners}
        ready = [runner for runner in app_runners if runner.ready]
        idle = [runner for runner in ready if busy[runner.runner_id] == 0]
        in_flight = stats.in_progress + sync_requests
        monotonic = time.monotonic()
        starting_ages, starting_untimed = self.table.starting_ages(app.app_id, monotonic)
        capacity = scaling.Capacity(
            ready=len(ready),
            starting_ages=starting_ages,
            starting_untimed=starting_untimed,
            mean_request_seconds=None if slots is None else slots.request_seconds.value,
            cold_start_seconds=self.table.cold_start_seconds(app.app_id),
        )
        decision = machine.decide(
            queued=stats.queued,
            queued_waiting=stats.queued_waiting,
            in_flight=in_flight,
            now=now,
            capacity=capacity,
        )
        desired = decision.desired
        details = tuple(
            {
                "id": runner.runner_id.rsplit("/", 1)[-1],
                "ip": runner.host,
                "inFlight": busy[runner.runner_id],
                "idleSeconds": 0.0
                if busy[runner.runner_id]
                else round(monotonic - runner.last_request_end, 1),
                "ready": runner.ready,
            }
            for runner in app_runners
        )
        signal = AppSignal(
            app_id=app.app_id,
            queued=stats.queued,
            in_flight=in_flight,
            ready_runners=len(ready),
            idle_runners=len(idle),
            runners=len(app_runners),
            desired_runners=desired,
            starting_runners=capacity.starting,
            policy=app.scaling.policy.value,
            covered_requests=decision.covered,
            mean_request_seconds=capacity.mean_request_seconds,
            cold_start_seconds=capacity.cold_start_seconds,
            runner_states=tuple(
                (runner.runner_id, busy[runner.runner_id] > 0, runner.ready)
                for runner in app_runners
            ),
            runner_details=details,
        )
        self._export(signal, busy=len(ready) - len(idle), unready=len(app_runners) - len(ready))
        self._schedule_keep_alive_expiry(app.app_id, machine.next_decrease_at(now), now)
        return signal

    def _schedule_keep_alive_expiry(self, app_id: str, moment: float | None, now: float) -> None:
        """Re-observe the app when its keep-alive hold can drop, not a second later."""
        previous = self.expiry_timers.pop(app_id, None)
        if previous is not None:
            previous.cancel()
        if moment is not None:
            delay = moment - now + KEEP_ALIVE_EPSILON
            self.expiry_timers[app_id] = asyncio.get_running_loop().call_later(
                delay, self.changed, app_id
            )

    def _export(self, signal: AppSignal, *, busy: int, unready: int) -> None:
        app_id = signal.app_id
        self.metrics.queue_depth.labels(app_id).set(signal.queued)
        self.metrics.in_flight.labels(app_id).set(signal.in_flight)
        self.metrics.desired_runners.labels(app_id).set(signal.desired_runners)
        self.metrics.runners.labels(app_id, "idle").set(signal.idle_runners)
        self.metrics.runners.labels(app_id, "busy").set(busy)
        self.metrics.runners.labels(app_id, "unready").set(unready)

    async def refresh_all(self) -> None:
        for app in list(self.registry.apps.values()):
            await self.compute(app)

    async def run(self, *, interval: float = 1.0) -> None:
        """Re-observe every app each `interval` s: scaling delay and keep-alive move with time."""
        while True:
            await asyncio.sleep(interval)
            for app_id in list(self.registry.apps):
                self.changed(app_id)

    # ---- change push ----
    def changed(self, app_id: str) -> None:
        """Something about `app_id` changed; recompute soon (cheap to call on the hot path).

        Without subscribers nothing is pushed (gauges are refreshed when /metrics is scraped).
        """
        if not self.subscribers and not self.always_compute:
            return
        self.dirty.add(app_id)
        if self.flush_handle is not None or (self.flushing and not self.flushing.done()):
            return
        delay = max(0.0, self.last_flush + self.min_interval - time.monotonic())
        self.flush_handle = asyncio.get_running_loop().call_later(delay, self._start_flush)

    def _start_flush(self) -> None:
        self.flush_handle = None
        self.flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        self.last_flush = time.monotonic()
        dirty, self.dirty = self.dirty, set()
        for app_id in dirty:
            app = self.registry.get(app_id)
            if app is None:
                continue
            try:
                signal = await self.compute(app)
            except queueing.QueueError:
                LOGGER.warning("cannot compute scaling signal of %s: store unavailable", app_id)
                continue
            if self.last.get(app_id) != signal:
                self.last[app_id] = signal
                for subscriber in self.subscribers:
                    subscriber.put_nowait(signal)
        if self.dirty:
            self.flushing = None
            self.changed(next(iter(self.dirty)))

    # ---- the DesiredRunners source of keda_scaler and external_metrics ----
    def desired_runners(self, app_id: str) -> int | None:
        """The app's last computed desired runner count; None for an unknown app."""
        app = self.registry.get(app_id)
        if app is None:
            return None
        signal = self.last.get(app_id)
        return app.scaling.min_concurrency if signal is None else signal.desired_runners

    async def subscribe_desired(self) -> AsyncIterator[str]:
        """Yield the id of each app whose desired runner count changes."""
        subscriber = self.subscribe()
        seen: dict[str, int] = {}
        try:
            while True:
                signal = await subscriber.get()
                if seen.get(signal.app_id) != signal.desired_runners:
                    seen[signal.app_id] = signal.desired_runners
                    yield signal.app_id
        finally:
            self.unsubscribe(subscriber)

    def subscribe(self) -> asyncio.Queue[AppSignal]:
        subscriber: asyncio.Queue[AppSignal] = asyncio.Queue()
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: asyncio.Queue[AppSignal]) -> None:
        self.subscribers.discard(subscriber)

    def close(self) -> None:
        if self.flush_handle is not None:
            self.flush_handle.cancel()
        if self.flushing is not None:
            self.flushing.cancel()

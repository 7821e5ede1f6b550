"""Runner discovery: which runners each app has, at what address, and whether they are ready.

Two sources feed the same `RunnerTable`: the Pods of each app, watched through the Kubernetes
API (discovery.py), and the static file's runner URLs (local mode).

The table also remembers, per app, the runners that are starting (first seen, never ready yet)
and how long runners took from first seen to ready: the ``countStarting`` scaling policy counts
what starting runners will serve (scaling.py), and these are its inputs.

In both cases the gateway confirms readiness itself with `GET /_kubefal/ready` on the runner (kwok
marks pods Ready at once, and a Pod can be Ready in the API before its port answers), falling back
to the SDK's `GET /health` for runners that are bare fal apps. A runner that fails a request
with a connection error is marked unready until a probe succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import urllib.parse
from collections.abc import Callable

from kubefal_api import naming
from kubefal_gateway import upstream

READY_PATH = naming.RUNNER_READY_PATH
FIRST_PROBE_DELAY = 0.02
"""Seconds before re-probing a runner that is not ready yet; grows by PROBE_BACKOFF."""
PROBE_BACKOFF = 1.5
STARTING_SECONDS = 60.0
"""For this long after a runner appears, it is probed at least every STARTING_PROBE_CAP."""
STARTING_PROBE_CAP = 0.1
FALLBACK_READY_PATH = "/health"
COLD_START_WEIGHT = 0.3
"""Weight of each new cold start in an app's mean cold start time (few samples, recent ones
matter most)."""


class Mean:
    """An exponentially weighted mean; the first sample sets it. No clock: callers add samples."""

    __slots__ = ("value", "weight")

    def __init__(self, weight: float) -> None:
        self.weight = weight
        self.value: float | None = None

    def add(self, sample: float) -> None:
        if self.value is None:
            self.value = sample
        else:
            self.value += self.weight * (sample - self.value)


@dataclasses.dataclass(slots=True)
class Starting:
    """A runner seen but never ready yet."""

    since: float
    """Monotonic time it was first seen."""
    timed: bool = True
    """Expected to become ready soon (scheduled, no restart): it gets a head start in the
    countStarting policy; an unscheduled or crash-looping one counts only as capacity."""
    measurable: bool = True
    """First seen when it appeared (not in a re-list of pods that existed before), so its
    first-seen-to-ready time is a cold start."""


@dataclasses.dataclass(eq=False)
class Runner:
    """One runner process as the dispatcher sees it."""

    runner_id: str
    app_id: str
    host: str
    port: int
    ready: bool = False
    in_flight: int = 0
    elsewhere: int = 0
    """Slots of this runner other gateway replicas hold (shared slot ledger; 0 with SQLite)."""
    hints: frozenset[str] = frozenset()
    last_request_end: float = dataclasses.field(default_factory=time.monotonic)
    probe_task: asyncio.Task[None] | None = None
    recheck: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    """Set when a request failed to reach the runner: probe again at once."""
    gone: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


RunnerListener = Callable[[str], None]


class RunnerTable:
    """All known runners by app id, and the probes that confirm their readiness."""

    def __init__(
        self, *, client: upstream.UpstreamClient, probe_interval: float, probe_timeout: float = 5.0
    ) -> None:
        self.client = client
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.by_app: dict[str, dict[str, Runner]] = {}
        self.listeners: list[RunnerListener] = []
        self.starting: dict[str, dict[str, Starting]] = {}
        """Per app: runners seen but never ready yet (pods still starting)."""
        self.ever_ready: dict[str, set[str]] = {}
        """Per app: runners that have been ready once (a later unready spell is no start)."""
        self.cold_starts: dict[str, Mean] = {}
        """Per app: mean seconds from a runner first seen to ready."""

    def runners(self, app_id: str) -> dict[str, Runner]:
        return self.by_app.get(app_id, {})

    def _notify(self, app_id: str) -> None:
        for listener in self.listeners:
            listener(app_id)

    def upsert(self, *, app_id: str, runner_id: str, host: str, port: int) -> None:
        runners = self.by_app.setdefault(app_id, {})
        existing = runners.get(runner_id)
        if existing is not None and existing.host == host and existing.port == port:
            return
        if existing is not None:
            self.remove(app_id=app_id, runner_id=runner_id)
            runners = self.by_app.setdefault(app_id, {})
        runner = Runner(runner_id=runner_id, app_id=app_id, host=host, port=port)
        runners[runner_id] = runner
        self.mark_starting(app_id=app_id, runner_id=runner_id, notify=False)
        runner.probe_task = asyncio.get_running_loop().create_task(self._probe_loop(runner))
        self._notify(app_id)

    def announce(self, *, app_id: str, runner_id: str, host: str, port: int) -> Runner:
        """The runner itself said it finished setup() (discovery checked who it is): ready
        now, without waiting for the Pod's Ready condition to travel through the API server,
        nor for a probe. A failed request marks it unready as usual."""
        self.upsert(app_id=app_id, runner_id=runner_id, host=host, port=port)
        runner = self.by_app[app_id][runner_id]
        if not runner.ready:
            runner.ready = True
            self._became_ready(runner)
            self._notify(app_id)
        return runner

    # ---- starting runners and cold-start times (the countStarting policy's inputs) ----
    def mark_starting(
        self,
        *,
        app_id: str,
        runner_id: str,
        timed: bool = True,
        measurable: bool = True,
        notify: bool = True,
    ) -> None:
        """``runner_id`` exists but is not ready: starting, unless it has been ready before.

        The first call records when it was first seen; later ones only update ``timed``."""
        if runner_id in self.ever_ready.get(app_id, ()):
            return
        entries = self.starting.setdefault(app_id, {})
        entry = entries.get(runner_id)
        if entry is None:
            entries[runner_id] = Starting(
                since=time.monotonic(), timed=timed, measurable=measurable
            )
        elif entry.timed != timed:
            entry.timed = timed
        else:
            return
        if notify:
            self._notify(app_id)

    def forget(self, *, app_id: str, runner_id: str) -> None:
        """The runner's pod is gone (or going): no longer starting, nor remembered as ready."""
        changed = self.starting.get(app_id, {}).pop(runner_id, None) is not None
        self.ever_ready.get(app_id, set()).discard(runner_id)
        for table in (self.starting, self.ever_ready):
            if app_id in table and not table[app_id]:
                del table[app_id]
        if changed:
            self._notify(app_id)

    def _became_ready(self, runner: Runner) -> None:
        self.ever_ready.setdefault(runner.app_id, set()).add(runner.runner_id)
        entries = self.starting.get(runner.app_id)
        entry = None if entries is None else entries.pop(runner.runner_id, None)
        if entries is not None and not entries:
            del self.starting[runner.app_id]
        if entry is not None and entry.measurable:
            mean = self.cold_starts.setdefault(runner.app_id, Mean(COLD_START_WEIGHT))
            mean.add(time.monotonic() - entry.since)

    def starting_ages(self, app_id: str, now: float) -> tuple[tuple[float, ...], int]:
        """(ages in seconds of the timed starting runners, count of the untimed ones)."""
        entries = self.starting.get(app_id, {}).values()
        ages = tuple(max(0.0, now - entry.since) for entry in entries if entry.timed)
        return ages, sum(1 for entry in entries if not entry.timed)

    def cold_start_seconds(self, app_id: str) -> float | None:
        """The app's mean cold start (first seen to ready) as this gateway saw it."""
        mean = self.cold_starts.get(app_id)
        return None if mean is None else mean.value

    def remove(self, *, app_id: str, runner_id: str) -> None:
        runner = self.by_app.get(app_id, {}).pop(runner_id, None)
        if runner is None:
            return
        runner.gone = True
        runner.ready = False
        if runner.probe_task is not None:
            runner.probe_task.cancel()
        self.client.forget(runner.host, runner.port)
        self._notify(app_id)

    def mark_unready(self, runner: Runner) -> None:
        """A request failed to reach the runner: stop dispatching until a probe succeeds."""
        if runner.ready:
            runner.ready = False
            runner.recheck.set()
            self._notify(runner.app_id)

    async def probe(self, runner: Runner) -> bool:
        pool = self.client.pool(runner.host, runner.port)
        try:
            async with asyncio.timeout(self.probe_timeout):
                response = await pool.request("GET", READY_PATH, headers=[], body=b"")
                if response.status == 404:
                    response = await pool.request("GET", FALLBACK_READY_PATH, headers=[], body=b"")
        except (upstream.UpstreamError, TimeoutError):
            return False
        return response.status == 200

    async def _probe_loop(self, runner: Runner) -> None:
        # A runner that is not ready yet is usually starting: probe it often at first (a cold
        # start waits on this), backing off to the probe interval; a ready one is probed
        # rarely, since a failed request re-probes it at once (`recheck`).
        unready_delay = FIRST_PROBE_DELAY
        started = time.monotonic()
        while not runner.gone:
            ready = await self.probe(runner)
            if ready != runner.ready and not runner.gone:
                runner.ready = ready
                if ready:
                    self._became_ready(runner)
                self._notify(runner.app_id)
            runner.recheck.clear()
            if ready:
                delay, unready_delay = self.probe_interval * 5, FIRST_PROBE_DELAY
            else:
                starting = time.monotonic() - started < STARTING_SECONDS
                delay = min(unready_delay, STARTING_PROBE_CAP if starting else self.probe_interval)
                unready_delay *= PROBE_BACKOFF
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runner.recheck.wait(), timeout=delay)

    def close(self) -> None:
        for runners in self.by_app.values():
            for runner in runners.values():
                runner.gone = True
                if runner.probe_task is not None:
                    runner.probe_task.cancel()
        self.by_app.clear()
        self.starting.clear()
        self.ever_ready.clear()


def static_runner_addresses(urls: tuple[str, ...]) -> list[tuple[str, str, int]]:
    """(url, host, port) of each of the static file's runner URLs of one app; ValueError when
    one is not ``http://host[:port]``."""
    addresses = []
    for url in urls:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or parsed.hostname is None:
            raise ValueError(f"runner URL must be http://host:port, got {url!r}")
        addresses.append((url, parsed.hostname, parsed.port or 80))
    return addresses

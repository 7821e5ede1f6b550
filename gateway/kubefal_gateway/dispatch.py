"""Dispatch: which runner takes a request, when, and what happens when the attempt fails.

Per app, `AppSlots` hands out runner slots: a runner has `maxMultiplexing` slots; the ready
runner with the fewest requests in flight wins, runners that advertised the caller's
`X-Fal-Runner-Hint` (in their `X-Fal-Runner-Hints` response header) first. Callers that find no
free slot wait in one heap ordered by priority (`normal` before `low`) and arrival (FIFO), bounded
by their `X-Fal-Request-Timeout`. Sync requests wait in this heap directly; the queue worker
(queue_worker.py) joins it for each job it is about to lease, so both APIs share the same slots.

`Forwarder.forward` runs one request against runners with fal's retry policy: connection errors,
503s and runner timeouts are retried on a (preferably different) runner up to `max_attempts`
times, unless the app's `skipRetryConditions` says otherwise; `X-Fal-Needs-Retry: 1|0` from the
runner overrides the decision; the app's `requestTimeout` bounds each attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import time
from collections.abc import Callable

from kubefal_gateway import apps, errors, metrics, runners, upstream

PRIORITY_RANK = {"normal": 0, "low": 1}
RETRYABLE_STATUS = 503
MAX_BUSY_REJECTIONS = 600
"""A runner answering 503 `x-kubefal-rejected: busy` (its slots are taken by another gateway
replica) does not use up an attempt; this bounds how often that may happen to one request."""


def backoff(attempt: int) -> float:
    """Seconds to wait before resending, as fal_client does: 0.05 * 2^(n-1), at most 1 s."""
    return float(min(0.05 * 2 ** max(0, attempt - 1), 1.0))


@dataclasses.dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[runners.Runner]
    hint: str | None
    avoid: frozenset[str]


class AppSlots:
    """The slots of one app's runners and the callers waiting for one."""

    def __init__(self, *, table: runners.RunnerTable, app_id: str, max_multiplexing: int) -> None:
        self.table = table
        self.app_id = app_id
        self.max_multiplexing = max_multiplexing
        self.waiters: list[tuple[int, int, _Waiter]] = []
        self.sequence = itertools.count()
        self.in_flight = 0
        self.sync_requests = 0
        """Sync requests (run, stream, realtime) waiting for a slot or running."""
        self.on_change: Callable[[str], None] | None = None

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, waiter in self.waiters if not waiter.future.done())

    def _pick(self, hint: str | None, avoid: frozenset[str]) -> runners.Runner | None:
        best: runners.Runner | None = None
        best_key: tuple[int, int, int, float] | None = None
        limit = self.max_multiplexing
        for runner in self.table.runners(self.app_id).values():
            if not runner.ready or runner.in_flight >= limit:
                continue
            key = (
                0 if hint is not None and hint in runner.hints else 1,
                1 if runner.runner_id in avoid else 0,
                runner.in_flight,
                runner.last_request_end,
            )
            if best_key is None or key < best_key:
                best, best_key = runner, key
        return best

    def _take(self, runner: runners.Runner) -> runners.Runner:
        runner.in_flight += 1
        runner.last_request_end = time.monotonic()
        self.in_flight += 1
        return runner

    def try_acquire(
        self, *, hint: str | None = None, avoid: frozenset[str] = frozenset()
    ) -> runners.Runner | None:
        if self.waiters:
            return None
        runner = self._pick(hint, avoid)
        return None if runner is None else self._take(runner)

    async def acquire(
        self,
        *,
        priority: str = "normal",
        hint: str | None = None,
        timeout: float | None = None,
        avoid: frozenset[str] = frozenset(),
    ) -> runners.Runner:
        """A runner with a free slot (the slot is taken); QueueWaitTimeout after `timeout` s."""
        runner = self.try_acquire(hint=hint, avoid=avoid)
        if runner is not None:
            return runner
        future: asyncio.Future[runners.Runner] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(future=future, hint=hint, avoid=avoid)
        heapq.heappush(self.waiters, (PRIORITY_RANK.get(priority, 0), next(self.sequence), waiter))
        if self.on_change is not None:
            self.on_change(self.app_id)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise errors.QueueWaitTimeout() from None
        except BaseException:
            if future.done() and not future.cancelled() and future.exception() is None:
                self.release(future.result())
            raise
        finally:
            if not future.done():
                future.cancel()
            self._drop_cancelled()

    def _drop_cancelled(self) -> None:
        while self.waiters and self.waiters[0][2].future.done():
            heapq.heappop(self.waiters)

    def release(self, runner: runners.Runner) -> None:
        runner.in_flight -= 1
        self.in_flight -= 1
        runner.last_request_end = time.monotonic()
        self.wake()

    def wake(self) -> None:
        """Hand free slots to waiters, best priority first."""
        self._drop_cancelled()
        while self.waiters:
            waiter = self.waiters[0][2]
            runner = self._pick(waiter.hint, waiter.avoid)
            if runner is None:
                break
            heapq.heappop(self.waiters)
            waiter.future.set_result(self._take(runner))
            self._drop_cancelled()
        if self.on_change is not None:
            self.on_change(self.app_id)


@dataclasses.dataclass
class ForwardResult:
    """A runner's answer, and the slot to give back once the body has been relayed."""

    response: upstream.UpstreamResponse
    runner: runners.Runner
    slots: AppSlots
    attempts: int
    started: float
    """Monotonic time the successful attempt was sent."""
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.slots.release(self.runner)


def needs_retry(response: upstream.UpstreamResponse, skip: frozenset[str]) -> bool:
    forced = response.header(b"x-fal-needs-retry")
    if forced is not None:
        return forced.strip() in (b"1", b"true")
    return response.status == RETRYABLE_STATUS and "server_error" not in skip


class Forwarder:
    """Runs a request against an app's runners with fal's retry policy."""

    def __init__(
        self,
        *,
        table: runners.RunnerTable,
        client: upstream.UpstreamClient,
        gauges: metrics.Metrics,
        max_attempts: int,
    ) -> None:
        self.table = table
        self.client = client
        self.metrics = gauges
        self.max_attempts = max_attempts
        self.slots: dict[str, AppSlots] = {}
        self.on_change: Callable[[str], None] | None = None

    def slots_for(self, app: apps.AppConfig) -> AppSlots:
        slots = self.slots.get(app.app_id)
        if slots is None:
            slots = AppSlots(
                table=self.table, app_id=app.app_id, max_multiplexing=app.max_multiplexing
            )
            slots.on_change = self.on_change
            self.slots[app.app_id] = slots
        elif slots.max_multiplexing != app.max_multiplexing:
            slots.max_multiplexing = app.max_multiplexing
            slots.wake()
        return slots

    def runners_changed(self, app_id: str) -> None:
        slots = self.slots.get(app_id)
        if slots is not None:
            slots.wake()

    async def forward(
        self,
        *,
        app: apps.AppConfig,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        priority: str = "normal",
        hint: str | None = None,
        wait_timeout: float | None = None,
        stream: bool = False,
        first_runner: runners.Runner | None = None,
        attempts_done: int = 0,
    ) -> ForwardResult:
        """Send the request to a runner, retrying per fal's policy; the caller releases the slot.

        `wait_timeout` bounds the wait for the first slot (the caller's start timeout);
        `first_runner` is a slot the caller already holds (the queue worker's).
        """
        slots = self.slots_for(app)
        skip = app.skip_retry_conditions
        avoid: frozenset[str] = frozenset()
        attempt = attempts_done
        last_error: errors.GatewayError = errors.RunnerUnavailable("No runner answered")
        runner = first_runner
        busy_rejections = 0
        while attempt < self.max_attempts:
            attempt += 1
            if runner is None:
                runner = await slots.acquire(
                    priority=priority,
                    hint=hint,
                    timeout=wait_timeout if attempt == attempts_done + 1 else None,
                    avoid=avoid,
                )
            pool = self.client.pool(runner.host, runner.port)
            started = time.monotonic()
            try:
                if app.request_timeout is None:
                    response = await pool.request(
                        method, target, headers=headers, body=body, stream=stream
                    )
                else:
                    async with asyncio.timeout(app.request_timeout):
                        response = await pool.request(
                            method, target, headers=headers, body=body, stream=stream
                        )
            except upstream.UpstreamError as error:
                slots.release(runner)
                self.table.mark_unready(runner)
                avoid = avoid | {runner.runner_id}
                runner = None
                last_error = errors.RunnerUnavailable(f"Runner connection failed: {error}")
                if "connection_error" in skip:
                    raise last_error from error
                self.metrics.retries.labels(app.app_id, "connection_error").inc()
                await asyncio.sleep(backoff(attempt))
                continue
            except TimeoutError:
                slots.release(runner)
                avoid = avoid | {runner.runner_id}
                runner = None
                last_error = errors.RunnerTimeout()
                if "timeout" in skip:
                    raise last_error from None
                self.metrics.retries.labels(app.app_id, "timeout").inc()
                continue
            except BaseException:
                slots.release(runner)
                raise
            hints = response.header(b"x-fal-runner-hints")
            if hints is not None:
                runner.hints = frozenset(
                    part.strip() for part in hints.decode("latin-1").split(",") if part.strip()
                )
            if needs_retry(response, skip) and attempt < self.max_attempts:
                response.abandon()
                if (
                    response.header(b"x-kubefal-rejected") == b"busy"
                    and busy_rejections < MAX_BUSY_REJECTIONS
                ):
                    # The runner's slots are taken by someone else (another gateway replica, or
                    # work the runner still finishes after a cancel): keep our slot and resend.
                    busy_rejections += 1
                    attempt -= 1
                    self.metrics.retries.labels(app.app_id, "busy").inc()
                    try:
                        await asyncio.sleep(backoff(busy_rejections))
                    except BaseException:
                        slots.release(runner)
                        raise
                    continue
                slots.release(runner)
                if response.status == RETRYABLE_STATUS:
                    self.table.mark_unready(runner)
                avoid = avoid | {runner.runner_id}
                runner = None
                self.metrics.retries.labels(app.app_id, "needs_retry").inc()
                await asyncio.sleep(backoff(attempt))
                continue
            return ForwardResult(
                response=response, runner=runner, slots=slots, attempts=attempt, started=started
            )
        raise last_error

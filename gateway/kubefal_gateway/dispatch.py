"""Dispatch: which runner takes a request, when, and what happens when the attempt fails.

Per app, `AppSlots` hands out runner slots: a runner has `maxMultiplexing` slots; the ready
runner with the fewest requests in flight wins, runners that advertised the caller's
`X-Fal-Runner-Hint` (in their `X-Fal-Runner-Hints` response header) first. Callers that find no
free slot wait in one heap ordered by priority (`normal` before `low`) and arrival (FIFO), bounded
by their `X-Fal-Request-Timeout`; a waiter that gives up leaves the heap (at once when it is at
the top, else when the heap is compacted). Sync requests wait in this heap directly; the queue
worker (queue_worker.py) joins it for each job it is about to lease, so both APIs share slots.

`Forwarder.forward` runs one request against runners. What is sent again, and when:

* never, a request that may have run, when the caller asked for no retries (`retry=False`): the
  sync run API (fal never retries direct calls) and queued jobs carrying `x-fal-no-retry`. A
  runner timeout, a 503, a broken connection or `X-Fal-Needs-Retry: 1` is answered as it is;
* always, a request that provably did not run: the connection to the runner could not be made
  (no byte was sent), or the runner refused to admit it (503 with `x-kubefal-rejected`: busy,
  not ready, draining); busy keeps the slot and asks the same runner again, the others go to
  another runner;
* for queued jobs (`retry=True`), fal's policy: connection errors, 503s and runner timeouts are
  retried on a (preferably different) runner up to `max_attempts` times, unless the app's
  `skipRetryConditions` names the condition; `X-Fal-Needs-Retry: 1|0` from the runner overrides
  the decision for an answer;
* all of it within a total bound: no retry or resend (nor its wait for a slot) starts later
  than `retry_budget` seconds after the first attempt (for a sync request: its start timeout,
  which also bounds asking a busy runner again), and each attempt ends within the app's
  `requestTimeout`. So a queued job's retries end within `retry_budget + requestTimeout`; a
  queued job refused as busy (its runner's slots taken by another gateway replica) is asked
  again up to MAX_BUSY_REJECTIONS times, as it did not run.

Each request a runner works on is a `Lease` (request id, when it was sent, the caller's API key
id) until its slot is given back: the admin API lists them per runner for `fal runners list`.

An attempt abandoned while the runner may still work on it (its `requestTimeout` ran out, or,
with `cancel_abandoned`, the caller hung up) is cancelled on the runner with
`POST /_kubefal/cancel/{request_id}`; a retry waits for that answer first, so the cancel cannot
hit the retry, which carries the same request id.

This module is over 500 lines because one attempt's life is in it: the per-app slots that
admit it, the lease it holds, the forwarder that sends, retries and cancels it; they share the
slot and lease state under one invariant (a slot is held exactly while a runner may work).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from kubefal_gateway import apps, errors, metrics, runners, targets, upstream

PRIORITY_RANK = {"normal": 0, "low": 1}
RETRYABLE_STATUS = 503
MAX_BUSY_REJECTIONS = 600
"""A runner answering 503 `x-kubefal-rejected: busy` (its slots are taken by another gateway
replica) does not use up an attempt; this bounds how often that may happen to one request."""
REJECTED_HEADER = b"x-kubefal-rejected"
"""On a runner's 503: it did not admit the request (busy, not-ready, draining): it did not run."""
DEFAULT_RETRY_BUDGET = 30.0
"""Default of `--retry-budget`: seconds after a job's first attempt in which retries may start."""
CALLER_HEADER = b"x-kubefal-caller"
"""The caller's API key id, stored as a header of a queued job by gateways before
`queueing.Job.owner` (the store codec reads it as the owner of such a job); a caller's own is
dropped on arrival, and it is never forwarded to a runner."""
CANCEL_PREFIX = targets.RESERVED_PREFIX + "/cancel/"
CANCEL_TIMEOUT = 2.0
"""Seconds a cancel sent to a runner may take."""
COMPACT_MIN_DEAD = 64
"""Waiters that gave up are dropped from the heap once they are this many and half of it."""
REQUEST_TIME_WEIGHT = 0.2
"""Weight of each answered request in an app's mean request time (`AppSlots.request_seconds`,
an input of the countStarting scaling policy)."""


def backoff(attempt: int) -> float:
    """Seconds to wait before resending, as fal_client does: 0.05 * 2^(n-1), at most 1 s."""
    return float(min(0.05 * 2 ** max(0, attempt - 1), 1.0))


class SlotLedger(Protocol):
    """Slots shared with other gateway replicas (slot_ledger.py); None with one gateway."""

    async def claim(self, runner: runners.Runner, limit: int) -> bool:
        """Claim a slot of `runner` (already taken locally) among all gateways; False: full."""
        ...

    def release(self, runner: runners.Runner) -> None: ...


@dataclasses.dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[runners.Runner]
    hint: str | None
    avoid: frozenset[str]
    queued: bool = True
    """Still in the heap."""
    counted: bool = False
    """Counted in `AppSlots.dead` (it gave up while queued)."""


class AppSlots:
    """The slots of one app's runners and the callers waiting for one."""

    def __init__(self, *, table: runners.RunnerTable, app_id: str, max_multiplexing: int) -> None:
        self.table = table
        self.app_id = app_id
        self.max_multiplexing = max_multiplexing
        self.waiters: list[tuple[int, int, _Waiter]] = []
        self.dead = 0
        """Entries of `waiters` whose caller gave up (their future is cancelled)."""
        self.sequence = itertools.count()
        self.in_flight = 0
        self.sync_requests = 0
        """Sync requests (run, stream, realtime) waiting for a slot or running."""
        self.on_change: Callable[[str], None] | None = None
        self.ledger: SlotLedger | None = None
        self.request_seconds = runners.Mean(REQUEST_TIME_WEIGHT)
        """Mean time an answered request held its slot (from the attempt sent to the answer
        relayed), as this gateway saw it."""

    @property
    def waiting(self) -> int:
        return len(self.waiters) - self.dead

    def _pick(self, hint: str | None, avoid: frozenset[str]) -> runners.Runner | None:
        best: runners.Runner | None = None
        best_key: tuple[int, int, int, float] | None = None
        limit = self.max_multiplexing
        for runner in self.table.runners(self.app_id).values():
            in_flight = runner.in_flight + runner.elsewhere
            if not runner.ready or in_flight >= limit:
                continue
            key = (
                0 if hint is not None and hint in runner.hints else 1,
                1 if runner.runner_id in avoid else 0,
                in_flight,
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
        """A runner with a free slot (the slot is taken); QueueWaitTimeout after `timeout` s.

        With a `ledger` (gateway replicas sharing a Redis) the slot is also claimed there, so
        `maxMultiplexing` holds across replicas; a runner they fill is skipped until one frees."""
        if self.ledger is None:
            return await self._acquire_here(
                priority=priority, hint=hint, timeout=timeout, avoid=avoid
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            runner = await self._acquire_here(
                priority=priority, hint=hint, timeout=remaining, avoid=avoid
            )
            try:
                claimed = await self.ledger.claim(runner, self.max_multiplexing)
            except BaseException:
                self._release_here(runner)
                raise
            if claimed:
                return runner
            self._release_here(runner)

    async def _acquire_here(
        self,
        *,
        priority: str,
        hint: str | None,
        timeout: float | None,
        avoid: frozenset[str],
    ) -> runners.Runner:
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
                self._release_here(future.result())
            raise
        finally:
            if not future.done():
                future.cancel()
            if waiter.queued and not waiter.counted:  # gave up while still in the heap
                waiter.counted = True
                self.dead += 1
                if self.dead >= COMPACT_MIN_DEAD and self.dead * 2 >= len(self.waiters):
                    self._compact()
            self._drop_cancelled()

    def _compact(self) -> None:
        kept = []
        for entry in self.waiters:
            if entry[2].future.done():
                entry[2].queued = False
            else:
                kept.append(entry)
        heapq.heapify(kept)
        self.waiters = kept
        self.dead = 0  # every counted waiter was done, so none is left

    def _pop(self) -> _Waiter:
        waiter = heapq.heappop(self.waiters)[2]
        waiter.queued = False
        if waiter.counted:
            self.dead -= 1
        return waiter

    def _drop_cancelled(self) -> None:
        while self.waiters and self.waiters[0][2].future.done():
            self._pop()

    def release(self, runner: runners.Runner) -> None:
        if self.ledger is not None:
            self.ledger.release(runner)
        self._release_here(runner)

    def _release_here(self, runner: runners.Runner) -> None:
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
            self._pop()
            waiter.future.set_result(self._take(runner))
            self._drop_cancelled()
        if self.on_change is not None:
            self.on_change(self.app_id)


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """A request a runner works on (fal's runner lease, shown by ``fal runners list``)."""

    request_id: str
    runner: runners.Runner
    leased_at: float
    """Unix time the attempt was sent to the runner."""
    caller: str | None
    """The caller's API key id (None: a public app called without a key)."""


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
    on_release: Callable[[], None] | None = None
    """Ends the request's lease."""

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.slots.request_seconds.add(time.monotonic() - self.started)
            self.slots.release(self.runner)
            if self.on_release is not None:
                self.on_release()


def needs_retry(response: upstream.UpstreamResponse, skip: frozenset[str]) -> bool:
    forced = response.header(b"x-fal-needs-retry")
    if forced is not None:
        return forced.strip() in (b"1", b"true")
    return response.status == RETRYABLE_STATUS and "server_error" not in skip


class Forwarder:
    """Runs a request against an app's runners with the policy in the module docstring."""

    def __init__(
        self,
        *,
        table: runners.RunnerTable,
        client: upstream.UpstreamClient,
        gauges: metrics.Metrics,
        max_attempts: int,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
    ) -> None:
        self.table = table
        self.client = client
        self.metrics = gauges
        self.max_attempts = max_attempts
        self.retry_budget = retry_budget
        self.slots: dict[str, AppSlots] = {}
        self.ledger: SlotLedger | None = None
        """Set when gateway replicas share runner slots (slot_ledger.py)."""
        self.on_change: Callable[[str], None] | None = None
        self.background: set[asyncio.Task[None]] = set()
        self.leases: dict[str, Lease] = {}
        """Request id -> the runner working on it; at most one entry per taken slot."""

    def leases_by_runner(self, app_id: str) -> dict[str, list[Lease]]:
        """Runner id -> the leases of the app's requests on it, oldest first."""
        grouped: dict[str, list[Lease]] = {}
        for lease in self.leases.values():
            if lease.runner.app_id == app_id:
                grouped.setdefault(lease.runner.runner_id, []).append(lease)
        for leases in grouped.values():
            leases.sort(key=lambda lease: lease.leased_at)
        return grouped

    def slots_for(self, app: apps.AppConfig) -> AppSlots:
        slots = self.slots.get(app.app_id)
        if slots is None:
            slots = AppSlots(
                table=self.table, app_id=app.app_id, max_multiplexing=app.max_multiplexing
            )
            slots.on_change = self.on_change
            slots.ledger = self.ledger
            self.slots[app.app_id] = slots
        elif slots.max_multiplexing != app.max_multiplexing:
            slots.max_multiplexing = app.max_multiplexing
            slots.wake()
        return slots

    def runners_changed(self, app_id: str) -> None:
        slots = self.slots.get(app_id)
        if slots is not None:
            slots.wake()

    async def cancel_at_runner(self, runner: runners.Runner, request_id: str) -> None:
        """Tell `runner` to stop working on `request_id` (best effort, bounded)."""
        headers = [(b"x-fal-request-id", request_id.encode())]
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                await self.client.pool(runner.host, runner.port).request(
                    "POST", CANCEL_PREFIX + request_id, headers=headers, body=b""
                )
        except (upstream.UpstreamError, upstream.InvalidRequest, TimeoutError):
            return

    def cancel_later(self, runner: runners.Runner, request_id: str) -> None:
        """`cancel_at_runner` in the background (the caller is being cancelled or answers)."""
        task = asyncio.get_running_loop().create_task(self.cancel_at_runner(runner, request_id))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def forward(
        self,
        *,
        app: apps.AppConfig,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        request_id: str,
        retry: bool,
        priority: str = "normal",
        hint: str | None = None,
        wait_timeout: float | None = None,
        stream: bool = False,
        first_runner: runners.Runner | None = None,
        attempts_done: int = 0,
        max_body: int | None = None,
        cancel_abandoned: bool = False,
        on_retry: Callable[[int], Awaitable[None]] | None = None,
        caller: str | None = None,
    ) -> ForwardResult:
        """Send the request to a runner per the module's policy; the caller releases the slot.

        `wait_timeout` bounds the wait for the first slot (the caller's start timeout) and, when
        given, replaces `retry_budget` as the time in which resends may start; `first_runner` is
        a slot the caller already holds (the queue worker's). `max_body` bounds a buffered
        answer (errors.ResultTooLarge). With `cancel_abandoned`, a caller cancelled while a
        runner may work on its request (it hung up) gets the runner told to cancel it.
        `caller` (the caller's API key id) is recorded in the request's `Lease`.
        """
        slots = self.slots_for(app)

        def unlease() -> None:
            lease = self.leases.get(request_id)
            if lease is not None and lease.runner is leased_runner:
                del self.leases[request_id]

        def release(slot_runner: runners.Runner) -> None:
            slots.release(slot_runner)
            unlease()

        leased_runner: runners.Runner | None = None
        skip = app.skip_retry_conditions
        begun = time.monotonic()
        wait_until = None if wait_timeout is None else begun + wait_timeout
        resend_until = begun + self.retry_budget if wait_until is None else wait_until
        avoid: frozenset[str] = frozenset()
        attempt = attempts_done
        first_attempt = attempts_done + 1
        last_error: errors.GatewayError = errors.RunnerUnavailable("No runner answered")
        runner = first_runner
        busy_rejections = 0
        while attempt < self.max_attempts:
            attempt += 1
            if on_retry is not None and attempt > first_attempt:
                await on_retry(attempt - 1)  # attempts ended so far (the queue persists it)
            if runner is None:
                if attempt == first_attempt:
                    runner = await slots.acquire(
                        priority=priority, hint=hint, timeout=wait_timeout, avoid=avoid
                    )
                else:
                    try:
                        runner = await slots.acquire(
                            priority=priority,
                            hint=hint,
                            timeout=max(0.0, resend_until - time.monotonic()),
                            avoid=avoid,
                        )
                    except errors.QueueWaitTimeout:
                        raise last_error from None
            pool = self.client.pool(runner.host, runner.port)
            started = time.monotonic()
            leased_runner = runner
            self.leases[request_id] = Lease(
                request_id=request_id, runner=runner, leased_at=time.time(), caller=caller
            )
            try:
                if app.request_timeout is None:
                    response = await pool.request(
                        method,
                        target,
                        headers=headers,
                        body=body,
                        stream=stream,
                        max_body=max_body,
                    )
                else:
                    async with asyncio.timeout(app.request_timeout):
                        response = await pool.request(
                            method,
                            target,
                            headers=headers,
                            body=body,
                            stream=stream,
                            max_body=max_body,
                        )
            except upstream.UpstreamError as error:
                release(runner)
                self.table.mark_unready(runner)
                avoid = avoid | {runner.runner_id}
                runner = None
                last_error = errors.RunnerUnavailable(f"Runner connection failed: {error}")
                if error.sent and (not retry or "connection_error" in skip):
                    raise last_error from error
                if time.monotonic() >= resend_until:
                    raise last_error from error
                self.metrics.retries.labels(
                    app.app_id, "connection_error" if error.sent else "unreachable"
                ).inc()
                await asyncio.sleep(backoff(attempt))
                continue
            except TimeoutError:
                release(runner)
                avoid = avoid | {runner.runner_id}
                last_error = errors.RunnerTimeout()
                if not retry or "timeout" in skip or time.monotonic() >= resend_until:
                    self.cancel_later(runner, request_id)
                    raise last_error from None
                await self.cancel_at_runner(runner, request_id)
                runner = None
                self.metrics.retries.labels(app.app_id, "timeout").inc()
                continue
            except upstream.ResponseTooLarge as error:
                release(runner)
                raise errors.ResultTooLarge(str(error)) from None
            except upstream.InvalidRequest as error:
                release(runner)
                raise errors.BadRequest(str(error)) from None
            except BaseException:
                release(runner)
                if cancel_abandoned:
                    self.cancel_later(runner, request_id)
                raise
            hints = response.header(b"x-fal-runner-hints")
            if hints is not None:
                runner.hints = frozenset(
                    part.strip() for part in hints.decode("latin-1").split(",") if part.strip()
                )
            rejected = response.header(REJECTED_HEADER) if response.status == 503 else None
            if rejected is not None:  # not admitted: asking again is no retry
                resend = wait_until is None or time.monotonic() < wait_until
            elif retry and needs_retry(response, skip):
                resend = attempt < self.max_attempts and time.monotonic() < resend_until
            else:
                resend = False
            if not resend:
                return ForwardResult(
                    response=response,
                    runner=runner,
                    slots=slots,
                    attempts=attempt,
                    started=started,
                    on_release=unlease,
                )
            response.abandon()
            if rejected == b"busy" and busy_rejections < MAX_BUSY_REJECTIONS:
                # The runner's slots are taken by someone else (another gateway replica, or
                # work the runner still finishes after a cancel): keep our slot and ask again.
                busy_rejections += 1
                attempt -= 1
                self.metrics.retries.labels(app.app_id, "busy").inc()
                try:
                    await asyncio.sleep(backoff(busy_rejections))
                except BaseException:
                    release(runner)
                    raise
                continue
            release(runner)
            if response.status == RETRYABLE_STATUS:
                self.table.mark_unready(runner)
            avoid = avoid | {runner.runner_id}
            runner = None
            last_error = errors.RunnerUnavailable(
                f"Runner answered {response.status}"
                + ("" if rejected is None else f" ({rejected.decode('latin-1')})")
            )
            self.metrics.retries.labels(
                app.app_id, "needs_retry" if rejected is None else "rejected"
            ).inc()
            await asyncio.sleep(backoff(attempt))
        raise last_error

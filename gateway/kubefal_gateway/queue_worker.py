"""Moves queued jobs from the durable store to runners and their results back.

Per app with queued work, one filler task waits for a free runner slot (in the same heap as sync
requests, dispatch.AppSlots), then leases the app's next job from the store (normal before low,
FIFO) and starts it. A running job renews its lease (so another gateway replica takes it over only
if this one dies), follows the runner's logs into the store, honours cancel requests (the runner's
request is dropped and `POST /_kubefal/cancel/{request_id}` is sent to it) and ends with exactly
one `complete` (the store rejects a second one). Wake-ups come from the store's events; a periodic
rescan covers events lost across processes, and `expire` housekeeping runs on the same tick.

Retries follow dispatch.py (fal's policy within `--retry-budget`); a job submitted with
`x-fal-no-retry: 1` (or `true`) is sent to a runner at most once that may run it. The runner's
answer is read up to `--max-result-bytes` and no further. A job's path carries its query string
(`/sub?x=1`), as submitted.

This module is over 500 lines because it is one loop, `QueueWorker`, that owns a job from
lease to its single ``complete`` (dispatch, retries, cancellation, result and log capture);
the policies it applies live in ``dispatch`` and ``queueing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable

import orjson

from kubefal_gateway import apps, dispatch, errors, metrics, queueing, runners, targets, upstream

LOGGER = logging.getLogger(__name__)

RESCAN_SECONDS = 1.0
LOG_POLL_SECONDS = 0.5
LOG_LINES_HEADER = b"x-kubefal-log-lines"
"""A runner that announces how many log lines a request wrote lets the gateway skip fetching
them when there are none (one runner round trip less per job)."""
KEPT_RESULT_HEADERS = frozenset({"content-type", "x-fal-billable-units", "x-fal-runner-hints"})
NO_RETRY_HEADER = "x-fal-no-retry"
LOGS_PREFIX = targets.RESERVED_PREFIX + "/logs/"


def no_retry(job: queueing.Job) -> bool:
    """The job was submitted with `x-fal-no-retry: 1|true`: never run it twice."""
    for name, value in job.headers:
        if name == NO_RETRY_HEADER:
            return value.strip().lower() in ("1", "true", "yes")
    return False


def runner_headers(job: queueing.Job) -> list[tuple[bytes, bytes]]:
    headers = [
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in job.headers
        if name != CALLER_HEADER_TEXT
    ]
    headers.append((b"x-fal-request-id", job.request_id.encode()))
    path = job.path.split("?", 1)[0]
    headers.append((b"x-fal-endpoint", endpoint_name(job.app_id, path).encode()))
    return headers


CALLER_HEADER_TEXT = dispatch.CALLER_HEADER.decode()


def endpoint_name(app_id: str, path: str) -> str:
    """The `x-fal-endpoint` value: the app id plus the subpath (raw, as the client sent it)."""
    return app_id if path == "/" else app_id + path


def error_from_response(status: int, body: bytes) -> tuple[str, str]:
    """(error, error_type) for a non-2xx runner answer, from fal's `{"detail","error_type"}`."""
    detail: object = None
    error_type: object = None
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(body)
        if isinstance(parsed, dict):
            detail = parsed.get("detail")
            error_type = parsed.get("error_type")
    if detail is None:
        detail = body.decode("utf-8", "replace")[:2000] or f"Runner answered {status}"
    elif not isinstance(detail, str):
        detail = orjson.dumps(detail).decode()
    if not isinstance(error_type, str):
        error_type = "validation_error" if status == 422 else "runner_error"
    return str(detail), error_type


def result_from_response(
    response: upstream.UpstreamResponse, *, inference_time: float, max_result_bytes: int
) -> queueing.Result:
    now = time.time()
    if len(response.body) > max_result_bytes:
        return queueing.error_result(
            status_code=413,
            detail=f"Result of {len(response.body)} bytes exceeds the {max_result_bytes} limit",
            error_type="result_too_large",
            now=now,
        )
    headers = tuple(
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in response.headers
        if name.decode("latin-1") in KEPT_RESULT_HEADERS
    )
    run_metrics = {"inference_time": inference_time}
    if 200 <= response.status < 300:
        return queueing.Result(
            status_code=response.status,
            headers=headers,
            body=response.body,
            metrics=run_metrics,
            completed_at=now,
        )
    error, error_type = error_from_response(response.status, response.body)
    body = response.body
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(body)
        if isinstance(parsed, dict) and "error_type" not in parsed:
            body = orjson.dumps({**parsed, "error_type": error_type})
    if not body:
        body = errors.json_body(error, error_type)
    return queueing.Result(
        status_code=response.status,
        headers=headers,
        body=body,
        outcome=queueing.Outcome.ERROR,
        error=error,
        error_type=error_type,
        metrics=run_metrics,
        completed_at=now,
    )


def result_from_error(error: errors.GatewayError) -> queueing.Result:
    return queueing.error_result(
        status_code=error.status,
        detail=error.detail,
        error_type=error.error_type or "gateway_error",
        outcome=queueing.Outcome.TIMEOUT
        if isinstance(error, errors.RunnerTimeout)
        else queueing.Outcome.ERROR,
        headers=tuple((name.decode(), value.decode()) for name, value in error.headers),
    )


class QueueWorker:
    """Dispatches the store's jobs for every app this gateway serves."""

    def __init__(
        self,
        *,
        store: queueing.QueueStore,
        forwarder: dispatch.Forwarder,
        registry: apps.AppRegistry,
        client: upstream.UpstreamClient,
        gauges: metrics.Metrics,
        holder: str,
        lease_seconds: float,
        max_result_bytes: int,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.forwarder = forwarder
        self.registry = registry
        self.client = client
        self.metrics = gauges
        self.holder = holder
        self.lease_seconds = lease_seconds
        self.max_result_bytes = max_result_bytes
        self.on_change = on_change
        self.fillers: dict[str, asyncio.Task[None]] = {}
        self.dirty: set[str] = set()
        self.running: dict[str, asyncio.Task[None]] = {}
        self.running_apps: dict[str, tuple[str, str | None]] = {}
        """App id and submitter (`queueing.Job.owner`) of each job this gateway is running: its
        status is IN_PROGRESS in the store (leased here, not yet completed), so a status poll
        needs no store read, and is answered only to the callers `queueing.may_act` admits."""
        self.cancel_requested: set[str] = set()
        self.finished_waiters: dict[str, list[asyncio.Future[None]]] = {}
        """Status polls held until their job completes (`finished_waiter`)."""
        self.tasks: set[asyncio.Task[None]] = set()
        self._log_counts: dict[str, int] = {}

    # ---- wake-ups ---------------------------------------------------------------------------
    async def run(self) -> None:
        events = self.store.subscribe()
        try:
            await self._rescan()
            next_rescan = time.monotonic() + RESCAN_SECONDS
            while True:
                timeout = max(0.0, next_rescan - time.monotonic())
                event = await events.next(timeout=timeout)
                if event is None or event.kind is queueing.EventKind.RESYNC:
                    if time.monotonic() >= next_rescan or event is not None:
                        await self._rescan()
                        next_rescan = time.monotonic() + RESCAN_SECONDS
                    continue
                if event.kind is queueing.EventKind.SUBMITTED:
                    self.wake(event.app_id)
                elif event.kind is queueing.EventKind.CANCEL_REQUESTED:
                    self._cancel_running(event.request_id)
                elif event.kind is queueing.EventKind.COMPLETED:
                    self._wake_finished(event.request_id)
                    if self.on_change is not None:
                        self.on_change(event.app_id)
        finally:
            events.close()

    async def _rescan(self) -> None:
        try:
            await self.store.expire()
            app_ids = await self.store.apps()
        except queueing.QueueError:
            self.metrics.store_errors.labels("queue_worker").inc()
            LOGGER.exception("queue store unavailable during rescan")
            return
        for app_id in app_ids:
            self.wake(app_id)

    def wake(self, app_id: str) -> None:
        if self.on_change is not None:
            self.on_change(app_id)
        app = self.registry.get(app_id)
        if app is None:
            return
        self.dirty.add(app_id)
        if app_id not in self.fillers:
            task = asyncio.get_running_loop().create_task(self._fill(app))
            self.fillers[app_id] = task

    # ---- leasing ----------------------------------------------------------------------------
    async def _fill(self, app: apps.AppConfig) -> None:
        app_id = app.app_id
        try:
            while True:
                app = self.registry.get(app_id) or app
                slots = self.forwarder.slots_for(app)
                self.dirty.discard(app_id)
                runner = await slots.acquire()
                try:
                    job = await self.store.lease(
                        app_id, holder=self.holder, lease_seconds=self.lease_seconds
                    )
                except BaseException:
                    slots.release(runner)
                    raise
                if job is None:
                    slots.release(runner)
                    if app_id in self.dirty:
                        continue
                    return
                self._start(job, app=app, runner=runner)
        except queueing.QueueError:
            self.metrics.store_errors.labels("queue_worker").inc()
            LOGGER.exception("queue store unavailable while leasing for %s", app_id)
        finally:
            if self.fillers.get(app_id) is asyncio.current_task():
                del self.fillers[app_id]

    def _start(
        self,
        job: queueing.Job,
        *,
        app: apps.AppConfig,
        runner: runners.Runner,
    ) -> None:
        task = asyncio.get_running_loop().create_task(self._run_job(job, app=app, runner=runner))
        self.running[job.request_id] = task
        self.running_apps[job.request_id] = (job.app_id, job.owner)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _cancel_running(self, request_id: str) -> None:
        task = self.running.get(request_id)
        if task is not None and request_id not in self.cancel_requested:
            self.cancel_requested.add(request_id)
            task.cancel()

    # ---- one job ----------------------------------------------------------------------------
    async def _run_job(
        self,
        job: queueing.Job,
        *,
        app: apps.AppConfig,
        runner: runners.Runner,
    ) -> None:
        request_id = job.request_id
        self.metrics.observe_dispatch(app.app_id, "queue", max(0.0, time.time() - job.submitted_at))
        # Lease renewal and log following start only for jobs that run long enough to need them;
        # a timer costs far less than two tasks per job on the hot path.
        loop = asyncio.get_running_loop()
        helpers: list[asyncio.Task[None]] = []
        renew_timer = loop.call_later(
            self.lease_seconds / 3,
            lambda: helpers.append(loop.create_task(self._renew(job))),
        )
        logs_timer = loop.call_later(
            LOG_POLL_SECONDS,
            lambda: helpers.append(loop.create_task(self._follow_logs(job, runner))),
        )
        result: queueing.Result | None = None
        forwarded: dispatch.ForwardResult | None = None
        try:
            forwarded = await self.forwarder.forward(
                app=app,
                method=job.method,
                target=job.path,
                headers=runner_headers(job),
                body=job.body,
                request_id=request_id,
                retry=not no_retry(job),
                hint=job.runner_hint,
                first_runner=runner,
                attempts_done=min(job.attempts, self.forwarder.max_attempts - 1),
                max_body=self.max_result_bytes,
                on_retry=lambda ended: self._note_attempts(request_id, ended),
                caller=job.owner,
            )
            forwarded.release()
            result = result_from_response(
                forwarded.response,
                inference_time=time.monotonic() - forwarded.started,
                max_result_bytes=self.max_result_bytes,
            )
        except errors.GatewayError as error:
            result = result_from_error(error)
        except asyncio.CancelledError:
            if request_id not in self.cancel_requested:
                raise  # gateway shutting down or lease lost: the lease will expire
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # handled: later awaits and timeouts must work normally
            result = queueing.cancelled_result()
            await self._forward_cancel(job, forwarded.runner if forwarded else runner)
        finally:
            renew_timer.cancel()
            logs_timer.cancel()
            for helper in helpers:
                helper.cancel()
            self.running.pop(request_id, None)
            self.running_apps.pop(request_id, None)
            self.cancel_requested.discard(request_id)
        try:
            await self._collect_logs(job, forwarded)
            await self.store.complete(request_id, holder=self.holder, result=result)
        finally:
            self._wake_finished(request_id)  # held status polls read the store again
        outcome = "ok" if result.outcome is queueing.Outcome.OK else result.outcome.value.lower()
        self.metrics.observe_request(
            app.app_id, "queue", outcome, max(0.0, time.time() - job.submitted_at)
        )

    def finished_waiter(self, request_id: str) -> asyncio.Future[None]:
        """A future resolved once the job is completed in the store: run here, or anywhere when
        its completion event reaches this gateway (at most once across gateways, so waits on
        it are bounded). Taken before reading the job's state, so no completion slips between;
        give it back with `wait_finished` or `drop_waiter`."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.finished_waiters.setdefault(request_id, []).append(waiter)
        return waiter

    async def wait_finished(
        self, request_id: str, waiter: asyncio.Future[None], timeout: float
    ) -> bool:
        """Wait at most `timeout` s on `waiter`; True when the job completed."""
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            return False
        finally:
            self.drop_waiter(request_id, waiter)
        return True

    def drop_waiter(self, request_id: str, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.cancel()
        waiters = self.finished_waiters.get(request_id)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self.finished_waiters[request_id]

    def _wake_finished(self, request_id: str) -> None:
        for waiter in self.finished_waiters.pop(request_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def _note_attempts(self, request_id: str, ended: int) -> None:
        """Persist retries within this dispatch, so a gateway crash does not reset the count."""
        with contextlib.suppress(queueing.QueueError):
            await self.store.note_attempts(request_id, holder=self.holder, attempts=ended)

    async def _forward_cancel(self, job: queueing.Job, runner: runners.Runner) -> None:
        """Tell the runner that holds the request to cancel it (best effort)."""
        await self.forwarder.cancel_at_runner(runner, job.request_id)

    async def _renew(self, job: queueing.Job) -> None:
        interval = self.lease_seconds / 3
        while True:
            try:
                status = await self.store.renew(
                    job.request_id, holder=self.holder, lease_seconds=self.lease_seconds
                )
            except queueing.QueueError:
                self.metrics.store_errors.labels("queue_worker").inc()
                await asyncio.sleep(interval)
                continue
            if status is queueing.LeaseStatus.CANCEL_REQUESTED:
                self._cancel_running(job.request_id)
            elif status is queueing.LeaseStatus.LOST:
                task = self.running.get(job.request_id)
                if task is not None:
                    task.cancel()
                return
            await asyncio.sleep(interval)

    async def _fetch_logs(
        self, job: queueing.Job, runner: runners.Runner
    ) -> list[queueing.LogLine]:
        try:
            async with asyncio.timeout(2.0):
                response = await self.client.pool(runner.host, runner.port).request(
                    "GET",
                    LOGS_PREFIX + job.request_id,
                    headers=[],
                    body=b"",
                    max_body=self.max_result_bytes,
                )
        except (upstream.UpstreamError, upstream.ResponseTooLarge, TimeoutError):
            return []
        if response.status != 200:
            return []
        try:
            entries = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            return []
        lines: list[queueing.LogLine] = []
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict):
                lines.append(
                    queueing.LogLine(
                        message=str(entry.get("message", "")),
                        level=str(entry.get("level", "INFO")),
                        source=str(entry.get("source", "USER")),
                        timestamp=_parse_timestamp(entry.get("timestamp")),
                    )
                )
        return lines

    async def _append_new_logs(self, job: queueing.Job, runner: runners.Runner) -> None:
        lines = await self._fetch_logs(job, runner)
        seen = self._log_counts.get(job.request_id, 0)
        if len(lines) > seen:
            self._log_counts[job.request_id] = len(lines)
            await self.store.append_logs(job.request_id, lines[seen:])

    async def _follow_logs(self, job: queueing.Job, runner: runners.Runner) -> None:
        """While the job runs, copy the runner's new log lines into the store."""
        self._log_counts.setdefault(job.request_id, 0)
        while True:
            with contextlib.suppress(queueing.QueueError):
                await self._append_new_logs(job, runner)
            await asyncio.sleep(LOG_POLL_SECONDS)

    async def _collect_logs(
        self, job: queueing.Job, forwarded: dispatch.ForwardResult | None
    ) -> None:
        try:
            announced = None if forwarded is None else forwarded.response.header(LOG_LINES_HEADER)
            if forwarded is not None and announced != b"0":
                with contextlib.suppress(queueing.QueueError):
                    await self._append_new_logs(job, forwarded.runner)
        finally:
            self._log_counts.pop(job.request_id, None)

    async def close(self, *, drain_seconds: float = 20.0) -> None:
        """Stop leasing, give running jobs `drain_seconds` to finish, then abandon the rest.

        An abandoned job is not lost: its lease expires and a gateway runs it again.
        """
        fillers = list(self.fillers.values())
        for task in fillers:
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=drain_seconds)
        for task in [*fillers, *self.tasks]:
            task.cancel()
        for task in [*fillers, *self.tasks]:
            with contextlib.suppress(BaseException):
                await task


def _parse_timestamp(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.UTC)
            return moment.timestamp()
    return time.time()

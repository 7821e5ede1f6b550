"""The durable request queue's public types and the store interface every backend implements.

Why this module exists: the gateway's HTTP layer and dispatcher must not care whether requests are
kept in SQLite (one replica, the embedded default) or Redis (several replicas sharing one queue).
This module is the seam between them. It is pure: no HTTP, no Kubernetes, no backend imports at
module level.

The model (fal's queue contract, docs/fal-compat.md, "fal_client 1.0.3"):

* A `Job` is one accepted request, immutable once submitted; ``app_id`` is ``"{namespace}/{name}"``
  and ``path`` the subpath forwarded to the runner (always starting with ``"/"``).
* A job moves ``IN_QUEUE -> IN_PROGRESS -> COMPLETED`` (fal's only three states). Failures,
  cancellations and start timeouts are ``COMPLETED`` too; `Result.outcome` says which, and the
  stored HTTP status of a failed `Result` is non-2xx so ``fal_client.result()`` raises.
* Ordering: ``Priority.NORMAL`` before ``Priority.LOW``; FIFO within a priority by a store-wide
  sequence number assigned at submit. A retried job (`QueueStore.requeue`) keeps its sequence
  number, so it goes back to where it was, ahead of later submissions.
* Dispatch uses leases: `QueueStore.lease` atomically moves the next job to ``IN_PROGRESS`` under a
  *holder* (one id per gateway process) until ``now + lease_seconds``; the holder extends it with
  `QueueStore.renew`. A lease that runs out (the gateway died) returns the job to the queue with
  ``attempts + 1`` (done by `QueueStore.expire`, which every gateway calls periodically; SQLite
  does the same at open for jobs its previous process left in progress). A job is never leased to
  two holders at once, even across processes sharing a Redis.
* Poison jobs: such crash re-dispatches count against the same budget as retries
  (``max_attempts``, the gateway's ``--max-attempts``). A job whose lease runs out for the
  ``max_attempts``-th time is not queued again: it completes with `attempts_exhausted_result`
  (a 503 error), so a request that kills whatever runs it cannot crash gateways forever.
* Completion is exactly once: `QueueStore.complete` is accepted only from the current lease holder
  of an ``IN_PROGRESS`` job and returns False otherwise (lease lost, cancelled, already done).
* Durability: ``submit``, ``complete``, ``cancel``, ``expire`` and the webhook outbox calls return
  only once the change is durable (SQLite: committed to the WAL; Redis: acknowledged by the
  server). ``lease``, ``renew``, ``requeue`` and ``append_logs`` are applied at once and made
  durable with the next commit without waiting for it (losing one in a crash only means a job
  runs again). Calls made in the same event-loop turn share one commit or one round trip (group
  commit / auto-pipelining), so durability costs microseconds per job.
* Results are kept for ``result_ttl`` seconds after completion, then deleted by `QueueStore.expire`
  (or natively by Redis key expiry). Queued jobs whose ``start_deadline`` (from
  ``X-Fal-Request-Timeout``) passes are completed by `QueueStore.expire` with
  `start_timeout_result`, a 504 carrying ``X-Fal-Request-Timeout-Type``.
* Webhooks: completing a job that has a ``webhook_url`` atomically adds a `WebhookDelivery` to an
  outbox in the same store, so a delivery survives a gateway restart. `kubefal_gateway.webhooks`
  leases deliveries (`QueueStore.lease_webhooks`), POSTs them, and acks or reschedules them.
* Wake-ups: `QueueStore.subscribe` returns an `EventSubscription` yielding `QueueEvent`s: work
  became available for an app (a submit, a requeue, an expired lease), a cancel was requested for
  an in-progress job, a job completed. Events are hints, not a log: a consumer that falls behind
  gets a single ``RESYNC`` event and should rescan, and a dispatcher should still poll now and then
  (pub/sub across processes is at-most-once).

Typical dispatcher loop::

    events = store.subscribe()
    while True:
        for app_id in apps_with_a_free_runner_slot():
            job = await store.lease(app_id, holder=HOLDER, lease_seconds=30.0)
            if job is not None:
                start(job)        # renew() while running; complete() or requeue() at the end
        await events.next(timeout=1.0)

Open a backend with `kubefal_gateway.stores.opener.open_store` (``sqlite:///var/lib/kubefal/queue.db``
or ``redis://host:6379/0?prefix=kubefal``); the backends import this module, never the reverse.

This module is over 500 lines because it is the queue's whole contract in one place: the types,
the event fan-out every backend uses, the `QueueStore` protocol (mostly its documentation) and
the standard results; every backend and every caller needs all of them together.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime
import enum
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import orjson

LOG = logging.getLogger(__name__)

Headers = tuple[tuple[str, str], ...]
"""HTTP headers as (lower-case name, value) pairs, in order; repeated names allowed."""


class Priority(enum.IntEnum):
    """Queue priority from ``X-Fal-Queue-Priority``; lower value is served first."""

    NORMAL = 0
    LOW = 1

    @classmethod
    def from_header(cls, value: str | None) -> Priority:
        """Parse the header value (``normal`` | ``low``, case-insensitive; absent means normal).

        Raises ValueError for anything else, so the HTTP layer can answer 400/422.
        """
        if value is None or value == "":
            return cls.NORMAL
        try:
            return cls[value.strip().upper()]
        except KeyError:
            raise ValueError(
                f"X-Fal-Queue-Priority must be 'normal' or 'low', not {value!r}"
            ) from None


class JobState(enum.StrEnum):
    """fal's three request states; nothing else ever reaches a client."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Outcome(enum.StrEnum):
    """How a completed job ended. Only ``OK`` is a success; the rest carry ``error``."""

    OK = "OK"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"


class CancelOutcome(enum.StrEnum):
    """Answer of `QueueStore.cancel`, named as fal's API reference names cancel statuses."""

    OK = "OK"
    """The job was still queued: it is now COMPLETED with a CANCELLED result."""
    CANCELLATION_REQUESTED = "CANCELLATION_REQUESTED"
    """The job is in progress: it is flagged and a CANCEL_REQUESTED event is sent to dispatchers."""
    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    NOT_FOUND = "NOT_FOUND"


class LeaseStatus(enum.StrEnum):
    """Answer of `QueueStore.renew`."""

    HELD = "HELD"
    """Renewed; keep going."""
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    """Renewed, but a client asked to cancel: forward the cancel to the runner."""
    LOST = "LOST"
    """No longer ours (expired and re-leased, completed or unknown): abandon the job."""


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """One accepted request, as the dispatcher forwards it to a runner."""

    request_id: str
    app_id: str
    """``"{namespace}/{name}"``."""
    path: str
    """Subpath forwarded to the runner, including the leading ``"/"`` (``"/"`` for the root)."""
    method: str
    headers: Headers
    """Request headers to forward (content-type, accept, x-fal-*, ...), names lower-case."""
    body: bytes
    priority: Priority = Priority.NORMAL
    submitted_at: float = 0.0
    """Unix time the request was accepted."""
    start_deadline: float | None = None
    """Unix time by which it must have started (``X-Fal-Request-Timeout``), else a 504 result."""
    webhook_url: str | None = None
    runner_hint: str | None = None
    attempts: int = 0
    """Dispatch attempts that already ended without a result (retries and lost leases)."""
    owner: str | None = None
    """The submitter's API key id (None: a public app called without a key). Stored with the
    job and returned by `QueueStore.view`, so status, result and cancel answer only the callers
    `may_act` admits (docs/security.md, "Queued requests, uploads and ids")."""

    def missed_start(self, now: float) -> bool:
        """Its ``start_deadline`` passed before ``now``: a lease completes it with
        `start_timeout_result` instead of dispatching it (every backend's ``lease``)."""
        return self.start_deadline is not None and self.start_deadline < now


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """What the result endpoint returns for a completed job (and what its webhook carries)."""

    status_code: int
    headers: Headers
    """Response headers to return (content-type, x-fal-billable-units, ...), names lower-case."""
    body: bytes
    outcome: Outcome = Outcome.OK
    error: str | None = None
    """Human-readable failure, reported as ``error`` in COMPLETED status."""
    error_type: str | None = None
    """fal error type, reported as ``error_type`` in COMPLETED status."""
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Reported as ``metrics`` in COMPLETED status (e.g. ``inference_time``)."""
    completed_at: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class LogLine:
    """One log line of a request, shown by ``status?logs=true``."""

    message: str
    level: str = "INFO"
    source: str = "USER"
    timestamp: float = 0.0
    """Unix time."""

    def to_fal(self) -> dict[str, str]:
        """fal's wire shape: ``{"message","level","source","timestamp"}`` with an ISO timestamp."""
        moment = datetime.datetime.fromtimestamp(self.timestamp, tz=datetime.UTC)
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%f")
        return {
            "message": self.message,
            "level": self.level,
            "source": self.source,
            "timestamp": stamp,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class JobView:
    """A job as the status and result endpoints see it."""

    request_id: str
    app_id: str
    state: JobState
    queue_position: int | None
    """0-based position among the app's queued jobs (IN_QUEUE only, else None)."""
    logs: tuple[LogLine, ...] | None
    """The job's log lines when asked for (``with_logs=True``), else None."""
    result: Result | None
    """COMPLETED only. Its ``body`` is empty unless asked for (``with_body=True``)."""
    cancel_requested: bool = False
    attempts: int = 0
    owner: str | None = None
    """The submitter's API key id, as `Job.owner` (read in the same store round trip)."""


def may_act(owner: str | None, caller: str | None, *, caller_owns_app: bool) -> bool:
    """Whether ``caller`` (an API key id, None without a key) may see or cancel a job submitted
    by ``owner``: anyone who knows the id of a job submitted without a key, the submitter's key,
    and a key of the app's own namespace (``caller_owns_app``). Everyone else is answered as for
    an id nobody submitted (docs/security.md, "Queued requests, uploads and ids")."""
    return owner is None or owner == caller or caller_owns_app


@dataclasses.dataclass(frozen=True, slots=True)
class AppQueueStats:
    """An app's queue figures, the input of the scaling formula (`kubefal_gateway.scaling`)."""

    app_id: str
    queued: int
    queued_waiting: int
    """Queued jobs submitted at or before the ``waiting_since`` cutoff given to `QueueStore.stats`
    (i.e. older than the app's ``scalingDelay``)."""
    in_progress: int
    oldest_queued_at: float | None
    """Submit time of the oldest queued job, None when the queue is empty."""


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One pending webhook POST in the store's outbox."""

    delivery_id: str
    """Stable across retries (sent as ``X-Kubefal-Webhook-Id`` for receiver deduplication)."""
    request_id: str
    app_id: str
    url: str
    result: Result
    attempts: int = 0
    """Delivery attempts already made."""
    created_at: float = 0.0


class EventKind(enum.StrEnum):
    SUBMITTED = "SUBMITTED"
    """Work became available for ``app_id`` (submit, requeue or expired lease)."""
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    """A client asked to cancel in-progress ``request_id``."""
    COMPLETED = "COMPLETED"
    """``request_id`` completed (result stored)."""
    RESYNC = "RESYNC"
    """Events were dropped (slow consumer or lost pub/sub connection): rescan everything."""


@dataclasses.dataclass(frozen=True, slots=True)
class QueueEvent:
    kind: EventKind
    app_id: str = ""
    request_id: str = ""
    """Empty for SUBMITTED (coalesced per app) and RESYNC."""
    webhook: bool = True
    """COMPLETED only: a webhook delivery may have been queued (False when surely not), so
    the webhook worker sleeps through completions that have nothing for it."""


class QueueError(Exception):
    """The store failed (backend unavailable, corrupt data). The HTTP layer answers 503."""


class DuplicateRequestError(QueueError):
    """A job with this request id already exists."""


class QueueFullError(Exception):
    """The app already has ``max_queued`` queued jobs; the job was not accepted (HTTP 429).

    Not a `QueueError`: the store works, the caller may try again later."""

    def __init__(self, app_id: str, max_queued: int) -> None:
        super().__init__(f"{app_id} already has {max_queued} queued requests")
        self.app_id = app_id
        self.max_queued = max_queued


class EventSubscription:
    """A bounded inbox of `QueueEvent`s; overflow collapses into one RESYNC event."""

    def __init__(
        self,
        hub: EventHub,
        *,
        max_pending: int,
        accept: Callable[[QueueEvent], bool] | None = None,
    ) -> None:
        self._hub = hub
        self._accept = accept
        self._events: collections.deque[QueueEvent] = collections.deque()
        self._max_pending = max_pending
        self._waiter: asyncio.Future[None] | None = None
        self._overflowed = False
        self._closed = False

    def _push(self, event: QueueEvent) -> None:
        if self._closed:
            return
        if (
            self._accept is not None
            and event.kind is not EventKind.RESYNC
            and not self._accept(event)
        ):
            return  # not a wake-up for this consumer: no future, no task, no loop turn
        if not self._overflowed:
            if len(self._events) < self._max_pending:
                self._events.append(event)
            else:
                self._events.clear()
                self._overflowed = True
                self._events.append(QueueEvent(kind=EventKind.RESYNC))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def poll(self) -> QueueEvent | None:
        """The next pending event, or None without waiting."""
        if not self._events:
            return None
        event = self._events.popleft()
        if event.kind is EventKind.RESYNC:
            self._overflowed = False
        return event

    async def next(self, *, timeout: float | None = None) -> QueueEvent | None:
        """Wait for the next event; None when ``timeout`` seconds pass first or when closed."""
        event = self.poll()
        if event is not None or self._closed:
            return event
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
        except TimeoutError:
            return None
        finally:
            self._waiter = None
        return self.poll()

    def close(self) -> None:
        """Stop receiving events; a pending `next` returns None."""
        if self._closed:
            return
        self._closed = True
        self._hub._subscriptions.discard(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> QueueEvent:
        while True:
            event = await self.next()
            if event is not None:
                return event
            if self._closed:
                raise StopAsyncIteration


class EventHub:
    """In-process fan-out of `QueueEvent`s to every open `EventSubscription` (used by backends)."""

    def __init__(self) -> None:
        self._subscriptions: set[EventSubscription] = set()

    def subscribe(
        self,
        *,
        max_pending: int = 10_000,
        accept: Callable[[QueueEvent], bool] | None = None,
    ) -> EventSubscription:
        subscription = EventSubscription(self, max_pending=max_pending, accept=accept)
        self._subscriptions.add(subscription)
        return subscription

    def publish(self, event: QueueEvent) -> None:
        for subscription in self._subscriptions:
            subscription._push(event)

    def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.close()


def start_housekeeping(store: QueueStore, interval: float) -> asyncio.Task[None]:
    """Start the task that runs ``store.expire()`` every ``interval`` seconds (both backends').

    A failed round is logged and the next one runs on time; cancel the task to stop it.
    """

    async def housekeep() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await store.expire()
            except QueueError as error:
                LOG.warning("queue housekeeping failed: %s", error)

    return asyncio.create_task(housekeep(), name="kubefal-queue-housekeeping")


@runtime_checkable
class QueueStore(Protocol):
    """A durable queue of `Job`s plus their results, logs and webhook outbox.

    All methods are coroutines and must be called from the one event loop that opened the store.
    ``now`` arguments default to ``time.time()``; tests pass explicit values.
    """

    result_ttl: float
    """Seconds a completed job (state, result, logs) is kept after completion."""

    async def submit(self, job: Job, *, max_queued: int = 0) -> int:
        """Accept ``job`` (state IN_QUEUE); durable when this returns.

        Returns its 0-based queue position at submission. Raises DuplicateRequestError if the
        request id exists, and QueueFullError if ``max_queued`` > 0 and the app has that many
        queued jobs already (checked atomically with the insert, across gateways).
        """
        ...

    async def view(
        self, request_id: str, *, with_logs: bool = False, with_body: bool = False
    ) -> JobView | None:
        """The job's state for status/result endpoints, or None if unknown or expired."""
        ...

    async def queue_position(self, request_id: str) -> int | None:
        """0-based position among the app's queued jobs, None unless IN_QUEUE."""
        ...

    async def lease(
        self, app_id: str, *, holder: str, lease_seconds: float, now: float | None = None
    ) -> Job | None:
        """Atomically take the app's next job (NORMAL before LOW, FIFO), or None if none queued."""
        ...

    async def renew(
        self, request_id: str, *, holder: str, lease_seconds: float, now: float | None = None
    ) -> LeaseStatus:
        """Extend ``holder``'s lease to ``now + lease_seconds``."""
        ...

    async def note_attempts(self, request_id: str, *, holder: str, attempts: int) -> None:
        """Record that ``attempts`` dispatch attempts of a leased job have ended without a result
        (retries within one dispatch), so a lost lease continues the count instead of restarting
        it. Only raises the count, only for ``holder``; durable with the next commit (like renew).
        """
        ...

    async def complete(
        self, request_id: str, *, holder: str, result: Result, now: float | None = None
    ) -> bool:
        """Store the result and mark COMPLETED, only if ``holder`` still holds the lease.

        Also enqueues the webhook delivery, atomically. False means the result was rejected.
        """
        ...

    async def requeue(
        self, request_id: str, *, holder: str, reason: str, count_attempt: bool = True
    ) -> bool:
        """Give a leased job back to the queue at its original position (for a retry).

        ``attempts`` grows by one unless ``count_attempt`` is False (e.g. no runner took it).
        False if ``holder`` does not hold the lease.
        """
        ...

    async def cancel(self, request_id: str, *, now: float | None = None) -> CancelOutcome:
        """Cancel: queued jobs complete at once as CANCELLED; in-progress ones are flagged."""
        ...

    async def append_logs(self, request_id: str, lines: Sequence[LogLine]) -> None:
        """Add log lines to a job (ignored for unknown jobs)."""
        ...

    async def expire(self, *, now: float | None = None) -> int:
        """Housekeeping, called periodically by every gateway.

        Returns expired leases to the queue (attempts + 1; a job whose attempts reach
        ``max_attempts`` completes with `attempts_exhausted_result`), completes queued jobs past
        their start deadline with `start_timeout_result`, deletes results older than ``result_ttl``.
        Returns the number of jobs changed.
        """
        ...

    async def fail_queued(self, app_id: str, result: Result, *, now: float | None = None) -> int:
        """Complete every queued job of ``app_id`` with ``result`` (their webhooks fire);
        in-progress jobs are left alone. Returns how many were completed."""
        ...

    async def stats(self, app_id: str, *, waiting_since: float) -> AppQueueStats:
        """Queue figures of one app; ``waiting_since`` is ``now - scalingDelay``."""
        ...

    async def apps(self) -> list[str]:
        """Ids of apps that have queued or in-progress jobs."""
        ...

    def subscribe(
        self,
        *,
        max_pending: int = 10_000,
        accept: Callable[[QueueEvent], bool] | None = None,
    ) -> EventSubscription:
        """Subscribe to `QueueEvent`s (from this process and, for Redis, from all gateways).

        With ``accept``, only the events it returns True for are delivered (RESYNC always is):
        a consumer that cares about few events is not woken by the others."""
        ...

    async def ping(self) -> None:
        """Raise QueueError unless the backend answers now (readiness; Redis: within its
        command timeout)."""
        ...

    async def enqueue_webhook(self, delivery: WebhookDelivery, *, now: float | None = None) -> None:
        """Add a delivery to the outbox, due at once (complete() does this by itself)."""
        ...

    async def lease_webhooks(
        self, *, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[WebhookDelivery]:
        """Take up to ``limit`` due deliveries; each is hidden for ``lease_seconds``.

        Atomic across gateways (a delivery is claimed by one at a time), and the claim counts as
        an attempt: the returned ``attempts`` is the count before it, so a caller that acks or
        reschedules (with ``attempts + 1``, or ``attempts`` to put it back untried) sees no
        change, while a delivery whose gateway died mid-POST is claimed next as a new attempt."""
        ...

    async def ack_webhook(self, delivery_id: str) -> None:
        """A delivery succeeded (or was given up): remove it from the outbox."""
        ...

    async def reschedule_webhook(self, delivery_id: str, *, attempts: int, due_at: float) -> None:
        """A delivery failed: record ``attempts`` and retry at ``due_at``."""
        ...

    async def close(self) -> None:
        """Flush pending writes and release the backend."""
        ...


def new_request_id() -> str:
    """A fresh request id (a UUID4 string, as fal's)."""
    return str(uuid.uuid4())


DEFAULT_MAX_ATTEMPTS = 10
"""Dispatches of one job, retries and lost leases together (the gateway's ``--max-attempts``)."""

JSON_CONTENT_TYPE: Headers = (("content-type", "application/json"),)


def error_result(
    *,
    status_code: int,
    detail: str,
    error_type: str,
    outcome: Outcome = Outcome.ERROR,
    headers: Headers = (),
    now: float | None = None,
) -> Result:
    """A failure result whose body is fal's error shape ``{"detail", "error_type"}``."""
    body = orjson.dumps({"detail": detail, "error_type": error_type})
    return Result(
        status_code=status_code,
        headers=JSON_CONTENT_TYPE + headers,
        body=body,
        outcome=outcome,
        error=detail,
        error_type=error_type,
        completed_at=time.time() if now is None else now,
    )


def cancelled_result(*, now: float | None = None) -> Result:
    """The result of a job cancelled by its client (non-2xx, so ``fal_client.result`` raises)."""
    return error_result(
        status_code=400,
        detail="Request was cancelled",
        error_type="request_cancelled",
        outcome=Outcome.CANCELLED,
        now=now,
    )


def attempts_exhausted_result(*, max_attempts: int, now: float | None = None) -> Result:
    """The result of a job whose dispatch was interrupted ``max_attempts`` times (the gateway
    handling it died or lost its lease each time): a 503 error instead of yet another run."""
    return error_result(
        status_code=503,
        detail=(
            f"Request was dispatched {max_attempts} times without completing (the gateway"
            " handling it stopped each time); it will not be run again"
        ),
        error_type="attempts_exhausted",
        now=now,
    )


def app_gone_result(app_id: str, *, grace: float, now: float | None = None) -> Result:
    """The result of a queued job whose app was removed (from discovery or the static config)
    and did not come back within ``grace`` seconds: it will never run."""
    return error_result(
        status_code=404,
        detail=(
            f"App {app_id} was removed and did not come back within {grace:g} s;"
            " the request was not run"
        ),
        error_type="app_not_found",
        now=now,
    )


def start_timeout_result(*, now: float | None = None) -> Result:
    """The result of a job that did not start before its ``X-Fal-Request-Timeout``.

    504 with ``X-Fal-Request-Timeout-Type`` so the client does not retry (docs/fal-compat.md).
    """
    return error_result(
        status_code=504,
        detail="Request timed out before a runner started it",
        error_type="request_timeout",
        outcome=Outcome.TIMEOUT,
        headers=(("x-fal-request-timeout-type", "user"),),
        now=now,
    )

"""Redis queue store: one queue shared by several gateway replicas.

Why it looks like this (docs/design-decisions.md): redis-py issuing one command per round trip costs
~220 µs of gateway CPU per request; the same commands auto-pipelined over one connection cost
~10-16 µs. So every store call queues its command on `redis_connection.AutoPipeline`, which sends
everything issued in one event-loop turn as one write on one dedicated connection.

Each state change is one Lua script (`redis_scripts`), so it is atomic across gateways:
``lease`` pops the head of the app's NORMAL queue (else LOW) and records the lease in one step, so
no job is leased twice at once; ``complete`` checks the lease holder and stores the result in one
step (exactly-once completion); ``expire`` returns expired leases (a crashed gateway's jobs) to
the queue.

Keys (``P`` is ``{prefix}`` in braces, a hash tag keeping one queue in one slot; Redis Cluster is
not supported; use a standalone server, or one with replicas behind Redis Sentinel with a
``redis+sentinel://`` URL, see `RedisQueueStore.open`):

* ``P:seq`` sequence counter; ``P:j:<id>`` job hash (state 0/1/2, app, prio, seq, attempts, holder,
  lease, cancel, sub, dl, wh, meta, body, rmeta, rbody, owner); ``P:logs:<id>`` list of log lines;
* ``P:q:<app>:0`` / ``P:q:<app>:1`` queued ids by sequence (NORMAL / LOW); ``P:qt:<app>`` queued ids
  by submit time (for the scaling delay); ``P:ip:<app>`` in-progress ids; ``P:apps`` app ids;
* ``P:leases`` leased ids by lease expiry; ``P:deadlines`` queued ids by start deadline;
* ``P:wh`` webhook delivery ids by due time; ``P:wh:<id>`` delivery hash;
* channel ``P:events``: ``origin NUL kind NUL app NUL request_id`` messages (SUBMITTED and
  CANCEL_REQUESTED across gateways; COMPLETED stays local unless ``share_completions``).

Completed jobs and their logs get a Redis TTL of ``result_ttl``, so Redis deletes them by itself.
Durability is redis-server's (configure AOF with ``appendfsync everysec`` or ``always``).

Faults (`redis_connection.AutoPipeline`): every connect and every wait for a reply is bounded by the
command timeout (the gateway's ``--redis-timeout``); a stalled or vanished server fails the calls
with QueueError (submits answer 503, nothing is acknowledged before Redis confirmed the write),
`RedisQueueStore.ping` fails so /readyz reports not ready, and reconnects back off.

This module is over 500 lines because it is one class, `RedisQueueStore`, implementing the whole
`queueing.QueueStore` protocol (plus the slot ledger's calls); each method is a thin wrapper that
encodes arguments for one script and decodes its reply. The scripts and the connection live in
`redis_scripts` and `redis_connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio
import redis.exceptions

from kubefal_gateway import queueing
from kubefal_gateway.stores import codec, redis_connection, redis_scripts

LOG = logging.getLogger(__name__)

_STATES = {
    b"0": queueing.JobState.IN_QUEUE,
    b"1": queueing.JobState.IN_PROGRESS,
    b"2": queueing.JobState.COMPLETED,
}

_EXPIRE_BATCH = 1000
_SLOT_FREED = b"SLOT_FREED"


class RedisQueueStore:
    """`queueing.QueueStore` on a Redis server shared by several gateways (module docstring)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        url: str,
        prefix: str,
        result_ttl: float,
        max_logs_per_job: int,
        share_completions: bool,
        max_attempts: int = queueing.DEFAULT_MAX_ATTEMPTS,
        command_timeout: float = redis_connection.DEFAULT_COMMAND_TIMEOUT,
        address: Callable[[], Awaitable[tuple[str, int]]] | None = None,
    ) -> None:
        self.prefix = prefix
        self.max_attempts = max_attempts
        self.result_ttl = result_ttl
        self._client = client
        self._prefix = "{" + prefix + "}"
        self._ttl_ms = max(1, int(result_ttl * 1000))
        self._max_logs_per_job = max_logs_per_job
        self._share_completions = share_completions
        self._command_timeout = command_timeout
        self._pipeline = redis_connection.AutoPipeline(
            url, command_timeout=command_timeout, address=address
        )
        self._shas: dict[str, str] = {}
        self._events = queueing.EventHub()
        self._origin = uuid.uuid4().hex.encode()
        self._channel = (self._prefix + ":events").encode()
        self._outgoing: dict[queueing.QueueEvent, None] = {}
        self._publisher: asyncio.Handle | None = None
        self._listener: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._closed = False
        self.slot_listeners: list[Callable[[str, str], None]] = []
        """Called with (app id, runner id) when another gateway frees a slot of a full runner."""

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        prefix: str = "kubefal",
        result_ttl: float = 3600.0,
        max_logs_per_job: int = 1000,
        housekeeping_interval: float | None = 1.0,
        share_completions: bool = False,
        max_attempts: int = queueing.DEFAULT_MAX_ATTEMPTS,
        command_timeout: float = redis_connection.DEFAULT_COMMAND_TIMEOUT,
    ) -> RedisQueueStore:
        """Connect to ``url``, load the scripts, start listening.

        ``url`` is ``redis://[user:pass@]host:port/db`` (or ``rediss://``, ``unix://``), or
        ``redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db]`` to find the master
        of ``service`` through those Sentinels (asked again at every reconnect, so a failover is
        followed; the credentials are the master's, ``?sentinel_password=`` the Sentinels').
        ``command_timeout`` bounds connecting and each wait for a reply (see
        `redis_connection.AutoPipeline`).
        """
        address: Callable[[], Awaitable[tuple[str, int]]] | None = None
        client: redis.asyncio.Redis
        # redis-py serves the event subscription only (a blocking read, so no read timeout).
        if url.startswith(redis_connection.SENTINEL_SCHEME + "://"):
            sentinel, service, url = redis_connection.sentinel_from_url(url, command_timeout)
            client = sentinel.master_for(
                service,
                decode_responses=False,
                socket_connect_timeout=command_timeout,
                socket_keepalive=True,
            )

            async def address() -> tuple[str, int]:
                host, port = await sentinel.discover_master(service)
                return str(host), int(port)

        else:
            client = redis.asyncio.Redis.from_url(
                url,
                decode_responses=False,
                socket_connect_timeout=command_timeout,
                socket_keepalive=True,
            )
        store = cls(
            client,
            address=address,
            url=url,
            prefix=prefix,
            result_ttl=result_ttl,
            max_logs_per_job=max_logs_per_job,
            share_completions=share_completions,
            max_attempts=max_attempts,
            command_timeout=command_timeout,
        )
        try:
            await store._load_scripts()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            await pubsub.subscribe(store._channel)
        except (redis.exceptions.RedisError, OSError, queueing.QueueError) as error:
            await store._pipeline.close()
            await client.aclose()
            raise queueing.QueueError(f"cannot open the Redis queue store: {error}") from error
        store._listener = asyncio.create_task(store._listen(pubsub), name="kubefal-queue-events")
        if housekeeping_interval is not None:
            store._housekeeping = queueing.start_housekeeping(store, housekeeping_interval)
        return store

    async def _load_scripts(self) -> None:
        bodies = redis_scripts.bodies()
        replies = [self._pipeline.call("SCRIPT", "LOAD", body) for body in bodies.values()]
        for name, reply in zip(bodies, replies, strict=True):
            sha = await reply
            self._shas[name] = sha if isinstance(sha, str) else sha.decode()

    async def ping(self) -> None:
        """Raise QueueError unless Redis answers a PING within the command timeout."""
        if self._closed:
            raise queueing.QueueError("the queue store is closed")
        try:
            async with asyncio.timeout(self._command_timeout):
                await self._pipeline.call("PING")
        except TimeoutError:
            raise queueing.QueueError("redis did not answer PING in time") from None
        except redis.exceptions.ResponseError as error:
            raise queueing.QueueError(f"redis PING failed: {error}") from error

    async def _script(self, name: str, *args: Any) -> Any:
        """Run a script through the auto-pipeline (reloading the scripts after a Redis restart)."""
        if self._closed:
            raise queueing.QueueError("the queue store is closed")
        try:
            return await self._pipeline.call("EVALSHA", self._shas[name], 0, self._prefix, *args)
        except redis.exceptions.NoScriptError:
            try:
                await self._load_scripts()
            except redis.exceptions.RedisError as error:
                raise queueing.QueueError(f"redis unavailable: {error}") from error
            return await self._pipeline.call("EVALSHA", self._shas[name], 0, self._prefix, *args)
        except redis.exceptions.ResponseError as error:
            raise queueing.QueueError(f"redis script {name} failed: {error}") from error

    # ------------------------------------------------------------------ events

    def _emit(self, event: queueing.QueueEvent, *, share: bool = True) -> None:
        """Deliver ``event`` to local subscribers now and to other gateways this loop turn."""
        self._events.publish(event)
        if not share:
            return
        self._outgoing[event] = None
        if self._publisher is None:
            self._publisher = asyncio.get_running_loop().call_soon(self._publish_outgoing)

    def _publish_outgoing(self) -> None:
        self._publisher = None
        events, self._outgoing = self._outgoing, {}
        if self._closed:
            return
        for event in events:
            message = b"\0".join(
                (
                    self._origin,
                    event.kind.value.encode(),
                    event.app_id.encode(),
                    event.request_id.encode(),
                )
            )
            self._pipeline.call("PUBLISH", self._channel, message).add_done_callback(_ignore)

    async def _listen(self, pubsub: redis.asyncio.client.PubSub) -> None:
        """Relay other gateways' events; on a lost connection resubscribe and send RESYNC."""
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                close_pubsub: Callable[[], Awaitable[None]] = pubsub.aclose
                with contextlib.suppress(Exception):
                    await close_pubsub()
                raise
            except (redis.exceptions.RedisError, OSError) as error:
                LOG.warning("queue event subscription lost (%s); resubscribing", error)
                self._events.publish(queueing.QueueEvent(kind=queueing.EventKind.RESYNC))
                await asyncio.sleep(0.5)
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    await pubsub.subscribe(self._channel)
                continue
            if message is None or message.get("type") != "message":
                continue
            parts = message["data"].split(b"\0")
            if len(parts) != 4 or parts[0] == self._origin:
                continue
            if parts[1] == _SLOT_FREED:
                for listener in self.slot_listeners:
                    listener(parts[2].decode(), parts[3].decode())
                continue
            try:
                kind = queueing.EventKind(parts[1].decode())
            except ValueError:
                continue
            self._events.publish(
                queueing.QueueEvent(
                    kind=kind, app_id=parts[2].decode(), request_id=parts[3].decode()
                )
            )

    def subscribe(
        self,
        *,
        max_pending: int = 10_000,
        accept: Callable[[queueing.QueueEvent], bool] | None = None,
    ) -> queueing.EventSubscription:
        return self._events.subscribe(max_pending=max_pending, accept=accept)

    # ------------------------------------------------------------------ jobs

    async def submit(self, job: queueing.Job, *, max_queued: int = 0) -> int:
        position: int = await self._script(
            "submit",
            job.request_id,
            job.app_id,
            int(job.priority),
            repr(job.submitted_at),
            "" if job.start_deadline is None else repr(job.start_deadline),
            job.webhook_url or "",
            job.attempts,
            codec.encode_job_meta(job),
            job.body,
            max_queued,
            job.owner or "",
        )
        if position == -2:
            raise queueing.QueueFullError(job.app_id, max_queued)
        if position < 0:
            raise queueing.DuplicateRequestError(job.request_id)
        self._emit(queueing.QueueEvent(kind=queueing.EventKind.SUBMITTED, app_id=job.app_id))
        return position

    async def view(
        self, request_id: str, *, with_logs: bool = False, with_body: bool = False
    ) -> queueing.JobView | None:
        reply = self._script("view", request_id, 1 if with_body else 0)
        logs = (
            self._pipeline.call("LRANGE", self._logs_key(request_id), 0, -1) if with_logs else None
        )
        try:
            fields = await reply
            lines = None if logs is None else await logs
        except redis.exceptions.ResponseError as error:
            raise queueing.QueueError(f"redis LRANGE failed: {error}") from error
        if fields is None:
            return None
        state_raw, app_raw, attempts, cancel, position, result_meta, result_body, owner = fields
        state = _STATES[state_raw]
        result = None
        if state is queueing.JobState.COMPLETED:
            result = codec.decode_result(result_meta, result_body)
        return queueing.JobView(
            request_id=request_id,
            app_id=app_raw.decode(),
            state=state,
            queue_position=position if position >= 0 else None,
            logs=None if lines is None else tuple(codec.decode_log_line(line) for line in lines),
            result=result,
            cancel_requested=cancel == b"1",
            attempts=int(attempts),
            owner=owner.decode() or None,
        )

    def _logs_key(self, request_id: str) -> str:
        return f"{self._prefix}:logs:{request_id}"

    async def queue_position(self, request_id: str) -> int | None:
        view = await self.view(request_id)
        return None if view is None else view.queue_position

    async def lease(
        self,
        app_id: str,
        *,
        holder: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> queueing.Job | None:
        now = time.time() if now is None else now
        while True:
            reply = await self._script("lease", app_id, holder, repr(now + lease_seconds))
            if reply is None:
                return None
            request_id_raw, meta, body, attempts = reply
            request_id = request_id_raw.decode()
            job = codec.decode_job(request_id, meta, body or b"", int(attempts))
            if job.missed_start(now):
                await self.complete(
                    request_id,
                    holder=holder,
                    result=queueing.start_timeout_result(now=now),
                    now=now,
                )
                continue
            return job

    async def renew(
        self,
        request_id: str,
        *,
        holder: str,
        lease_seconds: float,
        now: float | None = None,
    ) -> queueing.LeaseStatus:
        now = time.time() if now is None else now
        status = await self._script("renew", request_id, holder, repr(now + lease_seconds))
        if status == 2:
            return queueing.LeaseStatus.CANCEL_REQUESTED
        return queueing.LeaseStatus.HELD if status == 1 else queueing.LeaseStatus.LOST

    async def note_attempts(self, request_id: str, *, holder: str, attempts: int) -> None:
        await self._script("note_attempts", request_id, holder, attempts)

    async def complete(
        self,
        request_id: str,
        *,
        holder: str,
        result: queueing.Result,
        now: float | None = None,
    ) -> bool:
        now = time.time() if now is None else now
        app_id = await self._script(
            "complete",
            request_id,
            holder,
            codec.encode_result_meta(result),
            result.body,
            repr(now),
            self._ttl_ms,
        )
        if app_id is None:
            return False
        self._emit_completed(app_id.decode(), request_id)
        return True

    def _emit_completed(self, app_id: str, request_id: str) -> None:
        self._emit(
            queueing.QueueEvent(
                kind=queueing.EventKind.COMPLETED, app_id=app_id, request_id=request_id
            ),
            share=self._share_completions,
        )

    async def requeue(
        self,
        request_id: str,
        *,
        holder: str,
        reason: str,
        count_attempt: bool = True,
    ) -> bool:
        app_id = await self._script("requeue", request_id, holder, 1 if count_attempt else 0)
        if app_id is None:
            return False
        LOG.debug("requeued %s (%s)", request_id, reason)
        self._emit(queueing.QueueEvent(kind=queueing.EventKind.SUBMITTED, app_id=app_id.decode()))
        return True

    async def cancel(self, request_id: str, *, now: float | None = None) -> queueing.CancelOutcome:
        now = time.time() if now is None else now
        result = queueing.cancelled_result(now=now)
        outcome_raw, app_raw = await self._script(
            "cancel",
            request_id,
            codec.encode_result_meta(result),
            result.body,
            repr(now),
            self._ttl_ms,
        )
        outcome = queueing.CancelOutcome(outcome_raw.decode())
        if outcome is queueing.CancelOutcome.OK:
            self._emit_completed(app_raw.decode(), request_id)
        elif outcome is queueing.CancelOutcome.CANCELLATION_REQUESTED:
            self._emit(
                queueing.QueueEvent(
                    kind=queueing.EventKind.CANCEL_REQUESTED,
                    app_id=app_raw.decode(),
                    request_id=request_id,
                )
            )
        return outcome

    async def append_logs(self, request_id: str, lines: Sequence[queueing.LogLine]) -> None:
        if not lines:
            return
        await self._script(
            "logs",
            request_id,
            self._max_logs_per_job,
            *(codec.encode_log_line(line) for line in lines),
        )

    async def expire(self, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        timeout = queueing.start_timeout_result(now=now)
        exhausted = queueing.attempts_exhausted_result(max_attempts=self.max_attempts, now=now)
        leases = self._script(
            "expire_leases",
            repr(now),
            _EXPIRE_BATCH,
            self.max_attempts,
            codec.encode_result_meta(exhausted),
            exhausted.body,
            self._ttl_ms,
        )
        deadlines = self._script(
            "expire_deadlines",
            repr(now),
            _EXPIRE_BATCH,
            codec.encode_result_meta(timeout),
            timeout.body,
            self._ttl_ms,
        )
        expired: list[Any] = await leases
        timed_out: list[bytes] = await deadlines
        requeued_apps: dict[str, None] = {}
        for index in range(0, len(expired), 3):
            requeued, request_id, app_id = expired[index : index + 3]
            if requeued:
                requeued_apps[app_id.decode()] = None
            else:
                LOG.warning("job %s used up its attempts", request_id.decode())
                self._emit_completed(app_id.decode(), request_id.decode())
        for app_id in requeued_apps:
            self._emit(queueing.QueueEvent(kind=queueing.EventKind.SUBMITTED, app_id=app_id))
        for index in range(0, len(timed_out), 2):
            self._emit_completed(timed_out[index + 1].decode(), timed_out[index].decode())
        return len(expired) // 3 + len(timed_out) // 2

    async def fail_queued(
        self, app_id: str, result: queueing.Result, *, now: float | None = None
    ) -> int:
        now = time.time() if now is None else now
        meta = codec.encode_result_meta(result)
        total = 0
        while True:
            done: list[bytes] = await self._script(
                "fail_queued", app_id, _EXPIRE_BATCH, meta, result.body, repr(now), self._ttl_ms
            )
            for request_id in done:
                self._emit_completed(app_id, request_id.decode())
            total += len(done)
            if len(done) < _EXPIRE_BATCH:
                return total

    async def stats(self, app_id: str, *, waiting_since: float) -> queueing.AppQueueStats:
        queued, waiting, in_progress, oldest = await self._script(
            "stats", app_id, repr(waiting_since)
        )
        return queueing.AppQueueStats(
            app_id=app_id,
            queued=queued,
            queued_waiting=waiting,
            in_progress=in_progress,
            oldest_queued_at=float(oldest) if oldest else None,
        )

    async def apps(self) -> list[str]:
        active: list[bytes] = await self._script("apps")
        return sorted(app_id.decode() for app_id in active)

    # ------------------------------------------------------------------ webhook outbox

    async def enqueue_webhook(
        self, delivery: queueing.WebhookDelivery, *, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        await self._script(
            "enqueue_webhook",
            delivery.delivery_id,
            delivery.request_id,
            delivery.app_id,
            delivery.url,
            codec.encode_result_meta(delivery.result),
            delivery.result.body,
            delivery.attempts,
            repr(now),
            repr(delivery.created_at or now),
        )

    async def lease_webhooks(
        self, *, limit: int, lease_seconds: float, now: float | None = None
    ) -> list[queueing.WebhookDelivery]:
        now = time.time() if now is None else now
        flat = await self._script("lease_webhooks", repr(now), limit, repr(now + lease_seconds))
        deliveries = []
        for index in range(0, len(flat), 8):
            delivery_id, request_id, app_id, url, rmeta, rbody, attempts, created = flat[
                index : index + 8
            ]
            deliveries.append(
                queueing.WebhookDelivery(
                    delivery_id=delivery_id.decode(),
                    request_id=request_id.decode(),
                    app_id=app_id.decode(),
                    url=url.decode(),
                    result=codec.decode_result(rmeta, rbody),
                    attempts=int(attempts),
                    created_at=float(created),
                )
            )
        return deliveries

    async def ack_webhook(self, delivery_id: str) -> None:
        await self._script("ack_webhook", delivery_id)

    async def reschedule_webhook(self, delivery_id: str, *, attempts: int, due_at: float) -> None:
        await self._script("reschedule_webhook", delivery_id, attempts, repr(due_at))

    # ------------------------------------------------------------------ shared runner slots

    async def claim_slot(
        self, runner_id: str, *, holder: str, limit: int, ttl: float
    ) -> tuple[bool, int]:
        """Take one of ``limit`` slots of a runner for ``holder`` unless all gateways together
        hold them already (atomic). Returns (claimed, slots the other live gateways hold)."""
        claimed, elsewhere = await self._script(
            "claim_slot", runner_id, holder, limit, max(1, int(ttl * 1000))
        )
        return bool(claimed), int(elsewhere)

    def release_slot(self, runner_id: str, app_id: str, *, holder: str, limit: int) -> None:
        """Give a slot back (fire and forget: a lost release is repaired by the heartbeat)."""
        if self._closed:
            return
        message = b"\0".join((self._origin, _SLOT_FREED, app_id.encode(), runner_id.encode()))
        self._pipeline.call(
            "EVALSHA",
            self._shas["release_slot"],
            0,
            self._prefix,
            runner_id,
            holder,
            limit,
            self._channel,
            message,
        ).add_done_callback(_ignore)

    async def slot_heartbeat(
        self,
        *,
        holder: str,
        ttl: float,
        runner_slots: Sequence[tuple[str, int]],
        app_sync: Sequence[tuple[str, int]],
    ) -> tuple[list[int], list[int]]:
        """Keep ``holder`` alive for ``ttl`` s and set its own counts (slots per runner, sync
        requests per app); returns what the other live gateways hold, in the same order."""
        arguments: list[Any] = [len(runner_slots)]
        for runner_id, count in runner_slots:
            arguments += [runner_id, count]
        arguments.append(len(app_sync))
        for app_id, count in app_sync:
            arguments += [app_id, count]
        totals: list[int] = await self._script(
            "slot_heartbeat", holder, max(1, int(ttl * 1000)), *arguments
        )
        return totals[: len(runner_slots)], totals[len(runner_slots) :]

    # ------------------------------------------------------------------ lifecycle

    async def flush_key_space(self) -> None:
        """Delete every key of this store's prefix (tests and `kubefal` dev tooling only)."""
        keys = [key async for key in self._client.scan_iter(match=f"{self._prefix}:*")]
        if keys:
            await self._client.delete(*keys)

    async def close(self) -> None:
        if self._closed:
            return
        if self._publisher is not None:
            self._publisher.cancel()
            self._publish_outgoing()
        self._closed = True
        for task in (self._housekeeping, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._pipeline.close()
        self._events.close()
        await self._client.aclose()


def _ignore(reply: asyncio.Future[Any]) -> None:
    """Consume a fire-and-forget reply (event publication is best effort)."""
    if not reply.cancelled():
        reply.exception()

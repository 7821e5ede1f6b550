"""Webhook delivery: at-least-once, signed POSTs of finished requests to their ``fal_webhook`` URL.

Why it exists: a client that submitted with ``?fal_webhook=URL`` wants to be told when the
request is done instead of polling. Completing such a job puts a `queueing.WebhookDelivery` in the
store's outbox in the same transaction as the result (so a gateway crash cannot lose it); this
worker leases due deliveries from the outbox (a lease hides a delivery from other gateways while
it is being tried), POSTs them, and acks them on a 2xx or reschedules them with exponential
backoff and jitter. A delivery is given up after ``max_attempts``. Delivery is at-least-once: a
receiver may see the same delivery twice (a crash between the POST and the ack, a timeout after the
receiver processed it) and must deduplicate on ``X-Kubefal-Webhook-Id``.

Body (fal's documented webhook body, so receivers written for fal work unchanged)::

    {"request_id": "<id>", "gateway_request_id": "<id>", "status": "OK" | "ERROR",
     "payload": <the result JSON, or null>, "error": null | "<message>"}

* ``status`` is ``OK`` for a successful result with a 2xx status, else ``ERROR`` (failed,
  cancelled or timed-out requests), and ``error`` then holds the message (fal's wording
  ``Invalid status code: <code>`` when the runner gave none).
* ``payload`` is the result body parsed as JSON (for errors: ``{"detail": ..., ...}``). A body that
  is not JSON gives ``payload: null`` plus ``payload_error`` saying why, as fal does.
* ``gateway_request_id`` equals ``request_id``: kubefal retries a request under its own id.

Headers: ``Content-Type: application/json``, ``User-Agent: kubefal-webhooks/1``,
``X-Kubefal-Request-Id`` (the request id), ``X-Kubefal-Webhook-Id`` (stable across retries of one
delivery), ``X-Kubefal-Webhook-Attempt`` (1, 2, ...), and, when a signing secret is configured,
``X-Kubefal-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is
``HMAC-SHA256(secret, f"{t}.".encode() + body)`` over the exact body bytes. A receiver recomputes
it with `verify_signature` (copy it: it needs only the standard library), compares in constant
time, and rejects timestamps more than a tolerance (default 300 s) away from its clock, which
bounds replays. Several ``v1=`` entries may appear during a secret rotation; any match is valid.

Schedule: an attempt (DNS, connect, send, the answer's status) times out after
``--webhook-timeout`` (10 s); attempt ``n`` failing (transport error, timeout or non-2xx)
retries after ``min(max_delay, base_delay * 2**(n-1))`` seconds times a random factor in
[0.5, 1.5); the defaults (``--webhook-base-delay`` 15 s, ``--webhook-max-delay`` 30 min,
``--webhook-max-attempts`` 10) spread the attempts over about two hours, as fal does.

Targets: webhook_targets.py decides where a webhook may go (no loopback, link-local, private or
cluster addresses unless ``--webhook-allow`` admits them); the worker resolves the host once,
connects to the checked address and follows no redirects. A refused target is given up at once.

Fairness: per tenant (app namespace) concurrency and queue caps, see `WebhookWorker`. The HTTP
client is httpx: webhooks are off the request hot path; the answer's body is never read.

This module is over 500 lines because the outbox worker is one state machine (claim, deliver,
back off, give up) with its per-tenant fairness and its signing; the target checks that can
stand alone are already in ``webhook_targets``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson

from kubefal_gateway import queueing, settings, webhook_targets

LOG = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Kubefal-Signature"
REQUEST_ID_HEADER = "X-Kubefal-Request-Id"
WEBHOOK_ID_HEADER = "X-Kubefal-Webhook-Id"
ATTEMPT_HEADER = "X-Kubefal-Webhook-Attempt"
USER_AGENT = "kubefal-webhooks/1"


def _may_have_webhook(event: queueing.QueueEvent) -> bool:
    return event.kind is queueing.EventKind.COMPLETED and event.webhook


class DeliveryOutcome:
    """Labels passed to ``on_outcome`` (e.g. a Prometheus counter)."""

    DELIVERED = "delivered"
    RETRY = "retry"
    GAVE_UP = "gave_up"
    REFUSED = "refused"
    """The URL or every address it resolved to is refused by the target policy (given up)."""


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    signing_secret: bytes | None = None
    """HMAC key; None sends unsigned webhooks."""
    timeout: float = 10.0
    """Seconds one attempt may take in total: DNS, connect, send, the answer's status."""
    max_attempts: int = 10
    base_delay: float = 15.0
    max_delay: float = 1800.0
    concurrency: int = 64
    """Deliveries in flight at once per gateway, all tenants together."""
    tenant_concurrency: int = 4
    """Deliveries in flight at once per tenant (the namespace of the request's app)."""
    tenant_queue: int = 32
    """Leased deliveries a tenant may have waiting for one of its slots; more are put back."""
    lease_seconds: float | None = None
    """How long a leased delivery stays hidden from other gateways; None: long enough for a
    full tenant queue to drain at ``timeout`` per attempt."""
    poll_interval: float = 1.0
    """How often the outbox is checked when nothing wakes the worker."""
    allow: tuple[str, ...] = ()
    """CIDRs and host names admitted despite the target policy (``--webhook-allow``)."""
    deny: tuple[str, ...] = ()
    """Extra CIDRs refused (``--webhook-deny``)."""

    @property
    def lease(self) -> float:
        if self.lease_seconds is not None:
            return self.lease_seconds
        waves = 2 + self.tenant_queue / max(1, self.tenant_concurrency)
        return self.timeout * waves + 10.0


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def settings_from(config: settings.Settings) -> WebhookSettings:
    """The worker's settings from the gateway's flags."""
    return WebhookSettings(
        signing_secret=config.webhook_secret.encode() if config.webhook_secret else None,
        timeout=config.webhook_timeout,
        max_attempts=config.webhook_max_attempts,
        base_delay=config.webhook_base_delay,
        max_delay=config.webhook_max_delay,
        concurrency=config.webhook_concurrency,
        tenant_concurrency=config.webhook_tenant_concurrency,
        tenant_queue=config.webhook_tenant_queue,
        allow=_split(config.webhook_allow),
        deny=_split(config.webhook_deny),
    )


def webhook_body(delivery: queueing.WebhookDelivery) -> bytes:
    """fal's webhook body for a finished request (see the module docstring)."""
    result = delivery.result
    succeeded = result.outcome is queueing.Outcome.OK and 200 <= result.status_code < 300
    document: dict[str, Any] = {
        "request_id": delivery.request_id,
        "gateway_request_id": delivery.request_id,
        "status": "OK" if succeeded else "ERROR",
        "payload": None,
        "error": None
        if succeeded
        else (result.error or f"Invalid status code: {result.status_code}"),
    }
    if result.body:
        try:
            document["payload"] = orjson.loads(result.body)
        except orjson.JSONDecodeError as error:
            document["payload_error"] = f"Response payload is not valid JSON: {error}"
    return orjson.dumps(document)


def sign(secret: bytes, body: bytes, *, timestamp: int) -> str:
    """The ``X-Kubefal-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_signature(
    secret: bytes, header: str, body: bytes, tolerance: float = 300.0, now: float | None = None
) -> bool:
    """Receiver side: True if ``header`` (X-Kubefal-Signature) signs ``body`` with ``secret``.

    Standard library only, so receivers can copy it. Rejects malformed headers and timestamps
    more than ``tolerance`` seconds away from ``now`` (replay protection).
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def retry_delay(
    attempts: int, *, base_delay: float, max_delay: float, jitter: Callable[[], float]
) -> float:
    """Seconds before the next try after ``attempts`` failed ones: capped exponential times jitter.

    ``jitter`` returns a factor (``random.uniform(0.5, 1.5)`` by default in the worker).
    """
    exponent = max(0, attempts - 1)
    backoff = max_delay if exponent >= 64 else min(max_delay, base_delay * 2.0**exponent)
    return backoff * jitter()


def tenant_of(delivery: queueing.WebhookDelivery) -> str:
    """The tenant a delivery counts against: its app's namespace."""
    return delivery.app_id.partition("/")[0]


@dataclasses.dataclass
class _Tenant:
    in_flight: int = 0
    waiting: collections.deque[queueing.WebhookDelivery] = dataclasses.field(
        default_factory=collections.deque
    )
    seconds_per_attempt: float = 0.0
    """Moving average of this tenant's attempt durations (how fast its slots free up)."""


class WebhookWorker:
    """Delivers the store's webhook outbox; one per gateway process (several may share a store).

    Fairness: each tenant (an app's namespace) has at most ``tenant_concurrency`` attempts in
    flight and ``tenant_queue`` leased deliveries waiting for its slots; a leased delivery
    beyond that goes back to the outbox, due again once the tenant's queue has likely drained
    (estimated from its recent attempt durations, at least a second). Deliveries are leased in
    due order, so the put-back ones fall behind other tenants' due deliveries: a receiver that
    never answers holds only its own tenant's slots, each for at most ``timeout``.
    """

    def __init__(
        self,
        store: queueing.QueueStore,
        *,
        settings: WebhookSettings,
        client: httpx.AsyncClient | None = None,
        on_outcome: Callable[[str], None] | None = None,
        on_store_error: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] | None = None,
        resolver: webhook_targets.Resolver = webhook_targets.system_resolver,
    ) -> None:
        self._store = store
        self._settings = settings
        self._policy = webhook_targets.TargetPolicy(
            allow=settings.allow, deny=settings.deny, resolver=resolver
        )
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=settings.timeout, follow_redirects=False, trust_env=False
        )
        self._on_outcome = on_outcome
        self._on_store_error = on_store_error
        self._clock = clock
        self._jitter = jitter or (lambda: random.uniform(0.5, 1.5))
        self._in_flight: set[asyncio.Task[None]] = set()
        self._tenants: dict[str, _Tenant] = {}
        self._waiting = 0
        self._events: queueing.EventSubscription | None = None
        self._slot_freed = asyncio.Event()

    async def run(self) -> None:
        """Deliver forever: whenever a request completes or a slot frees, and every
        ``poll_interval``."""
        # Only completions that may have queued a delivery wake this loop (RESYNC always does);
        # submits and webhook-less completions, two per job, are dropped at the source.
        self._events = self._store.subscribe(max_pending=100, accept=_may_have_webhook)
        try:
            while True:
                try:
                    await self.deliver_due()
                except queueing.QueueError as error:
                    self._store_error()
                    LOG.warning("webhook outbox unavailable: %s", error)
                await self._wait_for_work(self._events)
        finally:
            self._events.close()

    async def _wait_for_work(self, events: queueing.EventSubscription) -> None:
        """Until a completion may have queued a delivery, a slot frees, a resync, or the poll
        interval."""
        deadline = time.monotonic() + self._settings.poll_interval
        self._slot_freed.clear()
        freed = asyncio.ensure_future(self._slot_freed.wait())
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                event_wait = asyncio.ensure_future(events.next(timeout=remaining))
                done, _ = await asyncio.wait(
                    {event_wait, freed}, return_when=asyncio.FIRST_COMPLETED
                )
                if freed in done:
                    event_wait.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await event_wait
                    return
                event = event_wait.result()
                if event is None or event.kind is queueing.EventKind.RESYNC:
                    return
                if event.kind is queueing.EventKind.COMPLETED and event.webhook:
                    return
        finally:
            freed.cancel()

    def _tenant(self, name: str) -> _Tenant:
        tenant = self._tenants.get(name)
        if tenant is None:
            tenant = self._tenants[name] = _Tenant()
        return tenant

    async def deliver_due(self) -> int:
        """Lease the deliveries due now and start or queue them per tenant; put back those over
        their tenant's queue. Returns how many were kept (started or queued)."""
        kept = 0
        settings = self._settings
        for _round in range(8):
            free = settings.concurrency - len(self._in_flight) - self._waiting
            if free <= 0:
                break
            now = self._clock()
            deliveries = await self._store.lease_webhooks(
                limit=free, lease_seconds=settings.lease, now=now
            )
            if not deliveries:
                break
            put_back: list[tuple[queueing.WebhookDelivery, float]] = []
            for delivery in deliveries:
                tenant = self._tenant(tenant_of(delivery))
                held = tenant.in_flight + len(tenant.waiting)
                if held >= settings.tenant_concurrency + settings.tenant_queue:
                    put_back.append((delivery, now + self._put_back_delay(tenant)))
                    continue
                tenant.waiting.append(delivery)
                self._waiting += 1
                kept += 1
            self._start_waiting()
            if put_back:
                await asyncio.gather(
                    *(
                        self._store.reschedule_webhook(
                            delivery.delivery_id, attempts=delivery.attempts, due_at=due_at
                        )
                        for delivery, due_at in put_back
                    )
                )
            if len(deliveries) < free:
                break
        return kept

    def _put_back_delay(self, tenant: _Tenant) -> float:
        queued = len(tenant.waiting) + tenant.in_flight
        estimate = queued / max(1, self._settings.tenant_concurrency) * tenant.seconds_per_attempt
        return min(max(1.0, estimate), self._settings.lease)

    def _start_waiting(self) -> None:
        """Start waiting deliveries while their tenants and the gateway have free slots."""
        settings = self._settings
        for name, tenant in list(self._tenants.items()):
            while (
                tenant.waiting
                and tenant.in_flight < settings.tenant_concurrency
                and len(self._in_flight) < settings.concurrency
            ):
                delivery = tenant.waiting.popleft()
                self._waiting -= 1
                tenant.in_flight += 1
                task = asyncio.create_task(self._deliver(delivery, name))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            if not tenant.waiting and not tenant.in_flight and len(self._tenants) > 1024:
                del self._tenants[name]

    async def drain(self) -> None:
        """Wait for the deliveries in flight and those waiting for a slot."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _deliver(self, delivery: queueing.WebhookDelivery, tenant_name: str) -> None:
        started = time.monotonic()
        try:
            await self._attempt(delivery)
        except queueing.QueueError as error:
            self._store_error()
            # The lease runs out and the delivery is tried again: at-least-once holds.
            LOG.warning("webhook outbox update for %s failed: %s", delivery.request_id, error)
        finally:
            tenant = self._tenant(tenant_name)
            tenant.in_flight -= 1
            elapsed = time.monotonic() - started
            tenant.seconds_per_attempt = (
                elapsed
                if tenant.seconds_per_attempt == 0.0
                else 0.7 * tenant.seconds_per_attempt + 0.3 * elapsed
            )
            self._start_waiting()
            self._slot_freed.set()

    async def _attempt(self, delivery: queueing.WebhookDelivery) -> None:
        attempt = delivery.attempts + 1
        try:
            failure = await self._post(delivery, attempt=attempt)
        except webhook_targets.InvalidTarget as refused:
            LOG.warning(
                "webhook for %s not delivered: its target is refused (%s)",
                delivery.request_id,
                refused,
            )
            await self._store.ack_webhook(delivery.delivery_id)
            self._report(DeliveryOutcome.REFUSED)
            return
        if failure is None:
            await self._store.ack_webhook(delivery.delivery_id)
            self._report(DeliveryOutcome.DELIVERED)
            return
        if attempt >= self._settings.max_attempts:
            LOG.warning(
                "webhook for %s to %s given up after %d attempts: %s",
                delivery.request_id,
                delivery.url,
                attempt,
                failure,
            )
            await self._store.ack_webhook(delivery.delivery_id)
            self._report(DeliveryOutcome.GAVE_UP)
            return
        delay = retry_delay(
            attempt,
            base_delay=self._settings.base_delay,
            max_delay=self._settings.max_delay,
            jitter=self._jitter,
        )
        LOG.info(
            "webhook for %s failed (%s), attempt %d, retrying in %.1fs",
            delivery.request_id,
            failure,
            attempt,
            delay,
        )
        await self._store.reschedule_webhook(
            delivery.delivery_id, attempts=attempt, due_at=self._clock() + delay
        )
        self._report(DeliveryOutcome.RETRY)

    async def _post(self, delivery: queueing.WebhookDelivery, *, attempt: int) -> str | None:
        """POST once to the checked address; None on success, else why it failed. Raises
        `webhook_targets.InvalidTarget` when the policy refuses the target."""
        target = self._policy.parse(delivery.url)
        body = webhook_body(delivery)
        headers = dict(self.headers(delivery, body=body, attempt=attempt))
        headers["Host"] = target.host_header
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            async with asyncio.timeout(self._settings.timeout):
                address = await self._policy.resolve(target)
                async with self._client.stream(
                    "POST",
                    target.url_for(address),
                    content=body,
                    headers=headers,
                    extensions=extensions,
                ) as response:
                    # The answer's body is never read: only its status counts.
                    status = response.status_code
        except TimeoutError:
            return f"no answer within {self._settings.timeout} s"
        except (httpx.HTTPError, OSError) as error:
            return f"{type(error).__name__}: {error}"
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"

    def headers(
        self, delivery: queueing.WebhookDelivery, *, body: bytes, attempt: int
    ) -> Mapping[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            REQUEST_ID_HEADER: delivery.request_id,
            WEBHOOK_ID_HEADER: delivery.delivery_id,
            ATTEMPT_HEADER: str(attempt),
        }
        if self._settings.signing_secret is not None:
            headers[SIGNATURE_HEADER] = sign(
                self._settings.signing_secret, body, timestamp=int(self._clock())
            )
        return headers

    def held(self, state: str) -> int:
        """Deliveries this worker holds in ``state``: ``waiting`` (leased, waiting for a slot
        of their tenant) or ``in_flight`` (being attempted); the gateway's gauges read it."""
        return self._waiting if state == "waiting" else len(self._in_flight)

    def _store_error(self) -> None:
        if self._on_store_error is not None:
            self._on_store_error()

    def _report(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    async def close(self) -> None:
        """Let deliveries in flight finish (their leases expire otherwise), give the waiting
        ones back to the outbox, then close."""
        with contextlib.suppress(Exception):
            await self.drain()
        waiting = [delivery for tenant in self._tenants.values() for delivery in tenant.waiting]
        for tenant in self._tenants.values():
            tenant.waiting.clear()
        self._waiting = 0
        with contextlib.suppress(Exception):
            await asyncio.gather(
                *(
                    self._store.reschedule_webhook(
                        delivery.delivery_id, attempts=delivery.attempts, due_at=self._clock()
                    )
                    for delivery in waiting
                )
            )
        if self._owns_client:
            await self._client.aclose()

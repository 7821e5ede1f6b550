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

Schedule: a POST times out after 15 s; attempt ``n`` failing (transport error or non-2xx) retries
after ``min(max_delay, base_delay * 2**(n-1))`` seconds times a random factor in [0.5, 1.5); the
defaults (15 s base, 30 min cap, 10 attempts) spread the attempts over about two hours, as fal
does. The HTTP client is httpx: webhooks are off the request hot path (performance.md).
"""

from __future__ import annotations

import asyncio
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

from kubefal_gateway import queueing, settings

LOG = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Kubefal-Signature"
REQUEST_ID_HEADER = "X-Kubefal-Request-Id"
WEBHOOK_ID_HEADER = "X-Kubefal-Webhook-Id"
ATTEMPT_HEADER = "X-Kubefal-Webhook-Attempt"
USER_AGENT = "kubefal-webhooks/1"


class DeliveryOutcome:
    """Labels passed to ``on_outcome`` (e.g. a Prometheus counter)."""

    DELIVERED = "delivered"
    RETRY = "retry"
    GAVE_UP = "gave_up"


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    signing_secret: bytes | None = None
    """HMAC key; None sends unsigned webhooks."""
    timeout: float = 15.0
    """Seconds one POST may take."""
    max_attempts: int = 10
    base_delay: float = 15.0
    max_delay: float = 1800.0
    concurrency: int = 16
    """Deliveries in flight at once per gateway."""
    lease_seconds: float = 60.0
    """How long a leased delivery stays hidden from other gateways (must exceed ``timeout``)."""
    poll_interval: float = 1.0
    """How often the outbox is checked when nothing wakes the worker."""


def settings_from(config: settings.Settings) -> WebhookSettings:
    """The worker's settings from the gateway's flags."""
    return WebhookSettings(
        signing_secret=config.webhook_secret.encode() if config.webhook_secret else None,
        timeout=config.webhook_timeout,
        max_attempts=config.webhook_max_attempts,
        base_delay=config.webhook_base_delay,
        max_delay=config.webhook_max_delay,
        concurrency=config.webhook_concurrency,
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


class WebhookWorker:
    """Delivers the store's webhook outbox; one per gateway process (several may share a store)."""

    def __init__(
        self,
        store: queueing.QueueStore,
        *,
        settings: WebhookSettings,
        client: httpx.AsyncClient | None = None,
        on_outcome: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=settings.timeout, follow_redirects=False, trust_env=False
        )
        self._on_outcome = on_outcome
        self._clock = clock
        self._jitter = jitter or (lambda: random.uniform(0.5, 1.5))
        self._in_flight: set[asyncio.Task[None]] = set()
        self._events: queueing.EventSubscription | None = None

    async def run(self) -> None:
        """Deliver forever: whenever a request completes, and every ``poll_interval``."""
        self._events = self._store.subscribe(max_pending=100)
        try:
            while True:
                try:
                    await self.deliver_due()
                except queueing.QueueError as error:
                    LOG.warning("webhook outbox unavailable: %s", error)
                await self._wait_for_work(self._events)
        finally:
            self._events.close()

    async def _wait_for_work(self, events: queueing.EventSubscription) -> None:
        """Until a completion may have queued a delivery, a resync, or the poll interval."""
        deadline = time.monotonic() + self._settings.poll_interval
        while (remaining := deadline - time.monotonic()) > 0:
            event = await events.next(timeout=remaining)
            if event is None or event.kind is queueing.EventKind.RESYNC:
                return
            if event.kind is queueing.EventKind.COMPLETED and event.webhook:
                return

    async def deliver_due(self) -> int:
        """Lease the deliveries due now and start them; returns how many were started."""
        free = self._settings.concurrency - len(self._in_flight)
        if free <= 0:
            return 0
        deliveries = await self._store.lease_webhooks(
            limit=free, lease_seconds=self._settings.lease_seconds, now=self._clock()
        )
        for delivery in deliveries:
            task = asyncio.create_task(self._deliver(delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(deliveries)

    async def drain(self) -> None:
        """Wait for the deliveries in flight."""
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _deliver(self, delivery: queueing.WebhookDelivery) -> None:
        try:
            await self._attempt(delivery)
        except queueing.QueueError as error:
            # The lease runs out and the delivery is tried again: at-least-once holds.
            LOG.warning("webhook outbox update for %s failed: %s", delivery.request_id, error)

    async def _attempt(self, delivery: queueing.WebhookDelivery) -> None:
        attempt = delivery.attempts + 1
        failure = await self._post(delivery, attempt=attempt)
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
        """POST once; None on success, else why it failed."""
        body = webhook_body(delivery)
        headers = self.headers(delivery, body=body, attempt=attempt)
        try:
            response = await self._client.post(delivery.url, content=body, headers=headers)
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

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

    def _report(self, outcome: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    async def close(self) -> None:
        """Let deliveries in flight finish (their leases expire otherwise), then close."""
        with contextlib.suppress(Exception):
            await self.drain()
        if self._owns_client:
            await self._client.aclose()

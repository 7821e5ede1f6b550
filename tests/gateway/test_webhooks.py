"""Webhook delivery from the store's outbox to a real local HTTP receiver, on both backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import orjson
import pytest

from kubefal_gateway import queueing, webhooks
from tests.gateway.webhook_harness import APP, LOCAL, Receiver, complete_hooked_job

OpenStore = Callable[..., Awaitable[queueing.QueueStore]]
WaitFor = Callable[..., Awaitable[None]]

SECRET = b"webhook-test-secret"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def settings(**overrides: object) -> webhooks.WebhookSettings:
    fields: dict[str, object] = {
        "allow": LOCAL,
        "signing_secret": SECRET,
        "base_delay": 10.0,
        "max_delay": 1000.0,
        "max_attempts": 5,
        "timeout": 10.0,
    }
    fields.update(overrides)
    return webhooks.WebhookSettings(**fields)  # type: ignore[arg-type]


async def test_a_failing_receiver_gets_retries_with_backoff_until_it_accepts(
    open_queue_store: OpenStore, receiver: Receiver
) -> None:
    store, clock = await open_queue_store(), Clock()
    receiver.statuses = [503, 500, 200]
    outcomes: list[str] = []
    worker = webhooks.WebhookWorker(
        store, settings=settings(), clock=clock, jitter=lambda: 1.0, on_outcome=outcomes.append
    )
    await complete_hooked_job(store, receiver.url, now=clock.now)

    started = [await worker.deliver_due()]
    await worker.drain()
    started.append(await worker.deliver_due())  # the retry is not due yet
    clock.now += 10.0  # base delay after the first failure
    started.append(await worker.deliver_due())
    await worker.drain()
    clock.now += 19.0  # the second retry waits 20 s
    started.append(await worker.deliver_due())
    clock.now += 1.0
    started.append(await worker.deliver_due())
    await worker.drain()
    clock.now += 10_000
    started.append(await worker.deliver_due())
    await worker.close()

    assert started == [1, 0, 1, 0, 1, 0]
    assert outcomes == ["retry", "retry", "delivered"]
    assert [r.headers["x-kubefal-webhook-attempt"] for r in receiver.received] == ["1", "2", "3"]
    assert {r.headers["x-kubefal-webhook-id"] for r in receiver.received} == {"job-1"}
    assert {r.headers["x-kubefal-request-id"] for r in receiver.received} == {"job-1"}


async def test_deliveries_carry_fals_body_and_a_verifiable_signature(
    open_queue_store: OpenStore, receiver: Receiver
) -> None:
    store, clock = await open_queue_store(), Clock()
    worker = webhooks.WebhookWorker(store, settings=settings(), clock=clock)
    await complete_hooked_job(store, receiver.url, now=clock.now)

    await worker.deliver_due()
    await worker.drain()
    await worker.close()

    [delivery] = receiver.received
    signature = delivery.headers["x-kubefal-signature"]
    assert orjson.loads(delivery.body) == {
        "request_id": "job-1",
        "gateway_request_id": "job-1",
        "status": "OK",
        "payload": {"images": [1, 2]},
        "error": None,
    }
    assert delivery.headers["content-type"] == "application/json"
    assert webhooks.verify_signature(SECRET, signature, delivery.body, now=clock.now)
    assert not webhooks.verify_signature(b"other-secret", signature, delivery.body, now=clock.now)
    assert not webhooks.verify_signature(SECRET, signature, delivery.body + b" ", now=clock.now)


async def test_a_delivery_is_given_up_after_max_attempts(
    open_queue_store: OpenStore, receiver: Receiver
) -> None:
    store, clock = await open_queue_store(), Clock()
    receiver.statuses = [500, 500, 500]
    outcomes: list[str] = []
    worker = webhooks.WebhookWorker(
        store,
        settings=settings(max_attempts=2),
        clock=clock,
        jitter=lambda: 1.0,
        on_outcome=outcomes.append,
    )
    await complete_hooked_job(store, receiver.url, now=clock.now)

    for _ in range(3):
        await worker.deliver_due()
        await worker.drain()
        clock.now += 10_000
    await worker.close()

    assert outcomes == ["retry", "gave_up"]
    assert len(receiver.received) == 2


async def test_an_unreachable_receiver_is_retried(open_queue_store: OpenStore) -> None:
    store, clock = await open_queue_store(), Clock()
    closed = Receiver(statuses=[])
    await closed.start()
    url = closed.url
    await closed.stop()  # nothing listens on this port any more
    outcomes: list[str] = []
    worker = webhooks.WebhookWorker(
        store, settings=settings(), clock=clock, jitter=lambda: 1.0, on_outcome=outcomes.append
    )
    await complete_hooked_job(store, url, now=clock.now)

    await worker.deliver_due()
    await worker.drain()
    await worker.close()
    pending = await store.lease_webhooks(limit=10, lease_seconds=60, now=clock.now + 10)

    assert outcomes == ["retry"]
    assert [(d.request_id, d.attempts) for d in pending] == [("job-1", 1)]


async def test_a_pending_delivery_survives_a_gateway_restart(
    open_queue_store: OpenStore, receiver: Receiver, wait_for: WaitFor
) -> None:
    store = await open_queue_store()
    await complete_hooked_job(store, receiver.url)
    await store.close()  # the gateway stops before delivering

    reopened = await open_queue_store()
    worker = webhooks.WebhookWorker(reopened, settings=settings(poll_interval=0.05))
    running = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: len(receiver.received) == 1, message="the webhook after restart")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()

    assert orjson.loads(receiver.received[0].body)["request_id"] == "job-1"


async def test_the_running_worker_delivers_as_soon_as_a_request_completes(
    open_queue_store: OpenStore, receiver: Receiver, wait_for: WaitFor
) -> None:
    store = await open_queue_store()
    worker = webhooks.WebhookWorker(store, settings=settings(poll_interval=3600))
    running = asyncio.create_task(worker.run())
    try:
        await complete_hooked_job(store, receiver.url)
        await wait_for(lambda: len(receiver.received) == 1, message="the webhook")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()


def delivery_of(result: queueing.Result) -> queueing.WebhookDelivery:
    return queueing.WebhookDelivery(
        delivery_id="d", request_id="r", app_id=APP, url="http://127.0.0.1:9/", result=result
    )


def test_a_failed_request_is_reported_as_error_with_its_detail_as_payload() -> None:
    result = queueing.Result(
        status_code=422,
        headers=(),
        body=b'{"detail": [{"msg": "field required"}]}',
        outcome=queueing.Outcome.ERROR,
    )

    document = orjson.loads(webhooks.webhook_body(delivery_of(result)))

    assert document["status"] == "ERROR"
    assert document["error"] == "Invalid status code: 422"
    assert document["payload"] == {"detail": [{"msg": "field required"}]}


def test_a_cancelled_request_is_reported_as_error_with_its_message() -> None:
    document = orjson.loads(webhooks.webhook_body(delivery_of(queueing.cancelled_result())))

    assert (document["status"], document["error"]) == ("ERROR", "Request was cancelled")


def test_a_payload_that_is_not_json_is_null_with_a_payload_error() -> None:
    result = queueing.Result(status_code=200, headers=(), body=b"\x89PNG")

    document = orjson.loads(webhooks.webhook_body(delivery_of(result)))

    assert document["status"] == "OK"
    assert document["payload"] is None
    assert "payload_error" in document


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "t=abc,v1=00",
        "v1=00",
        "t=1000",
    ],
)
def test_malformed_signature_headers_are_rejected(header: str) -> None:
    assert not webhooks.verify_signature(SECRET, header, b"{}", now=1000)


def test_signatures_expire_after_the_tolerance_and_rotation_entries_are_accepted() -> None:
    body = b'{"request_id": "r"}'
    header = webhooks.sign(SECRET, body, timestamp=1000)
    rotated = webhooks.sign(b"old-secret", body, timestamp=1000) + "," + header.split(",")[1]

    assert webhooks.verify_signature(SECRET, header, body, tolerance=300, now=1300)
    assert not webhooks.verify_signature(SECRET, header, body, tolerance=300, now=1301)
    assert not webhooks.verify_signature(SECRET, header, body, tolerance=300, now=699)
    assert webhooks.verify_signature(SECRET, rotated, body, now=1000)


def test_retry_delay_doubles_up_to_the_cap_and_applies_jitter() -> None:
    delays = [
        webhooks.retry_delay(attempt, base_delay=15, max_delay=100, jitter=lambda: 1.0)
        for attempt in range(1, 7)
    ]
    jittered = webhooks.retry_delay(2, base_delay=15, max_delay=100, jitter=lambda: 0.5)
    huge = webhooks.retry_delay(10_000, base_delay=15, max_delay=100, jitter=lambda: 1.0)

    assert delays == [15, 30, 60, 100, 100, 100]
    assert jittered == 15
    assert huge == 100

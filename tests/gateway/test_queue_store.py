"""Behaviour of the durable queue, the same suite for the SQLite and the Redis backend."""

from __future__ import annotations

import asyncio
import pathlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
import uvloop

from kubefal_gateway import queueing
from kubefal_gateway.stores import redis_store, sqlite_store

OpenStore = Callable[..., Awaitable[queueing.QueueStore]]
WaitFor = Callable[..., Awaitable[None]]

APP = "team-a/echo"
OTHER_APP = "team-b/other"
HOLDER = "gateway-1"
LEASE = 30.0


def make_job(
    request_id: str | None = None,
    *,
    app_id: str = APP,
    priority: queueing.Priority = queueing.Priority.NORMAL,
    submitted_at: float | None = None,
    start_deadline: float | None = None,
    webhook_url: str | None = None,
    body: bytes = b'{"prompt": "hi"}',
) -> queueing.Job:
    return queueing.Job(
        request_id=request_id or queueing.new_request_id(),
        app_id=app_id,
        path="/sub/path",
        method="POST",
        headers=(("content-type", "application/json"), ("x-fal-runner-hint", "r1")),
        body=body,
        priority=priority,
        submitted_at=time.time() if submitted_at is None else submitted_at,
        start_deadline=start_deadline,
        webhook_url=webhook_url,
        runner_hint="r1",
    )


def ok_result(body: bytes = b'{"ok": true}') -> queueing.Result:
    return queueing.Result(
        status_code=200,
        headers=(("content-type", "application/json"), ("x-fal-billable-units", "2")),
        body=body,
        metrics={"inference_time": 0.25},
        completed_at=time.time(),
    )


async def drain(store: queueing.QueueStore, app_id: str = APP, holder: str = HOLDER) -> list[str]:
    leased = []
    while (job := await store.lease(app_id, holder=holder, lease_seconds=LEASE)) is not None:
        leased.append(job.request_id)
    return leased


async def test_a_submitted_job_is_queued_and_leased_back_unchanged(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    job = make_job(start_deadline=time.time() + 600, webhook_url="http://127.0.0.1:9/hook")

    position = await store.submit(job)
    view = await store.view(job.request_id)
    leased = await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)

    assert position == 0
    assert view is not None
    assert (view.state, view.queue_position, view.app_id) == (queueing.JobState.IN_QUEUE, 0, APP)
    assert leased == job


async def test_a_duplicate_request_id_is_rejected(open_queue_store: OpenStore) -> None:
    store = await open_queue_store()
    job = make_job()
    await store.submit(job)

    with pytest.raises(queueing.DuplicateRequestError):
        await store.submit(job)


async def test_unknown_request_has_no_view_and_no_position(open_queue_store: OpenStore) -> None:
    store = await open_queue_store()

    assert await store.view("no-such-request") is None
    assert await store.queue_position("no-such-request") is None


async def test_normal_priority_goes_before_low_and_each_priority_is_fifo(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    low, normal = queueing.Priority.LOW, queueing.Priority.NORMAL
    order = [("low-1", low), ("normal-1", normal), ("low-2", low), ("normal-2", normal)]

    positions = [await store.submit(make_job(name, priority=prio)) for name, prio in order]
    views = {name: await store.view(name) for name, _ in order}
    leased = await drain(store)

    # At submission a low job is behind every queued job, a normal one behind the normal ones.
    assert positions == [0, 0, 2, 1]
    assert {name: view.queue_position for name, view in views.items() if view} == {
        "normal-1": 0,
        "normal-2": 1,
        "low-1": 2,
        "low-2": 3,
    }
    assert leased == ["normal-1", "normal-2", "low-1", "low-2"]


async def test_queue_position_moves_up_as_jobs_ahead_are_leased(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    for index in range(3):
        await store.submit(make_job(f"job-{index}"))

    before = await store.queue_position("job-2")
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    after = await store.queue_position("job-2")

    assert (before, after) == (2, 1)
    assert await store.queue_position("job-0") is None


async def test_queues_of_different_apps_are_independent(open_queue_store: OpenStore) -> None:
    store = await open_queue_store()
    await store.submit(make_job("a-1"))
    await store.submit(make_job("b-1", app_id=OTHER_APP))

    assert await drain(store, OTHER_APP) == ["b-1"]
    assert await drain(store, APP) == ["a-1"]


async def test_everything_accepted_survives_closing_and_reopening_the_store(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    queued = [make_job(f"queued-{index}") for index in range(20)]
    done = make_job("done")
    await store.submit(done)
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    await store.complete("done", holder=HOLDER, result=ok_result())
    await asyncio.gather(*(store.submit(job) for job in queued))
    await store.append_logs("queued-0", [queueing.LogLine(message="kept", timestamp=1.0)])
    await store.close()

    reopened = await open_queue_store()
    done_view = await reopened.view("done", with_body=True)
    first_view = await reopened.view("queued-0", with_logs=True)
    leased = await drain(reopened)

    assert done_view is not None and done_view.result is not None
    assert done_view.result.body == b'{"ok": true}'
    assert first_view is not None and first_view.logs is not None
    assert [line.message for line in first_view.logs] == ["kept"]
    assert leased == [job.request_id for job in queued]


async def test_concurrent_leasers_never_get_the_same_job(open_queue_store: OpenStore) -> None:
    store = await open_queue_store()
    jobs = [make_job(f"job-{index:03d}") for index in range(200)]
    await asyncio.gather(*(store.submit(job) for job in jobs))
    leased: list[str] = []

    async def leaser(holder: str) -> None:
        while (job := await store.lease(APP, holder=holder, lease_seconds=LEASE)) is not None:
            leased.append(job.request_id)
            await asyncio.sleep(0)

    await asyncio.gather(*(leaser(f"holder-{index}") for index in range(8)))

    assert sorted(leased) == sorted(job.request_id for job in jobs)


@pytest.mark.parametrize("store_backend", ["redis"])
async def test_two_gateways_sharing_one_redis_never_lease_the_same_job(
    open_queue_store: OpenStore,
) -> None:
    first, second = await open_queue_store(), await open_queue_store()
    jobs = [make_job(f"job-{index:03d}") for index in range(300)]
    await asyncio.gather(*(first.submit(job) for job in jobs[::2]))
    await asyncio.gather(*(second.submit(job) for job in jobs[1::2]))
    leased: dict[str, list[str]] = {"first": [], "second": []}

    async def leaser(name: str, store: queueing.QueueStore) -> None:
        while (job := await store.lease(APP, holder=name, lease_seconds=LEASE)) is not None:
            leased[name].append(job.request_id)

    await asyncio.gather(
        *(leaser("first", first) for _ in range(4)), *(leaser("second", second) for _ in range(4))
    )

    everything = leased["first"] + leased["second"]
    assert sorted(everything) == sorted(job.request_id for job in jobs)
    assert leased["first"] and leased["second"]


async def test_an_expired_lease_returns_the_job_to_its_place_in_the_queue(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    now = time.time()
    await store.submit(make_job("first"))
    await store.submit(make_job("second"))
    await store.lease(APP, holder="crashed", lease_seconds=LEASE, now=now)

    before_expiry = await store.expire(now=now + LEASE - 1)
    changed = await store.expire(now=now + LEASE + 1)
    view = await store.view("first")
    released = await store.lease(APP, holder="survivor", lease_seconds=LEASE, now=now + LEASE + 2)

    assert (before_expiry, changed) == (0, 1)
    assert view is not None and view.state is queueing.JobState.IN_QUEUE
    assert view.queue_position == 0
    assert released is not None
    assert (released.request_id, released.attempts) == ("first", 1)
    assert not await store.complete("first", holder="crashed", result=ok_result())
    assert await store.complete("first", holder="survivor", result=ok_result())


async def test_renewing_keeps_a_lease_alive_past_its_first_expiry(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    now = time.time()
    await store.submit(make_job("job"))
    await store.lease(APP, holder=HOLDER, lease_seconds=10, now=now)

    status = await store.renew("job", holder=HOLDER, lease_seconds=10, now=now + 8)
    changed = await store.expire(now=now + 12)
    stranger = await store.renew("job", holder="someone-else", lease_seconds=10, now=now + 12)

    assert status is queueing.LeaseStatus.HELD
    assert changed == 0
    assert stranger is queueing.LeaseStatus.LOST


async def test_a_job_completes_exactly_once(open_queue_store: OpenStore) -> None:
    store = await open_queue_store()
    await store.submit(make_job("job"))
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    first_result, second_result = ok_result(b'{"n": 1}'), ok_result(b'{"n": 2}')

    by_stranger = await store.complete("job", holder="someone-else", result=first_result)
    first = await store.complete("job", holder=HOLDER, result=first_result)
    second = await store.complete("job", holder=HOLDER, result=second_result)
    view = await store.view("job", with_body=True)

    assert (by_stranger, first, second) == (False, True, False)
    assert view is not None and view.state is queueing.JobState.COMPLETED
    assert view.result == first_result
    assert await store.renew("job", holder=HOLDER, lease_seconds=LEASE) is (
        queueing.LeaseStatus.LOST
    )


async def test_view_leaves_out_the_result_body_unless_asked(open_queue_store: OpenStore) -> None:
    store = await open_queue_store()
    await store.submit(make_job("job"))
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    await store.complete("job", holder=HOLDER, result=ok_result())

    view = await store.view("job")

    assert view is not None and view.result is not None
    assert view.result.body == b""
    assert view.result.metrics == {"inference_time": 0.25}


async def test_requeue_counts_the_attempt_and_keeps_the_original_position(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    await store.submit(make_job("first"))
    await store.submit(make_job("second"))
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)

    requeued = await store.requeue("first", holder=HOLDER, reason="runner returned 503")
    not_ours = await store.requeue("second", holder=HOLDER, reason="never leased")
    again = await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    assert again is not None
    released = await store.requeue(
        again.request_id, holder=HOLDER, reason="no runner", count_attempt=False
    )
    third = await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)

    assert (requeued, not_ours, released) == (True, False, True)
    assert (again.request_id, again.attempts) == ("first", 1)
    assert third is not None and (third.request_id, third.attempts) == ("first", 1)


async def test_cancelling_a_queued_job_completes_it_as_cancelled(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    await store.submit(make_job("job"))
    await store.submit(make_job("next"))

    outcome = await store.cancel("job")
    view = await store.view("job", with_body=True)

    assert outcome is queueing.CancelOutcome.OK
    assert view is not None and view.state is queueing.JobState.COMPLETED
    assert view.result is not None
    assert view.result.outcome is queueing.Outcome.CANCELLED
    assert view.result.status_code >= 400
    assert await drain(store) == ["next"]
    assert await store.cancel("job") is queueing.CancelOutcome.ALREADY_COMPLETED


async def test_cancelling_an_in_progress_job_flags_it_for_the_dispatcher(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    events = store.subscribe()
    await store.submit(make_job("job"))
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)

    outcome = await store.cancel("job")
    status = await store.renew("job", holder=HOLDER, lease_seconds=LEASE)
    view = await store.view("job")
    seen = [event async for event in _drain_events(events)]

    assert outcome is queueing.CancelOutcome.CANCELLATION_REQUESTED
    assert status is queueing.LeaseStatus.CANCEL_REQUESTED
    assert view is not None and view.cancel_requested
    assert view.state is queueing.JobState.IN_PROGRESS
    assert queueing.QueueEvent(queueing.EventKind.CANCEL_REQUESTED, APP, "job") in seen


async def test_cancelling_an_unknown_job_reports_not_found(open_queue_store: OpenStore) -> None:
    store = await open_queue_store()

    assert await store.cancel("no-such-request") is queueing.CancelOutcome.NOT_FOUND


async def test_results_are_deleted_after_the_result_ttl(
    open_queue_store: OpenStore, wait_for: WaitFor
) -> None:
    store = await open_queue_store(result_ttl=0.5)
    await store.submit(make_job("job"))
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    await store.complete("job", holder=HOLDER, result=ok_result())
    await store.append_logs("job", [queueing.LogLine(message="done")])
    assert await store.view("job") is not None

    async def gone() -> bool:
        await store.expire()
        return await store.view("job") is None

    await wait_for(gone, message="the result to expire")
    assert await store.cancel("job") is queueing.CancelOutcome.NOT_FOUND


async def test_log_lines_are_kept_in_order_up_to_the_limit(open_queue_store: OpenStore) -> None:
    store = await open_queue_store(max_logs_per_job=3)
    await store.submit(make_job("job"))
    lines = [
        queueing.LogLine(message=f"line {index}", level="INFO", source="USER", timestamp=index)
        for index in range(5)
    ]

    await store.append_logs("job", lines[:2])
    await store.append_logs("job", lines[2:])
    await store.append_logs("no-such-request", lines)
    with_logs = await store.view("job", with_logs=True)
    without_logs = await store.view("job")

    assert with_logs is not None and with_logs.logs == tuple(lines[:3])
    assert without_logs is not None and without_logs.logs is None


def test_log_lines_have_fals_wire_shape() -> None:
    line = queueing.LogLine(message="loading", timestamp=1704067200.25)

    assert line.to_fal() == {
        "message": "loading",
        "level": "INFO",
        "source": "USER",
        "timestamp": "2024-01-01T00:00:00.250000",
    }


async def test_a_job_still_queued_at_its_start_deadline_completes_with_a_504(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    now = time.time()
    await store.submit(make_job("late", start_deadline=now + 5))
    await store.submit(make_job("patient"))

    early = await store.expire(now=now + 4)
    changed = await store.expire(now=now + 6)
    view = await store.view("late", with_body=True)

    assert (early, changed) == (0, 1)
    assert view is not None and view.result is not None
    assert view.result.outcome is queueing.Outcome.TIMEOUT
    assert view.result.status_code == 504
    assert ("x-fal-request-timeout-type", "user") in view.result.headers
    assert await drain(store) == ["patient"]


async def test_lease_skips_jobs_past_their_start_deadline(open_queue_store: OpenStore) -> None:
    store = await open_queue_store()
    now = time.time()
    await store.submit(make_job("late", start_deadline=now - 1))
    await store.submit(make_job("fine"))

    leased = await store.lease(APP, holder=HOLDER, lease_seconds=LEASE, now=now)
    late = await store.view("late")

    assert leased is not None and leased.request_id == "fine"
    assert late is not None and late.result is not None
    assert late.result.outcome is queueing.Outcome.TIMEOUT


async def test_stats_count_queued_waiting_and_in_progress_jobs(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    now = time.time()
    await store.submit(make_job("old-1", submitted_at=now - 30))
    await store.submit(make_job("old-2", submitted_at=now - 20))
    await store.submit(make_job("new", submitted_at=now, priority=queueing.Priority.LOW))
    await store.submit(make_job("elsewhere", app_id=OTHER_APP))
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)

    stats = await store.stats(APP, waiting_since=now - 10)
    empty = await store.stats("nobody/nothing", waiting_since=now)

    assert stats == queueing.AppQueueStats(
        app_id=APP, queued=2, queued_waiting=1, in_progress=1, oldest_queued_at=now - 20
    )
    assert empty == queueing.AppQueueStats(
        app_id="nobody/nothing", queued=0, queued_waiting=0, in_progress=0, oldest_queued_at=None
    )


async def test_apps_lists_apps_with_queued_or_running_jobs(open_queue_store: OpenStore) -> None:
    store = await open_queue_store()
    await store.submit(make_job("a", app_id=APP))
    await store.submit(make_job("b", app_id=OTHER_APP))
    await store.submit(make_job("c", app_id="team-c/finished"))
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    await store.lease("team-c/finished", holder=HOLDER, lease_seconds=LEASE)
    await store.complete("c", holder=HOLDER, result=ok_result())

    assert await store.apps() == [APP, OTHER_APP]


async def test_subscribers_are_woken_by_submits_and_completions(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    events = store.subscribe()

    await store.submit(make_job("job"))
    submitted = await events.next(timeout=10)
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    await store.complete("job", holder=HOLDER, result=ok_result())
    completed = await events.next(timeout=10)
    events.close()

    assert submitted == queueing.QueueEvent(queueing.EventKind.SUBMITTED, APP)
    assert completed is not None
    assert (completed.kind, completed.app_id, completed.request_id) == (
        queueing.EventKind.COMPLETED,
        APP,
        "job",
    )
    assert await events.next(timeout=0.01) is None


async def test_a_slow_subscriber_gets_one_resync_instead_of_unbounded_events(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    events = store.subscribe(max_pending=3)

    for index in range(10):
        await store.submit(make_job(f"job-{index}", app_id=f"team/app-{index}"))
    first = events.poll()
    second = events.poll()

    assert first == queueing.QueueEvent(queueing.EventKind.RESYNC)
    assert second is None


async def test_a_filtered_subscriber_hears_only_what_it_accepts_and_resyncs(
    open_queue_store: OpenStore,
) -> None:
    """As the webhook worker subscribes: the events it does not accept never wake it."""
    store = await open_queue_store()
    events = store.subscribe(
        max_pending=3,
        accept=lambda event: (
            event.kind is queueing.EventKind.COMPLETED and event.request_id.startswith("h")
        ),
    )

    await store.submit(make_job("plain"))
    await store.submit(make_job("hooked", webhook_url="http://127.0.0.1:9/hook"))
    for _ in range(2):
        job = await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
        assert job is not None
        await store.complete(job.request_id, holder=HOLDER, result=ok_result())
    heard = await events.next(timeout=10)
    nothing_else = events.poll()
    for index in range(5):  # accepted events past max_pending still collapse into RESYNC
        await store.submit(make_job(f"h-{index}", webhook_url="http://127.0.0.1:9/hook"))
        job = await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
        assert job is not None
        await store.complete(job.request_id, holder=HOLDER, result=ok_result())
    overflow = events.poll()
    events.close()

    assert heard is not None
    assert (heard.kind, heard.request_id) == (queueing.EventKind.COMPLETED, "hooked")
    assert nothing_else is None
    assert overflow == queueing.QueueEvent(queueing.EventKind.RESYNC)


@pytest.mark.parametrize("store_backend", ["redis"])
async def test_other_gateways_hear_of_new_work_and_cancels(open_queue_store: OpenStore) -> None:
    submitter, dispatcher = await open_queue_store(), await open_queue_store()
    events = dispatcher.subscribe()

    await submitter.submit(make_job("job"))
    submitted = await events.next(timeout=10)
    await dispatcher.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    await submitter.cancel("job")
    cancel = await events.next(timeout=10)

    assert submitted == queueing.QueueEvent(queueing.EventKind.SUBMITTED, APP)
    assert cancel == queueing.QueueEvent(queueing.EventKind.CANCEL_REQUESTED, APP, "job")


async def test_completing_a_job_with_a_webhook_puts_a_delivery_in_the_outbox(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    now = time.time()
    await store.submit(make_job("hooked", webhook_url="http://127.0.0.1:9/hook"))
    await store.submit(make_job("plain"))
    for _ in range(2):
        job = await store.lease(APP, holder=HOLDER, lease_seconds=LEASE, now=now)
        assert job is not None
        await store.complete(job.request_id, holder=HOLDER, result=ok_result(), now=now)

    deliveries = await store.lease_webhooks(limit=10, lease_seconds=60, now=now)
    hidden = await store.lease_webhooks(limit=10, lease_seconds=60, now=now + 1)

    assert [(d.request_id, d.url, d.app_id) for d in deliveries] == [
        ("hooked", "http://127.0.0.1:9/hook", APP)
    ]
    assert deliveries[0].result.body == b'{"ok": true}'
    assert deliveries[0].attempts == 0
    assert hidden == []


async def test_webhook_deliveries_are_rescheduled_acked_and_survive_a_reopen(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    now = time.time()
    delivery = queueing.WebhookDelivery(
        delivery_id="delivery-1",
        request_id="job",
        app_id=APP,
        url="http://127.0.0.1:9/hook",
        result=ok_result(),
        created_at=now,
    )
    await store.enqueue_webhook(delivery, now=now)
    [leased] = await store.lease_webhooks(limit=10, lease_seconds=60, now=now)
    await store.reschedule_webhook("delivery-1", attempts=1, due_at=now + 100)
    await store.close()

    reopened = await open_queue_store()
    not_yet = await reopened.lease_webhooks(limit=10, lease_seconds=60, now=now + 99)
    [retried] = await reopened.lease_webhooks(limit=10, lease_seconds=60, now=now + 101)
    await reopened.ack_webhook("delivery-1")
    after_ack = await reopened.lease_webhooks(limit=10, lease_seconds=60, now=now + 1000)

    assert leased == delivery
    assert not_yet == []
    assert retried.attempts == 1
    assert after_ack == []


async def _drain_events(
    events: queueing.EventSubscription,
) -> AsyncIterator[queueing.QueueEvent]:
    while (event := events.poll()) is not None:
        yield event


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_store_works_on_uvloop_as_the_gateway_runs_it(
    backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    async def scenario() -> queueing.JobView | None:
        store: queueing.QueueStore
        if backend == "sqlite":
            store = await sqlite_store.SqliteQueueStore.open(
                str(tmp_path / "queue.db"), housekeeping_interval=None
            )
        else:
            store = await redis_store.RedisQueueStore.open(
                request.getfixturevalue("redis_url"),
                prefix=f"uvloop-{uuid.uuid4().hex}",
                housekeeping_interval=None,
            )
        try:
            await asyncio.gather(*(store.submit(make_job(f"job-{index}")) for index in range(50)))
            leased = await drain(store)
            await asyncio.gather(
                *(store.complete(rid, holder=HOLDER, result=ok_result()) for rid in leased)
            )
            assert len(leased) == 50
            return await store.view("job-49", with_body=True)
        finally:
            await store.close()

    view = uvloop.run(scenario())

    assert view is not None and view.result is not None
    assert view.result.body == b'{"ok": true}'


async def _answers(store: queueing.QueueStore) -> bool:
    try:
        await store.ping()
    except queueing.QueueError:
        return False
    return True


async def test_a_redis_outage_fails_calls_fast_and_the_store_recovers_after_it(
    redis_server: Any, wait_for: WaitFor
) -> None:
    store = await redis_store.RedisQueueStore.open(
        redis_server.url, prefix="outage", housekeeping_interval=None
    )
    try:
        await store.submit(make_job("before"))
        redis_server.stop()

        with pytest.raises(queueing.QueueError):
            await asyncio.wait_for(store.submit(make_job("during")), timeout=30)

        # The new server is empty: no queued job and no loaded scripts (NOSCRIPT is handled).
        # Reconnects back off (at most a second), so the store answers again shortly after.
        redis_server.start(port=redis_server.port)
        await wait_for(lambda: _answers(store), message="the store reconnecting")
        position = await asyncio.wait_for(store.submit(make_job("after")), timeout=30)
        leased = await drain(store)
    finally:
        await store.close()

    assert position == 0
    assert leased == ["after"]


@pytest.mark.parametrize("store_backend", ["sqlite"])
async def test_jobs_a_dead_sqlite_gateway_was_running_are_queued_again_when_it_restarts(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    await store.submit(make_job("running"))
    await store.submit(make_job("waiting"))
    await store.lease(APP, holder="old-process", lease_seconds=3600)
    await store.close()

    reopened = await open_queue_store()
    view = await reopened.view("running")
    leased = await reopened.lease(APP, holder="new-process", lease_seconds=LEASE)

    assert view is not None and view.state is queueing.JobState.IN_QUEUE
    assert leased is not None and (leased.request_id, leased.attempts) == ("running", 1)


@pytest.mark.parametrize("store_backend", ["redis"])
async def test_two_gateways_never_hold_the_same_webhook_delivery(
    open_queue_store: OpenStore,
) -> None:
    first, second = await open_queue_store(), await open_queue_store()
    now = time.time()
    for index in range(40):
        await first.enqueue_webhook(
            queueing.WebhookDelivery(
                delivery_id=f"delivery-{index}",
                request_id=f"job-{index}",
                app_id=APP,
                url="http://127.0.0.1:9/hook",
                result=ok_result(),
            ),
            now=now,
        )

    batches = await asyncio.gather(
        *(
            store.lease_webhooks(limit=7, lease_seconds=60, now=now)
            for _ in range(4)
            for store in (first, second)
        )
    )

    leased = [delivery.delivery_id for batch in batches for delivery in batch]
    assert sorted(leased) == sorted(f"delivery-{index}" for index in range(40))


@pytest.mark.parametrize("store_backend", ["sqlite"])
async def test_a_lease_reaches_the_database_file_without_further_traffic(
    open_queue_store: OpenStore, wait_for: WaitFor
) -> None:
    store = await open_queue_store()
    assert isinstance(store, sqlite_store.SqliteQueueStore)
    await store.submit(make_job("job"))
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    reader = sqlite3.connect(store.path)

    def leased_on_disk() -> bool:
        row = reader.execute("SELECT state FROM jobs WHERE request_id = 'job'").fetchone()
        return row is not None and row[0] == 1

    try:
        await wait_for(leased_on_disk, message="the lazy commit of the lease")
    finally:
        reader.close()


async def test_the_redis_store_uses_the_database_number_of_its_url(redis_url: str) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/3"
    prefix = f"db-{uuid.uuid4().hex}"
    store = await redis_store.RedisQueueStore.open(url, prefix=prefix, housekeeping_interval=None)
    client = redis.asyncio.Redis.from_url(url)
    try:
        await store.submit(make_job("job"))
        in_db3 = await client.exists(f"{{{prefix}}}:j:job")
    finally:
        await store.flush_key_space()
        await store.close()
        await client.aclose()

    assert in_db3 == 1

"""The queue stores under faults and abuse (issue 9): poison jobs, queue-depth limits, failed
commits, deleted apps. Real SQLite files and a real redis-server (conftest.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import orjson
import pytest

from kubefal_gateway import apps, orphans, queueing
from kubefal_gateway.stores import redis_store, sqlite_store
from testkit.redis import RedisServer

OpenStore = Callable[..., Awaitable[queueing.QueueStore]]
WaitFor = Callable[..., Awaitable[None]]

APP = "team-a/poison"
HOLDER = "gateway-1"
LEASE = 30.0


def make_job(
    request_id: str | None = None, *, app_id: str = APP, webhook_url: str | None = None
) -> queueing.Job:
    return queueing.Job(
        request_id=request_id or queueing.new_request_id(),
        app_id=app_id,
        path="/",
        method="POST",
        headers=(("content-type", "application/json"),),
        body=b"{}",
        submitted_at=time.time(),
        webhook_url=webhook_url,
    )


def ok_result() -> queueing.Result:
    return queueing.Result(
        status_code=200, headers=(("content-type", "application/json"),), body=b"{}"
    )


# ---- item 5: poison jobs ------------------------------------------------------------------------
async def test_a_job_whose_lease_is_lost_max_attempts_times_completes_with_an_error(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store(max_attempts=3)
    job = make_job(webhook_url="http://127.0.0.1:9/hook")
    await store.submit(job)
    now = time.time()
    dispatches = 0
    for _ in range(10):  # a gateway dies with the job in flight, again and again
        if await store.lease(APP, holder=f"gw-{dispatches}", lease_seconds=LEASE, now=now) is None:
            break
        dispatches += 1
        now += LEASE + 1
        await store.expire(now=now)

    view = await store.view(job.request_id, with_body=True)
    deliveries = await store.lease_webhooks(limit=10, lease_seconds=30, now=now + 1)

    assert dispatches == 3
    assert view is not None and view.state is queueing.JobState.COMPLETED
    assert view.attempts == 3
    assert view.result is not None
    assert view.result.status_code == 503
    assert view.result.error_type == "attempts_exhausted"
    assert orjson.loads(view.result.body)["error_type"] == "attempts_exhausted"
    assert [delivery.request_id for delivery in deliveries] == [job.request_id]
    assert await store.apps() == []


async def test_retries_and_lost_leases_share_one_attempt_budget(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store(max_attempts=3)
    job = make_job()
    await store.submit(job)
    leased = await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    assert leased is not None
    await store.requeue(job.request_id, holder=HOLDER, reason="runner 503")  # attempts 1
    leased = await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    assert leased is not None and leased.attempts == 1
    now = time.time() + LEASE + 1
    await store.expire(now=now)  # attempts 2: one dispatch left
    leased = await store.lease(APP, holder=HOLDER, lease_seconds=LEASE, now=now)
    assert leased is not None and leased.attempts == 2
    await store.expire(now=now + LEASE + 1)  # attempts 3: exhausted

    view = await store.view(job.request_id)
    assert view is not None and view.state is queueing.JobState.COMPLETED
    assert view.result is not None and view.result.error_type == "attempts_exhausted"


async def test_the_housekeeping_task_returns_a_lost_lease_to_the_queue(
    open_queue_store: OpenStore, wait_for: WaitFor
) -> None:
    """Each backend's housekeeping task (queueing.start_housekeeping) runs expire() on its own:
    a lease nobody renews goes back to the queue without any caller asking."""
    store = await open_queue_store(housekeeping_interval=0.05)
    job = make_job()
    await store.submit(job)
    leased = await store.lease(APP, holder=HOLDER, lease_seconds=0.2)
    assert leased is not None and leased.request_id == job.request_id

    async def back_in_queue() -> bool:
        view = await store.view(job.request_id)
        return view is not None and view.state is queueing.JobState.IN_QUEUE

    await wait_for(back_in_queue, timeout=30, message="the lost lease back in the queue")


async def test_sqlite_housekeeping_with_nothing_due_takes_no_write_lock(
    tmp_path: object,
) -> None:
    """Housekeeping runs twice a second: when nothing is due it only reads, so it neither
    writes to the WAL nor waits for a writer (here another connection holding the lock)."""
    import sqlite3

    path = f"{tmp_path}/queue.db"
    store = await sqlite_store.SqliteQueueStore.open(path, housekeeping_interval=None)
    job = make_job()
    await store.submit(job)
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    await store.submit(make_job())  # durable: commits the lease too
    writer = sqlite3.connect(path, isolation_level=None, timeout=0.1)
    writer.execute("BEGIN IMMEDIATE")
    try:
        changed = await store.expire()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    due = await store.expire(now=time.time() + 2 * LEASE)  # the lease ran out: work again
    view = await store.view(job.request_id)
    await store.close()

    assert changed == 0
    assert due == 1
    assert view is not None and view.state is queueing.JobState.IN_QUEUE


async def test_sqlite_recovery_at_open_counts_against_the_attempt_budget(
    tmp_path: object,
) -> None:
    path = f"{tmp_path}/queue.db"
    job = make_job()
    opened = 0
    dispatches = 0
    store = await sqlite_store.SqliteQueueStore.open(
        path, housekeeping_interval=None, max_attempts=3
    )
    await store.submit(job)
    while opened < 10:
        leased = await store.lease(APP, holder=f"gw-{opened}", lease_seconds=LEASE)
        await store.close()  # the process dies with the job in flight
        if leased is None:
            break
        dispatches += 1
        opened += 1
        store = await sqlite_store.SqliteQueueStore.open(
            path, housekeeping_interval=None, max_attempts=3
        )
    else:
        await store.close()
    store = await sqlite_store.SqliteQueueStore.open(path, housekeeping_interval=None)
    view = await store.view(job.request_id)
    await store.close()

    assert dispatches == 3
    assert view is not None and view.state is queueing.JobState.COMPLETED
    assert view.result is not None and view.result.status_code == 503


# ---- item 12: a failed SQLite group commit ------------------------------------------------------
async def test_a_failed_sqlite_commit_fails_its_batch_but_keeps_running_jobs_leased(
    tmp_path: object,
) -> None:
    store = await sqlite_store.SqliteQueueStore.open(
        f"{tmp_path}/queue.db", housekeeping_interval=None
    )
    # A real COMMIT failure: a deferred foreign key that is violated when the batch commits.
    store._db.execute("PRAGMA foreign_keys = ON")
    store._db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    store._db.execute(
        "CREATE TABLE child (parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    running, requeued = make_job("running"), make_job("requeued")
    await store.submit(running)
    await store.submit(requeued)
    assert (await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)) is not None
    assert (await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)) is not None
    await store.renew("running", holder=HOLDER, lease_seconds=LEASE)
    assert await store.requeue("requeued", holder=HOLDER, reason="retry")
    store._db.execute("INSERT INTO child VALUES (42)")  # poisons the open batch
    late = make_job("late")

    failed = False
    try:
        await store.submit(late)
    except queueing.QueueError:
        failed = True
    running_view = await store.view("running")
    requeued_view = await store.view("requeued")
    next_leased = await store.lease(APP, holder="other", lease_seconds=LEASE)
    completed = await store.complete("running", holder=HOLDER, result=ok_result())
    late_view = await store.view("late")
    await store.close()

    assert failed, "the submit of the failed batch must fail"
    assert late_view is None
    assert running_view is not None and running_view.state is queueing.JobState.IN_PROGRESS
    assert requeued_view is not None and requeued_view.state is queueing.JobState.IN_QUEUE
    assert next_leased is not None and next_leased.request_id == "requeued"
    assert completed


# ---- item 12: queue-depth limit -----------------------------------------------------------------
async def test_the_queue_depth_limit_refuses_the_submit_beyond_it_atomically(
    open_queue_store: OpenStore, store_backend: str
) -> None:
    store = await open_queue_store()
    # Redis: a second gateway on the same queue (SQLite has one gateway per file).
    other = await open_queue_store() if store_backend == "redis" else store
    outcomes = await asyncio.gather(
        *(
            (store if index % 2 else other).submit(make_job(f"job-{index}"), max_queued=5)
            for index in range(12)
        ),
        return_exceptions=True,
    )
    accepted = [outcome for outcome in outcomes if isinstance(outcome, int)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, queueing.QueueFullError)]
    refused_view = await store.view("job-11")
    other_app = await store.submit(make_job(app_id="team-b/other"), max_queued=5)
    leased = await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    after_lease = await store.submit(make_job("after-lease"), max_queued=5)

    assert len(accepted) == 5 and len(refused) == 7
    assert sorted(accepted) == [0, 1, 2, 3, 4]
    assert refused_view is None
    assert other_app == 0  # the limit is per app
    assert leased is not None
    assert after_lease == 4  # a started job frees its place
    with pytest.raises(queueing.QueueFullError):
        await store.submit(make_job(), max_queued=5)


# ---- item 11: Redis faults ----------------------------------------------------------------------
async def _ping_ok(store: queueing.QueueStore) -> bool:
    try:
        await store.ping()
    except queueing.QueueError:
        return False
    return True


async def test_a_stalled_redis_fails_calls_fast_and_the_store_recovers(
    redis_server: RedisServer, wait_for: WaitFor
) -> None:
    store = await redis_store.RedisQueueStore.open(
        redis_server.url,
        prefix=f"stall-{uuid.uuid4().hex}",
        housekeeping_interval=None,
        command_timeout=0.5,
    )
    try:
        accepted = make_job("before-the-stall")
        await store.submit(accepted)
        with redis_server.stalled():
            # A bound, not a timing assertion: without command timeouts these calls hang forever.
            async with asyncio.timeout(30):
                with pytest.raises(queueing.QueueError):
                    await store.submit(make_job("during-the-stall"))
                with pytest.raises(queueing.QueueError):
                    await store.ping()
                with pytest.raises(queueing.QueueError):  # reconnecting to a stalled server
                    await store.submit(make_job("still-stalled"))
        await wait_for(lambda: _ping_ok(store), message="the store answering again")
        after = await store.submit(make_job("after-the-stall"))
        view = await store.view(accepted.request_id)
    finally:
        await store.close()
    assert after >= 1
    assert view is not None and view.state is queueing.JobState.IN_QUEUE


async def test_a_redis_that_is_down_fails_calls_at_once_and_is_reconnected(
    redis_server: RedisServer, wait_for: WaitFor
) -> None:
    store = await redis_store.RedisQueueStore.open(
        redis_server.url, prefix=f"down-{uuid.uuid4().hex}", housekeeping_interval=None
    )
    try:
        port = redis_server.port
        redis_server.stop()
        async with asyncio.timeout(30):
            for _ in range(20):  # refused connections back off instead of looping hot
                with pytest.raises(queueing.QueueError):
                    await store.submit(make_job())
        redis_server.start(port)
        await wait_for(lambda: _ping_ok(store), message="the store reconnected")
        position = await store.submit(make_job("after-restart"))
    finally:
        await store.close()
    assert position == 0


# ---- item 13: runner slots shared by gateways ---------------------------------------------------
async def test_shared_runner_slots_hold_across_gateways_and_free_when_a_holder_dies(
    redis_url: str, wait_for: WaitFor
) -> None:
    prefix = f"slots-{uuid.uuid4().hex}"
    one = await redis_store.RedisQueueStore.open(
        redis_url, prefix=prefix, housekeeping_interval=None
    )
    two = await redis_store.RedisQueueStore.open(
        redis_url, prefix=prefix, housekeeping_interval=None
    )
    freed: list[tuple[str, str]] = []
    two.slot_listeners.append(lambda app_id, runner_id: freed.append((app_id, runner_id)))
    try:
        claims = [await one.claim_slot("r1", holder="one", limit=2, ttl=30) for _ in range(2)]
        refused = await two.claim_slot("r1", holder="two", limit=2, ttl=30)
        other_runner = await two.claim_slot("r2", holder="two", limit=2, ttl=30)
        one.release_slot("r1", APP, holder="one", limit=2)
        await wait_for(lambda: freed == [(APP, "r1")], message="the SLOT_FREED message")
        after_release = await two.claim_slot("r1", holder="two", limit=2, ttl=30)
        totals = await two.slot_heartbeat(
            holder="two", ttl=30, runner_slots=[("r1", 1), ("r2", 0)], app_sync=[(APP, 3)]
        )
        # "one" dies: its heartbeat lapses, and the slot it still holds is free again.
        await one.claim_slot("r3", holder="one", limit=1, ttl=0.2)

        async def claimed() -> bool:
            granted, _ = await two.claim_slot("r3", holder="two", limit=1, ttl=30)
            return granted

        await wait_for(claimed, message="the dead holder's slot freed")
    finally:
        await one.close()
        await two.close()
    assert claims == [(True, 0), (True, 0)]
    assert refused == (False, 2)
    assert other_runner == (True, 0)
    assert after_release == (True, 1)
    assert totals == ([1, 0], [0])


# ---- item 12: jobs of a removed app -------------------------------------------------------------
async def test_fail_queued_completes_only_the_queued_jobs_of_one_app(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    queued = [make_job(f"queued-{i}", webhook_url="http://127.0.0.1:9/hook") for i in range(3)]
    running, other = make_job("running"), make_job("other", app_id="team-b/kept")
    for job in (running, *queued, other):
        await store.submit(job)
    assert (await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)) is not None  # "running"
    result = queueing.app_gone_result(APP, grace=60)

    count = await store.fail_queued(APP, result)
    views = {job.request_id: await store.view(job.request_id, with_body=True) for job in queued}
    running_view = await store.view("running")
    other_view = await store.view("other")
    deliveries = await store.lease_webhooks(limit=10, lease_seconds=30)

    assert count == 3
    for view in views.values():
        assert view is not None and view.state is queueing.JobState.COMPLETED
        assert view.result is not None and view.result.status_code == 404
        assert orjson.loads(view.result.body)["error_type"] == "app_not_found"
    assert running_view is not None and running_view.state is queueing.JobState.IN_PROGRESS
    assert other_view is not None and other_view.state is queueing.JobState.IN_QUEUE
    assert sorted(delivery.request_id for delivery in deliveries) == sorted(views)
    assert await store.lease(APP, holder=HOLDER, lease_seconds=LEASE) is None


async def test_the_reaper_waits_out_the_grace_and_spares_an_app_that_comes_back(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    registry = apps.AppRegistry()
    await store.submit(make_job("gone-job"))
    await store.submit(make_job("back-job", app_id="team-b/back"))
    reaper = orphans.OrphanReaper(store=store, registry=registry, grace=60)
    start = time.time()

    first = await reaper.check(now=start)
    registry.put(apps.from_static_entry({"id": "team-b/back", "runners": []}))
    before_grace = await reaper.check(now=start + 59)
    after_grace = await reaper.check(now=start + 61)
    gone = await store.view("gone-job")
    back = await store.view("back-job")

    assert (first, before_grace, after_grace) == (0, 0, 1)
    assert gone is not None and gone.state is queueing.JobState.COMPLETED
    assert back is not None and back.state is queueing.JobState.IN_QUEUE


# ---- item 13: SQLite stays single-gateway -------------------------------------------------------
async def test_a_second_gateway_on_one_sqlite_file_is_refused_until_the_first_closes(
    tmp_path: object,
) -> None:
    path = f"{tmp_path}/queue.db"
    first = await sqlite_store.SqliteQueueStore.open(path, housekeeping_interval=None)
    await first.submit(make_job("running"))
    await first.lease(APP, holder="first", lease_seconds=LEASE)
    with pytest.raises(queueing.QueueError, match="in use by another gateway"):
        await sqlite_store.SqliteQueueStore.open(path, housekeeping_interval=None)
    running = await first.view("running")
    await first.close()
    second = await sqlite_store.SqliteQueueStore.open(path, housekeeping_interval=None)
    await second.close()
    # The refused open did not take the first gateway's running job back to the queue.
    assert running is not None and running.state is queueing.JobState.IN_PROGRESS


# ---- item 13: the webhook outbox, claimed once per attempt --------------------------------------
async def test_a_webhook_claim_is_atomic_and_a_claim_lost_to_a_crash_counts_as_an_attempt(
    open_queue_store: OpenStore, store_backend: str
) -> None:
    store = await open_queue_store()
    other = await open_queue_store() if store_backend == "redis" else store
    job = make_job("hooked", webhook_url="http://127.0.0.1:9/hook")
    await store.submit(job)
    await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)
    await store.complete("hooked", holder=HOLDER, result=ok_result())
    now = time.time()

    claims = await asyncio.gather(
        store.lease_webhooks(limit=10, lease_seconds=30, now=now),
        other.lease_webhooks(limit=10, lease_seconds=30, now=now),
    )
    # The claimer dies without acking or rescheduling; the lease runs out.
    again = await other.lease_webhooks(limit=10, lease_seconds=30, now=now + 31)
    await other.reschedule_webhook("hooked", attempts=again[0].attempts + 1, due_at=now + 100)
    third = await store.lease_webhooks(limit=10, lease_seconds=30, now=now + 101)

    assert sorted(len(claim) for claim in claims) == [0, 1]
    assert [delivery.attempts for claim in claims for delivery in claim] == [0]
    assert [delivery.attempts for delivery in again] == [1]
    assert [delivery.attempts for delivery in third] == [2]


async def test_retries_noted_within_a_dispatch_count_when_the_lease_is_lost(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store(max_attempts=3)
    await store.submit(make_job("retried"))
    assert (await store.lease(APP, holder=HOLDER, lease_seconds=LEASE)) is not None
    await store.note_attempts("retried", holder="someone-else", attempts=5)  # not the holder
    await store.note_attempts("retried", holder=HOLDER, attempts=2)  # two attempts ended
    await store.note_attempts("retried", holder=HOLDER, attempts=1)  # never lowers it
    noted = await store.view("retried")
    await store.expire(now=time.time() + LEASE + 1)  # the gateway died during attempt 3
    view = await store.view("retried")

    assert noted is not None and noted.attempts == 2
    assert view is not None and view.state is queueing.JobState.COMPLETED
    assert view.result is not None and view.result.error_type == "attempts_exhausted"

"""A job's owner (its submitter's API key id) on both queue store backends.

The status, result and cancel routes decide who may see a request from the owner `view` returns
(docs/security.md, "Queued requests, uploads and ids"), so every backend must return it in the
same read as the state, keep it through every state and a reopen, and recover it for jobs an
older gateway stored with only its caller header.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable

import redis.asyncio

from kubefal_gateway import queueing
from kubefal_gateway.stores import redis_store, sqlite_store

OpenStore = Callable[..., Awaitable[queueing.QueueStore]]

APP = "team-o/shared"
HOLDER = "gateway-1"


def make_job(*, owner: str | None, headers: queueing.Headers = ()) -> queueing.Job:
    return queueing.Job(
        request_id=queueing.new_request_id(),
        app_id=APP,
        path="/",
        method="POST",
        headers=(("content-type", "application/json"), *headers),
        body=b"{}",
        submitted_at=time.time(),
        owner=owner,
    )


def done() -> queueing.Result:
    return queueing.Result(status_code=200, headers=(), body=b"{}", completed_at=time.time())


async def test_view_returns_the_owner_in_every_state_and_after_a_reopen(
    open_queue_store: OpenStore,
) -> None:
    store = await open_queue_store()
    keyed = make_job(owner="kid-a")
    anonymous = make_job(owner=None)
    for job in (keyed, anonymous):
        await store.submit(job)
    queued = await store.view(keyed.request_id)
    assert queued is not None and queued.state is queueing.JobState.IN_QUEUE
    assert queued.owner == "kid-a"
    leased = await store.lease(APP, holder=HOLDER, lease_seconds=30)
    assert leased is not None and leased.request_id == keyed.request_id
    assert leased.owner == "kid-a"
    running = await store.view(keyed.request_id, with_logs=True)
    assert running is not None and running.state is queueing.JobState.IN_PROGRESS
    assert running.owner == "kid-a"
    assert await store.complete(keyed.request_id, holder=HOLDER, result=done())
    await store.close()
    reopened = await open_queue_store()
    completed = await reopened.view(keyed.request_id, with_body=True)
    assert completed is not None and completed.state is queueing.JobState.COMPLETED
    assert completed.owner == "kid-a"
    unowned = await reopened.view(anonymous.request_id)
    assert unowned is not None and unowned.owner is None


async def test_a_job_stored_before_owners_existed_gets_its_owner_from_its_caller_header(
    open_queue_store: OpenStore, store_backend: str, redis_url: str
) -> None:
    """An older gateway stored the submitter only as the `x-kubefal-caller` header of the job:
    the SQLite store backfills the new column from it at open, the Redis view reads it."""
    store = await open_queue_store()
    legacy = make_job(owner=None, headers=(("x-kubefal-caller", "kid-old"),))
    legacy_anonymous = make_job(owner=None)
    for job in (legacy, legacy_anonymous):
        await store.submit(job)
    if store_backend == "sqlite":
        assert isinstance(store, sqlite_store.SqliteQueueStore)
        path = store.path
        await store.close()
        with sqlite3.connect(path) as database:  # the schema of a gateway before owners
            database.execute("ALTER TABLE jobs DROP COLUMN owner")
        store = await open_queue_store()
    else:
        assert isinstance(store, redis_store.RedisQueueStore)
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            for job in (legacy, legacy_anonymous):
                await client.hdel("{" + store.prefix + "}:j:" + job.request_id, "owner")
        finally:
            await client.aclose()
    view = await store.view(legacy.request_id)
    assert view is not None and view.owner == "kid-old"
    anonymous = await store.view(legacy_anonymous.request_id)
    assert anonymous is not None and anonymous.owner is None


async def test_a_job_stored_before_owners_existed_is_leased_with_its_owner(
    open_queue_store: OpenStore,
) -> None:
    """The queue worker runs an older gateway's job as its submitter's (the runner lease's
    caller, and who may poll it while it runs here): the lease decodes the caller header."""
    store = await open_queue_store()
    legacy = make_job(owner=None, headers=(("x-kubefal-caller", "kid-old"),))
    await store.submit(legacy)
    leased = await store.lease(APP, holder=HOLDER, lease_seconds=30)
    assert leased is not None and leased.request_id == legacy.request_id
    assert leased.owner == "kid-old"

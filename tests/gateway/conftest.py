"""Shared fixtures of the gateway tests: a real redis-server and queue stores on both backends.

* ``redis_url``: one redis-server per test session on a free 127.0.0.1 port, no persistence; each
  test isolates itself with its own key prefix instead of flushing.
* ``store_backend`` / ``open_queue_store``: parametrized over ``sqlite`` (a fresh file in the test's
  temp dir) and ``redis``; calling ``open_queue_store()`` again opens another store object on the
  same file or prefix (to test reopening and several gateways), and every store opened is closed
  at teardown.
* ``redis_server``: a redis-server of one test's own, to stop and restart it.
* ``wait_for``: poll an (async) predicate until it holds or a generous timeout runs out.
* ``receiver``: a webhook receiver on 127.0.0.1 answering 200 (``webhook_harness.Receiver``).
"""

from __future__ import annotations

import asyncio
import inspect
import pathlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from kubefal_gateway import queueing
from kubefal_gateway.stores import redis_store, sqlite_store
from testkit.redis import RedisServer
from tests.gateway.webhook_harness import Receiver

STARTUP_TIMEOUT = 30.0

OpenStore = Callable[..., Awaitable[queueing.QueueStore]]
WaitFor = Callable[..., Awaitable[None]]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a throw-away redis-server (started once per session, killed at the end)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_server(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may stop and start again."""
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def store_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
async def open_queue_store(
    store_backend: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> AsyncIterator[OpenStore]:
    """Open stores of the parametrized backend, all on the same file or Redis key prefix."""
    opened: list[queueing.QueueStore] = []
    database = tmp_path / "queue.db"
    prefix = f"test-{uuid.uuid4().hex}"
    url = request.getfixturevalue("redis_url") if store_backend == "redis" else ""

    async def open_store(**options: Any) -> queueing.QueueStore:
        options.setdefault("housekeeping_interval", None)
        store: queueing.QueueStore
        if store_backend == "sqlite":
            store = await sqlite_store.SqliteQueueStore.open(str(database), **options)
        else:
            store = await redis_store.RedisQueueStore.open(url, prefix=prefix, **options)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()
    if store_backend == "redis":
        cleaner = await redis_store.RedisQueueStore.open(
            url, prefix=prefix, housekeeping_interval=None
        )
        await cleaner.flush_key_space()
        await cleaner.close()


@pytest.fixture
def wait_for() -> WaitFor:
    """``await wait_for(predicate, timeout=30, message=...)``; the predicate may be async."""

    async def wait(
        predicate: Callable[[], Any], *, timeout: float = 30.0, message: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            outcome = predicate()
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}")
            await asyncio.sleep(0.02)

    return wait


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver(statuses=[])
    await server.start()
    yield server
    await server.stop()

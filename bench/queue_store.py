"""Per-job CPU cost of the durable queue stores against a no-durability in-memory baseline.

Each job does what the gateway does for one queued request: submit (the HTTP handler), lease and
complete (the dispatcher), and one status view plus one result view (the client). Jobs run from
``--concurrency`` concurrent coroutines on uvloop. The figure is the benchmark process's CPU time
(user + system) per job; for Redis, redis-server's CPU per job is printed too. The baseline is a
dict-and-deque store doing the same bookkeeping without durability, measured in the same run.

``--backend`` picks how the Redis store reaches redis-server: ``pipeline`` (default, the store's
own hand-written auto-pipeline, one connection, every command of a loop turn in one write),
``redis-py`` (the same store, scripts and commands, each command sent by redis-py's asyncio client
from its connection pool, one round trip each) or ``both`` (two rows in one run): the comparison
behind docs/design-decisions.md's choice of a hand-written Redis protocol.

Run: ``.venv/bin/python bench/queue_store.py [--jobs 20000] [--concurrency 1 64]
[--backend pipeline|redis-py|both]`` (starts its own redis-server on a free 127.0.0.1 port unless
``--redis-url`` is given).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import redis.asyncio
import uvloop

from kubefal_gateway import queueing
from kubefal_gateway.stores import redis_store, sqlite_store

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import results as bench_results
from testkit.redis import RedisServer

APP = "bench/echo"
RESULT = queueing.Result(
    status_code=200,
    headers=(("content-type", "application/json"), ("x-fal-billable-units", "1")),
    body=b'{"ok": true, "n": 1}',
)


class MemoryBaseline:
    """The same operations on dicts, no durability: the floor the stores are compared with."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.queues: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)

    async def submit(self, job: queueing.Job) -> int:
        self.jobs[job.request_id] = {"job": job, "state": 0, "holder": None, "result": None}
        queue = self.queues[job.app_id]
        queue.append(job.request_id)
        return len(queue) - 1

    async def lease(self, app_id: str, *, holder: str, lease_seconds: float) -> queueing.Job | None:
        queue = self.queues[app_id]
        if not queue:
            return None
        entry = self.jobs[queue.popleft()]
        entry["state"], entry["holder"] = 1, holder
        job: queueing.Job = entry["job"]
        return job

    async def complete(self, request_id: str, *, holder: str, result: queueing.Result) -> bool:
        entry = self.jobs[request_id]
        if entry["state"] != 1 or entry["holder"] != holder:
            return False
        entry["state"], entry["result"] = 2, result
        return True

    async def view(self, request_id: str, *, with_body: bool = False) -> queueing.JobView | None:
        entry = self.jobs.get(request_id)
        if entry is None:
            return None
        state = (
            queueing.JobState.IN_QUEUE,
            queueing.JobState.IN_PROGRESS,
            queueing.JobState.COMPLETED,
        )[entry["state"]]
        return queueing.JobView(
            request_id=request_id,
            app_id=entry["job"].app_id,
            state=state,
            queue_position=None,
            logs=None,
            result=entry["result"],
        )

    async def close(self) -> None:
        self.jobs.clear()


REDIS_PY_POOL = 64
"""Connections of redis-py's pool (callers beyond it wait for one)."""


class RedisPyCalls:
    """The store's command interface (``call`` -> a future of the reply) over redis-py's asyncio
    client: one command per round trip from a pool of :data:`REDIS_PY_POOL` connections
    (hiredis parses when installed)."""

    def __init__(self, url: str) -> None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=REDIS_PY_POOL)
        self._client = redis.asyncio.Redis(connection_pool=pool)
        # Raw replies, as the auto-pipeline hands them (no HGETALL-to-dict and the like).
        self._client.response_callbacks.clear()

    @property
    def connected(self) -> bool:
        return True

    def call(self, *args: Any) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self._client.execute_command(*args))  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._client.aclose()


async def one_job(store: Any, index: int, holder: str) -> None:
    """One job of its own app per worker: a lease takes that worker's job whatever order
    concurrent commands reach the store in (redis-py's pool does not keep issue order)."""
    request_id = f"{holder}-{index}"
    app_id = f"{APP}-{holder}"
    await store.submit(
        queueing.Job(
            request_id=request_id,
            app_id=app_id,
            path="/",
            method="POST",
            headers=(("content-type", "application/json"),),
            body=b'{"prompt": "hello"}',
            submitted_at=time.time(),
        )
    )
    job = await store.lease(app_id, holder=holder, lease_seconds=30.0)
    assert job is not None
    assert await store.complete(job.request_id, holder=holder, result=RESULT)
    status = await store.view(request_id)
    assert status is not None and status.state is queueing.JobState.COMPLETED
    assert await store.view(request_id, with_body=True) is not None


async def measure(
    open_store: Callable[[], Awaitable[Any]],
    *,
    jobs: int,
    concurrency: int,
    redis_process: psutil.Process | None,
) -> dict[str, float]:
    store = await open_store()
    per_worker = jobs // concurrency

    async def worker(number: int) -> None:
        for index in range(per_worker):
            await one_job(store, index, f"w{number}")

    # Warm-up: caches, scripts, first connections.
    await asyncio.gather(*(one_job(store, index, f"warm{index}") for index in range(200)))
    me = psutil.Process()
    cpu_before = sum(me.cpu_times()[:2])
    redis_before = sum(redis_process.cpu_times()[:2]) if redis_process else 0.0
    wall_before = time.perf_counter()
    await asyncio.gather(*(worker(number) for number in range(concurrency)))
    wall = time.perf_counter() - wall_before
    cpu = sum(me.cpu_times()[:2]) - cpu_before
    redis_cpu = (sum(redis_process.cpu_times()[:2]) - redis_before) if redis_process else 0.0
    await store.close()
    done = per_worker * concurrency
    return {
        "us_per_job": cpu / done * 1e6,
        "redis_us_per_job": redis_cpu / done * 1e6,
        "jobs_per_s": done / wall,
    }


async def run(
    args: argparse.Namespace, redis_url: str, redis_process: psutil.Process | None
) -> dict[str, dict[str, dict[str, float]]]:
    """Measure every backend at every concurrency; returns concurrency -> backend -> figures."""
    collected: dict[str, dict[str, dict[str, float]]] = {}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="kubefal-bench-"))
    counter = iter(range(1_000_000))
    try:

        async def memory() -> Any:
            return MemoryBaseline()

        async def sqlite() -> Any:
            path = workdir / f"queue-{next(counter)}.db"
            return await sqlite_store.SqliteQueueStore.open(str(path), housekeeping_interval=None)

        async def redis() -> Any:
            return await redis_store.RedisQueueStore.open(
                redis_url, prefix=f"bench-{next(counter)}", housekeeping_interval=None
            )

        async def redis_py() -> Any:
            store = await redis()
            pipeline = store._pipeline  # the bench swaps the store's transport, nothing else
            store._pipeline = RedisPyCalls(redis_url)
            await pipeline.close()
            return store

        backends: dict[str, Callable[[], Awaitable[Any]]] = {
            "memory (baseline)": memory,
            "sqlite": sqlite,
        }
        if args.backend in ("pipeline", "both"):
            backends["redis"] = redis
        if args.backend in ("redis-py", "both"):
            backends["redis (redis-py)"] = redis_py
        print(f"{args.jobs} jobs per run; a job = submit + lease + complete + 2 views")
        print(
            f"{'backend':<18} {'conc':>5} {'CPU us/job':>11} {'x baseline':>11} "
            f"{'redis us/job':>13} {'jobs/s':>9}"
        )
        for concurrency in args.concurrency:
            baseline = None
            for name, open_store in backends.items():
                figures = await measure(
                    open_store,
                    jobs=args.jobs,
                    concurrency=concurrency,
                    redis_process=redis_process if name.startswith("redis") else None,
                )
                baseline = baseline or figures["us_per_job"]
                collected.setdefault(str(concurrency), {})[name] = dict(figures)
                redis_cpu = (
                    f"{figures['redis_us_per_job']:.1f}" if name.startswith("redis") else "-"
                )
                print(
                    f"{name:<18} {concurrency:>5} {figures['us_per_job']:>11.1f} "
                    f"{figures['us_per_job'] / baseline:>11.2f} {redis_cpu:>13} "
                    f"{figures['jobs_per_s']:>9.0f}"
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return collected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--redis-url", default=None)
    parser.add_argument(
        "--backend",
        choices=("pipeline", "redis-py", "both"),
        default="pipeline",
        help="how the Redis store sends its commands (default: its own auto-pipeline)",
    )
    bench_results.add_option(parser)
    args = parser.parse_args()
    load_before = os.getloadavg()
    server = None
    redis_process = None
    redis_url = args.redis_url
    if redis_url is None:
        # The same redis-server the tests use (no persistence), answering PING before the run.
        server = RedisServer(pathlib.Path(tempfile.mkdtemp(prefix="kubefal-bench-redis-")))
    try:
        if server is not None:
            server.start()
            assert server.process is not None
            redis_url = server.url
            redis_process = psutil.Process(server.process.pid)
        collected = uvloop.run(run(args, redis_url, redis_process))
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)
    print(f"pid {os.getpid()}: CPU is user+system of this process (psutil), loop: uvloop")
    bench_results.write(
        args.json,
        "queue_store",
        {
            "jobs": args.jobs,
            "backend": args.backend,
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
            # concurrency -> backend -> us_per_job, jobs_per_s (and redis_us_per_job)
            "by_concurrency": collected,
        },
    )


if __name__ == "__main__":
    main()

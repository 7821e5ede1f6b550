"""An accepted job survives a SIGKILL of the process that accepted it (the store half of the
gateway's kill -9 acceptance test), for both backends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable

import pytest

from kubefal_gateway import queueing
from kubefal_gateway.stores import redis_store, sqlite_store

OpenStore = Callable[..., Awaitable[queueing.QueueStore]]

ACCEPTED_BEFORE_KILL = 500

# Prints the ids of jobs whose submit() returned, i.e. that the store promised are durable.
# "forever": submits in concurrent batches until killed from outside.
# "then-die": submits 500 jobs one after the other and SIGKILLs itself the moment the last
# submit() returns, before the event loop runs anything else.
SUBMITTER = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    from kubefal_gateway import queueing
    from kubefal_gateway.stores import redis_store, sqlite_store

    def job(request_id):
        return queueing.Job(
            request_id=request_id, app_id="team/app", path="/", method="POST",
            headers=(("content-type", "application/json"),), body=b"{}",
            submitted_at=time.time(),
        )

    async def main(mode, backend, location, prefix):
        if backend == "sqlite":
            store = await sqlite_store.SqliteQueueStore.open(location, housekeeping_interval=None)
        else:
            store = await redis_store.RedisQueueStore.open(
                location, prefix=prefix, housekeeping_interval=None
            )
        if mode == "then-die":
            for index in range(500):
                await store.submit(job(f"job-{index:05d}"))
                sys.stdout.write(f"job-{index:05d}\\n")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        batch_number = 0
        while True:
            ids = [f"job-{batch_number:05d}-{index:02d}" for index in range(25)]
            await asyncio.gather(*(store.submit(job(request_id)) for request_id in ids))
            sys.stdout.write("".join(request_id + "\\n" for request_id in ids))
            sys.stdout.flush()
            batch_number += 1

    asyncio.run(main(*sys.argv[1:]))
    """
)


@pytest.mark.parametrize("mode", ["forever", "then-die"])
async def test_every_job_accepted_before_a_sigkill_is_there_exactly_once_after_reopening(
    open_queue_store: OpenStore, store_backend: str, mode: str, request: pytest.FixtureRequest
) -> None:
    store = await open_queue_store()  # creates the file or key prefix the child will use
    if store_backend == "sqlite":
        location, prefix = _sqlite_path(store), ""
    else:
        location, prefix = request.getfixturevalue("redis_url"), _redis_prefix(store)
    await store.close()

    accepted = _run_and_kill(mode, store_backend, location, prefix)
    reopened = await open_queue_store()
    views = {request_id: await reopened.view(request_id) for request_id in accepted}
    leased: list[str] = []
    while (job := await reopened.lease("team/app", holder="after", lease_seconds=30)) is not None:
        leased.append(job.request_id)

    assert len(accepted) >= ACCEPTED_BEFORE_KILL
    assert all(
        view is not None and view.state is queueing.JobState.IN_QUEUE for view in views.values()
    )
    assert len(leased) == len(set(leased)), "a job was queued twice"
    assert set(accepted) <= set(leased)


def _run_and_kill(mode: str, backend: str, location: str, prefix: str) -> list[str]:
    """Start the submitter, SIGKILL it once it reported enough accepted jobs, return them."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = subprocess.Popen(
        [sys.executable, "-c", SUBMITTER, mode, backend, location, prefix],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    accepted: list[str] = []
    deadline = time.monotonic() + 120
    try:
        assert child.stdout is not None
        while len(accepted) < ACCEPTED_BEFORE_KILL and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            accepted.append(line.strip())
        child.send_signal(signal.SIGKILL)
        # Lines the child wrote before dying are also accepted jobs.
        remaining, _ = child.communicate(timeout=30)
        accepted.extend(line for line in remaining.splitlines() if line.strip())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    return accepted


def _sqlite_path(store: queueing.QueueStore) -> str:
    assert isinstance(store, sqlite_store.SqliteQueueStore)
    return store.path


def _redis_prefix(store: queueing.QueueStore) -> str:
    assert isinstance(store, redis_store.RedisQueueStore)
    return store.prefix

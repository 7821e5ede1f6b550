"""The Redis queue store behind Redis Sentinel: a real master, replica and redis-sentinel, and a
real failover; the store follows the new master and keeps the jobs replicated before it."""

from __future__ import annotations

import pathlib
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator

import pytest
import redis

from kubefal_gateway import queueing
from kubefal_gateway.stores import opener, redis_store
from testkit import processes
from testkit.ports import free_port
from testkit.redis import RedisServer, redis_server_binary

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

WaitFor = Callable[..., Awaitable[None]]
APP = "team-a/sentinel"
SERVICE = "kubefal-queue"


class _Process:
    def __init__(self, command: list[str]) -> None:
        self.popen = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        processes.stop(self.popen, timeout=10)


def _until(predicate: Callable[[], bool], message: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except redis.exceptions.RedisError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {message}")
        time.sleep(0.05)


def _role(port: int) -> str:
    with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2) as client:
        return str(client.execute_command("ROLE")[0].decode())


def _master_port(sentinel_port: int) -> int:
    with redis.Redis(host="127.0.0.1", port=sentinel_port, socket_timeout=2) as client:
        _host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)


@pytest.fixture
def sentinel_setup(tmp_path: pathlib.Path) -> Iterator[tuple[RedisServer, int, int]]:
    """(master, replica port, sentinel port): one replica and one Sentinel (quorum 1)."""
    (tmp_path / "master").mkdir()
    master = RedisServer(tmp_path / "master").start()
    (tmp_path / "replica").mkdir()
    replica = RedisServer(
        tmp_path / "replica", extra_args=("--replicaof", "127.0.0.1", str(master.port))
    ).start()
    replica_port, sentinel_port = replica.port, free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
        f"sentinel failover-timeout {SERVICE} 5000\n"
    )
    sentinel = _Process([redis_server_binary(), str(config), "--sentinel"])
    try:
        _until(lambda: _role(replica_port) == "slave", "the replica")

        def knows_the_replica() -> bool:
            with redis.Redis(host="127.0.0.1", port=sentinel_port, socket_timeout=2) as client:
                return bool(client.execute_command("SENTINEL", "REPLICAS", SERVICE))

        _until(knows_the_replica, "the Sentinel discovering the replica")
        yield master, replica_port, sentinel_port
    finally:
        sentinel.stop()
        replica.stop()
        master.stop()


def _job(request_id: str) -> queueing.Job:
    return queueing.Job(
        request_id=request_id,
        app_id=APP,
        path="/",
        method="POST",
        headers=(),
        body=b"{}",
        submitted_at=time.time(),
    )


async def test_the_store_follows_a_sentinel_failover_and_keeps_replicated_jobs(
    sentinel_setup: tuple[RedisServer, int, int], wait_for: WaitFor
) -> None:
    master, replica_port, sentinel_port = sentinel_setup
    store = await opener.open_store(
        f"redis+sentinel://127.0.0.1:{sentinel_port}/{SERVICE}/0?prefix=s-{uuid.uuid4().hex}",
        housekeeping_interval=None,
        redis_timeout=1.0,
    )
    try:
        assert isinstance(store, redis_store.RedisQueueStore)
        await store.submit(_job("before-failover"))
        with redis.Redis(host="127.0.0.1", port=master.port, socket_timeout=10) as client:
            assert client.execute_command("WAIT", 1, 5000) == 1  # replicated

        with redis.Redis(host="127.0.0.1", port=sentinel_port, socket_timeout=10) as client:
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        _until(lambda: _master_port(sentinel_port) == replica_port, "the failover")
        _until(lambda: _role(master.port) == "slave", "the old master demoted")

        async def submitted() -> bool:
            try:
                await store.submit(_job("after-failover"))
            except queueing.QueueError:
                return False  # the old master answers READONLY once; the store then moves
            return True

        await wait_for(submitted, message="a submit through the new master")
        leased = []
        while (job := await store.lease(APP, holder="h", lease_seconds=30)) is not None:
            leased.append(job.request_id)
        with redis.Redis(host="127.0.0.1", port=replica_port, socket_timeout=5) as client:
            on_new_master = client.dbsize()
    finally:
        await store.close()
    assert leased == ["before-failover", "after-failover"]
    assert on_new_master > 0

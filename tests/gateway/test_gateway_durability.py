"""Accepted requests survive the gateway: kill -9 with a full queue, and two gateways on one Redis.

Plain HTTP here (TLS is covered by the fal_client tests); executions are counted inside the app
(one file per execution), so "ran twice" is visible.
"""

from __future__ import annotations

import asyncio
import collections
import pathlib
from typing import Any

import gwharness
import httpx
import pytest

from testkit.redis import RedisServer

pytestmark = pytest.mark.slow

APP = "team-a/durable"


async def _submit_all(
    urls: list[str], count: int, *, concurrency: int = 32, sleep: float = 0.0
) -> list[dict[str, Any]]:
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as client:

        async def submit(index: int) -> dict[str, Any]:
            async with semaphore:
                response = await client.post(
                    f"{urls[index % len(urls)]}/{APP}",
                    json={"tag": f"job{index:04d}", "text": str(index), "sleep": sleep},
                )
                assert response.status_code == 200, response.text
                return {**response.json(), "tag": f"job{index:04d}"}

        return list(await asyncio.gather(*(submit(index) for index in range(count))))


async def _wait_all(
    base_urls: list[str], jobs: list[dict[str, Any]], *, timeout: float
) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:

        async def wait(index: int, job: dict[str, Any]) -> httpx.Response:
            base = base_urls[index % len(base_urls)]
            path = f"{base}/{APP}/requests/{job['request_id']}"
            async with asyncio.timeout(timeout):
                while True:
                    status = await client.get(path + "/status")
                    assert status.status_code in (200, 202), status.text
                    if status.json()["status"] == "COMPLETED":
                        return await client.get(path)
                    await asyncio.sleep(0.2)

        semaphore = asyncio.Semaphore(32)

        async def bounded(index: int, job: dict[str, Any]) -> httpx.Response:
            async with semaphore:
                return await wait(index, job)

        return list(await asyncio.gather(*(bounded(i, job) for i, job in enumerate(jobs))))


def _execution_counts(exec_dir: pathlib.Path) -> collections.Counter[str]:
    return collections.Counter(path.name.split(".")[0] for path in exec_dir.iterdir())


def _static(runner: gwharness.Runner, multiplexing: int) -> dict[str, Any]:
    return {
        "apps": [
            {"id": APP, "auth": "public", "runners": [runner.url], "maxMultiplexing": multiplexing}
        ]
    }


def test_kill_9_with_500_accepted_requests_loses_none_and_completes_each_once(
    tmp_path: pathlib.Path,
) -> None:
    exec_dir = tmp_path / "executions"
    exec_dir.mkdir()
    multiplexing = 8
    runner = gwharness.Runner(
        workdir=tmp_path,
        env={"GATEWAY_TEST_EXEC_DIR": str(exec_dir)},
        max_multiplexing=multiplexing,
    )
    static = _static(runner, multiplexing)
    lease = ["--lease-seconds", "2"]
    first = gwharness.Gateway(workdir=tmp_path, static_config=static, tls=None, extra_args=lease)
    ports = (first.queue_port, first.run_port, first.admin_port)
    second: gwharness.Gateway | None = None
    with gwharness.cleanup(first, runner):
        runner.wait_ready()
        first.wait_ready([APP])
        jobs = asyncio.run(_submit_all([first.queue_url], 500, sleep=0.1))
        first.kill()
        in_flight_at_kill = len(list(exec_dir.iterdir()))
        assert in_flight_at_kill < 500, "the kill came after the queue had drained"
        second = gwharness.Gateway(
            workdir=tmp_path,
            static_config=static,
            tls=None,
            extra_args=lease,
            name="gateway-restarted",
            ports=ports,
        )
        with gwharness.cleanup(second):
            second.wait_ready([APP])
            results = asyncio.run(_wait_all([second.queue_url], jobs, timeout=240))
    for job, result in zip(jobs, results, strict=True):
        assert result.status_code == 200, result.text
        assert result.json()["tag"] == job["tag"]
    counts = _execution_counts(exec_dir)
    assert set(counts) == {job["tag"] for job in jobs}
    repeated = sum(count - 1 for count in counts.values())
    # Only requests a runner was executing when the gateway died can run again (their leases
    # expire); at most `multiplexing` were in flight.
    assert repeated <= multiplexing


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A redis-server of the test's own (the gateways' keys have no per-test prefix)."""
    return redis_server.url


def test_two_gateways_sharing_redis_run_every_request_exactly_once(
    tmp_path: pathlib.Path, redis_url: str
) -> None:
    exec_dir = tmp_path / "executions"
    exec_dir.mkdir()
    runner = gwharness.Runner(
        workdir=tmp_path, env={"GATEWAY_TEST_EXEC_DIR": str(exec_dir)}, max_multiplexing=4
    )
    static = _static(runner, 2)
    one = gwharness.Gateway(
        workdir=tmp_path, static_config=static, tls=None, store=redis_url, name="gateway-one"
    )
    two = gwharness.Gateway(
        workdir=tmp_path, static_config=static, tls=None, store=redis_url, name="gateway-two"
    )
    with gwharness.cleanup(one, two, runner):
        runner.wait_ready()
        one.wait_ready([APP])
        two.wait_ready([APP])
        jobs = asyncio.run(_submit_all([one.queue_url, two.queue_url], 120, sleep=0.01))
        # Poll each request on the gateway that did NOT accept it.
        results = asyncio.run(_wait_all([two.queue_url, one.queue_url], jobs, timeout=240))
    for job, result in zip(jobs, results, strict=True):
        assert result.status_code == 200, result.text
        assert result.json()["tag"] == job["tag"]
    counts = _execution_counts(exec_dir)
    assert counts == collections.Counter({job["tag"]: 1 for job in jobs})


def test_fal_client_works_against_a_redis_backed_gateway(
    tmp_path: pathlib.Path, redis_url: str
) -> None:
    tls = gwharness.Tls(tmp_path)
    runner = gwharness.Runner(workdir=tmp_path, max_multiplexing=2)
    gateway = gwharness.Gateway(
        workdir=tmp_path, static_config=_static(runner, 2), tls=tls, store=redis_url
    )
    with gwharness.cleanup(gateway, runner):
        runner.wait_ready()
        gateway.wait_ready([APP])
        outcome = gwharness.run_client(
            f"""
            import time
            handle = fal_client.submit({APP!r}, arguments={{"text": "redis", "log_lines": 1}})
            result = handle.get()
            status = handle.status(with_logs=True)
            slow = fal_client.submit({APP!r}, arguments={{"sleep": 2}})
            queued = fal_client.submit({APP!r}, arguments={{"sleep": 2}})
            third = fal_client.submit({APP!r}, arguments={{"tag": "cancelled"}})
            third.cancel()
            try:
                third.get()
                cancelled = None
            except fal_client.client.FalClientHTTPError as error:
                cancelled = error.status_code
            emit({{"result": result, "logs": [line["message"] for line in status.logs],
                   "cancelled": cancelled,
                   "run": fal_client.run({APP!r}, arguments={{"text": "s"}})}})
            """,
            env=gateway.client_env("unused:key"),
        )
    assert outcome["result"]["text"] == "redis"
    assert outcome["logs"] == ["log line 0"]
    assert outcome["cancelled"] == 400
    assert outcome["run"]["text"] == "s"

"""Two gateway processes on one redis-server (the chart's HA setup), judged at the runner.

The runner serves a real fal.App (apps/counting_app.py) that counts its concurrent requests and
its runs per tag itself, and runs up to 8 at once (`--max-multiplexing 8`), so only the gateways
can keep the app's `maxMultiplexing: 2`. Checked: the runner never sees more than 2 at once, each
request runs once, both gateways report the same scaling signal (the other one's requests
counted once, not zero or twice), each webhook arrives once, and kill -9 of one gateway loses no
acknowledged job.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import email.message
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import gwharness
import httpx
import orjson
import pytest

from kubefal_gateway import settings
from testkit import waiting
from testkit.redis import RedisServer
from tests.gateway.webhook_harness import webhook_server

pytestmark = pytest.mark.slow

APP = "team-a/counted"
COUNTING_APP = f"{gwharness.APPS_DIR / 'counting_app.py'}::CountingApp"
MULTIPLEXING = 2


@dataclasses.dataclass
class Receiver:
    url: str
    deliveries: collections.Counter[str]
    attempts: collections.Counter[tuple[str, str]]
    """Deliveries per (request id, X-Kubefal-Webhook-Attempt)."""
    lock: threading.Lock


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 counting deliveries per request id (answers 200)."""
    deliveries: collections.Counter[str] = collections.Counter()
    attempts: collections.Counter[tuple[str, str]] = collections.Counter()
    lock = threading.Lock()

    def count(headers: email.message.Message, body: bytes) -> None:
        with lock:
            request_id = orjson.loads(body)["request_id"]
            deliveries[request_id] += 1
            attempts[request_id, headers.get("x-kubefal-webhook-attempt", "")] += 1

    with webhook_server(count) as url:
        yield Receiver(url, deliveries, attempts, lock)


def _gateway(
    tmp_path: pathlib.Path, name: str, runner: gwharness.Runner, redis_url: str
) -> gwharness.Gateway:
    static = {
        "apps": [
            {
                "id": APP,
                "auth": "public",
                "runners": [runner.url],
                "maxMultiplexing": MULTIPLEXING,
            }
        ]
    }
    extra = ["--lease-seconds", "2"]
    if "webhook_allow" in settings.Settings.model_fields:
        extra += ["--webhook-allow", "127.0.0.1/32"]
    return gwharness.Gateway(
        workdir=tmp_path,
        static_config=static,
        tls=None,
        store=redis_url,
        name=name,
        extra_args=extra,
    )


def _stats(runner: gwharness.Runner) -> dict[str, Any]:
    response = httpx.post(runner.url + "/stats", json={}, timeout=30)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


async def _submit(
    client: httpx.AsyncClient, gateway: gwharness.Gateway, tag: str, webhook: str
) -> dict[str, Any]:
    response = await client.post(
        f"{gateway.queue_url}/{APP}",
        params={"fal_webhook": webhook},
        json={"tag": tag, "sleep": 0.15},
    )
    assert response.status_code == 200, response.text
    return {**response.json(), "tag": tag}


async def _result(
    client: httpx.AsyncClient, gateway: gwharness.Gateway, job: dict[str, Any]
) -> httpx.Response:
    base = f"{gateway.queue_url}/{APP}/requests/{job['request_id']}"
    async with asyncio.timeout(180):
        while (await client.get(base + "/status")).json()["status"] != "COMPLETED":
            await asyncio.sleep(0.1)
    return await client.get(base)


async def _run(client: httpx.AsyncClient, gateway: gwharness.Gateway, tag: str) -> httpx.Response:
    return await client.post(f"{gateway.run_url}/{APP}", json={"tag": tag, "sleep": 0.15})


async def _load(
    gateways: list[gwharness.Gateway], prefix: str, webhook: str, *, jobs: int, sync: int
) -> tuple[list[dict[str, Any]], list[httpx.Response]]:
    async with httpx.AsyncClient(timeout=120) as client:
        submits = [
            _submit(client, gateways[index % 2], f"{prefix}-job{index:03d}", webhook)
            for index in range(jobs)
        ]
        runs = [
            _run(client, gateways[index % 2], f"{prefix}-run{index:03d}") for index in range(sync)
        ]
        outcome = await asyncio.gather(asyncio.gather(*submits), asyncio.gather(*runs))
        submitted, ran = outcome
        return list(submitted), list(ran)


async def _results(
    gateways: list[gwharness.Gateway], jobs: list[dict[str, Any]]
) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as client:
        # Each job is polled on the gateway that did not accept it.
        return list(
            await asyncio.gather(
                *(_result(client, gateways[(i + 1) % 2], job) for i, job in enumerate(jobs))
            )
        )


def test_two_gateways_on_one_redis_share_runner_slots_signals_and_webhooks(
    tmp_path: pathlib.Path, redis_server: RedisServer, receiver: Receiver
) -> None:
    runner = gwharness.Runner(workdir=tmp_path, app_ref=COUNTING_APP, max_multiplexing=8)
    one = _gateway(tmp_path, "gateway-one", runner, redis_server.url)
    two = _gateway(tmp_path, "gateway-two", runner, redis_server.url)
    with gwharness.cleanup(one, two, runner):
        runner.wait_ready()
        one.wait_ready([APP])
        two.wait_ready([APP])

        # 1. Requests held on gateway one are counted once by both gateways' signals (gateway two
        # has served nothing of the app yet).
        async def hold() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as client:
                return list(
                    await asyncio.gather(
                        *(
                            client.post(
                                f"{one.run_url}/{APP}", json={"tag": f"held{i}", "sleep": 4}
                            )
                            for i in range(MULTIPLEXING)
                        )
                    )
                )

        held_result: list[list[httpx.Response]] = []
        holder = threading.Thread(target=lambda: held_result.append(asyncio.run(hold())))
        holder.start()
        signals: dict[str, dict[str, Any]] = {}

        def both_count_the_held_requests() -> bool:
            signals["one"], signals["two"] = one.scaling(APP), two.scaling(APP)
            return all(signal["inFlight"] == MULTIPLEXING for signal in signals.values())

        waiting.wait_for(
            both_count_the_held_requests,
            timeout=30,
            description="both signals counting 2 in flight",
        )
        holder.join(timeout=60)

        # 2. Queue and sync load through both gateways at once.
        jobs, ran = asyncio.run(_load([one, two], "load", receiver.url, jobs=40, sync=10))
        results = asyncio.run(_results([one, two], jobs))
        waiting.wait_for(
            lambda: len(receiver.deliveries) >= len(jobs), timeout=60, description="webhooks"
        )
        after_load = _stats(runner)

        # 3. kill -9 of gateway one with acknowledged jobs in flight and queued.
        more, _ = asyncio.run(_load([one, two], "kill", receiver.url, jobs=40, sync=0))
        one.kill()
        more_results = asyncio.run(_results([two, two], more))
        final = _stats(runner)
        # A delivery gateway one had claimed when it died comes back when its claim runs out.
        everything = {job["request_id"] for job in jobs + more}
        waiting.wait_for(
            lambda: everything <= set(receiver.deliveries), timeout=150, description="all webhooks"
        )

    for job, result in zip(jobs + more, results + more_results, strict=True):
        assert result.status_code == 200, result.text
        assert result.json()["tag"] == job["tag"]
    assert [response.status_code for response in ran] == [200] * len(ran)
    assert [r.json()["tag"] for r in ran] == [f"load-run{i:03d}" for i in range(len(ran))]
    # maxMultiplexing held at the runner across both gateways, before and after the kill.
    assert after_load["max_concurrent"] <= MULTIPLEXING
    assert final["max_concurrent"] <= MULTIPLEXING
    # Each request of the load ran exactly once.
    load_tags = {job["tag"] for job in jobs} | {f"load-run{i:03d}" for i in range(len(ran))}
    assert {tag: after_load["runs"].get(tag) for tag in load_tags} == dict.fromkeys(load_tags, 1)
    # One signal per app: both gateways count gateway one's held requests, once.
    assert signals["one"]["inFlight"] == signals["two"]["inFlight"] == MULTIPLEXING
    assert signals["one"]["desiredRunners"] == signals["two"]["desiredRunners"]
    assert [[r.status_code for r in responses] for responses in held_result] == [[200, 200]]
    # Each webhook of the load delivered once (the receiver always answered 200).
    with receiver.lock:
        load_deliveries = {
            job["request_id"]: receiver.deliveries[job["request_id"]] for job in jobs
        }
    assert load_deliveries == {job["request_id"]: 1 for job in jobs}
    # Across the kill too: every job's webhook arrived, never twice with one attempt number.
    with receiver.lock:
        repeated = {key: count for key, count in receiver.attempts.items() if count > 1}
    assert repeated == {}
    # Nothing acknowledged was lost to the kill; only jobs in flight at the kill may run again.
    kill_runs = [final["runs"].get(job["tag"], 0) for job in more]
    assert min(kill_runs) >= 1
    assert sum(count - 1 for count in kill_runs) <= MULTIPLEXING

"""Queue limits and store faults as a client sees them, through real gateway processes (issue 9):
the per-app queue-depth limit (429 + Retry-After), a stalled Redis (503 fast, /readyz 503), and
the queued jobs of a removed app (completed with an error, webhooks fired)."""

from __future__ import annotations

import pathlib
from typing import Any

import gwharness
import httpx
import orjson
import pytest

from kubefal_gateway import settings
from testkit import waiting
from testkit.redis import RedisServer
from tests.gateway.webhook_harness import webhook_server

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

APP = "team-a/limited"


def _static_without_runner() -> dict[str, Any]:
    # A runner URL where nothing listens: submitted jobs stay queued.
    dead = f"http://127.0.0.1:{gwharness.free_port()}"
    return {"apps": [{"id": APP, "auth": "public", "runners": [dead]}]}


def test_a_submit_beyond_the_queue_depth_limit_gets_429_with_retry_after(
    tmp_path: pathlib.Path,
) -> None:
    gateway = gwharness.Gateway(
        workdir=tmp_path,
        static_config=_static_without_runner(),
        tls=None,
        extra_args=["--max-queued-per-app", "2"],
    )
    with gwharness.cleanup(gateway):
        gateway.wait_ready()
        with httpx.Client(timeout=30) as client:
            accepted = [client.post(f"{gateway.queue_url}/{APP}", json={}) for _ in range(2)]
            refused = client.post(f"{gateway.queue_url}/{APP}", json={"tag": "third"})
            statuses = [
                client.get(f"{gateway.queue_url}/{APP}/requests/{r.json()['request_id']}/status")
                for r in accepted
            ]
    assert [response.status_code for response in accepted] == [200, 200]
    assert [response.json()["queue_position"] for response in accepted] == [0, 1]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["content-type"] == "application/json"
    assert "queued requests" in refused.json()["detail"]
    assert refused.json()["error_type"] == "queue_full"
    assert [status.json()["status"] for status in statuses] == ["IN_QUEUE", "IN_QUEUE"]


def test_a_stalled_redis_makes_submits_fail_fast_with_503_and_readyz_not_ready(
    tmp_path: pathlib.Path, redis_server: RedisServer
) -> None:
    gateway, runner = gwharness.gateway_on_redis(tmp_path, redis_server.url, APP)
    with gwharness.cleanup(gateway, runner), httpx.Client(timeout=30) as client:
        runner.wait_ready()
        gateway.wait_ready([APP])
        before = client.post(f"{gateway.queue_url}/{APP}", json={"tag": "before"})
        with redis_server.stalled():
            # The client's 30 s timeout bounds these calls; without the fix a submit hangs.
            during = client.post(f"{gateway.queue_url}/{APP}", json={"tag": "during"})
            readyz: list[httpx.Response] = []

            def not_ready() -> bool:
                readyz.append(client.get(f"{gateway.admin_url}/readyz"))
                return readyz[-1].status_code == 503

            waiting.wait_for(not_ready, timeout=30, description="/readyz reporting 503")
        waiting.wait_for(
            lambda: client.get(f"{gateway.admin_url}/readyz").status_code == 200,
            timeout=30,
            description="/readyz ready again",
        )
        after = client.post(f"{gateway.queue_url}/{APP}", json={"tag": "after"})
        results = [_wait_result(client, gateway, response) for response in (before, after)]
    assert before.status_code == 200
    assert during.status_code == 503
    assert during.headers["content-type"] == "application/json"
    assert "Queue store unavailable" in during.json()["detail"]
    assert "Queue store unavailable" in readyz[-1].json()["detail"]
    assert readyz[-1].json()["ready"] is False
    assert after.status_code == 200
    assert [result.json()["tag"] for result in results] == ["before", "after"]


def _wait_result(
    client: httpx.Client, gateway: gwharness.Gateway, submitted: httpx.Response
) -> httpx.Response:
    base = f"{gateway.queue_url}/{APP}/requests/{submitted.json()['request_id']}"
    waiting.wait_for(
        lambda: client.get(base + "/status").json()["status"] == "COMPLETED",
        timeout=60,
        description="the job completing",
    )
    return client.get(base)


def test_queued_jobs_of_a_removed_app_complete_with_an_error_and_fire_their_webhooks(
    tmp_path: pathlib.Path,
) -> None:
    received: list[dict[str, Any]] = []

    extra = ["--removed-app-grace", "1"]
    if "webhook_allow" in settings.Settings.model_fields:
        extra += ["--webhook-allow", "127.0.0.1/32"]
    with webhook_server(lambda _headers, body: received.append(orjson.loads(body))) as hook:
        before = gwharness.Gateway(
            workdir=tmp_path, static_config=_static_without_runner(), tls=None, extra_args=extra
        )
        with gwharness.cleanup(before), httpx.Client(timeout=30) as client:
            before.wait_ready()
            accepted = [
                client.post(f"{before.queue_url}/{APP}", params={"fal_webhook": hook}, json={})
                for _ in range(2)
            ]
        # The app is deleted while its jobs wait: the next gateway's config no longer has it.
        after = gwharness.Gateway(
            workdir=tmp_path,
            static_config={"apps": [{"id": "team-b/other", "runners": []}]},
            tls=None,
            extra_args=extra,
            name="gateway-after",
        )
        with gwharness.cleanup(after):
            after.wait_ready()
            waiting.wait_for(lambda: len(received) >= 2, timeout=60, description="both webhooks")
    assert [response.status_code for response in accepted] == [200, 200]
    assert sorted(body["request_id"] for body in received) == sorted(
        response.json()["request_id"] for response in accepted
    )
    for body in received:
        assert body["status"] == "ERROR"
        assert body["payload"]["error_type"] == "app_not_found"
        assert APP in body["payload"]["detail"]

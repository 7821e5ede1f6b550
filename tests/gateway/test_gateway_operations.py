"""What operators and the scaler see: scaling signals (read and pushed), health, metrics; one
listener serving both APIs by Host name; the app's requestTimeout."""

from __future__ import annotations

import json
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import gwharness
import httpx
import pytest

from kubefal_gateway import keda_scaler
from testkit import waiting

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[gwharness.Gateway]:
    workdir: pathlib.Path = tmp_path_factory.mktemp("gateway-operations")
    runner = gwharness.Runner(workdir=workdir, max_multiplexing=4)
    port = gwharness.free_port()
    static = {
        "apps": [
            {"id": "ops/echo", "auth": "public", "runners": [runner.url], "maxMultiplexing": 4},
            {
                "id": "ops/bounded",
                "auth": "public",
                "runners": [runner.url],
                "requestTimeout": 1,
                "skipRetryConditions": ["timeout"],
            },
            {
                "id": "ops/cold",
                "auth": "public",
                "runners": [],
                "scaling": {"maxMultiplexing": 2, "maxConcurrency": 5, "keepAlive": 0},
            },
        ]
    }
    started = gwharness.Gateway(
        workdir=workdir,
        static_config=static,
        tls=None,
        ports=(port, port, gwharness.free_port()),
    )
    with gwharness.cleanup(started, runner):
        runner.wait_ready()
        started.wait_ready(["ops/echo"])
        yield started


def test_one_listener_picks_the_queue_api_by_a_queue_host_prefix(
    gateway: gwharness.Gateway,
) -> None:
    url = f"http://127.0.0.1:{gateway.run_port}/ops/echo"
    with httpx.Client(timeout=60) as client:
        queued = client.post(url, json={"text": "q"}, headers={"host": "queue.localhost"})
        ran = client.post(url, json={"text": "r"}, headers={"host": "localhost"})
    assert queued.status_code == 200
    assert queued.json()["status"] == "IN_QUEUE"
    assert queued.json()["status_url"].startswith("http://queue.localhost/ops/echo/requests/")
    assert ran.json()["text"] == "r"


def test_the_app_request_timeout_ends_a_slow_request_with_504(gateway: gwharness.Gateway) -> None:
    with httpx.Client(timeout=60) as client:
        response = client.post(
            f"http://127.0.0.1:{gateway.run_port}/ops/bounded", json={"sleep": 3}
        )
    assert response.status_code == 504
    assert response.json()["error_type"] == "request_timeout"


def test_health_readiness_and_metrics_are_served_on_the_admin_port(
    gateway: gwharness.Gateway,
) -> None:
    with httpx.Client(timeout=30) as client:
        client.post(f"http://127.0.0.1:{gateway.run_port}/ops/echo", json={"text": "m"})
        assert client.get(gateway.admin_url + "/healthz").json() == {"status": "ok"}
        assert client.get(gateway.admin_url + "/readyz").json() == {"ready": True}
        metrics = client.get(gateway.admin_url + "/metrics").text
    for name in (
        "kubefal_gateway_queue_depth",
        "kubefal_gateway_in_flight_requests",
        "kubefal_gateway_runners",
        "kubefal_gateway_desired_runners",
        "kubefal_gateway_dispatch_latency_seconds",
        "kubefal_gateway_request_latency_seconds",
    ):
        assert name in metrics
    assert (
        'kubefal_gateway_request_latency_seconds_count{api="run",app="ops/echo",outcome="ok"}'
        in metrics
    )


def test_a_request_at_zero_runners_is_pushed_to_scaling_watchers_at_once(
    gateway: gwharness.Gateway,
) -> None:
    events: list[dict[str, Any]] = []
    connected = threading.Event()

    def watch() -> None:
        with httpx.stream(
            "GET", gateway.admin_url + "/_kubefal/scaling/watch", timeout=httpx.Timeout(120)
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[len("data: ") :])
                    events.append(event)
                    if event["app"] == "ops/cold":
                        connected.set()
                    if event["app"] == "ops/cold" and event["desiredRunners"] >= 2:
                        return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert connected.wait(60), "the watch sends every app's current signal first"
    cold = [event for event in events if event["app"] == "ops/cold"]
    assert cold[0]["desiredRunners"] == 0
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            submitted = client.post(
                f"http://127.0.0.1:{gateway.queue_port}/ops/cold",
                json={},
                headers={"host": "queue.localhost"},
            )
            assert submitted.status_code == 200
    watcher.join(60)
    assert not watcher.is_alive(), f"no scale-up pushed; events: {events}"
    read = gateway.scaling("ops/cold")
    assert (read["queued"], read["runners"], read["desiredRunners"]) == (3, 0, 2)


def test_keda_and_the_external_metrics_api_serve_the_desired_runner_count(
    tmp_path: pathlib.Path,
) -> None:
    tls = gwharness.Tls(tmp_path)
    keda_port, metrics_port = gwharness.free_port(), gwharness.free_port()
    static = {
        "apps": [
            {
                "id": "ops/cold",
                "auth": "public",
                "runners": [],
                "scaling": {"maxMultiplexing": 2, "keepAlive": 0},
            },
        ]
    }
    gateway = gwharness.Gateway(
        workdir=tmp_path,
        static_config=static,
        tls=tls,
        extra_args=["--keda-port", str(keda_port), "--external-metrics-port", str(metrics_port)],
    )
    metrics_url = (
        f"https://127.0.0.1:{metrics_port}/apis/external.metrics.k8s.io/v1beta1/namespaces/ops/"
        "kubefal-desired-runners?labelSelector=kubefal.io/app%3Dcold"
    )
    reference = keda_scaler.ScaledObjectRef(name="cold", namespace="ops")

    def desired() -> tuple[int, bool, int]:
        with gateway.http() as client:
            value = int(client.get(metrics_url).json()["items"][0]["value"])
        with grpc.insecure_channel(f"127.0.0.1:{keda_port}") as channel:
            is_active = channel.unary_unary(
                f"/{keda_scaler.SERVICE_NAME}/IsActive",
                request_serializer=keda_scaler.ScaledObjectRef.SerializeToString,
                response_deserializer=keda_scaler.IsActiveResponse.FromString,
            )(reference, timeout=10)
            metrics = channel.unary_unary(
                f"/{keda_scaler.SERVICE_NAME}/GetMetrics",
                request_serializer=keda_scaler.GetMetricsRequest.SerializeToString,
                response_deserializer=keda_scaler.GetMetricsResponse.FromString,
            )(keda_scaler.GetMetricsRequest(scaledObjectRef=reference), timeout=10)
        return value, bool(is_active.result), int(metrics.metricValues[0].metricValue)

    with gwharness.cleanup(gateway):
        gateway.wait_ready()
        assert desired() == (0, False, 0)
        with gateway.http() as client:
            for _ in range(3):
                assert client.post(f"{gateway.queue_url}/ops/cold", json={}).status_code == 200
        waiting.wait_for(
            lambda: desired() == (2, True, 2), timeout=30, description="desired runners 2"
        )

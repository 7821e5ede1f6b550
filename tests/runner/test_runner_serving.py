"""The runner serves real fal.App classes exactly as the SDK does, plus its /_kubefal endpoints.

We test these aspects, each against a real runner process and the real fal SDK:
sync and async endpoints; validation errors and OpenAPI from the SDK; request ids generated, passed
through and echoed, and ``x-fal-endpoint`` reaching the app; a setup() that fits a real model;
the app's own health check run by ``/_kubefal/health``; ``/_kubefal/info`` matching the class's
configuration; the Prometheus metrics port.
"""

from __future__ import annotations

import pathlib
import uuid

import httpx
import pytest

from testkit import runners, waiting

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

APPS_DIR = pathlib.Path(__file__).parent / "apps"


def test_sync_and_async_endpoints_answer_like_the_sdk(start_runner: runners.RunnerFactory) -> None:
    runner = start_runner("echo_app.py::EchoApp")
    runner.wait_ready()

    sync_response = httpx.post(f"{runner.base_url}/", json={"text": "hello"}, timeout=30)
    async_response = httpx.post(f"{runner.base_url}/async", json={"text": "world"}, timeout=30)

    assert sync_response.status_code == 200
    assert sync_response.json() == {"text": "hello"}
    assert async_response.status_code == 200
    assert async_response.json() == {"text": "world"}


def test_a_module_path_reference_is_imported_like_a_file_is_run(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("echo_app::EchoApp", extra_env={"PYTHONPATH": str(APPS_DIR)})
    runner.wait_ready()

    response = httpx.post(f"{runner.base_url}/", json={"text": "by module"}, timeout=30)

    assert response.json() == {"text": "by module"}


def test_validation_errors_404s_and_openapi_come_from_the_sdk(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("echo_app.py::EchoApp")
    runner.wait_ready()

    invalid = httpx.post(f"{runner.base_url}/", json={"wrong": 1}, timeout=30)
    missing = httpx.post(f"{runner.base_url}/nowhere", json={}, timeout=30)
    openapi = httpx.get(f"{runner.base_url}/openapi.json", timeout=30)
    sdk_health = httpx.get(f"{runner.base_url}/health", timeout=30)

    assert invalid.status_code == 422
    assert invalid.headers["x-fal-billable-units"] == "0"
    assert invalid.json()["detail"][0]["loc"] == ["body", "text"]
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Path /nowhere not found"}
    assert set(openapi.json()["paths"]) >= {"/", "/async"}
    assert sdk_health.json() == {"version": "unknown"}


def test_request_ids_are_passed_through_generated_and_echoed(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("lifecycle_app.py::LifecycleApp")
    runner.wait_ready()
    given_id = f"gateway-{uuid.uuid4()}"

    with_id = httpx.post(
        f"{runner.base_url}/request-context",
        headers={"x-fal-request-id": given_id, "x-fal-endpoint": "tests/lifecycle/request-context"},
        timeout=30,
    )
    without_id = httpx.post(f"{runner.base_url}/request-context", timeout=30)

    assert with_id.json() == {"request_id": given_id, "endpoint": "tests/lifecycle/request-context"}
    assert with_id.headers["x-fal-request-id"] == given_id
    generated = without_id.headers["x-fal-request-id"]
    assert str(uuid.UUID(generated)) == generated
    assert without_id.json()["request_id"] == generated


def test_setup_loads_a_real_model_and_endpoints_predict_with_it(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("model_app.py::ModelApp")
    runner.wait_ready()

    response = httpx.post(f"{runner.base_url}/predict", json={"x": [0, 10, -1]}, timeout=30)

    assert response.status_code == 200
    assert response.json() == {"y": [2.0, 32.0, -1.0]}


def test_health_endpoint_runs_the_apps_own_health_check(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    unhealthy_file = tmp_path / "unhealthy"
    runner = start_runner(
        "model_app.py::ModelApp", extra_env={"KUBEFAL_TEST_UNHEALTHY_FILE": str(unhealthy_file)}
    )
    runner.wait_ready()

    healthy = runner.get("/_kubefal/health")
    unhealthy_file.touch()
    unhealthy = runner.get("/_kubefal/health")

    assert healthy is not None
    assert healthy.status_code == 200
    assert healthy.json()["healthy"] is True
    assert healthy.json()["path"] == "/healthz"
    assert healthy.json()["status_code"] == 200
    assert unhealthy is not None
    assert unhealthy.status_code == 503
    assert unhealthy.json()["healthy"] is False
    assert unhealthy.json()["status_code"] == 500


def test_health_endpoint_falls_back_to_the_sdk_health_route(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("echo_app.py::EchoApp")
    runner.wait_ready()

    response = runner.get("/_kubefal/health")

    assert response is not None
    assert response.status_code == 200
    assert response.json()["path"] == "/health"


def test_info_reports_the_apps_normalized_fal_configuration(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("model_app.py::ModelApp")
    runner.wait_ready()

    response = runner.get("/_kubefal/info")

    assert response is not None
    info = response.json()
    assert info["app_name"] == "linear-model"
    assert info["auth"] == "private"
    assert info["class_name"] == "ModelApp"
    assert info["machine_types"] == ["GPU-A100", "GPU-H100"]
    assert info["num_gpus"] == 1
    assert info["regions"] == ["eu-west"]
    assert info["keep_alive"] == 120
    assert info["scaling"] == {
        "min_concurrency": 1,
        "max_concurrency": 4,
        "concurrency_buffer": 1,
        "concurrency_buffer_perc": None,
        "scaling_delay": 5,
        "max_multiplexing": 3,
    }
    assert info["timeouts"] == {
        "request_timeout": 120,
        "request_start_timeout": None,
        "startup_timeout": 300,
    }
    assert info["health_check"] == {
        "path": "/healthz",
        "method": "POST",
        "start_period_seconds": None,
        "timeout_seconds": 4,
        "failure_threshold": 2,
        "call_regularly": True,
    }
    assert info["endpoints"] == ["/healthz", "/predict"]
    assert set(info["openapi"]["paths"]) == {"/health", "/healthz", "/predict"}
    assert info["runner"]["state"] == "ready"
    assert info["runner"]["max_multiplexing"] == 3
    assert info["runner"]["in_flight"] == 0


def test_metrics_port_serves_the_sdk_and_runner_metrics(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("echo_app.py::EchoApp")
    runner.wait_ready()
    httpx.post(f"{runner.base_url}/", json={"text": "counted"}, timeout=30)

    def metrics_text() -> str:
        return httpx.get(f"http://127.0.0.1:{runner.metrics_port}/metrics", timeout=10).text

    waiting.wait_for(
        lambda: "http_requests_total" in metrics_text(), timeout=30, description="metrics"
    )
    text = metrics_text()
    assert 'fal_app_info{version="unknown"} 1.0' in text
    assert "kubefal_runner_ready 1.0" in text
    assert "kubefal_runner_max_multiplexing 1.0" in text

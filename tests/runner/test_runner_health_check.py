"""The app's health check as fal runs it, with a real runner.

We test these aspects: with ``call_regularly=False`` the liveness endpoint does not call the
check; a response carrying ``x-fal-runner-health-check`` runs it (the header does not reach the
client); a passing check leaves the runner serving, a failing one makes it unhealthy for good:
readiness and liveness answer 503 and new requests are refused with ``x-kubefal-rejected:
unhealthy`` (so the gateway sends them elsewhere), as fal kills such a runner.
"""

from __future__ import annotations

import httpx
import pytest

from testkit import runners, waiting

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out


def _post(runner: runners.RunnerProcess, path: str, body: object = None) -> httpx.Response:
    return httpx.post(f"{runner.base_url}{path}", json=body or {}, timeout=30)


def _checks(runner: runners.RunnerProcess) -> int:
    count: int = _post(runner, "/checks").json()["checks"]
    return count


def test_a_check_called_only_on_request_runs_when_a_response_asks_for_it(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("health_app.py::HealthApp")
    runner.wait_ready()

    liveness = runner.get("/_kubefal/health")
    assert liveness is not None
    assert liveness.status_code == 200
    assert _checks(runner) == 0  # not called regularly

    answer = _post(runner, "/work", {"ask_for_check": True})
    assert answer.status_code == 200
    assert answer.json() == {"done": True}
    assert "x-fal-runner-health-check" not in answer.headers
    waiting.wait_for(lambda: _checks(runner) == 1, timeout=30, description="the requested check")
    ready = runner.get("/_kubefal/ready")
    assert ready is not None
    assert ready.status_code == 200


def test_a_failed_requested_check_makes_the_runner_unhealthy_for_good(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("health_app.py::HealthApp")
    runner.wait_ready()
    _post(runner, "/break")

    answer = _post(runner, "/work", {"ask_for_check": True})

    assert answer.status_code == 200  # the response that asked is still delivered

    def unready() -> bool:
        response = runner.get("/_kubefal/ready")
        return response is not None and response.status_code == 503

    waiting.wait_for(unready, timeout=30, description="the runner to turn unready")
    ready = runner.get("/_kubefal/ready")
    liveness = runner.get("/_kubefal/health")
    assert ready is not None
    assert liveness is not None
    assert ready.json()["state"] == "unhealthy"
    assert "POST /healthz answered 500" in ready.json()["detail"]
    assert liveness.status_code == 503
    refused = _post(runner, "/work")
    assert refused.status_code == 503
    assert refused.headers["x-kubefal-rejected"] == "unhealthy"
    assert refused.headers["x-fal-needs-retry"] == "1"


def test_the_falapp_health_check_replaces_the_apps_own(
    start_runner: runners.RunnerFactory,
) -> None:
    """KUBEFAL_HEALTH_CHECK (rendered from the FalApp) asks for regular calls: liveness calls."""
    runner = start_runner(
        "health_app.py::HealthApp",
        extra_env={"KUBEFAL_HEALTH_CHECK": '{"path": "/healthz", "callRegularly": true}'},
    )
    runner.wait_ready()

    liveness = runner.get("/_kubefal/health")

    assert liveness is not None
    assert liveness.status_code == 200
    assert _checks(runner) == 1

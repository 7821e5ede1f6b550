"""The runner's lifecycle as Kubernetes sees it: readiness, failed setup, drain on SIGTERM.

We test these aspects, with real runner processes:
the port answers during setup() but readiness (and the app) stay 503 until setup() has finished;
a setup() that raises exits with code 3 and logs the traceback; an app that cannot be loaded and
an unusable setting exit with their own codes; SIGTERM during a long request
stops readiness, lets the request finish with 200, then runs teardown() and exits 0; a request
stuck past the drain timeout does not keep the pod alive and is answered 503 so the gateway
retries it.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import signal

import httpx
import pytest

from testkit import runners, waiting

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

LONG_REQUEST_TIMEOUT_SECONDS = 120.0


def _in_flight(runner: runners.RunnerProcess) -> int:
    response = runner.get("/_kubefal/info")
    return -1 if response is None else int(response.json()["runner"]["in_flight"])


def _ready_state(runner: runners.RunnerProcess) -> tuple[int, str] | None:
    response = runner.get("/_kubefal/ready")
    return None if response is None else (response.status_code, response.json()["state"])


def test_readiness_stays_503_until_setup_finishes(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    setup_gate = tmp_path / "setup-may-finish"
    runner = start_runner(
        "lifecycle_app.py::LifecycleApp", extra_env={"KUBEFAL_TEST_SETUP_GATE": str(setup_gate)}
    )
    runner.wait_listening()

    during_setup = _ready_state(runner)
    app_during_setup = httpx.post(f"{runner.base_url}/stats", timeout=30)
    health_during_setup = runner.get("/_kubefal/health")
    setup_gate.touch()
    runner.wait_ready()

    assert during_setup == (503, "setup")
    assert app_during_setup.status_code == 503
    assert app_during_setup.headers["x-kubefal-rejected"] == "not-ready"
    assert health_during_setup is not None
    assert health_during_setup.status_code == 503
    assert httpx.post(f"{runner.base_url}/stats", timeout=30).status_code == 200


def test_failing_setup_exits_3_with_the_traceback_in_the_log(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("failing_setup_app.py::FailingSetupApp")

    exit_code = runner.wait_exit()

    assert exit_code == 3
    log = runner.stderr()
    assert "setup() failed" in log
    assert "Traceback" in log
    assert "RuntimeError: model weights are missing" in log


@pytest.mark.parametrize(
    ("app", "extra_env", "exit_code", "message"),
    [
        ("echo_app.py::NoSuchApp", {}, 5, "defines no 'NoSuchApp'"),
        ("no_such_module::App", {}, 5, "cannot import app module 'no_such_module'"),
        ("echo_app.py::EchoApp", {"KUBEFAL_MAX_MULTIPLEXING": "none"}, 2, "must be an integer"),
    ],
)
def test_an_unusable_app_or_setting_exits_with_its_own_code_and_message(
    start_runner: runners.RunnerFactory,
    app: str,
    extra_env: dict[str, str],
    exit_code: int,
    message: str,
) -> None:
    runner = start_runner(app, extra_env=extra_env)

    assert runner.wait_exit() == exit_code
    assert message in runner.stderr()


def test_sigterm_lets_a_long_request_finish_then_tears_down_and_exits_0(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    release_gate = tmp_path / "release"
    teardown_marker = tmp_path / "teardown-ran"
    runner = start_runner(
        "lifecycle_app.py::LifecycleApp",
        extra_env={
            "KUBEFAL_TEST_RELEASE_GATE": str(release_gate),
            "KUBEFAL_TEST_TEARDOWN_MARKER": str(teardown_marker),
        },
        extra_args=["--drain-timeout", "120"],
    )
    runner.wait_ready()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        long_request = pool.submit(
            httpx.post, f"{runner.base_url}/hold", timeout=LONG_REQUEST_TIMEOUT_SECONDS
        )
        waiting.wait_for(
            lambda: _in_flight(runner) == 1, timeout=60, description="the request in the app"
        )
        runner.send_signal(signal.SIGTERM)
        waiting.wait_for(
            lambda: _ready_state(runner) == (503, "draining"), timeout=60, description="draining"
        )
        rejected_while_draining = httpx.post(f"{runner.base_url}/stats", timeout=30)
        torn_down_before_release = teardown_marker.exists()
        alive_before_release = runner.process.poll() is None
        release_gate.touch()
        finished = long_request.result(timeout=LONG_REQUEST_TIMEOUT_SECONDS)

    exit_code = runner.wait_exit()

    assert rejected_while_draining.status_code == 503
    assert rejected_while_draining.headers["x-kubefal-rejected"] == "draining"
    assert rejected_while_draining.headers["x-fal-needs-retry"] == "1"
    assert not torn_down_before_release
    assert alive_before_release
    assert finished.status_code == 200
    assert finished.json() == {"completed": 1}
    assert exit_code == 0
    assert teardown_marker.read_text() == "torn down after 1 completed requests"


def test_a_request_stuck_past_the_drain_timeout_does_not_keep_the_runner_alive(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    teardown_marker = tmp_path / "teardown-ran"
    runner = start_runner(
        "lifecycle_app.py::LifecycleApp",
        extra_env={
            "KUBEFAL_TEST_RELEASE_GATE": str(tmp_path / "never-created"),
            "KUBEFAL_TEST_TEARDOWN_MARKER": str(teardown_marker),
            "KUBEFAL_DRAIN_TIMEOUT": "1",
        },
    )
    runner.wait_ready()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        stuck_request = pool.submit(
            httpx.post, f"{runner.base_url}/hold", timeout=LONG_REQUEST_TIMEOUT_SECONDS
        )
        waiting.wait_for(
            lambda: _in_flight(runner) == 1, timeout=60, description="the request in the app"
        )
        runner.send_signal(signal.SIGTERM)
        exit_code = runner.wait_exit()
        cut_off = stuck_request.result(timeout=LONG_REQUEST_TIMEOUT_SECONDS)

    assert exit_code == 0
    assert teardown_marker.exists()
    assert "drain ended with 1 requests still in flight" in runner.stderr()
    assert cut_off.status_code == 503
    assert cut_off.headers["x-fal-needs-retry"] == "1"


def test_sigterm_during_setup_never_becomes_ready_and_still_tears_down(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    setup_gate = tmp_path / "setup-may-finish"
    teardown_marker = tmp_path / "teardown-ran"
    runner = start_runner(
        "lifecycle_app.py::LifecycleApp",
        extra_env={
            "KUBEFAL_TEST_SETUP_GATE": str(setup_gate),
            "KUBEFAL_TEST_TEARDOWN_MARKER": str(teardown_marker),
        },
    )
    runner.wait_listening()

    runner.send_signal(signal.SIGTERM)
    waiting.wait_for(
        lambda: _ready_state(runner) == (503, "draining"), timeout=60, description="draining"
    )
    setup_gate.touch()
    exit_code = runner.wait_exit()

    assert exit_code == 0
    assert teardown_marker.read_text() == "torn down after 0 completed requests"
    log = runner.stderr()
    assert log.index("SIGTERM received: draining") < log.index("startup finished in")

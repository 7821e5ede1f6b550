"""The max_multiplexing guard: the SDK admits any number of requests, the runner admits the limit.

We test these aspects, with real runner processes and concurrent clients:
with a limit of 2 and 6 concurrent slow requests, the app itself never counts more than 2 inside
and the other 4 get a JSON 503 telling the gateway to retry elsewhere; ``/health`` and
``/_kubefal/*`` still answer at the limit; freed slots admit again; WebSocket sessions take slots
too; ``KUBEFAL_MAX_MULTIPLEXING`` overrides the app's own value.
"""

from __future__ import annotations

import concurrent.futures
import pathlib

import httpx
import pytest
import websockets.exceptions
import websockets.sync.client

from testkit import runners, waiting

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

CONCURRENT_REQUESTS = 6
REQUEST_TIMEOUT_SECONDS = 120.0


def _in_flight(runner: runners.RunnerProcess) -> int:
    response = runner.get("/_kubefal/info")
    return -1 if response is None else int(response.json()["runner"]["in_flight"])


def test_at_most_max_multiplexing_requests_are_inside_the_app_and_the_rest_get_503(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    release_gate = tmp_path / "release"
    runner = start_runner(
        "lifecycle_app.py::LifecycleApp",
        extra_env={"KUBEFAL_TEST_RELEASE_GATE": str(release_gate)},
    )
    runner.wait_ready()

    with concurrent.futures.ThreadPoolExecutor(max_workers=CONCURRENT_REQUESTS) as pool:
        futures = [
            pool.submit(httpx.post, f"{runner.base_url}/hold", timeout=REQUEST_TIMEOUT_SECONDS)
            for _ in range(CONCURRENT_REQUESTS)
        ]
        waiting.wait_for(
            lambda: sum(future.done() for future in futures) == CONCURRENT_REQUESTS - 2,
            timeout=60,
            description="the requests beyond the limit to be answered",
        )
        in_flight_at_limit = _in_flight(runner)
        sdk_health_at_limit = httpx.get(f"{runner.base_url}/health", timeout=30)
        ready_at_limit = runner.get("/_kubefal/ready")
        release_gate.touch()
        responses = [future.result(timeout=REQUEST_TIMEOUT_SECONDS) for future in futures]

    admitted = [response for response in responses if response.status_code == 200]
    rejected = [response for response in responses if response.status_code == 503]
    stats = httpx.post(f"{runner.base_url}/stats", timeout=30).json()
    again = httpx.post(f"{runner.base_url}/hold", timeout=REQUEST_TIMEOUT_SECONDS)

    assert in_flight_at_limit == 2
    assert len(admitted) == 2
    assert len(rejected) == CONCURRENT_REQUESTS - 2
    for response in rejected:
        assert response.json() == {
            "detail": "runner is at its max_multiplexing limit of 2 requests"
        }
        assert response.headers["x-fal-needs-retry"] == "1"
        assert response.headers["x-kubefal-rejected"] == "busy"
        assert response.headers["x-fal-request-id"]
    assert stats == {"inside": 0, "most_inside": 2}
    assert sdk_health_at_limit.status_code == 200
    assert ready_at_limit is not None
    assert ready_at_limit.status_code == 200
    assert again.status_code == 200


def test_websocket_sessions_take_slots_and_the_environment_sets_the_limit(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner(
        "lifecycle_app.py::LifecycleApp", extra_env={"KUBEFAL_MAX_MULTIPLEXING": "1"}
    )
    runner.wait_ready()
    ws_url = f"ws://127.0.0.1:{runner.port}/ws"

    with websockets.sync.client.connect(ws_url, open_timeout=30) as session:
        session.send("hello")
        echoed = session.recv(timeout=30)
        busy_http = httpx.post(f"{runner.base_url}/stats", timeout=30)
        with pytest.raises(websockets.exceptions.InvalidStatus) as second_session:
            websockets.sync.client.connect(ws_url, open_timeout=30)
    waiting.wait_for(lambda: _in_flight(runner) == 0, timeout=60, description="the session to end")
    after_close = httpx.post(f"{runner.base_url}/stats", timeout=30)

    assert echoed == "HELLO"
    assert busy_http.status_code == 503
    assert busy_http.headers["x-kubefal-rejected"] == "busy"
    assert second_session.value.response.status_code == 503
    assert second_session.value.response.headers["x-kubefal-rejected"] == "busy"
    assert after_close.status_code == 200
    assert after_close.json()["most_inside"] == 1


def test_an_answered_request_frees_its_slot_while_the_app_works_on_and_a_drain_waits(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    """The slot is free once the answer is complete (the gateway frees its own slot then and may
    send the next request at once); work after the answer (a Starlette background task, middleware
    unwinding) keeps a drain waiting, not the next request."""
    release_gate = tmp_path / "release"
    runner = start_runner(
        "after_answer_app.py::AfterAnswerApp",
        extra_env={"KUBEFAL_TEST_RELEASE_GATE": str(release_gate)},
    )
    runner.wait_ready()
    first = httpx.post(f"{runner.base_url}/answer-then-work", timeout=REQUEST_TIMEOUT_SECONDS)
    # The background task of the first request still runs (until the gate exists), and
    # max_multiplexing is 1: the next request is admitted all the same.
    second = httpx.post(f"{runner.base_url}/stats", timeout=REQUEST_TIMEOUT_SECONDS)
    assert first.status_code == 200 and first.json() == {"answered": True}
    assert second.status_code == 200, second.text
    assert second.json() == {"finished_after_answer": 0}

    def finishing() -> int | None:
        response = runner.get("/_kubefal/info")
        return None if response is None else int(response.json()["runner"]["finishing"])

    # The second request, answered too, may still be unwinding for a moment (then 2 finish);
    # the first one's work after its answer goes on until the gate exists.
    waiting.wait_for(
        lambda: finishing() == 1, timeout=30, description="only the first request finishing"
    )

    runner.send_signal()

    def draining() -> bool:
        response = runner.get("/_kubefal/info")
        return response is not None and response.json()["runner"]["state"] == "draining"

    waiting.wait_for(draining, timeout=60, description="the runner to drain")
    # The drain waits for the work after the answer: the runner still answers its probes.
    still = runner.get("/_kubefal/info")
    assert still is not None and still.json()["runner"]["finishing"] == 1
    release_gate.touch()
    assert runner.wait_exit(timeout=120) == 0

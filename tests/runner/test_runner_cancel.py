"""Cancel by request id, and the log-line count the gateway uses to skip fetching logs.

We test these aspects, with real runner processes and a real fal.App limited to one request at a
time: ``POST /_kubefal/cancel/{id}`` stops an async endpoint (the app sees the cancellation, the
slot is free for the next request, the request's own open connection ends with 499); a client
that hangs up stops an async request the same way, while streamed answers still stream; an unknown
id gets a JSON 404; a sync endpoint cannot be stopped, so its cancel answers 202 and its slot
frees only when its thread returns; ``x-kubefal-log-lines`` counts the lines a request wrote.
"""

from __future__ import annotations

import concurrent.futures
import pathlib
import socket

import httpx
import pytest

from testkit import runners, waiting

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

REQUEST_TIMEOUT_SECONDS = 120.0
WAIT_SECONDS = 60.0


def _in_flight(runner: runners.RunnerProcess) -> int:
    response = runner.get("/_kubefal/info")
    return -1 if response is None else int(response.json()["runner"]["in_flight"])


def _start(start_runner: runners.RunnerFactory, tmp_path: pathlib.Path) -> runners.RunnerProcess:
    runner = start_runner(
        "cancel_app.py::CancelApp",
        extra_env={
            "KUBEFAL_TEST_CANCEL_MARKER": str(tmp_path / "cancelled"),
            "KUBEFAL_TEST_RELEASE_GATE": str(tmp_path / "release"),
        },
    )
    runner.wait_ready()
    return runner


def _post(runner: runners.RunnerProcess, path: str, request_id: str) -> httpx.Response:
    return httpx.post(
        f"{runner.base_url}{path}",
        headers={"x-fal-request-id": request_id},
        timeout=REQUEST_TIMEOUT_SECONDS,
    )


def test_cancelling_an_async_request_stops_it_and_frees_its_slot(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    runner = _start(start_runner, tmp_path)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        sleeping = pool.submit(_post, runner, "/sleep", "sleeper-1")
        waiting.wait_for(lambda: _in_flight(runner) == 1, timeout=WAIT_SECONDS, description="admit")
        busy = _post(runner, "/silent", "while-busy")
        cancel = httpx.post(f"{runner.base_url}/_kubefal/cancel/sleeper-1", timeout=30)
        cancelled = sleeping.result(timeout=REQUEST_TIMEOUT_SECONDS)
    after = _post(runner, "/silent", "after-cancel")

    assert busy.status_code == 503
    assert cancel.status_code == 200
    assert cancel.json() == {"status": "OK"}
    assert (tmp_path / "cancelled").read_text() == "cancelled"
    assert cancelled.status_code == 499
    assert cancelled.json() == {"detail": "Request cancelled by the client."}
    assert cancelled.headers["x-fal-request-id"] == "sleeper-1"
    assert after.status_code == 200
    # The runner answers before its guard releases the slot: wait for it, don't race it.
    waiting.wait_for(
        lambda: _in_flight(runner) == 0, timeout=WAIT_SECONDS, description="slot freed"
    )


def test_a_client_hanging_up_cancels_its_async_request(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    runner = _start(start_runner, tmp_path)

    with socket.create_connection((runner.host, runner.port), timeout=30) as client:
        client.sendall(
            b"POST /sleep HTTP/1.1\r\nhost: runner\r\ncontent-length: 0\r\n"
            b"x-fal-request-id: hangs-up\r\n\r\n"
        )
        waiting.wait_for(lambda: _in_flight(runner) == 1, timeout=WAIT_SECONDS, description="admit")
    marker = tmp_path / "cancelled"
    waiting.wait_for(marker.exists, timeout=WAIT_SECONDS, description="the app to see the cancel")
    waiting.wait_for(lambda: _in_flight(runner) == 0, timeout=WAIT_SECONDS, description="the slot")
    after = _post(runner, "/silent", "after-hang-up")
    streamed = _post(runner, "/stream", "streamed-1")

    assert marker.read_text() == "cancelled"
    assert after.status_code == 200
    assert streamed.status_code == 200
    assert streamed.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert "x-kubefal-log-lines" not in streamed.headers
    assert "Exception in ASGI application" not in runner.output()


def test_cancelling_an_unknown_request_id_is_a_json_404(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    runner = _start(start_runner, tmp_path)

    unknown = httpx.post(f"{runner.base_url}/_kubefal/cancel/never-seen", timeout=30)
    wrong_method = runner.get("/_kubefal/cancel/never-seen")

    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "request never-seen is not in flight on this runner"}
    assert wrong_method is not None
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"


def test_a_cancelled_sync_request_keeps_its_slot_until_its_thread_returns(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    runner = _start(start_runner, tmp_path)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        blocked = pool.submit(_post, runner, "/block", "blocker-1")
        waiting.wait_for(lambda: _in_flight(runner) == 1, timeout=WAIT_SECONDS, description="admit")
        cancel = httpx.post(f"{runner.base_url}/_kubefal/cancel/blocker-1", timeout=30)
        busy_after_cancel = _post(runner, "/silent", "still-busy")
        (tmp_path / "release").touch()
        finished = blocked.result(timeout=REQUEST_TIMEOUT_SECONDS)
    waiting.wait_for(lambda: _in_flight(runner) == 0, timeout=WAIT_SECONDS, description="the slot")
    after = _post(runner, "/silent", "after-thread")

    assert cancel.status_code == 202
    assert cancel.json() == {"status": "CANCELLATION_REQUESTED"}
    assert busy_after_cancel.status_code == 503
    assert busy_after_cancel.headers["x-kubefal-rejected"] == "busy"
    assert finished.status_code == 499
    assert after.status_code == 200


def test_responses_count_the_log_lines_their_request_wrote(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    runner = _start(start_runner, tmp_path)

    silent = _post(runner, "/silent", "silent-1")
    chatty = _post(runner, "/chatty", "chatty-1")
    logs = runner.get("/_kubefal/logs/chatty-1")

    assert silent.status_code == 200
    assert silent.headers["x-kubefal-log-lines"] == "0"
    assert chatty.status_code == 200
    assert chatty.headers["x-kubefal-log-lines"] == "2"
    assert logs is not None
    assert len(logs.json()) == 2

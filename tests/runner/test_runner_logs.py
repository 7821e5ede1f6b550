"""Logs written during a request are kept under its request id, in fal's log entry shape.

We test these aspects, with a real runner: print() (stdout), sys.stderr writes (even split across
several writes) and `logging` records are captured per request and returned by
``/_kubefal/logs/{request_id}``; concurrent requests do not mix their lines; each line is also
written to the real stdout as JSON with its request id; output outside requests passes untouched;
16 MiB of ``\r`` progress redraws are captured one entry per redraw, and SIGTERM still starts the
drain while an endpoint writes progress.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import pathlib
import signal

import httpx
import pytest

from kubefal_runner import request_logs
from testkit import runners, waiting

pytestmark = pytest.mark.slow  # starts real processes; `make unit` leaves it out

WORDS_PER_REQUEST = 40


def _log_request(
    *, runner: runners.RunnerProcess, request_id: str, words: list[str]
) -> httpx.Response:
    return httpx.post(
        f"{runner.base_url}/log",
        json={"words": words},
        headers={"x-fal-request-id": request_id},
        timeout=60,
    )


def _logs(*, runner: runners.RunnerProcess, request_id: str) -> list[dict[str, str]]:
    response = runner.get(f"/_kubefal/logs/{request_id}")
    assert response is not None
    assert response.status_code == 200
    entries: list[dict[str, str]] = response.json()
    return entries


def test_request_output_and_logging_are_kept_under_the_request_id(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("lifecycle_app.py::LifecycleApp")
    runner.wait_ready()

    response = _log_request(runner=runner, request_id="request-logs-1", words=["alpha", "beta"])
    entries = _logs(runner=runner, request_id="request-logs-1")

    assert response.status_code == 200
    assert [(entry["level"], entry["message"]) for entry in entries] == [
        ("STDOUT", "print alpha"),
        ("STDOUT", "print beta"),
        ("STDERR", "stderr partial line"),
        ("WARNING", "warning alpha"),
    ]
    for entry in entries:
        assert entry["source"] == "USER"
        parsed = datetime.datetime.strptime(entry["timestamp"], "%Y-%m-%dT%H:%M:%S.%f")
        assert parsed.year >= 2024
    assert _logs(runner=runner, request_id="never-seen") == []


def test_concurrent_requests_keep_their_own_lines(start_runner: runners.RunnerFactory) -> None:
    runner = start_runner("lifecycle_app.py::LifecycleApp")
    runner.wait_ready()
    words = {
        request_id: [f"{request_id}-{index}" for index in range(WORDS_PER_REQUEST)]
        for request_id in ("left", "right")
    }

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(
            pool.map(
                lambda request_id: _log_request(
                    runner=runner, request_id=request_id, words=words[request_id]
                ),
                words,
            )
        )

    assert [response.status_code for response in responses] == [200, 200]
    for request_id, sent in words.items():
        printed = [
            entry["message"]
            for entry in _logs(runner=runner, request_id=request_id)
            if entry["level"] == "STDOUT"
        ]
        assert printed == [f"print {word}" for word in sent]


def test_captured_lines_reach_stdout_as_json_and_other_output_passes_untouched(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("lifecycle_app.py::LifecycleApp")
    runner.wait_ready()

    _log_request(runner=runner, request_id="request-logs-json", words=["gamma"])
    runner.send_signal()
    runner.wait_exit()

    json_lines = [json.loads(line) for line in runner.stdout().splitlines() if line.startswith("{")]
    assert {
        "request_id": "request-logs-json",
        "message": "print gamma",
        "level": "STDOUT",
        "source": "USER",
    }.items() <= next(line for line in json_lines if line["message"] == "print gamma").items()
    assert "[debug] Python packages installed" in runner.stdout()


def test_sixteen_mebibytes_of_carriage_return_progress_are_captured_per_redraw(
    start_runner: runners.RunnerFactory,
) -> None:
    runner = start_runner("progress_app.py::ProgressApp")
    runner.wait_ready()

    response = httpx.post(
        f"{runner.base_url}/progress",
        json={"mebibytes": 16},
        headers={"x-fal-request-id": "progress-16"},
        timeout=120,
    )
    entries = _logs(runner=runner, request_id="progress-16")

    assert response.status_code == 200
    assert response.json()["redraws"] == 16 * 1024 * 1024 // 4096
    # One entry per redraw and the store keeps the newest ones; the last redraw, never ended by
    # a line break, is kept when the request ends, after the final print.
    assert len(entries) == request_logs.DEFAULT_MAX_ENTRIES_PER_REQUEST
    assert [(entry["level"], entry["message"]) for entry in entries[-2:]] == [
        ("STDOUT", "done"),
        ("STDERR", "#" * 4093 + " |"),
    ]
    assert {entry["message"] for entry in entries[:-2]} == {"#" * 4093 + " |"}


def test_sigterm_drains_while_an_endpoint_writes_progress(
    start_runner: runners.RunnerFactory, tmp_path: pathlib.Path
) -> None:
    gate = tmp_path / "release"
    runner = start_runner(
        "progress_app.py::ProgressApp", extra_env={"KUBEFAL_TEST_RELEASE_GATE": str(gate)}
    )
    runner.wait_ready()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(httpx.post, f"{runner.base_url}/progress-until", json={}, timeout=120)
        waiting.wait_for(
            lambda: (
                runner.get("/_kubefal/info") is not None
                and runner.get("/_kubefal/info").json()["runner"]["in_flight"] == 1
            ),  # type: ignore[union-attr]
            timeout=30,
            description="the progress request to be in flight",
        )
        runner.send_signal(signal.SIGTERM)

        def draining() -> bool:
            response = runner.get("/_kubefal/ready")
            return response is not None and response.json()["state"] == "draining"

        waiting.wait_for(draining, timeout=30, description="the runner to start draining")
        gate.touch()
        response = pending.result(timeout=60)

    assert response.status_code == 200
    assert response.json()["redraws"] > 0
    assert runner.wait_exit() == 0

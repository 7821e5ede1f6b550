"""Logs written during a request are kept under its request id, in fal's log entry shape.

We test these aspects, with a real runner: print() (stdout), sys.stderr writes (even split across
several writes) and `logging` records are captured per request and returned by
``/_kubefal/logs/{request_id}``; concurrent requests do not mix their lines; each line is also
written to the real stdout as JSON with its request id; output outside requests passes untouched.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json

import httpx

from kubefal_runner import testing

WORDS_PER_REQUEST = 40


def _log_request(
    *, runner: testing.RunnerProcess, request_id: str, words: list[str]
) -> httpx.Response:
    return httpx.post(
        f"{runner.base_url}/log",
        json={"words": words},
        headers={"x-fal-request-id": request_id},
        timeout=60,
    )


def _logs(*, runner: testing.RunnerProcess, request_id: str) -> list[dict[str, str]]:
    response = runner.get(f"/_kubefal/logs/{request_id}")
    assert response is not None
    assert response.status_code == 200
    entries: list[dict[str, str]] = response.json()
    return entries


def test_request_output_and_logging_are_kept_under_the_request_id(
    start_runner: testing.RunnerFactory,
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


def test_concurrent_requests_keep_their_own_lines(start_runner: testing.RunnerFactory) -> None:
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
    start_runner: testing.RunnerFactory,
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

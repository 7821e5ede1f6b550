"""A status poll of a job running in this gateway is held until the job finishes, within a bound.

fal_client polls a queued request's status every 0.1 s; answering IN_PROGRESS at once made every
job cost at least one extra poll and 0.1 s of latency, and each poll is gateway CPU
(docs/design-decisions.md). `--status-hold-seconds` holds a poll (without logs) of a job running
here: a job that finishes meanwhile is answered COMPLETED at once; one that does not is answered
IN_PROGRESS when the hold ends, never later. Real runner and gateway processes.
"""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import gwharness
import httpx
import pytest

from kubefal_gateway import settings
from testkit import waiting

APP = "team-a/probe"


@pytest.fixture(scope="module")
def exec_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("hold-executions")


@pytest.fixture(scope="module")
def runner(
    tmp_path_factory: pytest.TempPathFactory, exec_dir: pathlib.Path
) -> Iterator[gwharness.Runner]:
    started = gwharness.Runner(
        workdir=tmp_path_factory.mktemp("hold-runner"),
        max_multiplexing=4,
        env={"GATEWAY_TEST_EXEC_DIR": str(exec_dir)},
    )
    with gwharness.cleanup(started):
        started.wait_ready()
        yield started


def _gateway(
    workdir: pathlib.Path, runner: gwharness.Runner, hold: str, *, slots: int = 4
) -> gwharness.Gateway:
    app = {"id": APP, "auth": "public", "maxMultiplexing": slots, "runners": [runner.url]}
    return gwharness.Gateway(
        workdir=workdir,
        static_config={"apps": [app]},
        tls=None,
        extra_args=["--status-hold-seconds", hold],
    )


def _submit_and_wait_running(
    client: httpx.Client, gateway: gwharness.Gateway, exec_dir: pathlib.Path, body: Any
) -> str:
    submitted = client.post(f"{gateway.queue_url}/{APP}", json=body)
    assert submitted.status_code == 200, submitted.text
    # The probe app records each execution as it starts: the job is running on the runner.
    waiting.wait_for(
        lambda: any(exec_dir.glob(f"{body['tag']}.*")),
        timeout=120,
        interval=0.05,
        description="the job running on the runner",
    )
    return str(submitted.json()["request_id"])


def test_a_poll_of_a_job_finishing_within_the_hold_is_answered_completed(
    tmp_path: pathlib.Path, runner: gwharness.Runner, exec_dir: pathlib.Path
) -> None:
    gateway = _gateway(tmp_path, runner, "10")
    tag = uuid.uuid4().hex
    with gwharness.cleanup(gateway), httpx.Client(timeout=120) as client:
        gateway.wait_ready([APP])
        request_id = _submit_and_wait_running(client, gateway, exec_dir, {"sleep": 1.5, "tag": tag})
        status = client.get(f"{gateway.queue_url}/{APP}/requests/{request_id}/status")
        result = client.get(f"{gateway.queue_url}/{APP}/requests/{request_id}")
    assert status.status_code == 200, status.text
    assert status.json()["status"] == "COMPLETED"
    assert status.json()["error"] is None
    assert result.status_code == 200
    assert result.json()["tag"] == tag  # this request's own result


def test_a_poll_of_a_queued_job_dispatched_and_finished_within_the_hold_is_completed(
    tmp_path: pathlib.Path, runner: gwharness.Runner, exec_dir: pathlib.Path
) -> None:
    gateway = _gateway(tmp_path, runner, "10", slots=1)
    tag = uuid.uuid4().hex
    with gwharness.cleanup(gateway), httpx.Client(timeout=120) as client:
        gateway.wait_ready([APP])
        _submit_and_wait_running(client, gateway, exec_dir, {"sleep": 1.5, "tag": "first-" + tag})
        # The app's only slot is busy: this one waits in the queue behind the first.
        queued = client.post(f"{gateway.queue_url}/{APP}", json={"tag": tag}).json()
        assert queued["queue_position"] == 0
        status = client.get(f"{gateway.queue_url}/{APP}/requests/{queued['request_id']}/status")
        result = client.get(f"{gateway.queue_url}/{APP}/requests/{queued['request_id']}")
    assert status.status_code == 200, status.text
    assert status.json()["status"] == "COMPLETED"
    assert result.json()["tag"] == tag


def test_a_poll_of_a_longer_job_is_answered_in_progress_when_the_hold_ends(
    tmp_path: pathlib.Path, runner: gwharness.Runner, exec_dir: pathlib.Path
) -> None:
    gateway = _gateway(tmp_path, runner, "0.3")
    with gwharness.cleanup(gateway), httpx.Client(timeout=120) as client:
        gateway.wait_ready([APP])
        request_id = _submit_and_wait_running(
            client, gateway, exec_dir, {"sleep": 60, "tag": uuid.uuid4().hex}
        )
        status = client.get(f"{gateway.queue_url}/{APP}/requests/{request_id}/status")
        cancelled = client.put(f"{gateway.queue_url}/{APP}/requests/{request_id}/cancel")
    assert status.status_code == 202
    assert status.json() == {"status": "IN_PROGRESS", "logs": None}
    assert cancelled.status_code in (200, 202), cancelled.text


@pytest.mark.parametrize("value", ["-1", "10.5", "nan"])
def test_the_hold_is_bounded(value: str) -> None:
    with pytest.raises(SystemExit, match="status-hold-seconds"):
        settings.load(["--status-hold-seconds", value, "--key-namespace", "*"], environ={})

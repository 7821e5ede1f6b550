"""A job in flight whenever its gateway dies is not dispatched forever (issue 9, poison jobs).

Real processes: a probe runner that records each execution, and a SQLite gateway killed with -9
each time the job reaches the runner, then restarted on the same database. With
`--max-attempts 3` the job runs three times, then completes with a 503 `attempts_exhausted`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import gwharness
import httpx
import pytest

from testkit import waiting

pytestmark = pytest.mark.slow

APP = "team-a/poison"
MAX_ATTEMPTS = 3
COUNTING_APP = f"{gwharness.APPS_DIR / 'counting_app.py'}::CountingApp"
ARGS = ["--max-attempts", str(MAX_ATTEMPTS), "--lease-seconds", "30"]


def kill_at_each_dispatch(
    gateways: list[gwharness.Gateway],
    client: httpx.Client,
    base: str,
    runs: Callable[[], int],
    *,
    workdir: pathlib.Path,
    static: dict[str, Any],
    runs_before: int,
) -> None:
    """Kill the gateway (-9) each time the job at ``base`` reaches the runner again, with the
    job in flight, and start another on the same ports and database; until the job completes.

    ``runs_before``: runs that end by themselves first (the first kill waits for run
    ``runs_before + 1``)."""
    first = gateways[0]
    ports = (first.queue_port, first.run_port, first.admin_port)
    for restart in range(2 * MAX_ATTEMPTS):
        waiting.wait_for(
            lambda seen=restart + runs_before + 1: (
                runs() >= seen or client.get(base + "/status").json()["status"] == "COMPLETED"
            ),
            timeout=60,
            description="the job dispatched again or completed",
        )
        if client.get(base + "/status").json()["status"] == "COMPLETED":
            return
        gateways[-1].kill()  # the gateway dies with the job in flight
        gateway = gwharness.Gateway(
            workdir=workdir,
            static_config=static,
            tls=None,
            extra_args=ARGS,
            name=f"gateway-{restart}",
            ports=ports,
        )
        gateways.append(gateway)
        gateway.wait_ready()


def test_a_job_whose_gateway_dies_each_time_runs_max_attempts_times_then_fails(
    tmp_path: pathlib.Path,
) -> None:
    exec_dir = tmp_path / "executions"
    exec_dir.mkdir()
    # The runner takes more than one request at once, so the runs a dead gateway left behind do
    # not keep the next dispatch out; the app itself allows one at a time.
    runner = gwharness.Runner(
        workdir=tmp_path, env={"GATEWAY_TEST_EXEC_DIR": str(exec_dir)}, max_multiplexing=8
    )
    static = {"apps": [{"id": APP, "auth": "public", "runners": [runner.url]}]}
    gateway = gwharness.Gateway(workdir=tmp_path, static_config=static, tls=None, extra_args=ARGS)
    gateways = [gateway]

    def runs() -> int:
        return sum(1 for path in exec_dir.iterdir() if path.name.startswith("poison."))

    with gwharness.cleanup(runner), httpx.Client(timeout=30) as client:
        try:
            runner.wait_ready()
            gateway.wait_ready([APP])
            submitted = client.post(
                f"{gateway.queue_url}/{APP}", json={"tag": "poison", "sleep": 60}
            )
            assert submitted.status_code == 200, submitted.text
            base = f"{gateway.queue_url}/{APP}/requests/{submitted.json()['request_id']}"
            kill_at_each_dispatch(
                gateways, client, base, runs, workdir=tmp_path, static=static, runs_before=0
            )
            status = client.get(base + "/status").json()
            result = client.get(base)
        except BaseException:
            for process in gateways:
                print(process.output())  # noqa: T201 - shown when the test fails
            raise
        finally:
            for process in gateways:
                process.stop()
    assert runs() == MAX_ATTEMPTS
    assert status["status"] == "COMPLETED"
    assert result.status_code == 503
    assert result.json()["error_type"] == "attempts_exhausted"


def test_retries_within_a_dispatch_and_crashes_share_one_attempt_budget(
    tmp_path: pathlib.Path,
) -> None:
    runner = gwharness.Runner(workdir=tmp_path, app_ref=COUNTING_APP, max_multiplexing=8)
    static = {"apps": [{"id": APP, "auth": "public", "runners": [runner.url]}]}
    gateway = gwharness.Gateway(workdir=tmp_path, static_config=static, tls=None, extra_args=ARGS)
    gateways = [gateway]

    def runs() -> int:
        response = httpx.post(runner.url + "/stats", json={}, timeout=30)
        return int(response.json()["runs"].get("flaky", 0))

    with gwharness.cleanup(runner), httpx.Client(timeout=30) as client:
        try:
            runner.wait_ready()
            gateway.wait_ready([APP])
            # Run 1 asks for a retry (attempt 1 of 3 ends), run 2 hangs: the gateway dies.
            submitted = client.post(
                f"{gateway.queue_url}/{APP}/flaky",
                json={"tag": "flaky", "fail_runs": 1, "sleep": 60},
            )
            assert submitted.status_code == 200, submitted.text
            base = f"{gateway.queue_url}/{APP}/requests/{submitted.json()['request_id']}"
            # Run 1 ends by itself (a retry): the first kill waits for run 2.
            kill_at_each_dispatch(
                gateways, client, base, runs, workdir=tmp_path, static=static, runs_before=1
            )
            result = client.get(base)
            total_runs = runs()
        finally:
            for process in gateways:
                process.stop()
    # Attempt 1 (asked for a retry), attempt 2 (gateway killed), attempt 3 (killed): exhausted.
    assert total_runs == MAX_ATTEMPTS
    assert result.status_code == 503
    assert result.json()["error_type"] == "attempts_exhausted"

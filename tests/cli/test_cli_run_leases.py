"""`fal runners list` and `fal apps runners` show each runner's in-flight requests (fal's
leases: request id, caller, time running) from the gateway, against `kubefal run` (the local
backend), with the real `fal` CLI and `fal_client` configured only by the printed lines: a
queued request (`fal_client.submit`) and a sync one (`fal_client.run`) held in the app."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap
import urllib.request
from typing import Any

import pytest

from tests.cli.test_cli_run import StartCli, WaitFor, _clean_environment, start_cli, started_env
from tests.cli.test_cli_run_controlplane import _fal, _ok, _run_dir

__all__ = ["start_cli"]

APP = "local/cli-held-app"


def _gateway_runners(workdir: pathlib.Path) -> list[dict[str, Any]]:
    state = json.loads((_run_dir(workdir) / "local-run.json").read_text())
    url = f"{state['gateway_admin_url']}/_kubefal/runners?app={APP}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        (app,) = json.loads(response.read())["apps"]
    return list(app["runners"])


def _in_flight_cells(output: str, runner_id: str) -> list[str]:
    """The In Flight cell of each row of fal's runners table naming ``runner_id``.

    In that table In Flight follows Runner ID (an Alias column shows only when some runner
    has one); rows of the four-column requests table below it also start with the runner
    id, so only rows of more than four cells count."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in output.splitlines()]
    return [row[row.index(runner_id) + 1] for row in rows if len(row) > 4 and runner_id in row]


def _client(env: dict[str, str], gate: pathlib.Path, call: str) -> subprocess.Popen[str]:
    """A fal_client call held in the app until ``gate`` exists; prints its result."""
    script = textwrap.dedent(
        f"""
        import json, fal_client
        arguments = {{"gate": {str(gate)!r}, "label": {call!r}}}
        if {call!r} == "submit":
            handle = fal_client.submit({APP!r}, arguments=arguments)
            print(json.dumps({{"request_id": handle.request_id}}), flush=True)
            print(json.dumps(handle.get()), flush=True)
        else:
            print(json.dumps(fal_client.run({APP!r}, arguments=arguments)), flush=True)
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=_clean_environment(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_fal_runners_list_and_apps_runners_show_the_leases_of_requests_in_flight(
    start_cli: StartCli, wait_for: WaitFor, apps_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    cli = start_cli(str(apps_dir / "held_app.py::CliHeldApp"))
    env = started_env(cli, wait_for)
    home = tmp_path / "fal-home"
    key_id = env["FAL_KEY"].split(":", 1)[0]
    wait_for(
        lambda: [r["ready"] for r in _gateway_runners(tmp_path)] == [True],
        timeout=60,
        description="the gateway to see the runner ready",
    )
    gate = tmp_path / "release"
    queued = _client(env, gate, "submit")
    synced = _client(env, gate, "run")
    try:
        assert queued.stdout is not None
        request_id = json.loads(queued.stdout.readline())["request_id"]
        wait_for(
            lambda: len(_gateway_runners(tmp_path)[0]["leases"]) == 2,
            timeout=120,
            description="both requests in flight on the runner",
        )
        (runner,) = _gateway_runners(tmp_path)
        leases = {lease["requestId"]: lease for lease in runner["leases"]}
        assert request_id in leases
        assert {lease["callerId"] for lease in leases.values()} == {key_id}

        listed = _ok(_fal(env, home, "runners", "list"))
        by_app = _ok(_fal(env, home, "apps", "runners", APP))
    finally:
        gate.touch()
        results = [process.communicate(timeout=120)[0] for process in (queued, synced)]

    for output in (listed, by_app):
        assert "Requests: 2" in output, output
        (row,) = [line for line in output.splitlines() if request_id in line]
        runner_id, _request, caller_id, _time = [cell.strip() for cell in row.split("│")[1:-1]]
        assert caller_id == key_id
        # the runners table's In Flight column counts the two requests, none of them missing
        # a lease (fal would print "2 (N)" for N in-flight requests without one)
        assert _in_flight_cells(output, runner_id) == ["2"], output
    assert json.loads(results[0].splitlines()[-1]) == {"label": "submit"}
    assert json.loads(results[1].splitlines()[-1]) == {"label": "run"}
    wait_for(
        lambda: _gateway_runners(tmp_path)[0]["leases"] == [],
        timeout=30,
        description="the leases to end with the requests",
    )
    after = _ok(_fal(env, home, "runners", "list"))
    assert "Requests: 0" in after and request_id not in after

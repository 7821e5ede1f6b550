"""``fal runners list`` and ``fal apps runners`` against a cluster show the requests a runner
works on (fal's leases: request id, the caller's API key id, time running), which the control
plane reads from the gateway's admin listener: the whole of kubefal runs (``e2e.system``) next
to ``python -m kubefal_controlplane``, the app is deployed with the unmodified ``fal`` SDK and
called with the real ``fal_client``."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import textwrap

from fal.api import SyncServerlessClient
from kubernetes import client as k8s

from e2e import controlplane_harness as harness
from e2e import system as whole
from e2e.controlplane_harness import ControlPlaneProcess, run_fal
from kubefal_api import apikeys
from testkit import waiting

cp_tls = harness.cp_tls
key_namespace = harness.key_namespace
key = harness.key
running = harness.running
deploying_plane = harness.deploying_plane

APP_FILE = pathlib.Path(__file__).with_name("apps") / "held.py"


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_fal_runners_list_shows_the_lease_of_a_request_in_flight(
    deploying_plane: ControlPlaneProcess,
    running: whole.System,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    app = f"{namespace}/held"
    client = SyncServerlessClient(host=deploying_plane.host, api_key=str(key))
    client.deploy(f"{APP_FILE}::Held", app_name="held", auth="private")
    gate = tmp_path / "release"
    script = textwrap.dedent(
        f"""
        import json, fal_client
        handle = fal_client.submit({app!r}, arguments={{"gate": {str(gate)!r}}})
        print(json.dumps({{"request_id": handle.request_id}}), flush=True)
        print(json.dumps(handle.get()), flush=True)
        """
    )
    held = subprocess.Popen(
        [sys.executable, "-c", script],
        env=running.client_env(str(key)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert held.stdout is not None
        request_id = json.loads(held.stdout.readline())["request_id"]
        waiting.wait_for(
            lambda: [r.in_flight_requests for r in client.apps.runners(app)] == [1],
            timeout=180,
            description="the request in flight on the app's runner",
        )
        listed = _ok(run_fal(deploying_plane, "runners", "list", key=key, home=tmp_path))
        by_app = _ok(run_fal(deploying_plane, "apps", "runners", app, key=key, home=tmp_path))
        (runner,) = client.apps.runners(app)
    finally:
        gate.touch()
        output, errors = held.communicate(timeout=180)

    assert json.loads(output.splitlines()[-1]) == {"released": True}, errors
    (lease,) = runner.external_metadata["leases"]
    assert lease["request_id"] == request_id and lease["caller_user_id"] == key.id
    assert runner.external_metadata["present_in_group"] is True
    for table in (listed, by_app):
        assert "Requests: 1" in table, table
        (row,) = [line for line in table.splitlines() if request_id in line]
        assert runner.runner_id in row and key.id in row

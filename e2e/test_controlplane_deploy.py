"""``fal deploy`` through the control plane, then ``fal_client`` through the gateway.

The whole of kubefal runs (``e2e.system``: gateway, operator, runner pods as local processes)
next to ``python -m kubefal_controlplane``; the unmodified ``fal`` CLI deploys
``e2e/apps/sleepy.py::Sleepy`` with only ``FAL_GRPC_HOST``, ``FAL_KEY`` and
``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`` set, and the real ``fal_client`` then calls the app.
"""

from __future__ import annotations

import pathlib
import time

from fal.api import SyncServerlessClient
from fal.sdk import RunnerState
from kubernetes import client as k8s

from e2e import controlplane_harness as harness
from e2e import system as whole
from e2e.controlplane_harness import (
    ControlPlaneProcess,
    call_app,
    get_falapp,
    run_fal,
)
from kubefal_api import apikeys
from testkit import waiting

cp_tls = harness.cp_tls
key_namespace = harness.key_namespace
key = harness.key
running = harness.running
deploying_plane = harness.deploying_plane

APP_FILE = pathlib.Path(__file__).with_name("apps") / "sleepy.py"


def test_fal_deploy_creates_a_falapp_that_fal_client_then_calls(
    deploying_plane: ControlPlaneProcess,
    running: whole.System,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    started = time.monotonic()

    deployed = run_fal(
        deploying_plane,
        "deploy",
        f"{APP_FILE}::Sleepy",
        "--app-name",
        "sleepy",
        "--auth",
        "public",
        key=key,
        home=tmp_path,
        timeout=240,
    )
    answer = call_app(
        running,
        f"{namespace}/sleepy",
        key=key,
        arguments={"tag": "deployed"},
        method="subscribe",
        timeout=240,
    )
    first_result_seconds = time.monotonic() - started

    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert f"https://127.0.0.1:{running.ports.run}/{namespace}/sleepy" in deployed.stdout
    assert answer["tag"] == "deployed"
    app = get_falapp(api_client, namespace=namespace, name="sleepy")
    spec = app["spec"]
    assert spec["app"] == "app.py::Sleepy"
    assert spec["auth"] == "public"
    assert spec["machineTypes"] == ["S"]
    assert spec["requirements"] == []
    source = spec["source"]["configMapRef"]["name"]
    config_map = k8s.CoreV1Api(api_client).read_namespaced_config_map(source, namespace)
    assert config_map.data["app.py"] == APP_FILE.read_text()
    assert config_map.metadata.owner_references[0].uid == app["metadata"]["uid"]
    print(f"fal deploy to first fal_client result: {first_result_seconds:.1f} s")

    client = SyncServerlessClient(host=deploying_plane.host, api_key=str(key))
    (runner,) = client.apps.runners(f"{namespace}/sleepy")
    # The gateway's admin listener tells the control plane this runner serves nothing now.
    assert runner.state is RunnerState.IDLE
    assert runner.in_flight_requests == 0
    assert runner.expiration_countdown is not None and 0 <= runner.expiration_countdown <= 60

    client.apps.scale(f"{namespace}/sleepy", keep_alive=5)
    result = client.deploy(f"{APP_FILE}::Sleepy", app_name="sleepy", auth="public")

    assert result.revision == app["metadata"]["uid"]
    kept = get_falapp(api_client, namespace=namespace, name="sleepy")["spec"]["scaling"]
    assert kept["keepAlive"] == 5  # reset_scale=False keeps the app's scaling

    changed = tmp_path / "sleepy.py"
    changed.write_text(APP_FILE.read_text() + "\n# a new revision\n")
    client.deploy(f"{changed}::Sleepy", app_name="sleepy", auth="public", reset_scale=True)

    redeployed = get_falapp(api_client, namespace=namespace, name="sleepy")["spec"]
    assert redeployed["scaling"]["keepAlive"] == 60
    sources = k8s.CoreV1Api(api_client).list_namespaced_config_map(
        namespace, label_selector="kubefal.io/source-of=sleepy"
    )
    assert [c.metadata.name for c in sources.items] == [
        redeployed["source"]["configMapRef"]["name"]
    ]
    assert redeployed["source"]["configMapRef"]["name"] != source


def test_fal_apps_rollout_replaces_the_runners(
    deploying_plane: ControlPlaneProcess,
    running: whole.System,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    client = SyncServerlessClient(host=deploying_plane.host, api_key=str(key))
    client.deploy(f"{APP_FILE}::Sleepy", app_name="sleepy", auth="public")
    client.apps.scale(f"{namespace}/sleepy", min_concurrency=1)
    whole.wait_for_runners(running, 1)
    (before,) = [runner.runner_id for runner in client.apps.runners("sleepy")]

    rolled = run_fal(deploying_plane, "apps", "rollout", "sleepy", key=key, home=tmp_path)

    assert rolled.returncode == 0, rolled.stdout + rolled.stderr

    def replaced() -> bool:
        runners = client.apps.runners("sleepy", state=["running", "idle"])
        return bool(runners) and before not in {runner.runner_id for runner in runners}

    waiting.wait_for(replaced, timeout=120, description="a new runner replacing the old one")


def test_fal_secrets_reach_the_runners_of_a_deployed_app_as_environment_variables(
    deploying_plane: ControlPlaneProcess,
    running: whole.System,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    _ok = run_fal(deploying_plane, "secrets", "set", "ECHO_TOKEN=s3cr3t", key=key, home=tmp_path)
    assert _ok.returncode == 0, _ok.stdout + _ok.stderr
    app_file = pathlib.Path(__file__).with_name("apps") / "secret_echo.py"

    deployed = run_fal(
        deploying_plane,
        "deploy",
        f"{app_file}::SecretEcho",
        "--app-name",
        "secret-echo",
        key=key,
        home=tmp_path,
        timeout=240,
    )
    answer = call_app(
        running,
        f"{namespace}/secret-echo",
        key=key,
        arguments={"name": "ECHO_TOKEN"},
        method="subscribe",
        timeout=240,
    )

    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert answer == {"value": "s3cr3t"}


def test_a_bad_app_name_fails_the_deploy_with_the_reason_naming_the_field(
    deploying_plane: ControlPlaneProcess,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    bad = run_fal(
        deploying_plane,
        "deploy",
        f"{APP_FILE}::Sleepy",
        "--app-name",
        "Not_Valid",
        key=key,
        home=tmp_path,
    )

    assert bad.returncode != 0
    assert "application_name: 'Not_Valid' is not an app name" in bad.stdout + bad.stderr

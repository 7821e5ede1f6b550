"""Files through the control plane's port: ``fal files``, ``fal.sync_dir`` and ``fal deploy``'s
app_files, with the unmodified fal CLI and SDK configured by ``FAL_GRPC_HOST`` alone.

fal sends these REST calls to the gRPC host; the control plane relays ``/files/*`` to the
gateway's REST listener (``--gateway-rest-url``), which owns ``/data`` and the app files. A
``fal deploy`` of an app with ``app_files`` then carries them to its runners: the control
plane reads them back from the gateway with the deploying key and bundles them, and the real
``fal_client`` gets an answer computed from those files.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from e2e import controlplane_harness as harness
from e2e import system as whole
from e2e.conftest import ClusterHandle
from e2e.controlplane_harness import ControlPlaneProcess, call_app, get_falapp
from kubefal_api import apikeys
from kubefal_cli import localca

cp_tls = harness.cp_tls
key_namespace = harness.key_namespace
key = harness.key
running = harness.running

BUNDLED = harness.BUNDLED


@pytest.fixture
def files_plane(
    cluster: ClusterHandle,
    running: whole.System,
    cp_tls: localca.LocalTls,
    key_namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> Iterator[ControlPlaneProcess]:
    """A control plane that relays /files/* to ``running``'s gateway and deploys there."""
    with harness.plane_for_test(
        cluster,
        tls=cp_tls,
        key_namespace=key_namespace,
        tmp_path=tmp_path,
        e2e_logs=e2e_logs,
        arguments=(
            *harness.gateway_arguments(running, relay_files=True),
            "--deploy-timeout=180",
        ),
    ) as process:
        yield process


def _env(
    plane: ControlPlaneProcess, running: whole.System, key: apikeys.ApiKey, home: pathlib.Path
) -> dict[str, str]:
    """FAL_GRPC_HOST, FAL_KEY and the CAs: no FAL_REST_HOST, so every REST call of the SDK
    goes to the control plane's port."""
    env = harness.client_environment(plane, key=key, home=home)
    bundle = home / "cas.pem"
    bundle.write_bytes(plane.tls.ca_bundle.read_bytes() + running.ca.read_bytes())
    env["SSL_CERT_FILE"] = str(bundle)
    return env


def _fal(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [str(harness.FAL_CLI), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_fal_files_and_sync_dir_through_the_control_plane(
    files_plane: ControlPlaneProcess,
    running: whole.System,
    namespace: str,
    key: apikeys.ApiKey,
    tmp_path: pathlib.Path,
) -> None:
    env = _env(files_plane, running, key, tmp_path)
    local = tmp_path / "weights.bin"
    payload = os.urandom(200_000)
    local.write_bytes(payload)

    _fal(env, "files", "upload", str(local), "/data/models/weights.bin")
    listed = _fal(env, "files", "list", "/data/models")
    assert "weights.bin" in listed
    back = tmp_path / "back"
    back.mkdir()
    _fal(env, "files", "download", "/data/models/weights.bin", str(back))
    assert (back / "weights.bin").read_bytes() == payload
    # The file is in the namespace's /data, which that namespace's runners mount.
    on_volume = running.workdir / "data" / namespace / "models" / "weights.bin"
    assert on_volume.read_bytes() == payload

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("synced\n")
    synced = subprocess.run(
        [sys.executable, "-c", f"import fal; print(fal.sync_dir({str(tree)!r}, '/data/synced'))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert (running.workdir / "data" / namespace / "synced" / "sub" / "a.txt").read_text() == (
        "synced\n"
    )


def test_fal_deploy_carries_app_files_to_the_runner(
    files_plane: ControlPlaneProcess,
    running: whole.System,
    api_client: k8s.ApiClient,
    namespace: str,
    key: apikeys.ApiKey,
    tmp_path: pathlib.Path,
) -> None:
    bundled = tmp_path / "bundled"
    shutil.copytree(BUNDLED, bundled, ignore=shutil.ignore_patterns("__pycache__"))
    env = _env(files_plane, running, key, tmp_path)
    # The local package and the app's own modules are importable where the developer deploys
    # from, as fal needs to load the app.
    env["PYTHONPATH"] = f"{bundled}{os.pathsep}{bundled / 'project' / 'app'}"
    deployed = _fal(
        env,
        "deploy",
        f"{bundled / 'project' / 'app' / 'bundled_app.py'}::BundledApp",
        "--app-name",
        "bundled-app",
        timeout=300,
    )
    assert "app_files" in deployed

    answer = call_app(running, f"{namespace}/bundled-app", key=key, timeout=240)

    assert answer == harness.BUNDLED_ANSWER
    spec = get_falapp(api_client, namespace=namespace, name="bundled-app")["spec"]
    assert spec["app"] == "app/app.py::BundledApp"
    paths = {
        item["path"] for part in spec["source"]["configMaps"] for item in part.get("items", [])
    }
    assert {"app/app.py", "assets/notes.txt", "assets/blob.bin", "app/helpers/__init__.py"} <= (
        paths
    )
    assert "assets/ignored.skip" not in paths

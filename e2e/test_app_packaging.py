"""Packaging an app's code, end to end: what reaches the runner pods, and what is refused.

The whole of kubefal runs (``e2e.system``: gateway, operator, runner pods as local processes,
the pod runner writing ConfigMap and projected volumes as the kubelet does) next to
``python -m kubefal_controlplane``.

* ``kubefal deploy`` of an app with ``app_files`` (text, binary, a sub-directory, an ignore
  pattern, a context directory above the app) and a local package (``local_python_modules``):
  the real ``fal_client`` gets an answer computed from every one of those files.
* ``fal deploy`` (the unmodified CLI) of a ``fal.ContainerImage`` app, with no build registry
  configured, fails saying so.
* ``fal deploy`` of an app with ``local_python_modules``: the package reaches the runner inside
  the pickled function, which only the runner loads.
* ``fal deploy`` of an app with requirement layers: the FalApp keeps the layers and the runner
  installs them in order (pip offline, from wheels built by the test).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from kubernetes import client as k8s

from e2e import controlplane_harness as harness
from e2e import system as whole
from e2e.conftest import ClusterHandle
from e2e.controlplane_harness import (
    ControlPlaneProcess,
    call_app,
    get_falapp,
    run_fal,
)
from kubefal_api import apikeys
from tests import offline_wheels

cp_tls = harness.cp_tls
key_namespace = harness.key_namespace
key = harness.key
running = harness.running
deploying_plane = harness.deploying_plane

BUNDLED = harness.BUNDLED
APPS = pathlib.Path(__file__).with_name("apps")


@pytest.fixture
def wheels(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """Runner pods (processes started by the pod runner) install only from these wheels."""
    directory = tmp_path / "wheels"
    directory.mkdir()
    offline_wheels.build_wheel(directory, value="layer one")
    offline_wheels.build_wheel(directory, package="kubefal_probe_extra", value="layer two")
    for name, value in offline_wheels.offline_pip_env(directory).items():
        monkeypatch.setenv(name, value)
    return directory


def _kubefal_deploy(
    cluster: ClusterHandle, namespace: str, bundled: pathlib.Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "KUBEFAL_"))}
    # The local package is importable where the developer deploys from, as fal needs too.
    env["PYTHONPATH"] = str(bundled)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kubefal_cli",
            "deploy",
            f"{bundled / 'project' / 'app' / 'bundled_app.py'}::BundledApp",
            "-n",
            namespace,
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--timeout",
            "180",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_kubefal_deploy_carries_app_files_and_local_packages_to_the_runner(
    cluster: ClusterHandle,
    running: whole.System,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    bundled = tmp_path / "bundled"
    shutil.copytree(BUNDLED, bundled, ignore=shutil.ignore_patterns("__pycache__"))
    deployed = _kubefal_deploy(cluster, namespace, bundled)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    first_maps = _source_config_maps(api_client, namespace)

    answer = call_app(running, f"{namespace}/bundled-app", key=key)

    assert answer == harness.BUNDLED_ANSWER
    spec = get_falapp(api_client, namespace=namespace, name="bundled-app")["spec"]
    assert spec["app"] == "app/bundled_app.py::BundledApp"
    assert {part["name"] for part in spec["source"]["configMaps"]} == first_maps
    assert "Left out: missing.txt" in deployed.stderr

    # New file contents: a new bundle, the runners roll onto it, the earlier one is removed.
    (bundled / "project" / "assets" / "notes.txt").write_text("second revision\n")
    redeployed = _kubefal_deploy(cluster, namespace, bundled)
    assert redeployed.returncode == 0, redeployed.stdout + redeployed.stderr
    second_maps = _source_config_maps(api_client, namespace)
    spec = get_falapp(api_client, namespace=namespace, name="bundled-app")["spec"]
    assert {part["name"] for part in spec["source"]["configMaps"]} == second_maps
    assert second_maps != first_maps


def _source_config_maps(api_client: k8s.ApiClient, namespace: str) -> set[str]:
    listed = k8s.CoreV1Api(api_client).list_namespaced_config_map(
        namespace, label_selector="kubefal.io/source-of=bundled-app"
    )
    return {item.metadata.name for item in listed.items}


def test_fal_deploy_of_a_container_image_app_without_a_build_registry_fails_saying_so(
    deploying_plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    """This operator has no build.registry: the FalApp is created with spec.containerImage,
    the operator says in status.build why it cannot build, and fal deploy fails with that.
    (With a registry the image is built: e2e/test_container_image_build.py.)"""
    deployed = run_fal(
        deploying_plane,
        "deploy",
        f"{APPS / 'container_app.py'}::ContainerApp",
        "--app-name",
        "container-app",
        key=key,
        home=tmp_path,
        timeout=120,
    )

    output = deployed.stdout + deployed.stderr
    assert deployed.returncode != 0, output
    assert "could not be built" in output and "build.registry" in output, output
    falapp = get_falapp(api_client, namespace=namespace, name="container-app")
    assert falapp["spec"]["containerImage"]["dockerfile"].startswith("FROM python:3.11-slim")
    assert falapp["status"]["build"]["phase"] == "Failed"


def test_fal_deploy_carries_local_python_modules_in_the_pickle_to_the_runner(
    deploying_plane: ControlPlaneProcess,
    running: whole.System,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    client = tmp_path / "client"
    shutil.copytree(BUNDLED / "localpkg", client / "localpkg")
    shutil.copy(APPS / "local_modules_app.py", client / "app.py")
    env = harness.client_environment(deploying_plane, key=key, home=tmp_path)
    env["PYTHONPATH"] = str(client)

    deployed = subprocess.run(
        [str(harness.FAL_CLI), "deploy", "app.py::LocalModulesApp", "--app-name", "local-mods"],
        env=env,
        cwd=client,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    answer = call_app(running, f"{namespace}/local-mods", key=key)

    assert answer == {"package": "localpkg (sub.inner)"}
    source = get_falapp(api_client, namespace=namespace, name="local-mods")["spec"]["source"]
    paths = {item["path"] for part in source["configMaps"] for item in part["items"]}
    assert paths == {"app.py", "_kubefal_function.pkl", "_kubefal_local_modules.json"}
    assert "local_python_modules localpkg" in deployed.stdout + deployed.stderr


def test_fal_deploy_keeps_requirement_layers_and_the_runner_installs_them_in_order(
    wheels: pathlib.Path,
    deploying_plane: ControlPlaneProcess,
    running: whole.System,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    deployed = run_fal(
        deploying_plane,
        "deploy",
        f"{APPS / 'layered_app.py'}::LayeredApp",
        "--app-name",
        "layered",
        key=key,
        home=tmp_path,
        timeout=240,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    answer = call_app(running, f"{namespace}/layered", key=key)

    assert answer == {
        "first": "layer one",
        "second": "layer two",
    }
    spec = get_falapp(api_client, namespace=namespace, name="layered")["spec"]
    assert spec["requirementLayers"] == [
        ["kubefal-probe-package==1.0"],
        ["kubefal-probe-extra==1.0"],
    ]
    assert "requirements" not in spec
    assert "in 2 layers, in order" in deployed.stdout + deployed.stderr

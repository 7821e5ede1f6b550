"""``fal deploy`` limits of the control plane, with the unmodified ``fal`` CLI:

* a deploy holds a worker thread until its runners are ready, so at most ``--max-deploys`` run
  at once: one more is refused with ``RESOURCE_EXHAUSTED`` naming the flag (no FalApp written),
  and a deploy whose client went away gives its place back;
* a requirement that is a pip option (``--index-url ...``) is refused with
  ``INVALID_ARGUMENT`` naming the field, before anything is written.

No operator runs here, so a deploy waits for readiness until its client goes away.
"""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from e2e import controlplane_harness as harness
from e2e.conftest import ClusterHandle
from e2e.controlplane_harness import ControlPlaneProcess, client_environment, run_fal
from kubefal_api import apikeys, v1alpha1
from kubefal_cli import localca
from testkit import waiting

cp_tls = harness.cp_tls
key_namespace = harness.key_namespace
key = harness.key

APP_FILE = pathlib.Path(__file__).with_name("apps") / "sleepy.py"


@pytest.fixture
def limited_plane(
    cluster: ClusterHandle,
    falapp_crd: dict[str, Any],
    cp_tls: localca.LocalTls,
    key_namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> Iterator[ControlPlaneProcess]:
    with harness.plane_for_test(
        cluster,
        tls=cp_tls,
        key_namespace=key_namespace,
        tmp_path=tmp_path,
        e2e_logs=e2e_logs,
        arguments=("--max-deploys=1", "--deploy-timeout=600"),
    ) as process:
        yield process


def _falapp(api_client: k8s.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = k8s.CustomObjectsApi(api_client).get_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return found


@contextlib.contextmanager
def _deploy_waiting(
    plane: ControlPlaneProcess,
    key: apikeys.ApiKey,
    home: pathlib.Path,
    name: str,
    *,
    api_client: k8s.ApiClient,
    namespace: str,
    description: str,
) -> Iterator[None]:
    """A ``fal deploy`` of ``name`` in the background, inside the block once it wrote its
    FalApp (it then waits for runners no operator starts, holding a slot); its client is
    killed when the block ends."""
    home.mkdir(exist_ok=True)
    deploy = subprocess.Popen(
        [str(harness.FAL_CLI), "deploy", f"{APP_FILE}::Sleepy", "--app-name", name],
        env=client_environment(plane, key=key, home=home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        waiting.wait_for(
            lambda: _falapp(api_client, namespace, name) is not None,
            timeout=180,
            description=description,
        )
        yield
    finally:
        deploy.kill()
        deploy.wait(timeout=60)


def test_deploys_beyond_max_deploys_are_resource_exhausted_until_one_ends(
    limited_plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    # Written, then waiting for runners no operator will start: it holds the one slot.
    with _deploy_waiting(
        limited_plane,
        key,
        tmp_path / "first",
        "sleepy-one",
        api_client=api_client,
        namespace=namespace,
        description="the first deploy to write its FalApp",
    ):
        refused = run_fal(
            limited_plane,
            "deploy",
            f"{APP_FILE}::Sleepy",
            "--app-name",
            "sleepy-two",
            key=key,
            home=tmp_path / "second",
        )

    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "1 fal deploy calls are in progress" in output and "--max-deploys" in output
    assert _falapp(api_client, namespace, "sleepy-two") is None
    # The first client is gone: its deploy stops waiting and gives the slot back.
    with _deploy_waiting(
        limited_plane,
        key,
        tmp_path / "third",
        "sleepy-three",
        api_client=api_client,
        namespace=namespace,
        description="a later deploy to get the freed slot",
    ):
        pass


def test_a_pip_option_as_a_requirement_is_invalid_argument_naming_the_field(
    limited_plane: ControlPlaneProcess,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    key: apikeys.ApiKey,
) -> None:
    app_file = tmp_path / "smuggled.py"
    app_file.write_text(
        APP_FILE.read_text().replace(
            '    machine_type = "S"\n',
            '    machine_type = "S"\n'
            '    requirements = ["--index-url=http://127.0.0.1:9/simple", "pyfiglet"]\n',
        )
    )

    refused = run_fal(
        limited_plane,
        "deploy",
        f"{app_file}::Sleepy",
        "--app-name",
        "smuggled",
        key=key,
        home=tmp_path,
    )

    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "environments[0].requirements" in output and "is a pip option" in output
    assert _falapp(api_client, namespace, "smuggled") is None

"""The real API server calls the kubefal admission webhook and enforces its verdicts.

``python -m kubefal_webhook`` runs on this machine over TLS with a throwaway CA; a
ValidatingWebhookConfiguration points the API server at ``https://127.0.0.1:<port>/validate``
for FalApps in the test's namespace only (a label on it is the ``namespaceSelector``), so
other tests sharing the cluster never meet this webhook. What the user sees is asserted
through ``kubectl``: the denial naming the field, the next step to take, and warnings.
"""

from __future__ import annotations

import base64
import os
import pathlib
import shlex
import ssl
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from e2e import cluster as local_cluster
from e2e.conftest import ClusterHandle
from kubefal_api import machines, naming, v1alpha1
from testkit import certs, waiting

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SELECTOR_LABEL = "kubefal.io/webhook-e2e"


@pytest.fixture
def webhook_server(
    cluster: ClusterHandle, namespace: str, tmp_path: pathlib.Path, e2e_logs: list[pathlib.Path]
) -> Iterator[tuple[int, pathlib.Path]]:
    """``python -m kubefal_webhook`` on a free loopback port; yields (port, CA file).

    Its machine catalogue is read from the test's namespace, so a test can install its own
    catalogue without touching the shared cluster's.
    """
    ca, cert, key = certs.issue_serving_certificate(
        tmp_path / "tls", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    port = local_cluster.free_port()
    log_path = tmp_path / "webhook.log"
    e2e_logs.append(log_path)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kubefal_webhook",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--tls-cert={cert}",
                f"--tls-key={key}",
                f"--kubeconfig={cluster.kubeconfig}",
                f"--catalogue-namespace={namespace}",
                "--cache-seconds=2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        tls = ssl.create_default_context(cafile=str(ca))

        def ready_or_exited() -> bool:
            if process.poll() is not None:
                return True
            try:
                reply = httpx.get(f"https://127.0.0.1:{port}/readyz", verify=tls, timeout=5)
            except httpx.TransportError:
                return False
            return reply.status_code == 200

        waiting.wait_for(ready_or_exited, timeout=60, description="the webhook's /readyz")
        assert process.poll() is None, f"the webhook exited:\n{log_path.read_text()}"
        yield port, ca
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _kubectl(
    cluster: ClusterHandle, *args: str, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """kubectl with its exit code, stdout and stderr (warnings go to stderr)."""
    return subprocess.run(
        ["kubectl", f"--kubeconfig={cluster.kubeconfig}", *args],
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _falapp(namespace: str, name: str = "sdxl", **spec: Any) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": v1alpha1.API_VERSION,
            "kind": v1alpha1.KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"app": "app.py::MyApp", **spec},
        }
    )


def _apply(
    cluster: ClusterHandle, manifest: str, *, dry_run: bool = False
) -> subprocess.CompletedProcess[str]:
    extra = ["--dry-run=server"] if dry_run else []
    return _kubectl(cluster, "apply", *extra, "-f", "-", input_text=manifest)


@pytest.fixture
def webhook(
    cluster: ClusterHandle,
    api_client: k8s.ApiClient,
    namespace: str,
    falapp_crd: dict[str, Any],
    webhook_server: tuple[int, pathlib.Path],
) -> Iterator[str]:
    """The webhook registered for FalApps in ``namespace`` only; yields its name."""
    port, ca = webhook_server
    core = k8s.CoreV1Api(api_client)
    core.patch_namespace(namespace, {"metadata": {"labels": {SELECTOR_LABEL: namespace}}})
    name = f"kubefal-e2e-{namespace}"[:253]
    registrations = k8s.AdmissionregistrationV1Api(api_client)
    registrations.create_validating_webhook_configuration(
        k8s.V1ValidatingWebhookConfiguration(
            metadata=k8s.V1ObjectMeta(name=name),
            webhooks=[
                k8s.V1ValidatingWebhook(
                    name="falapps.validate.kubefal.io",
                    client_config=k8s.AdmissionregistrationV1WebhookClientConfig(
                        url=f"https://127.0.0.1:{port}/validate",
                        ca_bundle=base64.b64encode(ca.read_bytes()).decode(),
                    ),
                    rules=[
                        k8s.V1RuleWithOperations(
                            api_groups=[v1alpha1.GROUP],
                            api_versions=[v1alpha1.VERSION],
                            operations=["CREATE", "UPDATE"],
                            resources=[v1alpha1.PLURAL],
                            scope="Namespaced",
                        )
                    ],
                    namespace_selector=k8s.V1LabelSelector(
                        match_labels={SELECTOR_LABEL: namespace}
                    ),
                    failure_policy="Fail",
                    side_effects="None",
                    admission_review_versions=["v1"],
                    timeout_seconds=10,
                )
            ],
        )
    )
    try:
        # The API server picks up new webhook configurations asynchronously: wait until a
        # FalApp the webhook must refuse is refused by it.
        probe = _falapp(namespace, "probe", machineTypes=["GPU-X999"])

        last: list[subprocess.CompletedProcess[str]] = []

        def in_effect() -> bool:
            last[:] = [_apply(cluster, probe, dry_run=True)]
            return last[0].returncode != 0 and "'GPU-X999' is not in the machine" in last[0].stderr

        waiting.wait_for(
            in_effect,
            timeout=60,
            description="the webhook to be called",
            describe_last=lambda: f"kubectl said: {last[0].stdout}{last[0].stderr}" if last else "",
        )
        yield name
    finally:
        try:
            registrations.delete_validating_webhook_configuration(name)
        except ApiException as error:
            if error.status != 404:
                raise


def test_an_unknown_machine_type_is_refused_naming_the_field_and_the_known_types(
    cluster: ClusterHandle, namespace: str, webhook: str
) -> None:
    result = _apply(
        cluster, _falapp(namespace, machineTypes=["GPU-H100", "GPU-X999"]), dry_run=True
    )
    assert result.returncode != 0
    assert 'The FalApp "sdxl" is invalid' in result.stderr
    assert "spec.machineTypes[1]: machine type 'GPU-X999' is not in the machine catalogue" in (
        result.stderr
    )
    assert "GPU-H100" in result.stderr.split("known:", 1)[1]


def test_a_missing_source_config_map_is_refused_with_the_next_step_then_accepted(
    cluster: ClusterHandle,
    api_client: k8s.ApiClient,
    namespace: str,
    webhook: str,
    tmp_path: pathlib.Path,
) -> None:
    manifest = _falapp(namespace, source={"configMapRef": {"name": "sdxl-files"}})
    refused = _apply(cluster, manifest)
    assert refused.returncode != 0
    assert "spec.source.configMapRef.name: ConfigMap 'sdxl-files' not found" in refused.stderr
    next_step = f"kubectl create configmap sdxl-files --namespace {namespace} --from-file=app.py"
    assert next_step in refused.stderr

    # Do what the message says, from a directory holding the app.
    (tmp_path / "app.py").write_text("import fal\n\nclass MyApp(fal.App):\n    pass\n")
    created = subprocess.run(
        [*shlex.split(next_step), f"--kubeconfig={cluster.kubeconfig}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr

    accepted = _apply(cluster, manifest)
    assert accepted.returncode == 0, accepted.stderr
    stored = v1alpha1.FalApp.from_kube(
        k8s.CustomObjectsApi(api_client).get_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, "sdxl"
        )
    )
    assert stored.spec.source is not None
    assert stored.spec.source.config_map_ref.name == "sdxl-files"


def test_kubectl_warns_that_a_rolling_update_of_8_gpu_runners_doubles_the_gpus(
    cluster: ClusterHandle, namespace: str, webhook: str
) -> None:
    result = _apply(cluster, _falapp(namespace, machineTypes=["GPU-H100"], numGpus=8), dry_run=True)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert any("twice the GPUs" in line and "recreate" in line for line in warnings), result.stderr

    quiet = _apply(
        cluster,
        _falapp(namespace, machineTypes=["GPU-H100"], numGpus=8, strategy="recreate"),
        dry_run=True,
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "Warning:" not in quiet.stderr


def test_a_gpu_type_no_node_carries_is_accepted_with_a_warning(
    cluster: ClusterHandle, namespace: str, webhook: str
) -> None:
    # The e2e cluster's GPU nodes are H100, H200 and A100: none is a B200.
    result = _apply(cluster, _falapp(namespace, machineTypes=["GPU-B200"]), dry_run=True)
    assert result.returncode == 0, result.stderr
    assert "Warning: no node carries nvidia.com/gpu.product NVIDIA-B200" in result.stderr
    present = _apply(cluster, _falapp(namespace, machineTypes=["GPU-H100"]), dry_run=True)
    assert "no node carries" not in present.stderr


def test_a_missing_secret_is_refused_unless_the_reference_is_optional(
    cluster: ClusterHandle, api_client: k8s.ApiClient, namespace: str, webhook: str
) -> None:
    required = _falapp(namespace, envFrom=[{"secretRef": {"name": "hf-token"}}])
    refused = _apply(cluster, required, dry_run=True)
    assert refused.returncode != 0
    assert "spec.envFrom[0].secretRef.name: Secret 'hf-token' not found" in refused.stderr

    optional = _falapp(namespace, envFrom=[{"secretRef": {"name": "hf-token", "optional": True}}])
    assert _apply(cluster, optional, dry_run=True).returncode == 0

    k8s.CoreV1Api(api_client).create_namespaced_secret(
        namespace,
        k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="hf-token"), string_data={"HF_TOKEN": "x"}),
    )
    accepted = _apply(cluster, required, dry_run=True)
    assert accepted.returncode == 0, accepted.stderr


def test_updates_are_checked_when_the_spec_changes_and_metadata_edits_always_pass(
    cluster: ClusterHandle, api_client: k8s.ApiClient, namespace: str, webhook: str
) -> None:
    core = k8s.CoreV1Api(api_client)
    core.create_namespaced_secret(
        namespace, k8s.V1Secret(metadata=k8s.V1ObjectMeta(name="keys"), string_data={"K": "v"})
    )
    assert (
        _apply(cluster, _falapp(namespace, envFrom=[{"secretRef": {"name": "keys"}}])).returncode
        == 0
    )

    changed = _apply(
        cluster,
        _falapp(namespace, machineTypes=["GPU-X999"], envFrom=[{"secretRef": {"name": "keys"}}]),
    )
    assert changed.returncode != 0
    assert "spec.machineTypes[0]" in changed.stderr

    # A Secret deleted after the fact must not wedge label, annotation or finalizer edits.
    core.delete_namespaced_secret("keys", namespace)
    labelled = _kubectl(cluster, "label", "-n", namespace, "falapp", "sdxl", "team=vision")
    assert labelled.returncode == 0, labelled.stderr
    respec = _kubectl(
        cluster,
        "patch",
        "-n",
        namespace,
        "falapp",
        "sdxl",
        "--type=merge",
        "-p",
        '{"spec": {"requestTimeout": 60}}',
    )
    assert respec.returncode != 0
    assert "spec.envFrom[0].secretRef.name: Secret 'keys' not found" in respec.stderr


def test_the_catalogue_config_map_replaces_the_built_in_machine_types(
    cluster: ClusterHandle, api_client: k8s.ApiClient, namespace: str, webhook: str
) -> None:
    catalogue = machines.MachineCatalogue(
        machine_types={
            "S": machines.MachineType(cpu="1", memory="1Gi"),
            "GPU-MI300": machines.MachineType(
                cpu="16", memory="128Gi", gpu_products=("AMD-MI300X",)
            ),
        }
    )
    k8s.CoreV1Api(api_client).create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name=naming.MACHINE_CATALOGUE_CONFIGMAP),
            data=machines.configmap_data(catalogue),
        ),
    )
    manifest = _falapp(namespace, machineTypes=["GPU-MI300"])

    # The webhook re-reads the catalogue once its short cache expires.
    def accepted_by_webhook() -> subprocess.CompletedProcess[str] | None:
        result = _apply(cluster, manifest, dry_run=True)
        return result if result.returncode == 0 else None

    accepted = waiting.wait_for(
        accepted_by_webhook,
        timeout=60,
        description="the webhook to accept a machine type of the new catalogue",
    )
    assert "Warning: no node carries nvidia.com/gpu.product AMD-MI300X" in accepted.stderr

    refused = _apply(cluster, _falapp(namespace, machineTypes=["GPU-H100"]), dry_run=True)
    assert refused.returncode != 0
    assert "(known: GPU-MI300, S)" in refused.stderr

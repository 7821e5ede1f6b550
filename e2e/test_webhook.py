"""The real API server calls the kubefal admission webhook and enforces its verdicts.

``python -m kubefal_webhook`` runs on this machine over TLS with a throwaway CA; a
ValidatingWebhookConfiguration points the API server at ``https://127.0.0.1:<port>/validate``
for FalApps in the test's namespace only (a label on it is the ``namespaceSelector``), so
other tests sharing the cluster never meet this webhook. What the user sees is asserted
through ``kubectl``: the denial naming the field, the next step to take, and warnings. Its
``/metrics`` (a plain-HTTP port of its own) counts what the API server asked and what a
hostile caller sent.
"""

from __future__ import annotations

import base64
import pathlib
import shlex
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from prometheus_client import parser as exposition

from e2e.conftest import ClusterHandle
from e2e.webhook_process import RunningWebhook, running_webhook
from kubefal_api import machines, naming, v1alpha1
from testkit import waiting

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SELECTOR_LABEL = "kubefal.io/webhook-e2e"


@pytest.fixture
def webhook_server(
    cluster: ClusterHandle, namespace: str, tmp_path: pathlib.Path, e2e_logs: list[pathlib.Path]
) -> Iterator[RunningWebhook]:
    """``python -m kubefal_webhook`` on free loopback ports (HTTPS and /metrics).

    Its machine catalogue is read from the test's namespace, so a test can install its own
    catalogue without touching the shared cluster's.
    """
    e2e_logs.append(tmp_path / "webhook.log")
    with running_webhook(
        cluster.kubeconfig, workdir=tmp_path, catalogue_namespace=namespace
    ) as running:
        yield running


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
    webhook_server: RunningWebhook,
) -> Iterator[str]:
    """The webhook registered for FalApps in ``namespace`` only; yields its name."""
    port, ca = webhook_server.port, webhook_server.ca
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


def _samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus scrape, by name and labels."""
    reply = httpx.get(url, timeout=10)
    assert reply.status_code == 200, reply.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in exposition.text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def _reviews(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], **labels: str) -> float:
    key = ("kubefal_webhook_admission_reviews_total", frozenset(labels.items()))
    return samples.get(key, 0.0)


def test_metrics_count_the_allowed_and_denied_reviews_and_a_hostile_request(
    cluster: ClusterHandle, namespace: str, webhook: str, webhook_server: RunningWebhook
) -> None:
    create = {"kind": "FalApp", "operation": "CREATE"}
    before = _samples(webhook_server.metrics_url)

    allowed = _apply(cluster, _falapp(namespace, "fine", machineTypes=["GPU-H100"]), dry_run=True)
    assert allowed.returncode == 0, allowed.stderr
    denied = _apply(cluster, _falapp(namespace, "bad", machineTypes=["GPU-X999"]), dry_run=True)
    assert denied.returncode != 0 and "GPU-X999" in denied.stderr

    # Not through the API server: a caller that reaches the webhook's port and sends no
    # AdmissionReview, or one nested past the parser's depth, gets a 400 with a detail.
    for body in (b"GET / HTTP/1.0", b"[" * 5000 + b"]" * 5000):
        hostile = httpx.post(
            f"https://127.0.0.1:{webhook_server.port}/validate",
            content=body,
            verify=webhook_server.tls(),
            timeout=10,
        )
        assert hostile.status_code == 400, hostile.text
        assert hostile.json()["detail"]

    after = _samples(webhook_server.metrics_url)
    # The API server may call again (its probe of the registration, retries): at least one
    # each, and the denial is a denial, not an error.
    assert (
        _reviews(after, **create, result="allowed")
        >= _reviews(before, **create, result="allowed") + 1
    )
    assert (
        _reviews(after, **create, result="denied")
        >= _reviews(before, **create, result="denied") + 1
    )
    assert _reviews(after, **create, result="error") == _reviews(before, **create, result="error")
    unknown = {"kind": "unknown", "operation": "unknown", "result": "error"}
    assert _reviews(after, **unknown) == _reviews(before, **unknown) + 2
    invalid = ("kubefal_webhook_invalid_requests_total", frozenset({("reason", "malformed")}))
    assert after[invalid] == before.get(invalid, 0.0) + 2
    latency = (
        "kubefal_webhook_admission_duration_seconds_count",
        frozenset({("kind", "FalApp"), ("result", "denied")}),
    )
    assert after[latency] >= before.get(latency, 0.0) + 1
    # No label value of the webhook's series comes from the caller.
    values = {value for _, labels in after for _, value in labels}
    assert not {namespace, "fine", "bad", "GPU-X999"} & values

"""Runner pods against a real control plane: hardened enough for the ``restricted`` Pod
Security Standard, and reachable only as their own Deployment's pods.

The operator runs as it ships (``python -m kubefal_operator``) with the settings the chart
gives it. A namespace enforcing ``pod-security.kubernetes.io/enforce=restricted`` admits a
pod only with runAsNonRoot, no privilege escalation, all capabilities dropped and the
RuntimeDefault seccomp profile, so the ReplicaSet creating a runner there is the API server
accepting the rendering. The gateway's discovery (``KubernetesDiscovery``, the real watches)
then runs against the same API: pods that merely carry the runner labels, or claim another
app's ReplicaSet as their owner, must never enter its runner table. Every wait polls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e import operator_harness as harness
from e2e.conftest import ClusterHandle
from e2e.operator_harness import Api, OperatorProcess
from kubefal_api import naming, v1alpha1
from kubefal_gateway import apps, auth, discovery, runners, upstream
from testkit import waiting

TIMEOUT = harness.TIMEOUT
RUN_HOST = "kubefal-gateway-run.gateway-ns.svc"
QUEUE_HOST = "kubefal-gateway-queue.gateway-ns.svc"


@pytest.fixture(scope="module")
def gateway_namespace(api_client: k8s.ApiClient) -> Iterator[str]:
    """The operator's (and, in the chart, the gateway's) namespace for this module."""
    yield from harness.fresh_namespace(api_client, prefix="e2e-isolation-system-")


@pytest.fixture(scope="module")
def served_namespaces(
    request: pytest.FixtureRequest, api_client: k8s.ApiClient
) -> Iterator[list[str]]:
    yield from harness.served_namespaces(request, api_client, prefix="e2e-isolation-")


@pytest.fixture(scope="module")
def operator(
    cluster: ClusterHandle,
    falapp_crd: dict[str, Any],
    gateway_namespace: str,
    served_namespaces: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    ca_file = tmp_path_factory.mktemp("gateway-ca") / "ca.crt"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\nMIIBe2e\n-----END CERTIFICATE-----\n")
    process = OperatorProcess(
        kubeconfig=cluster.kubeconfig,
        log_path=tmp_path_factory.mktemp("operator") / "operator.log",
        catalogue_namespace=gateway_namespace,
        environment={
            "KUBEFAL_RUNNER_FAL_RUN_HOST": RUN_HOST,
            "KUBEFAL_RUNNER_FAL_QUEUE_RUN_HOST": QUEUE_HOST,
            "KUBEFAL_GATEWAY_CA_FILE": str(ca_file),
        },
        arguments=harness.exact_namespace_arguments([*served_namespaces, gateway_namespace]),
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def namespace(
    served_namespaces: list[str], operator: OperatorProcess, api_client: k8s.ApiClient
) -> Iterator[str]:
    yield from harness.take_namespace(served_namespaces, api_client)


@pytest.fixture(autouse=True)
def operator_log_on_failure(operator: OperatorProcess, e2e_logs: list[Any]) -> None:
    e2e_logs.append(operator.log_path)


@pytest.fixture
def api(api_client: k8s.ApiClient) -> Api:
    return Api.of(api_client)


def _falapp(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": name},
        "spec": {"app": "app.py::Demo", "scaling": {"minConcurrency": 1}, **spec},
    }


def _ready_pods(api: Api, namespace: str, name: str) -> list[Any]:
    return [
        pod
        for pod in api.runner_pods(namespace, name)
        if any(
            condition["type"] == "Ready" and condition["status"] == "True"
            for condition in (pod.get("status") or {}).get("conditions") or ()
        )
    ]


def test_runner_pods_meet_the_restricted_pod_security_standard(
    api: Api, namespace: str, gateway_namespace: str
) -> None:
    api.core.patch_namespace(
        namespace,
        {
            "metadata": {
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                }
            }
        },
    )
    api.core.create_namespaced_secret(
        namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name="caller-key"), string_data={"FAL_KEY": "id:secret"}
        ),
    )
    api.create_app(namespace, _falapp("hardened", falKeySecretRef={"name": "caller-key"}))

    pods = waiting.wait_for(
        lambda: api.runner_pods(namespace, "hardened"),
        timeout=TIMEOUT,
        description="the ReplicaSet to create a runner pod in a restricted namespace",
    )

    spec = pods[0]["spec"]
    container = spec["containers"][0]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["automountServiceAccountToken"] is False
    env = {item["name"]: item for item in container["env"]}
    assert env["FAL_RUN_HOST"]["value"] == RUN_HOST
    assert env["FAL_QUEUE_RUN_HOST"]["value"] == QUEUE_HOST
    assert env["KUBEFAL_GATEWAY_CA"]["value"].startswith("-----BEGIN CERTIFICATE-----")
    assert env["FAL_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "caller-key", "key": "FAL_KEY"}}
    policy = api.plain(api.networking.read_namespaced_network_policy("hardened", namespace))
    (app_rule,) = [rule for rule in policy["spec"]["ingress"] if rule["ports"][0]["port"] == 8080]
    assert app_rule["from"] == [
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": gateway_namespace}
            },
            "podSelector": {"matchLabels": naming.gateway_selector()},
        }
    ]


def _impostor(namespace: str, name: str, *, app: str, owners: list[Any]) -> dict[str, Any]:
    """A pod carrying app's runner labels on a kwok node (so it becomes Ready with an IP)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": naming.child_labels(app),
            "ownerReferences": owners,
        },
        "spec": {
            "containers": [{"name": naming.RUNNER_CONTAINER, "image": "impostor:1"}],
            "tolerations": [
                {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "nodeSelector": {"type": "kwok"},
        },
    }


async def _until(predicate: Callable[[], bool], *, description: str) -> None:
    """Poll on the event loop (discovery delivers its events there)."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {description}")
        await asyncio.sleep(0.1)


async def test_pods_with_runner_labels_outside_the_apps_deployment_get_no_traffic(
    api: Api, namespace: str, cluster: ClusterHandle
) -> None:
    api.create_app(namespace, _falapp("real"))
    api.create_app(namespace, _falapp("other"))
    for name in ("real", "other"):
        await asyncio.to_thread(
            waiting.wait_for,
            lambda name=name: _ready_pods(api, namespace, name),
            timeout=TIMEOUT,
            description=f"a ready runner of {name}",
        )
    other_pod = _ready_pods(api, namespace, "other")[0]
    other_set = next(
        owner for owner in other_pod["metadata"]["ownerReferences"] if owner.get("controller")
    )
    impostors = {
        "impostor-bare": [],
        "impostor-other-set": [{**other_set, "blockOwnerDeletion": False}],
    }
    for name, owners in impostors.items():
        impostor = _impostor(namespace, name, app="real", owners=owners)
        api.core.create_namespaced_pod(namespace, impostor)  # type: ignore[arg-type]

    def impostors_ready() -> bool:
        ready = {pod["metadata"]["name"] for pod in _ready_pods(api, namespace, "real")}
        return set(impostors) <= ready

    await asyncio.to_thread(
        waiting.wait_for, impostors_ready, timeout=TIMEOUT, description="the impostors ready"
    )

    table = runners.RunnerTable(client=upstream.UpstreamClient(), probe_interval=60)
    watcher = discovery.KubernetesDiscovery(
        registry=apps.AppRegistry(),
        keys=auth.KeyStore(),
        table=table,
        kubeconfig=cluster.kubeconfig,
        key_namespace=namespace,
        runner_port=8080,
    )
    watcher.start()
    try:
        app_id = naming.app_id(namespace, "real")
        await _until(lambda: bool(table.runners(app_id)), description="the real runner")
        # A second real runner, Ready after the impostors: once discovery has it, it has
        # seen every earlier pod event (one watch, in order), the impostors' included.
        api.patch_app(namespace, "real", {"spec": {"scaling": {"minConcurrency": 2}}})
        await _until(lambda: len(table.runners(app_id)) >= 2, description="two real runners")

        real_pods = {
            f"{namespace}/{pod['metadata']['name']}"
            for pod in api.runner_pods(namespace, "real")
            if not pod["metadata"]["name"].startswith("impostor-")
        }
        assert set(table.runners(app_id)) <= real_pods
        assert len(table.runners(app_id)) == 2
        assert not {f"{namespace}/{name}" for name in impostors} & set(table.runners(app_id))
    finally:
        await watcher.stop()
        table.close()

"""The harness is a real Kubernetes: scheduling of GPUs, garbage collection, CEL.

If these fail, every other e2e result is suspect, so they check the three behaviours
kubefal leans on most: the scheduler counting ``nvidia.com/gpu`` on the fake GPU nodes,
the garbage collector removing dependents of a deleted owner, and the API server
enforcing a CRD's CEL rule.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from e2e.conftest import ClusterHandle
from testkit import waiting

H100 = "NVIDIA-H100-80GB-HBM3"


def _gpu_deployment(name: str, *, replicas: int, gpus: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"nvidia.com/gpu.product": H100},
                    "tolerations": [
                        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                    ],
                    "containers": [
                        {
                            "name": "model",
                            "image": "example.invalid/model:1",
                            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                        }
                    ],
                },
            },
        },
    }


def test_gpu_pods_fill_the_h100_nodes_then_wait_for_gpu_capacity(
    cluster: ClusterHandle, api_client: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(api_client)
    nodes = core.list_node(label_selector=f"nvidia.com/gpu.product={H100}").items
    capacity = sum(int(node.status.allocatable["nvidia.com/gpu"]) for node in nodes)
    fitting = capacity // 4
    k8s.AppsV1Api(api_client).create_namespaced_deployment(
        namespace, _gpu_deployment("h100", replicas=fitting + 1, gpus=4)
    )

    def pods_settled() -> list[k8s.V1Pod] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=h100").items
        running = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
        pending = [p for p in pods if p.status.phase == "Pending" and p.status.conditions]
        return pods if len(running) == fitting and len(pending) == 1 else None

    pods = waiting.wait_for(pods_settled, timeout=90, description=f"{fitting} Running + 1 Pending")
    h100_nodes = {node.metadata.name for node in nodes}
    running = [p for p in pods if p.status.phase == "Running"]
    assert {p.spec.node_name for p in running} <= h100_nodes
    assert all(p.status.pod_ip.startswith("127.") for p in running)
    (pending,) = [p for p in pods if p.status.phase == "Pending"]
    (scheduled,) = [c for c in pending.status.conditions if c.type == "PodScheduled"]
    assert scheduled.status == "False"
    assert scheduled.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in scheduled.message


def test_deleting_an_owner_garbage_collects_its_dependents(
    api_client: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(api_client)
    owner = core.create_namespaced_config_map(
        namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="owner"))
    )
    reference = k8s.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="dependent", owner_references=[reference])),
    )
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone() -> bool:
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as error:
            return error.status == 404
        return False

    waiting.wait_for(dependent_gone, timeout=60, description="the dependent ConfigMap to go")


@pytest.fixture
def cel_crd(api_client: k8s.ApiClient) -> Any:
    extensions = k8s.ApiextensionsV1Api(api_client)
    name = "ranges.harness.kubefal.io"
    body = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": "harness.kubefal.io",
            "names": {"kind": "Range", "plural": "ranges", "singular": "range"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "min": {"type": "integer"},
                                        "max": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.min <= self.max",
                                            "message": "spec.min must be <= spec.max",
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    try:
        extensions.create_custom_resource_definition(body)
    except ApiException as error:
        if error.status != 409:
            raise

    def established() -> bool:
        crd = extensions.read_custom_resource_definition(name)
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    waiting.wait_for(established, timeout=60, description="the CRD to be Established")
    return k8s.CustomObjectsApi(api_client)


def test_a_crd_cel_rule_rejects_an_object_that_breaks_it(cel_crd: Any, namespace: str) -> None:
    def create(spec: dict[str, int]) -> Any:
        return cel_crd.create_namespaced_custom_object(
            "harness.kubefal.io",
            "v1",
            namespace,
            "ranges",
            {
                "apiVersion": "harness.kubefal.io/v1",
                "kind": "Range",
                "metadata": {"generateName": "r-"},
                "spec": spec,
            },
        )

    accepted = create({"min": 1, "max": 2})
    assert accepted["spec"] == {"min": 1, "max": 2}
    with pytest.raises(ApiException) as rejected:
        create({"min": 3, "max": 2})
    assert rejected.value.status == 422
    status = json.loads(rejected.value.body)
    assert "spec.min must be <= spec.max" in status["message"]
    assert [cause["field"] for cause in status["details"]["causes"]] == ["spec"]

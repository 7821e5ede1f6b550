"""The real node: pods there are real containers (containerd + runc) from built images.

Runs only with ``KUBEFAL_REAL_NODE=1`` (the session's cluster then starts the node, see
e2e/realnode.py; ``make test`` sets it when e2e/preflight.py finds the machine able, and
``make test-real-node`` runs these alone) and needs ``make images`` and
``e2e/testbin.sh --real-node``. A runner pod from the kubefal-runner image serves
examples/text-stats on 127.0.0.1 with the host's network; every connection of the kubelet,
containerd and the container stays on loopback.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pathlib
import re
from collections.abc import Iterator

import httpx
import psutil
import pytest
from kubernetes import client as k8s

from e2e import images, preflight, realnode
from e2e.cluster import free_port
from e2e.conftest import ClusterHandle
from testkit import waiting

TEXT_STATS = images.REPO_ROOT / "examples" / "text-stats"


@pytest.fixture(scope="module")
def node(cluster: ClusterHandle) -> Iterator[realnode.RealNode]:
    preflight.require("the real node", "KUBEFAL_REAL_NODE", "make test-real-node")
    local = cluster.local
    assert local is not None and local.real_node, "the session's cluster has no real node"
    assert local.testbin is not None
    node = realnode.RealNode(local.state_dir, local.testbin)
    listed = node.ctr("images", "list", "--quiet")
    for name in ("kubefal", "kubefal-runner"):
        if images.image_ref(name) not in listed:
            assert images.archive(name).is_file(), f"run `make images` ({name} is missing)"
            node.import_image(images.archive(name))
    yield node


def _state(cluster: ClusterHandle) -> dict[str, object]:
    assert cluster.local is not None
    return json.loads((cluster.local.state_dir / realnode.STATE_FILE).read_text())


def test_the_real_node_is_ready_beside_the_kwok_nodes_with_its_runtime(
    cluster: ClusterHandle, node: realnode.RealNode
) -> None:
    wide = cluster.kubectl("get", "nodes", "-o", "wide")
    rows = {line.split()[0]: line for line in wide.splitlines()[1:]}
    real = rows[realnode.NODE_NAME].split()
    assert real[1] == "Ready", wide
    assert "127.0.0.1" in real, wide
    assert re.search(r"containerd://1\.\d+", rows[realnode.NODE_NAME]), wide
    assert "gpu-h100-0" in rows and "cpu-0" in rows, "the kwok nodes are still there"
    item = json.loads(cluster.kubectl("get", "node", realnode.NODE_NAME, "-o", "json"))
    assert realnode.TAINT in item["spec"]["taints"]
    assert item["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.")
    # The kernel settings the kubelet changed at start are back.
    assert realnode.read_sysctls() == _state(cluster)["sysctls"]


def test_a_runner_pod_on_the_real_node_is_a_real_container_serving_over_loopback(
    cluster: ClusterHandle, node: realnode.RealNode, api_client: k8s.ApiClient, namespace: str
) -> None:
    core = k8s.CoreV1Api(api_client)
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name="text-stats-source"),
            data={"app.py": (TEXT_STATS / "app.py").read_text()},
        ),
    )
    port, metrics_port = free_port(), free_port()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runner"},
        "spec": {
            "hostNetwork": True,
            "dnsPolicy": "Default",
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "nodeSelector": {"kubernetes.io/hostname": realnode.NODE_NAME},
            "tolerations": [realnode.TOLERATION],
            "terminationGracePeriodSeconds": 30,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
            "containers": [
                {
                    "name": "runner",
                    "image": images.image_ref("kubefal-runner"),
                    "imagePullPolicy": "Never",
                    "env": [
                        {"name": "KUBEFAL_RUNNER_APP", "value": "/app/app.py::TextStats"},
                        {"name": "KUBEFAL_RUNNER_HOST", "value": "127.0.0.1"},
                        {"name": "KUBEFAL_RUNNER_PORT", "value": str(port)},
                        {"name": "KUBEFAL_RUNNER_METRICS_PORT", "value": str(metrics_port)},
                    ],
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [
                        {"name": "app", "mountPath": "/app", "readOnly": True},
                        {"name": "cache", "mountPath": "/var/cache/kubefal"},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": "app", "configMap": {"name": "text-stats-source"}},
                {"name": "cache", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}},
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod)
    base = f"http://127.0.0.1:{port}"
    waiting.wait_for(
        lambda: httpx.get(f"{base}/_kubefal/ready", timeout=2).status_code == 200,
        timeout=120,
        description="the runner pod on the real node to answer",
        describe_last=lambda: cluster.kubectl(
            "describe", "pod", "runner", "-n", namespace, check=False
        ),
    )
    response = httpx.post(f"{base}/", json={"text": "a b a", "top": 1}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"words": 3, "distinct_words": 2, "top_words": [["a", 2]]}

    def reported_container_id() -> str | None:
        # The kubelet reports the container's id in its next status update, which may come
        # after the container already answers.
        statuses = core.read_namespaced_pod("runner", namespace).status.container_statuses or []
        return statuses[0].container_id if len(statuses) == 1 else None

    reported = waiting.wait_for(
        reported_container_id, timeout=60, description="the kubelet to report the container id"
    )
    runtime, _, container_id = reported.partition("://")
    assert runtime == "containerd" and re.fullmatch(r"[0-9a-f]{64}", container_id)
    assert container_id in node.ctr("containers", "list", "--quiet").split()
    task = {line.split()[0]: line.split() for line in node.ctr("tasks", "list").splitlines()[1:]}[
        container_id
    ]
    assert task[2] == "RUNNING"
    runner_pid = int(task[1])
    # A real container: its own PID namespace, the image's non-root user.
    assert os.readlink(f"/proc/{runner_pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    assert psutil.Process(runner_pid).uids().real == 10001
    # Logs go through the API server to the kubelet on 127.0.0.1.
    assert "Uvicorn running" in cluster.kubectl("logs", "runner", "-n", namespace)

    state = _state(cluster)
    for pid in (int(str(state["kubelet_pid"])), int(str(state["containerd_pid"])), runner_pid):
        for connection in psutil.Process(pid).net_connections(kind="inet"):
            if connection.raddr:
                assert ipaddress.ip_address(connection.raddr.ip).is_loopback, connection

    core.delete_namespaced_pod("runner", namespace)
    waiting.wait_for(
        lambda: container_id not in node.ctr("containers", "list", "--quiet").split(),
        timeout=60,
        description="the container to be removed with its pod",
    )
    assert not pathlib.Path(f"/proc/{runner_pid}").exists()

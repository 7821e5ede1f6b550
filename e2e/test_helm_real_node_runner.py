"""A CPU FalApp's runner pod as a real container of the kubefal-runner image on the real node.

The chart is installed as in e2e/test_helm_real_node.py (its pods are containers on the real
node); a CPU FalApp is applied beside it; the operator in its container renders the runner
Deployment with the chart's runner image; the runner pod lands on the real node and runs as a
containerd container of ``kubefal-runner``; the unmodified ``fal_client`` gets the app's result
through the gateway container, which reached the runner container.

The sandbox carries only loopback traffic, so, as the helm test's post-renderer does for the
chart's pods, a mutating admission webhook of this test (a local HTTPS server the API server
calls at 127.0.0.1, registered for runner pods of the test's namespace only) adapts the runner
pod the operator rendered: ``hostNetwork`` on the real node (nodeSelector and toleration), the
runner bound to 127.0.0.1 on free ports (the gateway is told the runner port). Nothing of the
operator's rendering is changed otherwise: image, command, probes, volumes, security context.

Runs with ``KUBEFAL_REAL_NODE=1`` after ``make images`` (``make test-real-node``).
"""

from __future__ import annotations

import base64
import http.server
import json
import pathlib
import ssl
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from e2e import images, realnode
from e2e.cluster import free_port
from e2e.conftest import ClusterHandle
from e2e.test_helm_real_node import (  # noqa: F401  (release: a fixture)
    TEXT_STATS,
    _wait_ready,
    prepare_text_stats,
    release,
    subscribe_through_release,
)
from e2e.test_realnode import node  # noqa: F401  (the real-node fixture)
from testkit import certs, waiting

RUNNER_PORT = free_port()
RUNNER_METRICS_PORT = free_port()
RUNNER_ENV = {
    "KUBEFAL_RUNNER_HOST": "127.0.0.1",
    "KUBEFAL_RUNNER_PORT": str(RUNNER_PORT),
    "KUBEFAL_RUNNER_METRICS_PORT": str(RUNNER_METRICS_PORT),
}


def loopback_patch(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON Patch putting a runner pod on the real node's host network at 127.0.0.1."""
    spec = pod["spec"]
    (container,) = spec["containers"]
    env = [item for item in container.get("env", []) if item["name"] not in RUNNER_ENV]
    env += [{"name": name, "value": value} for name, value in RUNNER_ENV.items()]
    ports = [
        {"name": "http", "containerPort": RUNNER_PORT, "hostPort": RUNNER_PORT, "protocol": "TCP"},
        {
            "name": "metrics",
            "containerPort": RUNNER_METRICS_PORT,
            "hostPort": RUNNER_METRICS_PORT,
            "protocol": "TCP",
        },
    ]
    return [
        {"op": "add", "path": "/spec/hostNetwork", "value": True},
        {"op": "add", "path": "/spec/dnsPolicy", "value": "Default"},
        {"op": "add", "path": "/spec/enableServiceLinks", "value": False},
        {
            "op": "add",
            "path": "/spec/nodeSelector",
            "value": {"kubernetes.io/hostname": realnode.NODE_NAME},
        },
        {
            "op": "add",
            "path": "/spec/tolerations",
            "value": [*spec.get("tolerations", []), realnode.TOLERATION],
        },
        {"op": "add", "path": "/spec/containers/0/env", "value": env},
        {"op": "add", "path": "/spec/containers/0/ports", "value": ports},
    ]


class _Mutator(http.server.BaseHTTPRequestHandler):
    """Answers the API server's AdmissionReviews with ``loopback_patch``."""

    reviewed: list[str]

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        self.reviewed.append(str(request["object"]["metadata"].get("generateName", "")))
        patch = base64.b64encode(json.dumps(loopback_patch(request["object"])).encode())
        body = json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {
                    "uid": request["uid"],
                    "allowed": True,
                    "patchType": "JSONPatch",
                    "patch": patch.decode(),
                },
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def loopback_runners(
    cluster: ClusterHandle, namespace: str, tmp_path: pathlib.Path
) -> Iterator[list[str]]:
    """The mutating webhook, for runner pods in ``namespace``; yields the pods it reviewed."""
    ca, cert, key = certs.issue_serving_certificate(
        tmp_path / "mutator", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    reviewed: list[str] = []
    handler = type("Mutator", (_Mutator,), {"reviewed": reviewed})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    name = f"{namespace}-loopback-runners"
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "loopback-runners.e2e.kubefal.dev",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{server.server_address[1]}/mutate",
                    "caBundle": base64.b64encode(ca.read_bytes()).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "objectSelector": {"matchLabels": {"app.kubernetes.io/component": "runner"}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 10,
            }
        ],
    }
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(configuration))
    try:
        yield reviewed
    finally:
        cluster.kubectl("delete", "mutatingwebhookconfiguration", name, check=False)
        server.shutdown()
        server.server_close()


@pytest.fixture
def release_overrides() -> dict[str, Any]:
    """The gateway dials runners at the port the webhook gives them."""
    return {"values": {}, "env": {"gateway": {"KUBEFAL_GATEWAY_RUNNER_PORT": str(RUNNER_PORT)}}}


def test_a_cpu_falapps_runner_pod_is_a_runner_image_container_on_the_real_node(
    cluster: ClusterHandle,
    node: realnode.RealNode,  # noqa: F811
    api_client: k8s.ApiClient,
    namespace: str,
    release: dict[str, Any],  # noqa: F811
    loopback_runners: list[str],
    tmp_path: pathlib.Path,
) -> None:
    name = release["name"]
    _wait_ready(cluster, api_client, namespace, name)
    core = k8s.CoreV1Api(api_client)
    ca, key = prepare_text_stats(
        api_client, namespace, name, tmp_path, description="e2e real runner"
    )
    falapp = yaml.safe_load((TEXT_STATS / "falapp.yaml").read_text())
    # XS (0.5 CPU): the real node is this 2-core machine, beside the release's own pods.
    falapp["spec"]["machineTypes"] = ["XS"]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(falapp))

    # Scale from zero: the request makes the gateway ask for a runner, the operator scales the
    # Deployment, the kubelet starts the runner image, the runner announces itself.
    result = subscribe_through_release(
        release,
        ca=ca,
        key=str(key),
        app_id=f"{namespace}/text-stats",
        arguments={"text": "real runner real node real", "top": 1},
    )
    assert result.returncode == 0, (
        f"{result.stdout}\n{result.stderr}\n"
        + cluster.kubectl("get", "pods,falapps", "-n", namespace, "-o", "wide", check=False)
        + cluster.kubectl("describe", "pods", "-n", namespace, "-l", "kubefal.io/app", check=False)
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "words": 5,
        "distinct_words": 3,
        "top_words": [["real", 3]],
    }
    assert loopback_runners, "the webhook reviewed no runner pod"

    (pod,) = [
        p
        for p in core.list_namespaced_pod(
            namespace, label_selector="kubefal.io/app=text-stats"
        ).items
        if p.metadata.deletion_timestamp is None
    ]
    assert pod.spec.node_name == realnode.NODE_NAME
    (container,) = pod.spec.containers
    # The operator's rendering, with the chart's runner image.
    assert container.image == images.image_ref("kubefal-runner")
    assert container.command == ["python", "-m", "kubefal_runner"]

    # The runner announced itself to the gateway as soon as setup() was done; the kubelet's
    # probes (at 127.0.0.1 on the patched port) make it Ready in their own time.
    def ready_status() -> k8s.V1ContainerStatus | None:
        (status,) = core.read_namespaced_pod(pod.metadata.name, namespace).status.container_statuses
        return status if status.ready else None

    status = waiting.wait_for(
        ready_status, timeout=120, description="the kubelet to see the runner container Ready"
    )
    assert status.image == images.image_ref("kubefal-runner")
    runtime, _, container_id = status.container_id.partition("://")
    assert runtime == "containerd"
    assert container_id in node.ctr("containers", "list", "--quiet").split()
    task = {line.split()[0]: line.split() for line in node.ctr("tasks", "list").splitlines()[1:]}
    assert task[container_id][2] == "RUNNING"
    # The runner's own log, read through the API server from the kubelet, bound as patched.
    assert f"127.0.0.1:{RUNNER_PORT}" in cluster.kubectl("logs", "-n", namespace, pod.metadata.name)

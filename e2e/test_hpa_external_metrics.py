"""kube-controller-manager's HPA scales a Deployment from the gateway's external metric.

The gateway's ``external.metrics.k8s.io`` server runs on this machine over TLS; the API
server reaches it through an APIService whose Service is an ``ExternalName`` for
localhost (there is no kube-proxy here), and the HPA controller in the real
kube-controller-manager reads the desired runner count and sets the replicas.
"""

from __future__ import annotations

import pathlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from kubernetes import client as k8s

from e2e import system
from e2e.conftest import ClusterHandle
from kubefal_gateway import external_metrics
from testkit import certs, waiting


class DesiredCounts:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def desired_runners(self, app_id: str) -> int | None:
        return self.counts.get(app_id)


@pytest.fixture
def metrics_server(
    tmp_path: pathlib.Path, namespace: str
) -> Iterator[tuple[DesiredCounts, int, pathlib.Path]]:
    service_host = f"kubefal-gateway.{namespace}.svc"
    ca, cert, key = certs.issue_serving_certificate(
        tmp_path / "tls", dns_names=[service_host, "localhost"], ip_addresses=["127.0.0.1"]
    )
    counts = DesiredCounts()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        external_metrics.ExternalMetricsApp(counts),
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    waiting.wait_for(lambda: server.started, timeout=30, description="metrics server start")
    yield counts, port, ca
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _deployment(name: str) -> dict[str, Any]:
    labels = {"kubefal.io/app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "runner", "image": "example.invalid/r:1"}]},
            },
        },
    }


def _hpa(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": 10,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": external_metrics.METRIC_NAME,
                            "selector": {"matchLabels": {"kubefal.io/app": name}},
                        },
                        "target": {"type": "AverageValue", "averageValue": "1"},
                    },
                }
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": 0},
                "scaleDown": {"stabilizationWindowSeconds": 0},
            },
        },
    }


def test_the_hpa_controller_scales_a_deployment_to_the_gateways_desired_runners(
    cluster: ClusterHandle,
    api_client: k8s.ApiClient,
    namespace: str,
    metrics_server: tuple[DesiredCounts, int, pathlib.Path],
) -> None:
    counts, port, ca = metrics_server
    counts.counts[f"{namespace}/sdxl"] = 3
    system.register_external_metrics(api_client, namespace=namespace, port=port, ca=ca)
    try:
        listing = cluster.kubectl(
            "get",
            "--raw",
            f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/"
            f"kubefal-desired-runners?labelSelector=kubefal.io%2Fapp%3Dsdxl",
        )
        assert '"value":"3"' in listing.replace(" ", "")

        apps = k8s.AppsV1Api(api_client)
        apps.create_namespaced_deployment(namespace, _deployment("sdxl"))
        k8s.AutoscalingV2Api(api_client).create_namespaced_horizontal_pod_autoscaler(
            namespace, _hpa("sdxl")
        )

        def replicas(expected: int) -> bool:
            return apps.read_namespaced_deployment("sdxl", namespace).spec.replicas == expected

        waiting.wait_for(lambda: replicas(3), timeout=120, description="HPA scale to 3")
        counts.counts[f"{namespace}/sdxl"] = 1
        waiting.wait_for(lambda: replicas(1), timeout=120, description="HPA scale back to 1")
    finally:
        system.unregister_external_metrics(api_client)

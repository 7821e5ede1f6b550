"""The whole system, for real: FalApp → operator → pods → runner processes → gateway → fal_client.

Every part is the shipped code: the CRD and the operator on the real control plane, the
gateway discovering runner pods through the API, the runner serving an unmodified
``fal.App`` in a process bound to each kwok pod's IP, and the unmodified ``fal_client``
calling over TLS. Scaling is the builtin actuator: the operator sets replicas from the
gateway's desired runner count.
"""

from __future__ import annotations

import json
import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e import system as whole
from e2e.conftest import ClusterHandle
from testkit import waiting

APP_SOURCE = pathlib.Path(__file__).with_name("apps") / "sleepy.py"


@pytest.fixture
def running(
    cluster: ClusterHandle,
    namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> Iterator[whole.System]:
    with whole.running_system(
        cluster.kubeconfig, workdir=tmp_path / "system", namespaces=[namespace]
    ) as system:
        e2e_logs.extend(system.logs)
        yield system
        e2e_logs.extend(system.pods.logs())


def _deploy(
    api_client: k8s.ApiClient, namespace: str, *, name: str = "sleepy", **spec: Any
) -> None:
    whole.deploy_app(api_client, namespace, name=name, source=APP_SOURCE, app="Sleepy", **spec)


def _replicas(api_client: k8s.ApiClient, namespace: str, name: str = "sleepy") -> int:
    deployment = k8s.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
    return int(deployment.spec.replicas or 0)


def _watch_replicas(
    api_client: k8s.ApiClient, namespace: str, stop: threading.Event
) -> tuple[threading.Thread, list[int]]:
    """Sample the Deployment's replicas until ``stop`` is set (it must exist already)."""
    seen: list[int] = []

    def sample() -> None:
        while not stop.is_set():
            seen.append(_replicas(api_client, namespace))
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    return thread, seen


def _deployment_exists(api_client: k8s.ApiClient, namespace: str) -> None:
    waiting.wait_for(
        lambda: _replicas(api_client, namespace) >= 0,
        timeout=60,
        description="the operator to create the runner Deployment",
    )


def test_the_real_fal_client_calls_a_falapp_through_the_gateway(
    running: whole.System, api_client: k8s.ApiClient, namespace: str
) -> None:
    _deploy(api_client, namespace, scaling={"minConcurrency": 1})
    whole.wait_for_runners(running, 1)
    output = running.run_client(
        "import fal_client, json\n"
        f"print(json.dumps(fal_client.run('{namespace}/sleepy', arguments={{'tag': 'run'}})))\n"
        f"r = fal_client.subscribe('{namespace}/sleepy', arguments={{'tag': 'queued'}},"
        " with_logs=True)\n"
        "print(json.dumps(r))\n"
    )
    sync_result, queued_result = (json.loads(line) for line in output.strip().splitlines())
    (pod,) = running.pods.running()
    assert sync_result["tag"] == "run"
    assert queued_result["tag"] == "queued"
    assert {sync_result["pod"], queued_result["pod"]} == {pod.split("/")[1]}
    operator_log = running.logs[1].read_text()
    assert "subscribed to the gateway's scaling stream" in operator_log
    assert "the stream ended" not in operator_log  # the gateway keeps the stream open


def test_an_app_scales_from_zero_on_a_request_and_back_to_zero_after_keep_alive(
    running: whole.System, api_client: k8s.ApiClient, namespace: str
) -> None:
    _deploy(api_client, namespace, scaling={"minConcurrency": 0, "keepAlive": 3})
    _deployment_exists(api_client, namespace)
    assert _replicas(api_client, namespace) == 0
    output = running.run_client(
        "import fal_client, json\n"
        f"r = fal_client.subscribe('{namespace}/sleepy', arguments={{'tag': 'cold'}})\n"
        "print(json.dumps(r))\n",
        timeout=180,
    )
    assert json.loads(output)["tag"] == "cold"
    assert _replicas(api_client, namespace) == 1
    finished = time.monotonic()
    waiting.wait_for(
        lambda: _replicas(api_client, namespace) == 0,
        timeout=60,
        description="scale back to zero after keepAlive",
    )
    assert time.monotonic() - finished >= 3 - 0.5  # not before keepAlive ran out
    waiting.wait_for(lambda: not running.pods.running(), timeout=60, description="runner gone")


def test_a_burst_gets_exactly_max_concurrency_runners_and_low_priority_goes_last(
    running: whole.System, api_client: k8s.ApiClient, namespace: str
) -> None:
    _deploy(
        api_client,
        namespace,
        scaling={"minConcurrency": 0, "maxConcurrency": 5, "maxMultiplexing": 2, "keepAlive": 5},
    )
    _deployment_exists(api_client, namespace)
    stop = threading.Event()
    watcher, seen_replicas = _watch_replicas(api_client, namespace, stop)
    try:
        output = running.run_client(
            "import fal_client, json, time\n"
            "handles = []\n"
            "for i in range(60):\n"
            "    priority = 'low' if i % 6 == 0 else 'normal'\n"
            f"    h = fal_client.submit('{namespace}/sleepy',"
            " arguments={'seconds': 0.5, 'tag': priority}, priority=priority)\n"
            "    handles.append((priority, time.time(), h))\n"
            "out = [dict(h.get(), submitted=t) for _, t, h in handles]\n"
            "print(json.dumps(out))\n",
            timeout=300,
        )
    finally:
        stop.set()
        watcher.join()
    results = json.loads(output)
    assert len(results) == 60
    assert max(seen_replicas) == 5
    assert len({r["pod"] for r in results}) == 5
    lows = [r for r in results if r["tag"] == "low"]
    normals = [r for r in results if r["tag"] == "normal"]
    for low in lows:
        waiting_normals = [n for n in normals if n["submitted"] < low["started"]]
        assert all(n["started"] <= low["started"] + 0.05 for n in waiting_normals), (
            "a low-priority request started before a normal one that was already queued"
        )


def test_concurrency_buffer_keeps_a_spare_runner_warm(
    running: whole.System, api_client: k8s.ApiClient, namespace: str
) -> None:
    _deploy(
        api_client,
        namespace,
        scaling={"minConcurrency": 0, "concurrencyBuffer": 1, "keepAlive": 2},
    )
    waiting.wait_for(
        lambda: _replicas(api_client, namespace) == 1,
        timeout=60,
        description="the buffer runner with no traffic",
    )
    whole.wait_for_runners(running, 1)
    stop = threading.Event()
    watcher, seen_replicas = _watch_replicas(api_client, namespace, stop)
    try:
        output = running.run_client(
            "import fal_client, json\n"
            f"r = fal_client.subscribe('{namespace}/sleepy',"
            " arguments={'seconds': 3, 'tag': 'b'})\n"
            "print(json.dumps(r))\n",
            timeout=180,
        )
    finally:
        stop.set()
        watcher.join()
    assert json.loads(output)["tag"] == "b"
    assert max(seen_replicas) == 2  # the busy runner plus one spare
    waiting.wait_for(
        lambda: _replicas(api_client, namespace) == 1,
        timeout=60,
        description="back to just the buffer runner",
    )


def _gpu_nodes_free(api_client: k8s.ApiClient) -> None:
    """Earlier tests' namespaces are deleted in the background; wait for their GPU pods."""
    core = k8s.CoreV1Api(api_client)
    gpu_nodes = {
        node.metadata.name for node in core.list_node(label_selector="nvidia.com/gpu.present").items
    }

    def free() -> bool:
        pods = core.list_pod_for_all_namespaces().items
        return not any(pod.spec.node_name in gpu_nodes for pod in pods)

    waiting.wait_for(free, timeout=180, description="GPU nodes without pods")


def test_under_load_runners_fall_back_from_h100_to_h200_when_h100_nodes_are_full(
    running: whole.System, api_client: k8s.ApiClient, namespace: str
) -> None:
    _gpu_nodes_free(api_client)
    _deploy(
        api_client,
        namespace,
        machineTypes=["GPU-H100", "GPU-H200"],
        numGpus=8,
        scaling={"minConcurrency": 0, "maxConcurrency": 3, "maxMultiplexing": 1, "keepAlive": 2},
    )
    output = running.run_client(
        "import fal_client, json\n"
        f"hs = [fal_client.submit('{namespace}/sleepy', arguments={{'seconds': 4, 'tag': str(i)}})"
        " for i in range(3)]\n"
        "print(json.dumps([h.get() for h in hs]))\n",
        timeout=240,
    )
    results = json.loads(output)
    assert sorted(r["tag"] for r in results) == ["0", "1", "2"]
    core = k8s.CoreV1Api(api_client)
    products = {
        node.metadata.name: node.metadata.labels["nvidia.com/gpu.product"]
        for node in core.list_node(label_selector="nvidia.com/gpu.present").items
    }
    placed = {
        pod.metadata.name: products[pod.spec.node_name]
        for pod in core.list_namespaced_pod(namespace).items
        if pod.metadata.name in {r["pod"] for r in results}
    }
    assert sorted(placed.values()) == [
        "NVIDIA-H100-80GB-HBM3",
        "NVIDIA-H100-80GB-HBM3",
        "NVIDIA-H200",
    ]


@pytest.fixture
def running_with_metrics(
    cluster: ClusterHandle,
    api_client: k8s.ApiClient,
    namespace: str,
    tmp_path: pathlib.Path,
    e2e_logs: list[pathlib.Path],
) -> Iterator[whole.System]:
    """The system plus the APIService that routes external metrics to its gateway."""
    service = f"kubefal-gateway.{namespace}.svc"
    with whole.running_system(
        cluster.kubeconfig,
        workdir=tmp_path / "system",
        namespaces=[namespace],
        service_names=[service],
    ) as system:
        e2e_logs.extend(system.logs)
        whole.register_external_metrics(
            api_client, namespace=namespace, port=system.ports.external_metrics, ca=system.ca
        )
        try:
            yield system
        finally:
            whole.unregister_external_metrics(api_client)
            e2e_logs.extend(system.pods.logs())


def test_the_hpa_actuator_scales_runners_from_the_gateways_external_metric(
    running_with_metrics: whole.System, api_client: k8s.ApiClient, namespace: str
) -> None:
    running = running_with_metrics
    _deploy(
        api_client,
        namespace,
        scaler="hpa",
        scaling={"minConcurrency": 1, "maxConcurrency": 4, "maxMultiplexing": 1, "keepAlive": 2},
    )
    waiting.wait_for(
        lambda: k8s.AutoscalingV2Api(api_client).read_namespaced_horizontal_pod_autoscaler(
            "sleepy", namespace
        ),
        timeout=60,
        description="the operator to render the HPA",
    )
    whole.wait_for_runners(running, 1)
    stop = threading.Event()
    watcher, seen_replicas = _watch_replicas(api_client, namespace, stop)
    try:
        output = running.run_client(
            "import fal_client, json\n"
            f"hs = [fal_client.submit('{namespace}/sleepy',"
            " arguments={'seconds': 6, 'tag': str(i)}) for i in range(4)]\n"
            "print(json.dumps([h.get() for h in hs]))\n",
            timeout=240,
        )
    finally:
        stop.set()
        watcher.join()
    assert sorted(r["tag"] for r in json.loads(output)) == ["0", "1", "2", "3"]
    assert max(seen_replicas) == 4
    waiting.wait_for(
        lambda: _replicas(api_client, namespace) == 1,
        timeout=120,
        description="the HPA to scale back to minConcurrency after keepAlive",
    )

"""The operator's three actuators against the real control plane.

* builtin: the operator subscribes to a scaling stream served by a small real SSE server in
  this module (the gateway's wire format: ``event: scaling`` with the app's numbers), sets
  replicas from it, marks idle runners with the lowest ``pod-deletion-cost`` before a
  scale-down, and the real ReplicaSet controller removes exactly those (kwok pods);
* keda: the API server accepts the rendered ScaledObject with KEDA's real CRDs installed,
  and the operator leaves replicas to KEDA;
* hpa: the API server accepts the autoscaling/v2 HPA; switching ``spec.scaler`` deletes the
  other scaler's object.

The operator serves only this module's namespaces (``e2e-scalers-*``, by exact name): other
modules run their own operators on the same cluster.
"""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client as k8s

from e2e import operator_harness as harness
from e2e.conftest import ClusterHandle
from e2e.operator_harness import Api, OperatorProcess, ScalingStream
from kubefal_api import naming, v1alpha1
from testkit import waiting

TIMEOUT = harness.TIMEOUT
NAMESPACE_PREFIX = "e2e-scalers-"
KEDA_SCALER_ADDRESS = "kubefal-gateway-admin.kubefal-system.svc:9091"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keda_crds(cluster: ClusterHandle) -> None:
    """KEDA's own CRDs (the release the testbin pins), applied server-side: the
    ScaledJob CRD is too big for client-side apply's last-applied annotation."""
    crd_dir = cluster.testbin / "crds"
    files = sorted(crd_dir.glob("keda.sh_*.yaml"))
    assert files, f"no KEDA CRDs in {crd_dir} (run `make testbin`)"
    for path in files:
        cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager=kubefal-e2e",
            "-f", str(path),
        )  # fmt: skip
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=120s", "crd/scaledobjects.keda.sh"
    )


@pytest.fixture(scope="module")
def scaling_stream() -> Iterator[ScalingStream]:
    stream = ScalingStream()
    stream.start()
    yield stream
    stream.stop()


@pytest.fixture(scope="module")
def served_namespaces(
    request: pytest.FixtureRequest, api_client: k8s.ApiClient
) -> Iterator[list[str]]:
    yield from harness.served_namespaces(request, api_client, prefix=NAMESPACE_PREFIX)


@pytest.fixture(scope="module")
def operator(
    cluster: ClusterHandle,
    falapp_crd: dict[str, Any],
    keda_crds: None,
    scaling_stream: ScalingStream,
    served_namespaces: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        kubeconfig=cluster.kubeconfig,
        log_path=tmp_path_factory.mktemp("operator-scalers") / "operator.log",
        catalogue_namespace=f"{NAMESPACE_PREFIX}system-{uuid.uuid4().hex[:5]}",
        arguments=(
            *harness.exact_namespace_arguments(served_namespaces),
            "--gateway-admin-url",
            scaling_stream.url,
            "--verbose",
        ),
        environment={"KUBEFAL_KEDA_SCALER_ADDRESS": KEDA_SCALER_ADDRESS},
    )
    process.start()
    try:
        waiting.wait_for(
            lambda: scaling_stream.subscribers > 0,
            timeout=TIMEOUT,
            description="the operator subscribed to the scaling stream",
            describe_last=process.log_tail,
        )
        yield process
    finally:
        process.stop()


@pytest.fixture
def namespace(
    operator: OperatorProcess,
    served_namespaces: list[str],
    e2e_logs: list[pathlib.Path],
    api_client: k8s.ApiClient,
) -> Iterator[str]:
    """A fresh namespace this module's operator serves (and no other module's)."""
    e2e_logs.append(operator.log_path)
    yield from harness.take_namespace(served_namespaces, api_client)


@pytest.fixture
def api(api_client: k8s.ApiClient) -> Api:
    return Api.of(api_client)


# --- helpers --------------------------------------------------------------------------------


def _app(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": name},
        "spec": {"app": "app.py::Demo", "machineTypes": ["XS"], **spec},
    }


def _wait(predicate: Callable[[], Any], description: str, operator: OperatorProcess) -> Any:
    return waiting.wait_for(
        predicate, timeout=TIMEOUT, description=description, describe_last=operator.log_tail
    )


def _replicas(api: Api, namespace: str, name: str) -> int | None:
    deployment = api.deployment(namespace, name)
    return None if deployment is None else int(deployment["spec"].get("replicas", 0))


def _ready_pods(api: Api, namespace: str, name: str, count: int) -> list[Any] | None:
    pods = [
        pod
        for pod in api.runner_pods(namespace, name)
        if pod["status"].get("podIP")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod["status"].get("conditions") or []
        )
    ]
    if len(pods) != count:
        return None
    return sorted(pods, key=lambda pod: str(pod["metadata"]["name"]))


def _events(api: Api, namespace: str, name: str, reason: str) -> list[str]:
    return [
        str(event["message"])
        for event in api.plain(api.core.list_namespaced_event(namespace))["items"]
        if event["involvedObject"]["name"] == name and event["reason"] == reason
    ]


def _custom(api: Api, namespace: str, group: str, version: str, plural: str) -> list[Any]:
    listing: Any = api.objects.list_namespaced_custom_object(group, version, namespace, plural)
    return list(listing["items"])


def _scaled_objects(api: Api, namespace: str) -> list[Any]:
    return _custom(api, namespace, "keda.sh", "v1alpha1", "scaledobjects")


def _autoscalers(api: Api, namespace: str) -> list[Any]:
    return _custom(api, namespace, "autoscaling", "v2", "horizontalpodautoscalers")


# --- tests ----------------------------------------------------------------------------------


def test_the_builtin_actuator_follows_the_gateway_and_removes_idle_runners_first(
    api: Api, namespace: str, operator: OperatorProcess, scaling_stream: ScalingStream
) -> None:
    name = "follow"
    api.create_app(
        namespace, _app(name, scaling={"minConcurrency": 0, "maxConcurrency": 3, "keepAlive": 10})
    )
    _wait(lambda: _replicas(api, namespace, name) == 0, "the Deployment at zero", operator)

    scaling_stream.publish(namespace, name, desired=2, queued=2)
    _wait(lambda: _replicas(api, namespace, name) == 2, "replicas 0 → 2 from the signal", operator)
    busy, idle = _wait(
        lambda: _ready_pods(api, namespace, name, 2), "two ready runners with IPs", operator
    )

    def details(idle_seconds: float) -> list[dict[str, Any]]:
        return [
            {
                "id": busy["metadata"]["name"],
                "ip": busy["status"]["podIP"],
                "inFlight": 1,
                "idleSeconds": 0,
                "ready": True,
            },
            {
                "id": idle["metadata"]["name"],
                "ip": idle["status"]["podIP"],
                "inFlight": 0,
                "idleSeconds": idle_seconds,
                "ready": True,
            },
        ]

    scaling_stream.publish(namespace, name, desired=2, in_flight=1, details=details(3))

    def status_shows(desired: int, running: int, idle_count: int) -> Any:
        status = api.app(namespace, name).get("status") or {}
        runners = status.get("runners") or {}
        return (
            status.get("desiredRunners") == desired
            and runners.get("running") == running
            and runners.get("idle") == idle_count
            and status
        )

    _wait(lambda: status_shows(2, 1, 1), "status: 2 desired, 1 running, 1 idle", operator)

    scaling_stream.publish(namespace, name, desired=1, in_flight=1, details=details(11))
    _wait(lambda: _replicas(api, namespace, name) == 1, "replicas 2 → 1", operator)
    _wait(
        lambda: (
            [pod["metadata"]["name"] for pod in api.runner_pods(namespace, name)]
            == [busy["metadata"]["name"]]
        ),
        "only the busy runner left",
        operator,
    )
    kept = api.plain(api.core.read_namespaced_pod(busy["metadata"]["name"], namespace))
    assert kept["metadata"]["annotations"][naming.ANNOTATION_POD_DELETION_COST] == "1000"
    assert kept["metadata"]["uid"] == busy["metadata"]["uid"]
    _wait(lambda: status_shows(1, 1, 0), "status: 1 desired, 1 running", operator)

    scaling_stream.publish(namespace, name, desired=9, queued=8, in_flight=1)
    _wait(lambda: _replicas(api, namespace, name) == 3, "replicas capped at max 3", operator)

    # Events are posted right after the write they report: wait for them too.
    capped = _wait(
        lambda: [m for m in _events(api, namespace, name, "ScaledUp") if m.startswith("1 → 3")],
        "the ScaledUp Event of the capped scale-up",
        operator,
    )
    assert capped == ["1 → 3 runners: 8 queued requests, 1 in flight; capped at maxConcurrency 3"]
    ups = _events(api, namespace, name, "ScaledUp")
    assert "0 → 2 runners: 2 queued requests" in ups
    [down] = _events(api, namespace, name, "ScaledDown")
    assert down.startswith("2 → 1 runners: idle for keepAlive 10s")


def test_keda_and_hpa_objects_are_accepted_and_switching_scaler_cleans_up(
    api: Api, namespace: str, operator: OperatorProcess, scaling_stream: ScalingStream
) -> None:
    name = "scaled"
    api.create_app(
        namespace, _app(name, scaler="keda", scaling={"minConcurrency": 0, "maxConcurrency": 4})
    )
    [scaled] = _wait(lambda: _scaled_objects(api, namespace), "the ScaledObject", operator)
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == name
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 4)
    assert spec["triggers"] == [
        {
            "type": "external-push",
            "metadata": {
                "scalerAddress": KEDA_SCALER_ADDRESS,
                "appId": naming.app_id(namespace, name),
            },
        }
    ]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 0
    assert scaled["metadata"]["ownerReferences"][0]["name"] == name

    # KEDA owns replicas: a gateway signal shows in the status but is not applied.
    scaling_stream.publish(namespace, name, desired=3, queued=3)
    _wait(
        lambda: (api.app(namespace, name).get("status") or {}).get("desiredRunners") == 3,
        "status.desiredRunners from the signal",
        operator,
    )
    assert _replicas(api, namespace, name) == 0

    api.patch_app(namespace, name, {"spec": {"scaler": "hpa", "scaling": {"minConcurrency": 1}}})
    [hpa] = _wait(lambda: _autoscalers(api, namespace), "the HorizontalPodAutoscaler", operator)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    [metric] = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "kubefal-desired-runners"
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    _wait(lambda: not _scaled_objects(api, namespace), "the ScaledObject deleted", operator)

    api.patch_app(namespace, name, {"spec": {"scaler": "builtin"}})
    _wait(lambda: not _autoscalers(api, namespace), "the HPA deleted", operator)
    _wait(
        lambda: _replicas(api, namespace, name) == 3,
        "the builtin actuator applying the gateway's count again",
        operator,
    )


def test_replicas_the_builtin_actuator_writes_are_never_restored_by_drift_detection(
    api: Api, namespace: str, operator: OperatorProcess, scaling_stream: ScalingStream
) -> None:
    """Signals move replicas 0 → 1 → 0 while the runner pod comes up (the Deployment's status
    moves: child events, each a drift check) and the FalApp is edited (a reconcile of its
    own): replicas are the actuator's, so every change is one ScaledUp or ScaledDown Event
    and drift detection never 'restores' a count the actuator wrote."""
    name = "steady"
    api.create_app(
        namespace, _app(name, scaling={"minConcurrency": 0, "maxConcurrency": 3, "keepAlive": 10})
    )
    _wait(lambda: _replicas(api, namespace, name) == 0, "the Deployment at zero", operator)
    cycles = 3
    for cycle in range(cycles):
        scaling_stream.publish(namespace, name, desired=1, queued=1)
        _wait(lambda: _replicas(api, namespace, name) == 1, f"0 → 1 ({cycle})", operator)
        _wait(lambda: api.runner_pods(namespace, name), f"a runner pod ({cycle})", operator)
        # Scale down while the pod starts (Deployment status events) and the spec changes.
        scaling_stream.publish(namespace, name, desired=0)
        api.patch_app(namespace, name, {"spec": {"scaling": {"keepAlive": 11 + cycle}}})
        _wait(lambda: _replicas(api, namespace, name) == 0, f"1 → 0 ({cycle})", operator)
        _wait(lambda: not api.runner_pods(namespace, name), f"no runner ({cycle})", operator)
        _wait(
            lambda: (
                (api.app(namespace, name).get("status") or {}).get("observedGeneration")
                == api.app(namespace, name)["metadata"]["generation"]
            ),
            f"the edit reconciled ({cycle})",
            operator,
        )

    def scale_downs() -> list[str] | None:
        """Every Event reporting a 1 → 0 write, whoever made it (None until all are there)."""
        reports = [
            f"{reason}: {message}"
            for reason in ("ScaledDown", "Restored", "Applied")
            for message in _events(api, namespace, name, reason)
            if message.startswith("1 → 0") or "replicas 1 -> 0" in message
        ]
        return reports if len(reports) >= cycles else None

    # Events are posted right after the write they report: wait for the last one.
    downs = _wait(scale_downs, f"{cycles} Events of a scale-down", operator)
    assert [down.partition(": ")[0] for down in downs] == ["ScaledDown"] * cycles, downs
    assert _events(api, namespace, name, "Restored") == []
    ups = _events(api, namespace, name, "ScaledUp")
    assert ups == ["0 → 1 runners: 1 queued request"] * cycles
    assert _replicas(api, namespace, name) == 0

"""The operator against a real control plane: children, scheduling, status, self-healing.

The operator runs as a subprocess (``python -m kubefal_operator``), exactly as it ships,
against the e2e cluster: the scheduler places runner pods on kwok's fake GPU nodes, the
garbage collector removes children, and the status comes from what really happened.
Every wait polls the API with a generous deadline; nothing sleeps.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from e2e import operator_harness as harness
from e2e.conftest import ClusterHandle
from e2e.operator_harness import Api, OperatorProcess
from kubefal_api import machines, naming, v1alpha1
from testkit import waiting

EXAMPLES = harness.REPO_ROOT / "examples"
TIMEOUT = harness.TIMEOUT
H100 = "NVIDIA-H100-80GB-HBM3"
H200 = "NVIDIA-H200"
A100 = "NVIDIA-A100-SXM4-40GB"


@pytest.fixture(scope="module")
def catalogue_namespace(api_client: k8s.ApiClient) -> Iterator[str]:
    """The operator's own namespace for this module (where its catalogue ConfigMap lives)."""
    yield from harness.fresh_namespace(api_client, prefix="e2e-operator-system-")


@pytest.fixture(scope="module")
def served_namespaces(
    request: pytest.FixtureRequest, api_client: k8s.ApiClient
) -> Iterator[list[str]]:
    yield from harness.served_namespaces(request, api_client, prefix="e2e-operator-")


@pytest.fixture
def namespace(
    served_namespaces: list[str], operator: OperatorProcess, api_client: k8s.ApiClient
) -> Iterator[str]:
    """A fresh namespace, one of those the module's operator serves by exact name."""
    yield from harness.take_namespace(served_namespaces, api_client)


@pytest.fixture(scope="module")
def operator(
    cluster: ClusterHandle,
    falapp_crd: dict[str, Any],
    catalogue_namespace: str,
    served_namespaces: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        kubeconfig=cluster.kubeconfig,
        log_path=tmp_path_factory.mktemp("operator") / "operator.log",
        catalogue_namespace=catalogue_namespace,
        # The per-test namespaces and the catalogue's, by exact name, not the whole cluster:
        # other modules run operators of their own on the same cluster.
        arguments=harness.exact_namespace_arguments([*served_namespaces, catalogue_namespace]),
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(autouse=True)
def operator_log_on_failure(operator: OperatorProcess, e2e_logs: list[pathlib.Path]) -> None:
    """Print the operator's log with any failure (the conftest hook shows e2e_logs)."""
    e2e_logs.append(operator.log_path)


@pytest.fixture
def api(api_client: k8s.ApiClient) -> Api:
    return Api.of(api_client)


def _example(name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(
        (EXAMPLES / name / "falapp.yaml").read_text(encoding="utf-8")
    )
    return manifest


def _install_example(api: Api, namespace: str, name: str, **spec: Any) -> Any:
    """The example's source ConfigMap and FalApp (with ``spec`` overrides)."""
    manifest = _example(name)
    source = manifest["spec"].get("source", {}).get("configMapRef", {}).get("name")
    if source:
        api.core.create_namespaced_config_map(
            namespace,
            k8s.V1ConfigMap(
                metadata=k8s.V1ObjectMeta(name=source),
                data={"app.py": (EXAMPLES / name / "app.py").read_text(encoding="utf-8")},
            ),
        )
    manifest["spec"].update(spec)
    return api.create_app(namespace, manifest)


def _simple_app(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": v1alpha1.API_VERSION,
        "kind": v1alpha1.KIND,
        "metadata": {"name": name},
        "spec": {"app": "app.py::Demo", "machineTypes": ["XS"], **spec},
    }


def _condition(app: dict[str, Any], condition_type: str) -> dict[str, Any]:
    for condition in (app.get("status") or {}).get("conditions") or []:
        if condition["type"] == condition_type:
            found: dict[str, Any] = condition
            return found
    return {}


def _observed(api: Api, namespace: str, name: str) -> Any:
    """The FalApp once its status reports the current generation."""
    app = api.app(namespace, name)
    status = app.get("status") or {}
    if status.get("observedGeneration") == app["metadata"]["generation"]:
        return app
    return None


def _wait(
    predicate: Callable[[], Any], description: str, operator: OperatorProcess, **kwargs: Any
) -> Any:
    return waiting.wait_for(
        predicate,
        timeout=kwargs.pop("timeout", TIMEOUT),
        description=description,
        describe_last=operator.log_tail,
        **kwargs,
    )


# --- tests --------------------------------------------------------------------------------


def test_cpu_example_becomes_a_deployment_and_scales_onto_a_cpu_node(
    api: Api, namespace: str, operator: OperatorProcess
) -> None:
    _install_example(api, namespace, "text-stats")
    deployment = _wait(
        lambda: api.deployment(namespace, "text-stats"), "the text-stats Deployment", operator
    )
    assert deployment["spec"]["replicas"] == 0
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "kubefal_runner"]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "2Gi"}
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("FalApp", "text-stats", True)
    service = api.plain(api.core.read_namespaced_service("text-stats", namespace))
    assert service["spec"]["clusterIP"] == "None"
    assert api.networking.read_namespaced_network_policy("text-stats", namespace)
    scaled_to_zero = _wait(
        lambda: (
            (app := _observed(api, namespace, "text-stats"))
            and app["status"]["phase"] == "ScaledToZero"
            and app
        ),
        "text-stats ScaledToZero",
        operator,
    )
    assert scaled_to_zero["status"]["endpoints"]["queue"].endswith(f"/{namespace}/text-stats")

    api.patch_app(namespace, "text-stats", {"spec": {"scaling": {"minConcurrency": 1}}})
    nodes = _wait(
        lambda: api.scheduled_nodes(namespace, "text-stats"),
        "a scheduled text-stats runner",
        operator,
    )
    assert nodes[0].startswith("cpu-")
    _wait(
        lambda: (
            (app := _observed(api, namespace, "text-stats")) and app["status"]["phase"] == "Ready"
        ),
        "text-stats Ready with one runner",
        operator,
    )


def test_h100_example_lands_on_an_h100_node_with_two_gpus(
    api: Api, namespace: str, operator: OperatorProcess
) -> None:
    _wait(lambda: api.free_gpus(H100) >= 2, "two free H100 GPUs", operator)
    _install_example(api, namespace, "h100-pair")
    nodes = _wait(
        lambda: api.scheduled_nodes(namespace, "h100-pair"),
        "the h100-pair runner to be scheduled",
        operator,
    )
    assert api.node_products()[nodes[0]] == H100
    pod = api.runner_pods(namespace, "h100-pair")[0]
    assert pod["spec"]["containers"][0]["resources"]["limits"][machines.GPU_RESOURCE] == "2"
    ready = _wait(
        lambda: (
            (app := _observed(api, namespace, "h100-pair"))
            and app["status"]["phase"] == "Ready"
            and app
        ),
        "h100-pair Ready",
        operator,
    )
    assert ready["status"]["machineType"] == "GPU-H100"
    assert _condition(ready, "Scheduled")["status"] == "True"


def test_fallback_example_fills_the_h100_nodes_then_uses_the_h200(
    api: Api, namespace: str, operator: OperatorProcess
) -> None:
    _wait(
        lambda: api.free_gpus(H100) == 16 and api.free_gpus(H200) == 8,
        "every H100 and H200 GPU free",
        operator,
        timeout=240,
    )
    _install_example(
        api,
        namespace,
        "gpu-fallback",
        numGpus=8,
        scaling={"minConcurrency": 3, "maxConcurrency": 3},
    )

    def placed() -> list[str] | None:
        nodes = api.scheduled_nodes(namespace, "gpu-fallback")
        return nodes if len(nodes) == 3 else None

    nodes = _wait(placed, "three gpu-fallback runners scheduled", operator)
    products = api.node_products()
    assert sorted(products[node] for node in nodes) == sorted([H100, H100, H200])
    app = _wait(
        lambda: (
            (app := _observed(api, namespace, "gpu-fallback"))
            and app["status"]["phase"] == "Ready"
            and app
        ),
        "gpu-fallback Ready",
        operator,
    )
    assert app["status"]["machineType"] == "GPU-H100,GPU-H200"
    budget = api.plain(api.policy.read_namespaced_pod_disruption_budget("gpu-fallback", namespace))
    assert budget["spec"]["maxUnavailable"] == 1


def test_pending_runners_report_waiting_for_gpu_capacity_with_the_scheduler_message(
    api: Api, namespace: str, operator: OperatorProcess
) -> None:
    _wait(lambda: api.free_gpus(A100) == 8, "the A100 node free", operator, timeout=240)
    api.create_app(
        namespace,
        _simple_app(
            "too-big",
            machineTypes=["GPU-A100"],
            numGpus=8,
            scaling={"minConcurrency": 2, "maxConcurrency": 2},
        ),
    )
    app = _wait(
        lambda: (
            (app := api.app(namespace, "too-big"))
            and _condition(app, "Scheduled").get("status") == "False"
            and app
        ),
        "Scheduled=False on too-big",
        operator,
    )
    scheduled = _condition(app, "Scheduled")
    assert scheduled["reason"] == "WaitingForGPUCapacity"
    assert "Insufficient nvidia.com/gpu" in scheduled["message"]
    assert app["status"]["phase"] == "WaitingForCapacity"
    events = _wait(
        lambda: [
            event
            for event in api.plain(api.core.list_namespaced_event(namespace))["items"]
            if event["involvedObject"]["name"] == "too-big"
            and event["reason"] == "WaitingForGPUCapacity"
        ],
        "a WaitingForGPUCapacity Event",
        operator,
    )
    assert events[0]["type"] == "Warning"


def test_spec_changes_roll_the_runners_and_bounds_changes_do_not(
    api: Api, namespace: str, operator: OperatorProcess
) -> None:
    api.create_app(
        namespace, _simple_app("roll", scaling={"minConcurrency": 1, "maxConcurrency": 4})
    )
    _wait(
        lambda: (app := _observed(api, namespace, "roll")) and app["status"]["phase"] == "Ready",
        "roll Ready",
        operator,
    )

    def replica_sets() -> set[str]:
        listing = api.apps.list_namespaced_replica_set(
            namespace, label_selector=f"{naming.LABEL_APP}=roll"
        )
        return set(api.names(listing))

    first = replica_sets()
    assert len(first) == 1
    # A scaler (here: a person) sets replicas within the bounds; a GitOps edit of the
    # bounds must neither restart runners nor reset that count.
    api.apps.patch_namespaced_deployment_scale("roll", namespace, {"spec": {"replicas": 3}})
    api.patch_app(namespace, "roll", {"spec": {"scaling": {"maxConcurrency": 5}}})
    _wait(lambda: _observed(api, namespace, "roll"), "generation 2 observed", operator)
    deployment = api.deployment(namespace, "roll")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3
    assert replica_sets() == first

    api.patch_app(namespace, "roll", {"spec": {"requestTimeout": 77}})
    _wait(
        lambda: len(replica_sets()) == 2,
        "a second ReplicaSet for the new runner template",
        operator,
    )
    updated = _wait(
        lambda: (
            (app := _observed(api, namespace, "roll"))
            and app["status"]["observedGeneration"] == 3
            and app
        ),
        "generation 3 observed",
        operator,
    )
    assert updated["metadata"]["generation"] == 3
    deployment = api.deployment(namespace, "roll")
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 77 + 30

    api.patch_app(namespace, "roll", {"spec": {"scaling": {"maxConcurrency": 2}}})
    _wait(
        lambda: (d := api.deployment(namespace, "roll")) and d["spec"]["replicas"] == 2,
        "replicas clamped to the lowered maxConcurrency",
        operator,
    )


def test_deleted_and_hand_edited_children_are_put_back(
    api: Api, namespace: str, operator: OperatorProcess
) -> None:
    api.create_app(namespace, _simple_app("heal", scaling={"minConcurrency": 2}))
    container = _wait(
        lambda: api.runner_container(namespace, "heal"), "the heal Deployment", operator
    )

    def service_uid() -> str:
        return str(
            api.plain(api.core.read_namespaced_service("heal", namespace))["metadata"]["uid"]
        )

    first_uid = _wait(service_uid, "the heal Service", operator)
    api.core.delete_namespaced_service("heal", namespace)
    _wait(
        lambda: service_uid() != first_uid,
        "the Service to come back",
        operator,
    )

    api.apps.patch_namespaced_deployment(
        "heal",
        namespace,
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "runner",
                                "image": "someone/else:1",
                                "resources": {"requests": {"cpu": "7"}},
                            }
                        ]
                    }
                }
            }
        },
    )

    def restored() -> bool:
        now = api.runner_container(namespace, "heal")
        return bool(
            now["image"] == container["image"]
            and now["resources"]["requests"] == container["resources"]["requests"]
        )

    _wait(restored, "the Deployment's image and resources restored", operator)

    api.policy.delete_namespaced_pod_disruption_budget("heal", namespace)
    _wait(
        lambda: api.policy.read_namespaced_pod_disruption_budget("heal", namespace),
        "the PodDisruptionBudget to come back",
        operator,
    )
    api.networking.delete_namespaced_network_policy("heal", namespace)
    _wait(
        lambda: api.networking.read_namespaced_network_policy("heal", namespace),
        "the NetworkPolicy to come back",
        operator,
    )
    reasons = {
        event["reason"]
        for event in api.plain(api.core.list_namespaced_event(namespace))["items"]
        if event["involvedObject"]["name"] == "heal"
    }
    assert "Restored" in reasons

    api.patch_app(namespace, "heal", {"spec": {"scaling": {"minConcurrency": 1}}})
    _wait(
        lambda: not api.names(api.policy.list_namespaced_pod_disruption_budget(namespace)),
        "the PodDisruptionBudget removed below two runners",
        operator,
    )
    assert 'kind="Service",result="changed"' in operator.metrics()


def test_deleting_the_falapp_removes_every_child(
    api: Api, namespace: str, operator: OperatorProcess
) -> None:
    api.create_app(namespace, _simple_app("gone", scaling={"minConcurrency": 2}))
    _wait(lambda: _observed(api, namespace, "gone"), "gone reconciled", operator)
    assert api.policy.read_namespaced_pod_disruption_budget("gone", namespace)
    api.delete_app(namespace, "gone")

    def nothing_left() -> bool:
        selector = f"{naming.LABEL_APP}=gone"
        listings = [
            api.apps.list_namespaced_deployment(namespace, label_selector=selector),
            api.core.list_namespaced_service(namespace, label_selector=selector),
            api.networking.list_namespaced_network_policy(namespace, label_selector=selector),
            api.policy.list_namespaced_pod_disruption_budget(namespace, label_selector=selector),
        ]
        return not any(api.names(listing) for listing in listings) and not api.runner_pods(
            namespace, "gone"
        )

    _wait(nothing_left, "every child garbage-collected", operator)


def test_unknown_machine_type_degrades_the_app_with_a_warning(
    api: Api, namespace: str, operator: OperatorProcess
) -> None:
    api.create_app(namespace, _simple_app("odd", machineTypes=["GPU-TPU9"]))
    app = _wait(
        lambda: (
            (app := _observed(api, namespace, "odd"))
            and app["status"]["phase"] == "Degraded"
            and app
        ),
        "odd Degraded",
        operator,
    )
    assert _condition(app, "Degraded")["reason"] == "UnknownMachineType"
    assert api.deployment(namespace, "odd") is None


def test_a_catalogue_change_rerenders_the_apps_that_use_it(
    api: Api, namespace: str, operator: OperatorProcess, catalogue_namespace: str
) -> None:
    api.create_app(namespace, _simple_app("sized", machineTypes=["XS"]))

    def requests() -> Any:
        container = api.runner_container(namespace, "sized")
        return container["resources"]["requests"] if container else None

    default = {"cpu": "500m", "memory": "512Mi"}
    _wait(lambda: requests() == default, "the Deployment sized by the defaults", operator)
    types = dict(machines.default_catalogue().machine_types)
    types["XS"] = machines.MachineType(cpu="750m", memory="768Mi")
    api.core.create_namespaced_config_map(
        catalogue_namespace,
        k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name=naming.MACHINE_CATALOGUE_CONFIGMAP),
            data=machines.configmap_data(machines.MachineCatalogue(machine_types=types)),
        ),
    )
    try:
        _wait(
            lambda: requests() == {"cpu": "750m", "memory": "768Mi"},
            "the Deployment re-rendered from the new catalogue",
            operator,
        )
    finally:
        api.core.delete_namespaced_config_map(
            naming.MACHINE_CATALOGUE_CONFIGMAP, catalogue_namespace
        )
    _wait(lambda: requests() == default, "the defaults again once the ConfigMap is gone", operator)


def test_killing_the_operator_mid_work_leaves_no_duplicates(
    api: Api, namespace: str, operator: OperatorProcess
) -> None:
    names = sorted(f"burst-{index}" for index in range(8))
    for name in names[:4]:
        api.create_app(namespace, _simple_app(name))
    operator.kill()
    for name in names[4:]:
        api.create_app(namespace, _simple_app(name))
    operator.start()

    def all_reconciled() -> bool:
        return all(_observed(api, namespace, name) for name in names)

    _wait(all_reconciled, "every burst app reconciled after the restart", operator)
    assert api.names(api.apps.list_namespaced_deployment(namespace)) == names
    assert api.names(api.core.list_namespaced_service(namespace)) == names
    assert api.names(api.networking.list_namespaced_network_policy(namespace)) == names
    for name in names:
        owners = [
            pod["metadata"]["ownerReferences"][0]["name"]
            for pod in api.runner_pods(namespace, name)
        ]
        assert len(set(owners)) <= 1, f"{name} has runners from several ReplicaSets: {owners}"


def _metric(exposition: str, name: str, *, having: str = "") -> float:
    return sum(
        float(line.split()[-1])
        for line in exposition.splitlines()
        if (line.startswith(name + "{") or line.startswith(name + " ")) and having in line
    )


def test_a_create_writes_each_child_once_and_a_restart_writes_nothing(
    api: Api, namespace: str, operator: OperatorProcess, served_namespaces: list[str]
) -> None:
    names = ["quiet-a", "quiet-b"]
    api.create_app(namespace, _simple_app("quiet-a"))
    api.create_app(namespace, _simple_app("quiet-b", scaling={"minConcurrency": 2}))
    for name in names:
        _wait(
            lambda name=name: (
                (app := _observed(api, namespace, name))
                and app["status"]["phase"] in {"Ready", "ScaledToZero"}
            ),
            f"{name} Ready or ScaledToZero",
            operator,
        )
        _wait(lambda name=name: api.deployment(namespace, name), f"{name} Deployment", operator)
    for name in names:
        app = api.app(namespace, name)
        # No kopf bookkeeping on the FalApp: its progress and diff-base annotations each
        # cost a write per app and per spec edit.
        assert not [key for key in app["metadata"].get("annotations") or {} if "kopf" in key]
        assert "kubefal.io/last-handled-configuration" not in (
            app["metadata"].get("annotations") or {}
        )
        # The builtin scaler's Deployment is created by one apply that carries replicas.
        deployment = api.deployment(namespace, name)
        appliers = {
            entry["manager"]
            for entry in deployment["metadata"]["managedFields"]
            if entry["operation"] == "Apply"
        }
        assert appliers == {"kubefal-operator"}, appliers
    assert api.deployment(namespace, "quiet-b")["spec"]["replicas"] == 2
    # Settled before the restart: every runner the Deployment asked for is ready and the status
    # says so (a runner getting ready after the restart is news, which is rightly written).
    for name in names:

        def settled(name: str = name) -> bool:
            deployment = api.deployment(namespace, name)
            wanted = deployment["spec"]["replicas"]
            status = api.app(namespace, name).get("status") or {}
            return bool(
                (deployment.get("status") or {}).get("readyReplicas", 0) == wanted
                and status.get("readyReplicas", 0) == wanted
                and status.get("replicas", 0) == wanted
            )

        _wait(settled, f"{name} settled", operator)

    # A restart with every app in place renders each once and writes nothing: neither the
    # FalApps (status) nor their children change. Compared per object, because the module's
    # operator also serves other tests' namespaces, whose apps may rightly change meanwhile.
    def versions() -> dict[str, str]:
        found = {}
        for name in names:
            found[f"falapp/{name}"] = api.app(namespace, name)["metadata"]["resourceVersion"]
            found[f"deployment/{name}"] = api.deployment(namespace, name)["metadata"][
                "resourceVersion"
            ]
        return found

    before = versions()
    operator.stop()
    operator.start()
    served = set(served_namespaces) | {namespace}
    apps: Any = api.objects.list_cluster_custom_object(
        v1alpha1.GROUP, v1alpha1.VERSION, v1alpha1.PLURAL
    )
    total = sum(1 for app in apps["items"] if app["metadata"]["namespace"] in served)

    def resumed() -> str | None:
        exposition = operator.metrics()
        reconciled = _metric(
            exposition, "kubefal_operator_reconciles_total", having='kind="FalApp"'
        )
        return exposition if reconciled >= total else None

    _wait(resumed, f"the restarted operator reconciled {total} apps", operator)
    assert versions() == before
    for name in names:
        assert api.deployment(namespace, name)["spec"]["replicas"] == (
            2 if name == "quiet-b" else 0
        )

"""The FalApp status computed from its Deployment and runner pods."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from kubefal_api import conditions, machines, v1alpha1
from kubefal_operator import annotations as operator_annotations
from kubefal_operator import signals, status

MakeApp = Callable[..., v1alpha1.FalApp]
"""The ``make_app`` fixture (tests/operator/conftest.py)."""

NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.UTC)
GATEWAY = status.Gateway(queue_url="https://queue.example", run_url="https://run.example/")
GPU_MESSAGE = (
    "0/6 nodes are available: 3 Insufficient nvidia.com/gpu, 3 node(s) didn't match Pod's "
    "node affinity/selector."
)


def _deployment(
    *, desired: int, ready: int, generation: int = 1, app_generation: int = 1
) -> dict[str, Any]:
    return {
        "metadata": {
            "generation": generation,
            "annotations": {operator_annotations.GENERATION: str(app_generation)},
        },
        "spec": {"replicas": desired},
        "status": {
            "observedGeneration": generation,
            "replicas": desired,
            "readyReplicas": ready,
            "updatedReplicas": desired,
            "availableReplicas": ready,
        },
    }


def _pod(
    name: str,
    *,
    node: str | None = "gpu-h100-0",
    ready: bool = True,
    unschedulable: str | None = None,
    exit_code: int | None = None,
) -> dict[str, Any]:
    pod_conditions: list[dict[str, Any]] = []
    if unschedulable is not None:
        pod_conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        )
    else:
        pod_conditions.append({"type": "PodScheduled", "status": "True"})
        pod_conditions.append({"type": "Ready", "status": "True" if ready else "False"})
    container_statuses = []
    if exit_code is not None:
        container_statuses.append(
            {"name": "runner", "lastState": {"terminated": {"exitCode": exit_code}}, "state": {}}
        )
    return {
        "metadata": {"name": name},
        "spec": {"nodeName": node if unschedulable is None else None},
        "status": {
            "phase": "Pending" if unschedulable is not None else "Running",
            "conditions": pod_conditions,
            "containerStatuses": container_statuses,
        },
    }


def _compute(app: v1alpha1.FalApp, **kwargs: Any) -> v1alpha1.FalAppStatus:
    kwargs.setdefault("observed_generation", app.metadata.generation)
    kwargs.setdefault("problem", None)
    return status.compute(app, gateway=GATEWAY, now=NOW, **kwargs)


def _condition(result: v1alpha1.FalAppStatus, kind: v1alpha1.ConditionType) -> v1alpha1.Condition:
    condition = result.condition(kind)
    assert condition is not None
    return condition


def test_all_runners_ready_makes_the_app_ready(make_app: MakeApp) -> None:
    app = make_app(name="ok", machineTypes=["GPU-H100"])
    result = _compute(app, deployment=_deployment(desired=2, ready=2), pods=[_pod("a"), _pod("b")])
    assert result.phase == v1alpha1.Phase.READY
    ready = _condition(result, v1alpha1.ConditionType.READY)
    assert (ready.status, ready.reason) == ("True", conditions.Reason.RUNNERS_READY)
    assert ready.observed_generation == 1
    assert (result.replicas, result.ready_replicas, result.desired_runners) == (2, 2, 2)
    assert result.runners.running == 2
    assert result.observed_generation == 1
    assert result.endpoints.queue == "https://queue.example/team-a/ok"
    assert result.endpoints.run == "https://run.example/team-a/ok"
    assert [c.type for c in result.conditions] == ["Ready", "Progressing", "Scheduled", "Degraded"]


def test_pending_pods_short_of_gpus_report_waiting_for_gpu_capacity(make_app: MakeApp) -> None:
    app = make_app(machineTypes=["GPU-H100"], numGpus=8)
    result = _compute(
        app,
        deployment=_deployment(desired=3, ready=2),
        pods=[_pod("a"), _pod("b"), _pod("c", unschedulable=GPU_MESSAGE)],
    )
    scheduled = _condition(result, v1alpha1.ConditionType.SCHEDULED)
    assert scheduled.status == "False"
    assert scheduled.reason == conditions.Reason.WAITING_FOR_GPU_CAPACITY
    assert GPU_MESSAGE in scheduled.message
    assert result.phase == v1alpha1.Phase.WAITING_FOR_CAPACITY
    assert result.runners.pending == 1


def test_other_scheduling_failures_are_classified_by_the_scheduler_message() -> None:
    assert (
        status.scheduling_reason("0/2 nodes are available: 2 Insufficient cpu.")
        == conditions.Reason.WAITING_FOR_CAPACITY
    )
    assert (
        status.scheduling_reason("0/6 nodes are available: 6 node(s) didn't match affinity.")
        == conditions.Reason.UNSCHEDULABLE
    )


def test_scaled_to_zero_is_ready(make_app: MakeApp) -> None:
    result = _compute(make_app(), deployment=_deployment(desired=0, ready=0), pods=[])
    assert result.phase == v1alpha1.Phase.SCALED_TO_ZERO
    assert _condition(result, v1alpha1.ConditionType.READY).reason == "ScaledToZero"


def test_without_a_deployment_the_app_is_pending_and_progressing(make_app: MakeApp) -> None:
    result = _compute(make_app(), deployment=None, pods=[], observed_generation=None)
    assert result.phase == v1alpha1.Phase.PENDING
    assert _condition(result, v1alpha1.ConditionType.PROGRESSING).status == "True"


def test_a_newer_generation_not_yet_applied_is_progressing(make_app: MakeApp) -> None:
    app = make_app(generation=3)
    result = _compute(
        app, deployment=_deployment(desired=1, ready=1), pods=[_pod("a")], observed_generation=2
    )
    progressing = _condition(result, v1alpha1.ConditionType.PROGRESSING)
    assert (progressing.status, progressing.reason) == ("True", "RolloutInProgress")
    assert result.observed_generation == 2


def test_setup_failure_exit_code_makes_the_app_degraded(make_app: MakeApp) -> None:
    result = _compute(
        make_app(),
        deployment=_deployment(desired=1, ready=0),
        pods=[_pod("a", ready=False, exit_code=3)],
    )
    degraded = _condition(result, v1alpha1.ConditionType.DEGRADED)
    assert (degraded.status, degraded.reason) == ("True", "SetupFailed")
    assert result.phase == v1alpha1.Phase.DEGRADED
    assert result.runners.setup == 1


def test_reconcile_problem_is_degraded_and_carried_by_later_refreshes(make_app: MakeApp) -> None:
    problem = status.Problem(
        reason=conditions.Reason.UNKNOWN_MACHINE_TYPE, message="machine type 'X' is unknown"
    )
    first = _compute(make_app(), deployment=None, pods=[], problem=problem)
    assert first.phase == v1alpha1.Phase.DEGRADED
    assert status.carried_problem(first) == problem


def test_transition_time_is_kept_while_a_condition_keeps_its_status(make_app: MakeApp) -> None:
    app = make_app()
    first = _compute(app, deployment=_deployment(desired=1, ready=1), pods=[_pod("a")])
    later = app.model_copy(update={"status": first})
    second = status.compute(
        later,
        deployment=_deployment(desired=1, ready=1),
        pods=[_pod("a")],
        observed_generation=1,
        problem=None,
        gateway=GATEWAY,
        now=NOW + datetime.timedelta(minutes=5),
    )
    assert status.status_document(second) == status.status_document(first)
    third = status.compute(
        later,
        deployment=_deployment(desired=1, ready=0),
        pods=[_pod("a", ready=False)],
        observed_generation=1,
        problem=None,
        gateway=GATEWAY,
        now=NOW + datetime.timedelta(minutes=5),
    )
    ready = _condition(third, v1alpha1.ConditionType.READY)
    assert ready.last_transition_time == NOW + datetime.timedelta(minutes=5)
    degraded = _condition(third, v1alpha1.ConditionType.DEGRADED)
    assert degraded.last_transition_time == NOW


def test_machine_type_in_use_comes_from_the_nodes_runners_landed_on(make_app: MakeApp) -> None:
    app = make_app(machineTypes=["GPU-H100", "GPU-H200"], numGpus=8)
    nodes = {
        "gpu-h100-0": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "gpu-h200-0": {"nvidia.com/gpu.product": "NVIDIA-H200"},
    }
    result = _compute(
        app,
        deployment=_deployment(desired=2, ready=2),
        pods=[_pod("a", node="gpu-h200-0"), _pod("b", node="gpu-h100-0")],
        node_labels=nodes,
        catalogue=machines.default_catalogue(),
    )
    assert result.machine_type == "GPU-H100,GPU-H200"


def test_applied_generation_is_read_from_the_deployment_annotation() -> None:
    assert status.applied_generation(_deployment(desired=1, ready=1, app_generation=5)) == 5
    assert status.applied_generation(None) is None


def _ready_pod(name: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"nodeName": "cpu-0"},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def test_the_gateway_tells_busy_runners_from_idle_ones() -> None:
    pods = [_ready_pod("a", "10.0.0.1"), _ready_pod("b", "10.0.0.2"), _ready_pod("c", "10.0.0.3")]
    signal = signals.parse_signal(
        {
            "app": "team-a/demo",
            "desiredRunners": 2,
            "runnerDetails": [
                {"id": "a", "ip": "10.0.0.1", "inFlight": 1, "idleSeconds": 0, "ready": True},
                {"id": "b", "ip": "10.0.0.2", "inFlight": 0, "idleSeconds": 3, "ready": True},
            ],
        }
    )
    counts = status.runner_counts(pods, signal=signal)
    assert (counts.running, counts.idle) == (1, 2)
    only_counts = signals.parse_signal({"app": "team-a/demo", "idleRunners": 1})
    counts = status.runner_counts(pods, signal=only_counts)
    assert (counts.running, counts.idle) == (2, 1)


def test_desired_runners_come_from_the_gateway_within_the_bounds(make_app: MakeApp) -> None:
    app = make_app(scaling={"minConcurrency": 1, "maxConcurrency": 4})
    deployment = _deployment(desired=1, ready=1)

    def desired(count: int | None) -> int:
        signal = (
            None
            if count is None
            else signals.parse_signal({"app": "team-a/demo", "desiredRunners": count})
        )
        return status.compute(
            app,
            deployment=deployment,
            pods=[],
            observed_generation=1,
            problem=None,
            gateway=GATEWAY,
            now=NOW,
            signal=signal,
        ).desired_runners

    assert (desired(None), desired(3), desired(12), desired(0)) == (1, 3, 4, 1)

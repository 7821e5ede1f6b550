"""The FalApp status as a pure function of what the cluster shows.

``compute(app, deployment, pods, ...)`` returns the whole status; the reconciler writes it
only when it differs from the live one, and calls it on every FalApp, Deployment and Pod
event, so the status follows the runners rather than the last edit. Conditions keep their
``lastTransitionTime`` while their status is unchanged (``kubefal_api.conditions``).

The Scheduled condition reads the scheduler's own verdict from Pending pods
(``PodScheduled=False``, reason ``Unschedulable``) and passes its message through: "0/6
nodes are available: 2 Insufficient nvidia.com/gpu, ..." tells a user more than any
summary could.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Final

from kubefal_api import conditions, machines, naming, v1alpha1
from kubefal_operator import annotations as operator_annotations
from kubefal_operator import signals

SETUP_FAILED_EXIT_CODE: Final = 3
"""The runner exits with 3 when the app's setup() raised."""
RECONCILE_REASONS: Final = frozenset(
    {conditions.Reason.RECONCILE_FAILED, conditions.Reason.UNKNOWN_MACHINE_TYPE}
)
CAPACITY_RESOURCES: Final = ("cpu", "memory", "pods", "ephemeral-storage")
CONDITION_ORDER: Final = (
    v1alpha1.ConditionType.READY,
    v1alpha1.ConditionType.PROGRESSING,
    v1alpha1.ConditionType.SCHEDULED,
    v1alpha1.ConditionType.DEGRADED,
)
"""Conditions are listed in this order (``kubectl describe`` shows Ready first)."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why the operator could not render or apply an app (shown as Degraded)."""

    reason: conditions.Reason
    message: str


@dataclasses.dataclass(frozen=True)
class Gateway:
    """Base URLs of the gateway's queue and run listeners."""

    queue_url: str
    run_url: str

    def endpoints(self, *, namespace: str, name: str) -> v1alpha1.Endpoints:
        path = naming.app_id(namespace, name)
        return v1alpha1.Endpoints(
            queue=f"{self.queue_url.rstrip('/')}/{path}",
            run=f"{self.run_url.rstrip('/')}/{path}",
        )


def applied_generation(deployment: Mapping[str, Any] | None) -> int | None:
    """The FalApp generation the Deployment was rendered from (its annotation)."""
    if deployment is None:
        return None
    value = (deployment.get("metadata", {}).get("annotations") or {}).get(
        operator_annotations.GENERATION
    )
    return int(value) if value is not None and str(value).isdigit() else None


def carried_problem(previous: v1alpha1.FalAppStatus | None) -> Problem | None:
    """A reconcile problem reported earlier, kept until the next reconcile decides anew."""
    if previous is None:
        return None
    degraded = previous.condition(v1alpha1.ConditionType.DEGRADED)
    if degraded is None or degraded.status != v1alpha1.ConditionStatus.TRUE:
        return None
    if degraded.reason not in RECONCILE_REASONS:
        return None
    return Problem(reason=conditions.Reason(degraded.reason), message=degraded.message)


# --- pods -----------------------------------------------------------------------------


def _condition(pod: Mapping[str, Any], condition_type: str) -> Mapping[str, Any] | None:
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == condition_type:
            return dict(condition)
    return None


def _is_terminating(pod: Mapping[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def _is_ready(pod: Mapping[str, Any]) -> bool:
    ready = _condition(pod, "Ready")
    return ready is not None and ready.get("status") == "True"


def _unschedulable(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    scheduled = _condition(pod, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False":
        return scheduled
    return None


def _container_statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return list(pod.get("status", {}).get("containerStatuses") or [])


def _setup_failed(pod: Mapping[str, Any]) -> bool:
    for container in _container_statuses(pod):
        for state in (container.get("state") or {}, container.get("lastState") or {}):
            terminated = state.get("terminated") or {}
            if terminated.get("exitCode") == SETUP_FAILED_EXIT_CODE:
                return True
    return False


def _crash_looping(pod: Mapping[str, Any]) -> bool:
    return any(
        ((container.get("state") or {}).get("waiting") or {}).get("reason") == "CrashLoopBackOff"
        for container in _container_statuses(pod)
    )


def runner_counts(
    pods: Sequence[Mapping[str, Any]], *, signal: signals.ScalingSignal | None = None
) -> v1alpha1.RunnerCounts:
    """Runners by fal state: pods tell pending, setup, ready and draining; the gateway tells
    busy (running) from idle among the ready ones.

    With the gateway's ``runnerDetails``, a ready pod is running when the gateway lists it
    with requests in flight and idle otherwise. With only its counts, ``idleRunners`` of the
    ready pods are idle. Without a signal, ready pods count as running.
    """
    counts = {"pending": 0, "setup": 0, "running": 0, "idle": 0, "draining": 0}
    ready: list[Mapping[str, Any]] = []
    for pod in pods:
        if _is_terminating(pod):
            counts["draining"] += 1
        elif (
            not pod.get("spec", {}).get("nodeName")
            or pod.get("status", {}).get("phase") == "Pending"
        ):
            counts["pending"] += 1
        elif _is_ready(pod):
            ready.append(pod)
        else:
            counts["setup"] += 1
    if signal is None:
        counts["running"] = len(ready)
    elif signal.runner_details is None:
        counts["idle"] = min(signal.idle_runners, len(ready))
        counts["running"] = len(ready) - counts["idle"]
    else:
        for pod in ready:
            detail = signal.detail_of(
                pod_name=str(pod.get("metadata", {}).get("name", "")),
                pod_ip=pod.get("status", {}).get("podIP"),
            )
            counts["running" if detail is not None and detail.busy else "idle"] += 1
    return v1alpha1.RunnerCounts(**counts)


def scheduling_reason(message: str) -> conditions.Reason:
    """Classify the scheduler's message: short of GPUs, short of other capacity, or else."""
    if "nvidia.com/gpu" in message:
        return conditions.Reason.WAITING_FOR_GPU_CAPACITY
    if any(f"Insufficient {resource}" in message for resource in CAPACITY_RESOURCES):
        return conditions.Reason.WAITING_FOR_CAPACITY
    return conditions.Reason.UNSCHEDULABLE


def machine_types_in_use(
    spec: v1alpha1.FalAppSpec,
    *,
    pods: Sequence[Mapping[str, Any]],
    node_labels: Mapping[str, Mapping[str, str]],
    catalogue: machines.MachineCatalogue | None,
) -> list[str]:
    """The listed machine types whose nodes run the app's scheduled pods, in spec order."""
    if catalogue is None:
        return []
    used: set[str] = set()
    for pod in pods:
        labels = node_labels.get(str(pod.get("spec", {}).get("nodeName") or ""))
        if labels is None:
            continue
        for name in spec.machine_types:
            machine = catalogue.machine_types.get(name)
            if machine is None:
                continue
            product_ok = (
                not machine.gpu_products
                or labels.get(catalogue.gpu_product_label) in machine.gpu_products
            )
            selector_ok = all(labels.get(k) == v for k, v in machine.node_selector.items())
            if product_ok and selector_ok:
                used.add(name)
                break
    return [name for name in spec.machine_types if name in used]


# --- the status -----------------------------------------------------------------------


def compute(
    app: v1alpha1.FalApp,
    *,
    deployment: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    observed_generation: int | None,
    problem: Problem | None,
    gateway: Gateway,
    now: datetime.datetime,
    node_labels: Mapping[str, Mapping[str, str]] | None = None,
    catalogue: machines.MachineCatalogue | None = None,
    signal: signals.ScalingSignal | None = None,
) -> v1alpha1.FalAppStatus:
    """The status ``app`` should show, given its Deployment, runner pods and the gateway's
    scaling ``signal`` (when the operator follows a gateway and it reported the app)."""
    previous = app.status or v1alpha1.FalAppStatus()
    namespace, name = app.metadata.namespace or "", app.metadata.name or ""
    live_pods = [pod for pod in pods if not _is_terminating(pod)]
    deployment_spec = (deployment or {}).get("spec", {})
    deployment_status = (deployment or {}).get("status", {})
    desired = int(deployment_spec.get("replicas", 0)) if deployment is not None else 0
    replicas = int(deployment_status.get("replicas", 0))
    ready = int(deployment_status.get("readyReplicas", 0))
    updated = int(deployment_status.get("updatedReplicas", 0))
    available = int(deployment_status.get("availableReplicas", 0))
    stamp = now.replace(microsecond=0)
    conds = list(previous.conditions)

    def put(
        condition_type: v1alpha1.ConditionType,
        status: v1alpha1.ConditionStatus,
        reason: conditions.Reason,
        message: str,
    ) -> None:
        nonlocal conds
        conds = conditions.set_condition(
            conds,
            condition_type=condition_type,
            status=status,
            reason=reason,
            message=message,
            observed_generation=observed_generation,
            now=stamp,
        )

    true, false = v1alpha1.ConditionStatus.TRUE, v1alpha1.ConditionStatus.FALSE
    reasons = conditions.Reason

    # Scheduled: the scheduler's verdict on Pending pods.
    unschedulable = [(pod, _unschedulable(pod)) for pod in live_pods]
    waiting = [(pod, cond) for pod, cond in unschedulable if cond is not None]
    if waiting:
        message = str(waiting[0][1].get("message") or "the scheduler found no node")
        reason = scheduling_reason(message)
        put(
            v1alpha1.ConditionType.SCHEDULED,
            false,
            reason,
            f"{len(waiting)} of {len(live_pods)} runner(s) cannot be scheduled: {message}",
        )
    else:
        put(
            v1alpha1.ConditionType.SCHEDULED,
            true,
            reasons.RUNNERS_SCHEDULED,
            f"{len(live_pods)} runner(s) scheduled" if live_pods else "no runner to schedule",
        )

    # Degraded: what the operator could not do, or what the runners keep failing at.
    if problem is not None:
        put(v1alpha1.ConditionType.DEGRADED, true, problem.reason, problem.message)
    elif any(_setup_failed(pod) for pod in live_pods):
        put(
            v1alpha1.ConditionType.DEGRADED,
            true,
            reasons.SETUP_FAILED,
            "the app's setup() failed (runner exit code 3); see the runner logs",
        )
    elif any(_crash_looping(pod) for pod in live_pods):
        put(
            v1alpha1.ConditionType.DEGRADED,
            true,
            reasons.CRASH_LOOP,
            "a runner container keeps restarting; see the runner logs",
        )
    else:
        put(v1alpha1.ConditionType.DEGRADED, false, reasons.AS_EXPECTED, "")

    # Progressing: is the Deployment still moving towards the current spec?
    stalled = any(
        cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded"
        for cond in deployment_status.get("conditions") or []
    )
    behind = observed_generation is None or observed_generation != app.metadata.generation
    rolling = deployment is not None and (
        int(deployment_status.get("observedGeneration", 0))
        < int(deployment.get("metadata", {}).get("generation", 0))
        or updated < desired
        or replicas > updated
        or available < desired
    )
    if deployment is None or behind:
        put(
            v1alpha1.ConditionType.PROGRESSING,
            true,
            reasons.ROLLOUT_IN_PROGRESS,
            f"applying generation {app.metadata.generation}",
        )
    elif stalled:
        put(
            v1alpha1.ConditionType.PROGRESSING,
            false,
            reasons.ROLLOUT_STALLED,
            "the Deployment exceeded its progress deadline (startupTimeout + 120 s)",
        )
    elif rolling:
        put(
            v1alpha1.ConditionType.PROGRESSING,
            true,
            reasons.ROLLOUT_IN_PROGRESS,
            f"{updated} of {desired} runner(s) updated, {available} available",
        )
    else:
        put(
            v1alpha1.ConditionType.PROGRESSING,
            false,
            reasons.ROLLOUT_COMPLETE,
            f"{desired} runner(s) on the current spec",
        )

    # Ready: every desired runner is ready (or none is desired).
    if deployment is not None and desired == 0 and not live_pods and problem is None:
        put(
            v1alpha1.ConditionType.READY,
            true,
            reasons.SCALED_TO_ZERO,
            "no runner desired; the next request scales the app up",
        )
    elif deployment is not None and desired > 0 and ready >= desired and problem is None:
        put(
            v1alpha1.ConditionType.READY,
            true,
            reasons.RUNNERS_READY,
            f"{ready} of {desired} runner(s) ready",
        )
    else:
        put(
            v1alpha1.ConditionType.READY,
            false,
            reasons.RUNNERS_NOT_READY,
            f"{ready} of {desired} runner(s) ready",
        )

    conds.sort(key=lambda condition: CONDITION_ORDER.index(condition.type))
    by_type = {condition.type: condition for condition in conds}
    phase = _phase(by_type=by_type, deployment_exists=deployment is not None, desired=desired)
    in_use = machine_types_in_use(
        app.spec, pods=live_pods, node_labels=node_labels or {}, catalogue=catalogue
    )
    return v1alpha1.FalAppStatus(
        phase=phase,
        conditions=conds,
        observed_generation=observed_generation,
        machine_type=",".join(in_use) if in_use else app.spec.machine_types[0],
        replicas=replicas,
        ready_replicas=ready,
        desired_runners=desired_runners(app.spec, deployment=deployment, signal=signal),
        runners=runner_counts(pods, signal=signal),
        endpoints=gateway.endpoints(namespace=namespace, name=name),
    )


def desired_runners(
    spec: v1alpha1.FalAppSpec,
    *,
    deployment: Mapping[str, Any] | None,
    signal: signals.ScalingSignal | None,
) -> int:
    """The gateway's desired count (within the app's bounds) when known, else the
    Deployment's replicas."""
    if signal is not None:
        scaling = spec.scaling
        return min(max(signal.desired_runners, scaling.min_concurrency), scaling.max_concurrency)
    if deployment is None:
        return 0
    return int(deployment.get("spec", {}).get("replicas", 0))


def _phase(
    *,
    by_type: Mapping[v1alpha1.ConditionType, v1alpha1.Condition],
    deployment_exists: bool,
    desired: int,
) -> v1alpha1.Phase:
    true = v1alpha1.ConditionStatus.TRUE

    def is_true(condition_type: v1alpha1.ConditionType) -> bool:
        condition = by_type.get(condition_type)
        return condition is not None and condition.status == true

    if is_true(v1alpha1.ConditionType.DEGRADED):
        return v1alpha1.Phase.DEGRADED
    if not deployment_exists:
        return v1alpha1.Phase.PENDING
    if not is_true(v1alpha1.ConditionType.SCHEDULED):
        return v1alpha1.Phase.WAITING_FOR_CAPACITY
    if is_true(v1alpha1.ConditionType.READY):
        return v1alpha1.Phase.SCALED_TO_ZERO if desired == 0 else v1alpha1.Phase.READY
    return v1alpha1.Phase.PROGRESSING


def status_document(status: v1alpha1.FalAppStatus) -> dict[str, Any]:
    """The status as stored in the API (camelCase, no nulls)."""
    return status.to_kube()

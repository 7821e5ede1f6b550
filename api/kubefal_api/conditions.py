"""Condition reasons of a FalApp and the one rule for updating a condition list.

The operator writes conditions, the CLI and tests read them; both need the same spelling of
every reason, so the reasons live here as constants. :func:`set_condition` follows
``meta.SetStatusCondition`` of apimachinery: ``lastTransitionTime`` moves only when the status
changes.
"""

from __future__ import annotations

import datetime
import enum

from kubefal_api import v1alpha1


class Reason(enum.StrEnum):
    """Every ``reason`` a FalApp condition may carry (CamelCase, as Kubernetes expects)."""

    # Ready
    RUNNERS_READY = "RunnersReady"
    """Every desired runner is ready."""
    RUNNERS_NOT_READY = "RunnersNotReady"
    """Fewer runners are ready than desired."""
    SCALED_TO_ZERO = "ScaledToZero"
    """No runner is desired; the app is ready to scale from zero on the next request."""
    # Progressing
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    """The Deployment is rolling out a new spec or changing its replicas."""
    ROLLOUT_COMPLETE = "RolloutComplete"
    """The Deployment runs the current spec with the desired replicas."""
    ROLLOUT_STALLED = "RolloutStalled"
    """The Deployment exceeded its progress deadline."""
    # Scheduled
    RUNNERS_SCHEDULED = "RunnersScheduled"
    """Every runner pod is bound to a node."""
    WAITING_FOR_GPU_CAPACITY = "WaitingForGPUCapacity"
    """Runner pods are Pending because no node of a listed GPU machine type has free GPUs."""
    WAITING_FOR_CAPACITY = "WaitingForCapacity"
    """Runner pods are Pending because no node of a listed CPU machine type has room."""
    UNSCHEDULABLE = "Unschedulable"
    """Runner pods are Pending for a reason other than capacity (no matching node, taints)."""
    # Degraded
    AS_EXPECTED = "AsExpected"
    """Nothing is wrong."""
    SETUP_FAILED = "SetupFailed"
    """The app's setup() raised: the runner exited with code 3."""
    CRASH_LOOP = "CrashLoopBackOff"
    """A runner container keeps restarting."""
    UNKNOWN_MACHINE_TYPE = "UnknownMachineType"
    """spec.machineTypes names a type the machine catalogue does not define."""
    RECONCILE_FAILED = "ReconcileFailed"
    """The operator could not apply a child object; the message says which and why."""


def set_condition(
    conditions: list[v1alpha1.Condition],
    *,
    condition_type: v1alpha1.ConditionType,
    status: v1alpha1.ConditionStatus,
    reason: Reason,
    message: str,
    observed_generation: int | None,
    now: datetime.datetime,
) -> list[v1alpha1.Condition]:
    """Return ``conditions`` with the condition of ``condition_type`` set.

    ``lastTransitionTime`` is ``now`` when the condition is new or its status changed, and is
    kept otherwise, so a condition's age tells how long the app has been in that state. The
    input list is not modified; the order of other conditions is kept.
    """
    previous = next((c for c in conditions if c.type == condition_type), None)
    transition_time = (
        previous.last_transition_time if previous is not None and previous.status == status else now
    )
    updated = v1alpha1.Condition(
        type=condition_type,
        status=status,
        reason=reason.value,
        message=message,
        last_transition_time=transition_time,
        observed_generation=observed_generation,
    )
    if previous is None:
        return [*conditions, updated]
    return [updated if c.type == condition_type else c for c in conditions]

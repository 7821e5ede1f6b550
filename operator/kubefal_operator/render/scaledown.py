"""Which runners a scale-down removes: ``controller.kubernetes.io/pod-deletion-cost``.

When a Deployment shrinks, the ReplicaSet controller picks the pods to delete: unscheduled
before scheduled, pending before running, not ready before ready, then the lowest
``pod-deletion-cost`` first. Before lowering replicas, the builtin actuator therefore
annotates the app's ready runners from the gateway's view:

* a busy runner costs ``inFlight * 1000``: positive, so it goes only when no idle runner is
  left, and the busiest go last;
* an idle runner costs ``-(1 + idleSeconds)``: negative, and the longest idle (the one whose
  keep-alive ran out) goes first;
* a runner the gateway does not list (no ``runnerDetails`` from it, or a pod it has not seen
  yet) counts as idle with no idle time (cost -1).

Only annotations that differ from the live value are written, so a steady app costs no pod
writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from kubefal_api import naming
from kubefal_operator import signals

COST_PER_REQUEST: Final = 1000
MAX_COST: Final = 1_000_000_000
"""Costs stay well inside int32, the annotation's range."""


def deletion_cost(detail: signals.RunnerDetail | None) -> int:
    """The cost of removing one runner (lower goes first)."""
    if detail is None:
        return -1
    if detail.busy:
        return min(detail.in_flight * COST_PER_REQUEST, MAX_COST)
    return -min(1 + math.floor(detail.idle_seconds), MAX_COST)


def _is_candidate(pod: Mapping[str, Any]) -> bool:
    return not pod.get("metadata", {}).get("deletionTimestamp")


def deletion_costs(
    pods: Sequence[Mapping[str, Any]], *, signal: signals.ScalingSignal
) -> dict[str, int]:
    """Cost of every runner pod that is not already going away, by pod name."""
    costs: dict[str, int] = {}
    for pod in pods:
        if not _is_candidate(pod):
            continue
        name = str(pod.get("metadata", {}).get("name", ""))
        ip = pod.get("status", {}).get("podIP")
        costs[name] = deletion_cost(signal.detail_of(pod_name=name, pod_ip=ip))
    return costs


def annotations_to_write(
    pods: Sequence[Mapping[str, Any]], *, signal: signals.ScalingSignal
) -> dict[str, str]:
    """The ``pod-deletion-cost`` values that differ from the live ones, by pod name."""
    current = {
        str(pod.get("metadata", {}).get("name", "")): (
            pod.get("metadata", {}).get("annotations") or {}
        ).get(naming.ANNOTATION_POD_DELETION_COST)
        for pod in pods
    }
    return {
        name: str(cost)
        for name, cost in deletion_costs(pods, signal=signal).items()
        if current.get(name) != str(cost)
    }


def costs_visible(pods: Sequence[Mapping[str, Any]], *, costs: Mapping[str, str]) -> bool:
    """True when every pod of ``costs`` shows its cost, or is gone or going."""
    live = {str(pod.get("metadata", {}).get("name", "")): pod for pod in pods if _is_candidate(pod)}
    for name, cost in costs.items():
        pod = live.get(name)
        if pod is None:
            continue
        shown = (pod.get("metadata", {}).get("annotations") or {}).get(
            naming.ANNOTATION_POD_DELETION_COST
        )
        if shown != cost:
            return False
    return True

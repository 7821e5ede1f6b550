"""Where runners may run: node affinity, preferences and tolerations from machine types.

A FalApp lists machine types first choice first. Every listed type becomes one required
``nodeSelectorTerm`` (terms are ORed, so a runner may land on any listed type), and each
type also becomes a *preferred* term whose weight falls with its position, so the scheduler
takes the first type that has room and falls back in order. Regions are ANDed into every
required term. GPU types add the ``nvidia.com/gpu`` toleration because GPU node pools are
tainted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

from kubefal_api import machines, v1alpha1

REGION_LABEL: Final = "topology.kubernetes.io/region"
MAX_PREFERENCE_WEIGHT: Final = 100
"""The scheduler accepts preferred-term weights in 1..100."""


def preference_weights(count: int) -> list[int]:
    """Weights for ``count`` ordered choices: 100 for the first, falling linearly, >= 1.

    Two types give 100 and 50, four give 100, 75, 50, 25: strictly decreasing, so the
    scheduler's NodeAffinity score always ranks an earlier type above a later one.
    """
    return [
        max(1, math.ceil(MAX_PREFERENCE_WEIGHT * (count - position) / count))
        for position in range(count)
    ]


def _expressions(
    machine: machines.MachineType, *, catalogue: machines.MachineCatalogue
) -> list[dict[str, Any]]:
    """Node selector requirements that pick nodes of one machine type (may be empty)."""
    expressions: list[dict[str, Any]] = []
    if machine.gpu_products:
        expressions.append(
            {
                "key": catalogue.gpu_product_label,
                "operator": "In",
                "values": list(machine.gpu_products),
            }
        )
    for key, value in sorted(machine.node_selector.items()):
        expressions.append({"key": key, "operator": "In", "values": [value]})
    return expressions


def affinity(
    spec: v1alpha1.FalAppSpec, *, catalogue: machines.MachineCatalogue
) -> dict[str, Any] | None:
    """The pod ``affinity`` for ``spec`` (None when any node will do)."""
    machine_list = catalogue.resolve(spec.machine_types)
    per_type = [_expressions(machine, catalogue=catalogue) for machine in machine_list]
    region: list[dict[str, Any]] = (
        [{"key": REGION_LABEL, "operator": "In", "values": list(spec.regions)}]
        if spec.regions
        else []
    )
    # A type without node selection admits every node, which makes the OR of types trivial.
    if any(not expressions for expressions in per_type):
        required_terms = [region] if region else []
    else:
        required_terms = _unique([expressions + region for expressions in per_type])
    node_affinity: dict[str, Any] = {}
    if required_terms:
        node_affinity["requiredDuringSchedulingIgnoredDuringExecution"] = {
            "nodeSelectorTerms": [{"matchExpressions": term} for term in required_terms]
        }
    preferred_terms = _unique([expressions for expressions in per_type if expressions])
    if len(preferred_terms) > 1:
        node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [
            {"weight": weight, "preference": {"matchExpressions": term}}
            for weight, term in zip(
                preference_weights(len(preferred_terms)), preferred_terms, strict=True
            )
        ]
    return {"nodeAffinity": node_affinity} if node_affinity else None


def tolerations(
    spec: v1alpha1.FalAppSpec, *, catalogue: machines.MachineCatalogue
) -> list[dict[str, Any]]:
    """The GPU toleration for GPU apps; nothing for CPU apps."""
    if not spec.uses_gpu:
        return []
    return [{"key": catalogue.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]


def _unique(terms: Sequence[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Terms in order, without repeats (two types may select the same nodes)."""
    seen: list[list[dict[str, Any]]] = []
    for term in terms:
        if term not in seen:
            seen.append(term)
    return seen

"""The PodDisruptionBudget of apps that promise two or more warm runners.

``maxUnavailable: 1`` rather than ``minAvailable: minConcurrency``: with replicas at the
minimum (an idle app), ``minAvailable == replicas`` allows zero evictions, so ``kubectl
drain`` of a GPU node would hang forever. One runner at a time keeps at least
``minConcurrency - 1`` serving (the evicted one drains its requests within the grace period
and the Deployment replaces it before the next eviction is allowed) and never blocks node
maintenance. Below two runners a budget cannot do both, so there is none.
``unhealthyPodEvictionPolicy: AlwaysAllow`` lets a drain evict runners that are not ready
anyway (crash-looping, stuck in setup).
"""

from __future__ import annotations

from typing import Final

from kubefal_api import naming, v1alpha1
from kubefal_operator.render import common

MIN_CONCURRENCY_FOR_BUDGET: Final = 2


def wanted(app: v1alpha1.FalApp) -> bool:
    """True when the app gets a PodDisruptionBudget."""
    return app.spec.scaling.min_concurrency >= MIN_CONCURRENCY_FOR_BUDGET


def pod_disruption_budget(app: v1alpha1.FalApp) -> common.Manifest:
    owner = common.Owner.of(app)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": common.metadata(owner, name=naming.pod_disruption_budget_name(owner.name)),
        "spec": {
            "selector": {"matchLabels": naming.runner_selector(owner.name)},
            "maxUnavailable": 1,
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }

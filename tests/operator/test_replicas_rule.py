"""When the operator writes replicas: create, out of bounds, or before any scaler acted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubefal_api import v1alpha1
from kubefal_operator import reconcile
from kubefal_operator.render import replicas

MakeApp = Callable[..., v1alpha1.FalApp]
"""The ``make_app`` fixture (tests/operator/conftest.py)."""

OWN = {"kubefal-operator", "kubefal-replicas"}


def _deployment(count: int, *managers: str) -> dict[str, Any]:
    return {
        "metadata": {
            "managedFields": [
                {"manager": manager, "fieldsV1": {"f:spec": {"f:replicas": {}}}}
                for manager in managers
            ]
            + [{"manager": "kube-controller-manager", "fieldsV1": {"f:status": {}}}]
        },
        "spec": {"replicas": count},
    }


def test_new_deployment_starts_at_min_concurrency(make_app: MakeApp) -> None:
    spec = make_app(scaling={"minConcurrency": 2, "maxConcurrency": 5}).spec
    assert replicas.desired_replicas(spec, live=None, own_managers=OWN) == 2


def test_replicas_a_scaler_set_within_bounds_are_left_alone(make_app: MakeApp) -> None:
    spec = make_app(scaling={"minConcurrency": 1, "maxConcurrency": 10}).spec
    live = _deployment(7, "kubefal-replicas", "kubefal-scaler")
    assert replicas.desired_replicas(spec, live=live, own_managers=OWN) is None


def test_raising_max_concurrency_keeps_busy_runners(make_app: MakeApp) -> None:
    spec = make_app(scaling={"minConcurrency": 1, "maxConcurrency": 20}).spec
    live = _deployment(9, "kubefal-scaler")
    assert replicas.desired_replicas(spec, live=live, own_managers=OWN) is None


def test_replicas_above_a_lowered_max_are_clamped(make_app: MakeApp) -> None:
    spec = make_app(scaling={"minConcurrency": 1, "maxConcurrency": 4}).spec
    live = _deployment(9, "kubefal-scaler")
    assert replicas.desired_replicas(spec, live=live, own_managers=OWN) == 4


def test_replicas_below_a_raised_min_are_raised(make_app: MakeApp) -> None:
    spec = make_app(scaling={"minConcurrency": 3, "maxConcurrency": 4}).spec
    live = _deployment(1, "hpa-controller")
    assert replicas.desired_replicas(spec, live=live, own_managers=OWN) == 3


def test_without_a_scaler_replicas_follow_min_concurrency(make_app: MakeApp) -> None:
    spec = make_app(scaling={"minConcurrency": 1, "maxConcurrency": 4}).spec
    live = _deployment(2, "kubefal-replicas")
    assert replicas.desired_replicas(spec, live=live, own_managers=OWN) == 1
    settled = _deployment(1, "kubefal-replicas")
    assert replicas.desired_replicas(spec, live=settled, own_managers=OWN) is None


def test_replicas_owners_are_read_from_managed_fields() -> None:
    live = _deployment(1, "kubefal-replicas", "kube-controller-manager")
    assert replicas.replicas_owners(live) == {"kubefal-replicas", "kube-controller-manager"}


def test_the_in_memory_view_keeps_replicas_ownership_but_drops_bookkeeping() -> None:
    live = _deployment(4, "kubefal-replicas", "hpa-controller")
    live["metadata"]["managedFields"].append(
        {"manager": "kubefal-operator", "fieldsV1": {"f:spec": {"f:template": {}}}}
    )
    live["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": "{...}",
        "kubefal.io/generation": "3",
    }
    view = reconcile.object_view(live)
    assert replicas.replicas_owners(view) == {"kubefal-replicas", "hpa-controller"}
    assert view["metadata"]["annotations"] == {"kubefal.io/generation": "3"}
    assert view["spec"] == live["spec"]
    assert len(live["metadata"]["managedFields"]) == 4  # the input is not modified

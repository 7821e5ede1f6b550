"""When the operator writes replicas: create, out of bounds, or before any scaler acted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubefal_api import v1alpha1
from kubefal_operator import livestate, signals
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
    view = livestate.object_view(live)
    assert replicas.replicas_owners(view) == {"kubefal-replicas", "hpa-controller"}
    assert view["metadata"]["annotations"] == {"kubefal.io/generation": "3"}
    assert view["spec"] == live["spec"]
    assert len(live["metadata"]["managedFields"]) == 4  # the input is not modified


def _signal(desired: int, **counts: int) -> signals.ScalingSignal:
    return signals.parse_signal({"app": "team-a/demo", "desiredRunners": desired, **counts})


def test_the_gateway_count_sets_replicas_within_the_bounds(make_app: MakeApp) -> None:
    spec = make_app(scaling={"minConcurrency": 1, "maxConcurrency": 5}).spec
    live = _deployment(1, "kubefal-replicas")
    assert replicas.desired_replicas(spec, live=live, own_managers=OWN, signalled=3) == 3
    assert replicas.desired_replicas(spec, live=live, own_managers=OWN, signalled=40) == 5
    assert replicas.desired_replicas(spec, live=_deployment(2), own_managers=OWN, signalled=0) == 1
    assert replicas.desired_replicas(spec, live=live, own_managers=OWN, signalled=1) is None


def test_a_new_deployment_starts_at_the_gateway_count_when_known(make_app: MakeApp) -> None:
    spec = make_app(scaling={"minConcurrency": 0, "maxConcurrency": 5}).spec
    assert replicas.desired_replicas(spec, live=None, own_managers=OWN, signalled=2) == 2


def test_an_actuated_app_the_gateway_has_not_reported_keeps_its_runners(
    make_app: MakeApp,
) -> None:
    spec = make_app(scaling={"minConcurrency": 0, "maxConcurrency": 5}).spec
    live = _deployment(3, "kubefal-replicas")
    assert replicas.desired_replicas(spec, live=live, own_managers=OWN, actuated=True) is None
    assert replicas.desired_replicas(spec, live=live, own_managers=OWN, actuated=False) == 0


def test_keda_and_hpa_own_replicas_within_the_bounds(make_app: MakeApp) -> None:
    for scaler in ("keda", "hpa"):
        spec = make_app(scaler=scaler, scaling={"minConcurrency": 1, "maxConcurrency": 3}).spec
        live = _deployment(2, "kubefal-replicas")
        assert replicas.desired_replicas(spec, live=live, own_managers=OWN, signalled=3) is None
        assert replicas.desired_replicas(spec, live=None, own_managers=OWN, signalled=2) == 1
        # an HPA does nothing for a Deployment at zero: switching an idle app raises it
        idle = _deployment(0, "kubefal-replicas")
        assert replicas.desired_replicas(spec, live=idle, own_managers=OWN, actuated=True) == 1


def test_scale_events_say_why(make_app: MakeApp) -> None:
    spec = make_app(scaling={"minConcurrency": 0, "maxConcurrency": 3, "keepAlive": 10}).spec
    up = replicas.scale_event(before=0, after=1, spec=spec, signal=_signal(1, queued=1))
    assert up == ("ScaledUp", "0 → 1 runners: 1 queued request")
    capped = replicas.scale_event(before=1, after=3, spec=spec, signal=_signal(7, inFlight=7))
    assert capped == ("ScaledUp", "1 → 3 runners: 7 in flight; capped at maxConcurrency 3")
    down = replicas.scale_event(before=3, after=1, spec=spec, signal=_signal(1, inFlight=1))
    assert down[0] == "ScaledDown"
    assert down[1].startswith("3 → 1 runners: idle for keepAlive 10s")


def test_a_clamp_of_another_scalers_count_keeps_it_scaled_by_others(make_app: MakeApp) -> None:
    spec = make_app(scaling={"minConcurrency": 1, "maxConcurrency": 2}).spec
    scaled = _deployment(3, "kubectl")
    assert replicas.scaled_by_others(scaled, own_managers=OWN)
    assert replicas.desired_replicas(spec, live=scaled, own_managers=OWN) == 2
    clamped = _deployment(2, "kubefal-bounds")  # the operator's clamp, written under that name
    assert replicas.desired_replicas(spec, live=clamped, own_managers=OWN) is None

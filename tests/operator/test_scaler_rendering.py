"""The ScaledObject (scaler keda) and HorizontalPodAutoscaler (scaler hpa) of a FalApp."""

from __future__ import annotations

from collections.abc import Callable

from kubefal_api import machines, naming, v1alpha1
from kubefal_operator.render import children, common, scalers

MakeApp = Callable[..., v1alpha1.FalApp]
"""The ``make_app`` fixture (tests/operator/conftest.py)."""

KEDA_SETTINGS = common.RenderSettings(
    keda_scaler_address="gw-admin.kubefal.svc:9191", keda_polling_interval_seconds=7
)


def test_scaled_object_pushes_the_gateway_count_for_the_deployment(make_app: MakeApp) -> None:
    app = make_app(
        name="sd",
        namespace="team-b",
        scaler="keda",
        scaling={"minConcurrency": 0, "maxConcurrency": 6},
    )
    scaled = scalers.scaled_object(app, settings=KEDA_SETTINGS)
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert scaled["metadata"]["name"] == naming.scaled_object_name("sd")
    assert scaled["metadata"]["ownerReferences"][0]["uid"] == "uid-sd"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sd"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (0, 6)
    assert spec["pollingInterval"] == 7
    assert spec["triggers"] == [
        {
            "type": "external-push",
            "metadata": {"scalerAddress": "gw-admin.kubefal.svc:9191", "appId": "team-b/sd"},
        }
    ]


def test_keda_leaves_keep_alive_to_the_gateway(make_app: MakeApp) -> None:
    app = make_app(scaler="keda", scaling={"maxConcurrency": 4, "keepAlive": 10})
    spec = scalers.scaled_object(app, settings=KEDA_SETTINGS)["spec"]
    assert spec["cooldownPeriod"] == 0
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    for direction in ("scaleUp", "scaleDown"):
        assert behavior[direction]["stabilizationWindowSeconds"] == 0
        [policy] = behavior[direction]["policies"]
        assert policy == {"type": "Pods", "value": 4, "periodSeconds": 1}


def test_hpa_targets_one_runner_per_unit_of_the_external_metric(make_app: MakeApp) -> None:
    app = make_app(name="hp", scaler="hpa", scaling={"minConcurrency": 2, "maxConcurrency": 9})
    hpa = scalers.horizontal_pod_autoscaler(app)
    assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v2", "HorizontalPodAutoscaler")
    spec = hpa["spec"]
    assert spec["scaleTargetRef"]["name"] == "hp"
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 9)
    [metric] = spec["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"] == {
        "name": "kubefal-desired-runners",
        "selector": {"matchLabels": {"kubefal.io/app": "hp"}},
    }
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 0
    assert spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0


def test_each_scaler_wants_its_object_and_deletes_the_other(
    make_app: MakeApp, catalogue: machines.MachineCatalogue
) -> None:
    def rendered(scaler: str) -> tuple[list[str], list[str]]:
        app = make_app(scaler=scaler, scaling={"minConcurrency": 1})
        result = children.children(app, catalogue=catalogue, settings=KEDA_SETTINGS)
        return (
            [child["kind"] for child in result.wanted],
            [kind for _, kind in result.unwanted],
        )

    keda_wanted, keda_unwanted = rendered("keda")
    assert "ScaledObject" in keda_wanted
    assert "HorizontalPodAutoscaler" in keda_unwanted
    assert keda_wanted[-1] == "Deployment"
    hpa_wanted, hpa_unwanted = rendered("hpa")
    assert "HorizontalPodAutoscaler" in hpa_wanted
    assert "ScaledObject" in hpa_unwanted
    builtin_wanted, builtin_unwanted = rendered("builtin")
    assert not {"ScaledObject", "HorizontalPodAutoscaler"} & set(builtin_wanted)
    assert {"ScaledObject", "HorizontalPodAutoscaler"} <= set(builtin_unwanted)

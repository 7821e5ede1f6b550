"""The scaler objects of ``spec.scaler: keda`` and ``spec.scaler: hpa``.

Both actuate the same number: the gateway's desired runner count (fal's formula with
buffers and keep-alive already applied), exposed once per app, 1 per runner.

* ``keda``: a ``keda.sh/v1alpha1`` ScaledObject with one ``external-push`` trigger on the
  gateway's KEDA external scaler (``scalerAddress``, ``appId: <namespace>/<name>``). KEDA
  activates 0 → 1 from the pushed ``StreamIsActive`` and hands 1 → N to the HPA it creates,
  which reads the metric with a target of 1 per runner.
* ``hpa``: an ``autoscaling/v2`` HorizontalPodAutoscaler on the External metric
  ``kubefal-desired-runners`` the gateway serves through ``external.metrics.k8s.io``,
  selected by ``kubefal.io/app=<name>``, ``AverageValue`` 1 (the CRD requires
  ``minConcurrency >= 1``: an HPA cannot scale to zero).

Why the HPA behaviour has no stabilisation and no rate limit: the default HPA behaviour
keeps the highest recommendation of the last 300 s before scaling down, and KEDA's
``cooldownPeriod`` (default 300 s) counts from the last active report, so either would keep
idle GPUs up to five minutes beyond ``keepAlive``, and the anchors' famous complaint (KEDA's
cooldown measured from scale-up) would be ours too. The gateway already decides *when* a
runner may go (``keepAlive`` after its last request) and *how many* to keep warm
(``concurrencyBuffer``), so the HPA must follow that number as it is: stabilisation
windows of 0 in both directions and a policy that allows any change (up to
``maxConcurrency`` pods) per second. ``cooldownPeriod: 0`` does the same for KEDA's last
step to zero. Only with these does ``keepAlive`` mean what fal users expect.
"""

from __future__ import annotations

from typing import Any, Final

from kubefal_api import naming, v1alpha1
from kubefal_operator.render import common

KEDA_API_VERSION: Final = "keda.sh/v1alpha1"
SCALED_OBJECT: Final = "ScaledObject"
HPA_API_VERSION: Final = "autoscaling/v2"
HORIZONTAL_POD_AUTOSCALER: Final = "HorizontalPodAutoscaler"
EXTERNAL_PUSH_TRIGGER: Final = "external-push"
EXTERNAL_METRIC: Final = "kubefal-desired-runners"
"""The metric of ``kubefal_gateway.external_metrics``."""
RUNNERS_PER_METRIC_UNIT: Final = "1"
POLICY_PERIOD_SECONDS: Final = 1

SCALER_KINDS: Final[dict[v1alpha1.Scaler, tuple[str, str]]] = {
    v1alpha1.Scaler.KEDA: (KEDA_API_VERSION, SCALED_OBJECT),
    v1alpha1.Scaler.HPA: (HPA_API_VERSION, HORIZONTAL_POD_AUTOSCALER),
}
"""(apiVersion, kind) of the object each non-builtin scaler needs."""


def _scale_target(owner: common.Owner) -> dict[str, str]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": naming.deployment_name(owner.name),
    }


def behavior(spec: v1alpha1.FalAppSpec) -> dict[str, Any]:
    """HPA behaviour that follows the gateway's count at once (see the module docstring)."""

    def direction() -> dict[str, Any]:
        return {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {
                    "type": "Pods",
                    "value": spec.scaling.max_concurrency,
                    "periodSeconds": POLICY_PERIOD_SECONDS,
                }
            ],
        }

    return {"scaleUp": direction(), "scaleDown": direction()}


def scaled_object(app: v1alpha1.FalApp, *, settings: common.RenderSettings) -> common.Manifest:
    """KEDA ScaledObject with the gateway's ``external-push`` trigger."""
    owner = common.Owner.of(app)
    scaling = app.spec.scaling
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": SCALED_OBJECT,
        "metadata": common.metadata(owner, name=naming.scaled_object_name(owner.name)),
        "spec": {
            "scaleTargetRef": _scale_target(owner),
            "minReplicaCount": scaling.min_concurrency,
            "maxReplicaCount": scaling.max_concurrency,
            "pollingInterval": settings.keda_polling_interval_seconds,
            "cooldownPeriod": 0,
            "advanced": {
                "horizontalPodAutoscalerConfig": {"behavior": behavior(app.spec)},
            },
            "triggers": [
                {
                    "type": EXTERNAL_PUSH_TRIGGER,
                    "metadata": {
                        "scalerAddress": settings.keda_scaler_address,
                        "appId": naming.app_id(owner.namespace, owner.name),
                    },
                }
            ],
        },
    }


def horizontal_pod_autoscaler(app: v1alpha1.FalApp) -> common.Manifest:
    """autoscaling/v2 HPA on the gateway's External metric (``minConcurrency >= 1``)."""
    owner = common.Owner.of(app)
    scaling = app.spec.scaling
    return {
        "apiVersion": HPA_API_VERSION,
        "kind": HORIZONTAL_POD_AUTOSCALER,
        "metadata": common.metadata(owner, name=naming.horizontal_pod_autoscaler_name(owner.name)),
        "spec": {
            "scaleTargetRef": _scale_target(owner),
            "minReplicas": max(1, scaling.min_concurrency),
            "maxReplicas": scaling.max_concurrency,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {
                            "name": EXTERNAL_METRIC,
                            "selector": {"matchLabels": {naming.LABEL_APP: owner.name}},
                        },
                        "target": {
                            "type": "AverageValue",
                            "averageValue": RUNNERS_PER_METRIC_UNIT,
                        },
                    },
                }
            ],
            "behavior": behavior(app.spec),
        },
    }


def scaler_objects(
    app: v1alpha1.FalApp, *, settings: common.RenderSettings
) -> tuple[list[common.Manifest], list[tuple[str, str]]]:
    """The scaler object the app wants, and the (apiVersion, kind) of those it must not have
    (switching ``spec.scaler`` deletes the other one)."""
    scaler = app.spec.scaler
    wanted: list[common.Manifest] = []
    if scaler is v1alpha1.Scaler.KEDA:
        wanted.append(scaled_object(app, settings=settings))
    elif scaler is v1alpha1.Scaler.HPA:
        wanted.append(horizontal_pod_autoscaler(app))
    unwanted = [kind for other, kind in SCALER_KINDS.items() if other is not scaler]
    return wanted, unwanted


SCALER_KINDS_BY_KIND: Final[frozenset[str]] = frozenset(kind for _, kind in SCALER_KINDS.values())
"""Kinds of scaler objects (served only when their API is installed)."""

"""The runner Deployment of a FalApp.

One container runs ``python -m kubefal_runner``, configured by environment (the runner's
contract): which app to load, its ports, multiplexing, requirements and drain budget.
Resources come from the smallest listed machine type so a runner fits on every type it may
fall back to. Probes map fal's timeouts onto Kubernetes: the startup probe gives the runner
``startupTimeout`` to install requirements and finish ``setup()``; readiness gates traffic;
liveness runs the app's health check. The grace period outlasts ``requestTimeout`` so a
runner being replaced finishes its requests.

``spec.replicas`` is deliberately absent: the scaler owns it (see ``render.replicas``).
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

from kubefal_api import machines, naming, v1alpha1
from kubefal_operator import annotations as operator_annotations
from kubefal_operator.render import common, scheduling

RUNNER_COMMAND: Final = ("python", "-m", "kubefal_runner")
READY_PATH: Final = "/_kubefal/ready"
HEALTH_PATH: Final = "/_kubefal/health"
STARTUP_PROBE_PERIOD_SECONDS: Final = 2
READINESS_PROBE_PERIOD_SECONDS: Final = 2
LIVENESS_PROBE_PERIOD_SECONDS: Final = 15
"""fal calls a regular health check every 15 s."""
PROGRESS_DEADLINE_MARGIN_SECONDS: Final = 120
"""A rollout is stalled when a new runner is not ready this long after its startupTimeout."""
SOURCE_VOLUME: Final = "app-source"
REVISION_HISTORY_LIMIT: Final = 3


def runner_app_reference(spec: v1alpha1.FalAppSpec, *, settings: common.RenderSettings) -> str:
    """``KUBEFAL_RUNNER_APP``: the app file inside the mounted source, or as given."""
    file_or_module, _, class_name = spec.app.partition("::")
    if spec.source is None or not file_or_module.endswith(".py") or file_or_module.startswith("/"):
        return spec.app
    return f"{settings.app_mount_path}/{file_or_module}::{class_name}"


def _environment(
    spec: v1alpha1.FalAppSpec, *, owner: common.Owner, settings: common.RenderSettings
) -> list[dict[str, Any]]:
    environment: list[dict[str, Any]] = [
        {"name": "KUBEFAL_RUNNER_APP", "value": runner_app_reference(spec, settings=settings)},
        {"name": "KUBEFAL_RUNNER_PORT", "value": str(settings.runner_port)},
        {"name": "KUBEFAL_RUNNER_METRICS_PORT", "value": str(settings.metrics_port)},
        {"name": "KUBEFAL_MAX_MULTIPLEXING", "value": str(spec.scaling.max_multiplexing)},
        {"name": "KUBEFAL_REQUIREMENTS", "value": json.dumps(list(spec.requirements))},
        {"name": "KUBEFAL_DRAIN_TIMEOUT", "value": str(spec.request_timeout)},
        {"name": "KUBEFAL_STARTUP_TIMEOUT", "value": str(spec.startup_timeout)},
        {"name": "KUBEFAL_APP_ID", "value": naming.app_id(owner.namespace, owner.name)},
    ]
    if spec.health_check is not None:
        environment.append(
            {"name": "KUBEFAL_HEALTH_CHECK", "value": json.dumps(spec.health_check.to_kube())}
        )
    if spec.source is not None:
        environment.append({"name": "PYTHONPATH", "value": settings.app_mount_path})
    environment.extend(variable.to_kube() for variable in spec.env)
    return environment


def resources(spec: v1alpha1.FalAppSpec, *, catalogue: machines.MachineCatalogue) -> dict[str, Any]:
    """Requests and limits: the smallest listed type's CPU and memory, plus the GPUs."""
    machine = catalogue.smallest(spec.machine_types)
    requests: dict[str, str] = {"cpu": machine.cpu, "memory": machine.memory}
    # No CPU limit: throttling a runner mid-request only makes it slower, never safer.
    limits: dict[str, str] = {"memory": machine.memory}
    if spec.gpus_per_runner:
        requests[catalogue.gpu_resource] = str(spec.gpus_per_runner)
        limits[catalogue.gpu_resource] = str(spec.gpus_per_runner)
    return {"requests": requests, "limits": limits}


def probes(spec: v1alpha1.FalAppSpec) -> dict[str, Any]:
    """startupProbe, readinessProbe and livenessProbe of the runner container."""
    health = spec.health_check or v1alpha1.HealthCheckSpec(path="/health")
    return {
        "startupProbe": {
            "httpGet": {"path": READY_PATH, "port": "http"},
            "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 1,
            "failureThreshold": max(
                1, math.ceil(spec.startup_timeout / STARTUP_PROBE_PERIOD_SECONDS)
            ),
        },
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": "http"},
            "periodSeconds": READINESS_PROBE_PERIOD_SECONDS,
            "timeoutSeconds": 1,
            "failureThreshold": 1,
        },
        "livenessProbe": {
            "httpGet": {"path": HEALTH_PATH, "port": "http"},
            "initialDelaySeconds": health.start_period_seconds,
            "periodSeconds": LIVENESS_PROBE_PERIOD_SECONDS,
            # The runner calls the app's check with its own timeout; allow one more second.
            "timeoutSeconds": health.timeout_seconds + 1,
            "failureThreshold": health.failure_threshold,
        },
    }


def strategy(spec: v1alpha1.FalAppSpec) -> dict[str, Any]:
    """rolling: one extra runner at a time, none removed early; recreate: never two sets."""
    if spec.strategy is v1alpha1.Strategy.RECREATE:
        return {"type": "Recreate"}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def termination_grace_period(spec: v1alpha1.FalAppSpec, *, settings: common.RenderSettings) -> int:
    """Long enough for the longest request plus the drain margin."""
    return spec.request_timeout + settings.drain_margin_seconds


def catalogue_hash(spec: v1alpha1.FalAppSpec, *, catalogue: machines.MachineCatalogue) -> str:
    """Hash of the catalogue entries this app uses: changes when one of them is edited."""
    return common.content_hash(
        {
            "gpuResource": catalogue.gpu_resource,
            "gpuProductLabel": catalogue.gpu_product_label,
            "types": [
                [name, catalogue.get(name).model_dump(mode="json")] for name in spec.machine_types
            ],
        }
    )


def pod_template(
    app: v1alpha1.FalApp,
    *,
    owner: common.Owner,
    catalogue: machines.MachineCatalogue,
    settings: common.RenderSettings,
) -> dict[str, Any]:
    """The runner pod template; its annotation hashes every input rendered into it."""
    spec = app.spec
    container: dict[str, Any] = {
        "name": naming.RUNNER_CONTAINER,
        "image": spec.image or settings.runner_image,
        "command": list(RUNNER_COMMAND),
        "env": _environment(spec, owner=owner, settings=settings),
        "ports": [
            {"name": "http", "containerPort": settings.runner_port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": settings.metrics_port, "protocol": "TCP"},
        ],
        "resources": resources(spec, catalogue=catalogue),
        **probes(spec),
    }
    if spec.env_from:
        container["envFrom"] = [source.to_kube() for source in spec.env_from]
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": termination_grace_period(spec, settings=settings),
        # Hundreds of apps per namespace would otherwise inject thousands of variables.
        "enableServiceLinks": False,
    }
    if spec.source is not None:
        container["workingDir"] = settings.app_mount_path
        container["volumeMounts"] = [
            {"name": SOURCE_VOLUME, "mountPath": settings.app_mount_path, "readOnly": True}
        ]
        pod_spec["volumes"] = [
            {"name": SOURCE_VOLUME, "configMap": {"name": spec.source.config_map_ref.name}}
        ]
    pod_affinity = scheduling.affinity(spec, catalogue=catalogue)
    if pod_affinity is not None:
        pod_spec["affinity"] = pod_affinity
    pod_tolerations = scheduling.tolerations(spec, catalogue=catalogue)
    if pod_tolerations:
        pod_spec["tolerations"] = pod_tolerations
    annotations = {
        naming.ANNOTATION_MACHINE_TYPES: ",".join(spec.machine_types),
        naming.ANNOTATION_SPEC_HASH: common.content_hash(pod_spec),
    }
    return {
        "metadata": {"labels": naming.child_labels(owner.name), "annotations": annotations},
        "spec": pod_spec,
    }


def deployment(
    app: v1alpha1.FalApp,
    *,
    catalogue: machines.MachineCatalogue,
    settings: common.RenderSettings,
) -> common.Manifest:
    """The Deployment manifest, without ``spec.replicas``."""
    owner = common.Owner.of(app)
    spec = app.spec
    annotations = {
        naming.ANNOTATION_CATALOGUE_HASH: catalogue_hash(spec, catalogue=catalogue),
        operator_annotations.GENERATION: str(owner.generation),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": common.metadata(
            owner, name=naming.deployment_name(owner.name), annotations=annotations
        ),
        "spec": {
            "selector": {"matchLabels": naming.runner_selector(owner.name)},
            "strategy": strategy(spec),
            "revisionHistoryLimit": REVISION_HISTORY_LIMIT,
            "progressDeadlineSeconds": spec.startup_timeout + PROGRESS_DEADLINE_MARGIN_SECONDS,
            "template": pod_template(app, owner=owner, catalogue=catalogue, settings=settings),
        },
    }

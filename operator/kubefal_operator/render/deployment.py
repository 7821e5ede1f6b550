"""The runner Deployment of a FalApp.

One container runs ``python -m kubefal_runner``, configured by environment (the runner's
contract): which app to load, its ports, multiplexing, requirements and drain budget.
Resources come from the smallest listed machine type so a runner fits on every type it may
fall back to. Probes map fal's timeouts onto Kubernetes: the startup probe gives the runner
``startupTimeout`` to install requirements and finish ``setup()``; readiness gates traffic;
liveness runs the app's health check. The grace period outlasts ``requestTimeout`` so a
runner being replaced finishes its requests.

The pod runs user code, so it gets as little as the runner needs: a non-root user, no
privilege escalation, no capabilities, the RuntimeDefault seccomp profile, a read-only root
filesystem with emptyDir volumes for ``/tmp`` and the requirements cache, and no
ServiceAccount token unless the FalApp asks for one (``automountServiceAccountToken``).
fal_client inside the app reaches this cluster's gateway (``FAL_RUN_HOST``,
``FAL_QUEUE_RUN_HOST``, the gateway's CA) and presents a key only when the FalApp names a
Secret holding one (``falKeySecretRef``); the operator never invents a key.

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
READY_PATH: Final = naming.RUNNER_READY_PATH
HEALTH_PATH: Final = naming.RUNNER_HEALTH_PATH
STARTUP_PROBE_PERIOD_SECONDS: Final = 2
READINESS_PROBE_PERIOD_SECONDS: Final = 2
LIVENESS_PROBE_PERIOD_SECONDS: Final = 15
"""fal calls a regular health check every 15 s."""
PROGRESS_DEADLINE_MARGIN_SECONDS: Final = 120
"""A rollout is stalled when a new runner is not ready this long after its startupTimeout."""
SOURCE_VOLUME: Final = "app-source"
TMP_VOLUME: Final = "tmp"
TMP_PATH: Final = "/tmp"
CACHE_VOLUME: Final = "kubefal-cache"
CACHE_PATH: Final = "/var/cache/kubefal"
REQUIREMENTS_CACHE_PATH: Final = f"{CACHE_PATH}/venvs"
"""Where the runner keeps requirement environments (the runner image's default too)."""
GATEWAY_CA_VARIABLE: Final = "KUBEFAL_GATEWAY_CA"
"""PEM CA of the gateway; the runner adds it to the CAs the app trusts (SSL_CERT_FILE)."""
ANNOUNCE_URL_VARIABLE: Final = "KUBEFAL_GATEWAY_ANNOUNCE_URL"
"""Where the runner announces that setup() finished (the gateway's admin listener)."""
POD_FIELDS: Final = (("KUBEFAL_POD_NAME", "metadata.name"), ("KUBEFAL_POD_IP", "status.podIP"))
"""Downward API: the announcement is sent from the pod IP and names the pod."""
REVISION_HISTORY_LIMIT: Final = 3
DATA_VOLUME: Final = "kubefal-data"
DATA_PATH: Final = "/data"
"""fal's persistent directory (fal.toolkit hard-codes it)."""
DATA_CACHES: Final = (
    ("HF_HOME", f"{DATA_PATH}/.cache/huggingface"),
    ("TORCH_HOME", f"{DATA_PATH}/.cache/torch"),
    ("TORCHINDUCTOR_CACHE_DIR", f"{DATA_PATH}/.cache/torchinductor"),
    ("TRITON_CACHE_DIR", f"{DATA_PATH}/.cache/triton"),
    ("PIP_CACHE_DIR", f"{DATA_PATH}/.cache/pip"),
    ("UV_CACHE_DIR", f"{DATA_PATH}/.cache/uv"),
)
"""With persistentData, the usual model and package caches live on /data."""
DATA_REQUIREMENTS_CACHE: Final = f"{DATA_PATH}/.kubefal/requirements"


def runner_app_reference(spec: v1alpha1.FalAppSpec, *, settings: common.RenderSettings) -> str:
    """``KUBEFAL_RUNNER_APP``: the app file inside the mounted source, or as given."""
    file_or_module, _, class_name = spec.app.partition("::")
    if spec.source is None or not file_or_module.endswith(".py") or file_or_module.startswith("/"):
        return spec.app
    return f"{settings.app_mount_path}/{file_or_module}::{class_name}"


def working_directory(spec: v1alpha1.FalAppSpec, *, settings: common.RenderSettings) -> str:
    """The app file's directory inside the mounted source, as fal runs an app with
    ``app_files_context_dir`` (it changes into the app's directory below /app)."""
    file_or_module = spec.app.partition("::")[0]
    directory = file_or_module.rpartition("/")[0] if file_or_module.endswith(".py") else ""
    if not directory or file_or_module.startswith("/"):
        return settings.app_mount_path
    return f"{settings.app_mount_path}/{directory}"


def requirements_variable(spec: v1alpha1.FalAppSpec) -> str:
    """``KUBEFAL_REQUIREMENTS``: the flat list as before, or the layers as a list of lists."""
    if spec.requirement_layers:
        return json.dumps(spec.install_layers)
    return json.dumps(list(spec.requirements))


def source_volume(source: v1alpha1.SourceSpec) -> dict[str, Any]:
    """The app-source volume: one ConfigMap as is, or several projected into one directory
    with each key at its path."""
    if source.config_map_ref is not None:
        return {"name": SOURCE_VOLUME, "configMap": {"name": source.config_map_ref.name}}
    return {
        "name": SOURCE_VOLUME,
        "projected": {
            "sources": [
                {
                    "configMap": {
                        "name": config_map.name,
                        "items": [
                            {"key": item.key, "path": item.path} for item in config_map.items
                        ],
                    }
                }
                for config_map in source.config_maps or []
            ]
        },
    }


def _environment(
    spec: v1alpha1.FalAppSpec, *, owner: common.Owner, settings: common.RenderSettings
) -> list[dict[str, Any]]:
    environment: list[dict[str, Any]] = [
        {"name": "KUBEFAL_RUNNER_APP", "value": runner_app_reference(spec, settings=settings)},
        {"name": "KUBEFAL_RUNNER_PORT", "value": str(settings.runner_port)},
        {"name": "KUBEFAL_RUNNER_METRICS_PORT", "value": str(settings.metrics_port)},
        {"name": "KUBEFAL_MAX_MULTIPLEXING", "value": str(spec.scaling.max_multiplexing)},
        {"name": "KUBEFAL_REQUIREMENTS", "value": requirements_variable(spec)},
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
    # Defaults the FalApp may override with its own spec.env entry of the same name.
    requirements_cache = (
        DATA_REQUIREMENTS_CACHE if spec.persistent_data else REQUIREMENTS_CACHE_PATH
    )
    defaults: list[dict[str, Any]] = [
        {"name": "KUBEFAL_REQUIREMENTS_CACHE", "value": requirements_cache},
    ]
    if spec.persistent_data:
        defaults.extend({"name": name, "value": value} for name, value in DATA_CACHES)
    if settings.runner_read_only_root_filesystem:
        # The image's home directory is read-only; libraries that cache under ~ write to /tmp.
        defaults.append({"name": "HOME", "value": TMP_PATH})
    if settings.fal_run_host:
        defaults.append({"name": "FAL_RUN_HOST", "value": settings.fal_run_host})
    if settings.fal_queue_run_host:
        defaults.append({"name": "FAL_QUEUE_RUN_HOST", "value": settings.fal_queue_run_host})
    if settings.fal_rest_host:
        defaults.append({"name": "FAL_REST_HOST", "value": settings.fal_rest_host})
    if settings.gateway_ca_pem:
        defaults.append({"name": GATEWAY_CA_VARIABLE, "value": settings.gateway_ca_pem})
    if settings.runner_announce_url:
        defaults.append({"name": ANNOUNCE_URL_VARIABLE, "value": settings.runner_announce_url})
        defaults.extend(
            {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}}
            for name, field in POD_FIELDS
        )
    if spec.fal_key_secret_ref is not None:
        reference = spec.fal_key_secret_ref
        defaults.append(
            {
                "name": "FAL_KEY",
                "valueFrom": {"secretKeyRef": {"name": reference.name, "key": reference.key}},
            }
        )
    own = {variable.name for variable in spec.env}
    environment.extend(variable for variable in defaults if variable["name"] not in own)
    environment.extend(variable.to_kube() for variable in spec.env)
    return environment


def pod_security_context(settings: common.RenderSettings) -> dict[str, Any]:
    """Non-root, the runner image's user and group, RuntimeDefault seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.runner_run_as_user,
        "runAsGroup": settings.runner_run_as_group,
        "fsGroup": settings.runner_run_as_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(settings: common.RenderSettings) -> dict[str, Any]:
    """No privilege escalation, no capabilities, read-only root filesystem (by default)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": settings.runner_read_only_root_filesystem,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


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
    if health.call_regularly:
        initial_delay, failure_threshold = health.start_period_seconds, health.failure_threshold
    else:
        # The runner calls the check only after a response carrying x-fal-runner-health-check
        # and then stays unhealthy: one failed probe restarts it, as fal kills such a runner.
        initial_delay, failure_threshold = 0, 1
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
            "initialDelaySeconds": initial_delay,
            "periodSeconds": LIVENESS_PROBE_PERIOD_SECONDS,
            # The runner calls the app's check with its own timeout; allow one more second.
            "timeoutSeconds": health.timeout_seconds + 1,
            "failureThreshold": failure_threshold,
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
        "securityContext": container_security_context(settings),
    }
    if spec.env_from:
        container["envFrom"] = [source.to_kube() for source in spec.env_from]
    volume_mounts: list[dict[str, Any]] = [
        {"name": TMP_VOLUME, "mountPath": TMP_PATH},
        {"name": CACHE_VOLUME, "mountPath": CACHE_PATH},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": TMP_VOLUME, "emptyDir": {}},
        {"name": CACHE_VOLUME, "emptyDir": {}},
    ]
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": termination_grace_period(spec, settings=settings),
        # Hundreds of apps per namespace would otherwise inject thousands of variables.
        "enableServiceLinks": False,
        "securityContext": pod_security_context(settings),
        # Set either way, so a ServiceAccount that automounts cannot hand user code a token.
        "automountServiceAccountToken": spec.automount_service_account_token,
    }
    if spec.service_account_name is not None:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.source is not None:
        container["workingDir"] = working_directory(spec, settings=settings)
        volume_mounts.append(
            {"name": SOURCE_VOLUME, "mountPath": settings.app_mount_path, "readOnly": True}
        )
        volumes.append(source_volume(spec.source))
    if spec.persistent_data:
        # The namespace's subdirectory of the shared data volume: apps of one namespace share
        # /data, other namespaces never see it; without a configured volume, an emptyDir.
        source = json.loads(settings.data_volume) if settings.data_volume else {"emptyDir": {}}
        volumes.append({"name": DATA_VOLUME, **source})
        mount: dict[str, Any] = {"name": DATA_VOLUME, "mountPath": DATA_PATH}
        if settings.data_volume:
            mount["subPath"] = owner.namespace
        volume_mounts.append(mount)
    container["volumeMounts"] = volume_mounts
    pod_spec["volumes"] = volumes
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

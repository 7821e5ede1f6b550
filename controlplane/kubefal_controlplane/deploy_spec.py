"""The FalApp spec a ``fal deploy`` (``RegisterApplication``) asks for: the fields the deploy
decides (the app, its source, requirements, auth, strategy, machine types, scaling ...),
merged over an existing FalApp so every other field (image, env, scaler, GitOps edits) is kept.

Why a module of its own: the mapping of the request onto the spec is one concern; reading the
app's source is :mod:`kubefal_controlplane.deploy`, its environment
:mod:`kubefal_controlplane.deploy_env`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import isolate_proto

from kubefal_api import v1alpha1
from kubefal_controlplane import errors
from kubefal_controlplane.deploy import APP_FILE
from kubefal_controlplane.deploy_env import container_image, requirement_fields, requirement_layers

RETRY_CONDITIONS: Final = {
    isolate_proto.RetryCondition.TIMEOUT: v1alpha1.RetryCondition.TIMEOUT,
    isolate_proto.RetryCondition.SERVER_ERROR: v1alpha1.RetryCondition.SERVER_ERROR,
    isolate_proto.RetryCondition.CONNECTION_ERROR: v1alpha1.RetryCondition.CONNECTION_ERROR,
}
AUTH_MODES: Final = {
    isolate_proto.ApplicationAuthMode.PRIVATE: v1alpha1.AuthMode.PRIVATE,
    isolate_proto.ApplicationAuthMode.PUBLIC: v1alpha1.AuthMode.PUBLIC,
    isolate_proto.ApplicationAuthMode.SHARED: v1alpha1.AuthMode.SHARED,
}


OWNED_FIELDS: Final = (
    "app",
    "source",
    "requirements",
    "requirementLayers",
    "auth",
    "strategy",
    "machineTypes",
    "numGpus",
    "regions",
    "requestTimeout",
    "startupTimeout",
    "scaling",
    "healthCheck",
    "skipRetryConditions",
)
"""FalApp spec fields a ``fal deploy`` decides; every other field (image, env, scaler, fields
added later) is kept as the existing FalApp has it, e.g. from GitOps."""


def merged_spec(wanted: Mapping[str, Any], existing: Mapping[str, Any] | None) -> dict[str, Any]:
    """``wanted`` over an existing app's spec: owned fields replaced (or back to their
    defaults when the deploy leaves them unset), the rest kept; the fal secrets reference is
    added to the app's own ``envFrom`` sources."""
    current = dict((existing or {}).get("spec") or {})
    for field in OWNED_FIELDS:
        current.pop(field, None)
    env_from = list(current.pop("envFrom", []) or [])
    for source in wanted.get("envFrom") or []:
        if source not in env_from:
            env_from.append(source)
    merged = {**current, **{k: v for k, v in wanted.items() if k != "envFrom"}}
    if env_from:
        merged["envFrom"] = env_from
    return merged


def _optional(message: Any, field: str) -> int | None:
    return int(getattr(message, field)) if message.HasField(field) else None


def falapp_spec(
    request: isolate_proto.RegisterApplicationRequest,
    *,
    class_name: str,
    existing: Mapping[str, Any] | None,
    secrets_name: str,
    config_map: str | None = None,
    source: Mapping[str, Any] | None = None,
    app_path: str = APP_FILE,
) -> dict[str, Any]:
    """The FalApp spec a ``RegisterApplication`` asks for.

    ``scale`` false (``fal deploy`` without ``--reset-scale``) keeps an existing app's
    ``spec.scaling``; true, or a new app, takes the class's values.
    """
    spec: dict[str, Any] = {
        "app": f"{app_path}::{class_name}",
        "source": dict(source) if source is not None else {"configMapRef": {"name": config_map}},
        **requirement_fields(requirement_layers(list(request.environments))),
        "auth": AUTH_MODES.get(request.auth_mode, v1alpha1.AuthMode.PRIVATE).value
        if request.HasField("auth_mode")
        else v1alpha1.AuthMode.PRIVATE.value,
        "strategy": (
            v1alpha1.Strategy.RECREATE.value
            if request.HasField("deployment_strategy")
            and request.deployment_strategy == isolate_proto.DeploymentStrategy.RECREATE
            else v1alpha1.Strategy.ROLLING.value
        ),
        "envFrom": [{"secretRef": {"name": secrets_name, "optional": True}}],
    }
    image = container_image(list(request.environments))
    if image is not None:
        # secretRef, when the image has secrets, is the service's (it writes the Secret).
        spec["containerImage"] = {"dockerfile": image.dockerfile, "buildArgs": image.build_args}
    scaling: dict[str, Any] = {}
    if request.HasField("machine_requirements"):
        machine = request.machine_requirements
        machine_types = list(machine.machine_types) or (
            [machine.machine_type] if machine.HasField("machine_type") else []
        )
        if machine_types:
            spec["machineTypes"] = machine_types
        if machine.HasField("num_gpus") and machine.num_gpus > 0:
            spec["numGpus"] = machine.num_gpus
        if machine.valid_regions:
            spec["regions"] = list(machine.valid_regions)
        for proto_field, spec_field in (
            ("request_timeout", "requestTimeout"),
            ("startup_timeout", "startupTimeout"),
        ):
            value = _optional(machine, proto_field)
            if value is not None:
                spec[spec_field] = value
        for proto_field, scaling_field in (
            ("keep_alive", "keepAlive"),
            ("max_concurrency", "maxConcurrency"),
            ("min_concurrency", "minConcurrency"),
            ("concurrency_buffer", "concurrencyBuffer"),
            ("concurrency_buffer_perc", "concurrencyBufferPerc"),
            ("scaling_delay_seconds", "scalingDelay"),
            ("max_multiplexing", "maxMultiplexing"),
        ):
            value = _optional(machine, proto_field)
            if value is not None:
                scaling[scaling_field] = value
    keep_scale = existing is not None and request.HasField("scale") and not request.scale
    existing_scaling = dict(((existing or {}).get("spec") or {}).get("scaling") or {})
    if keep_scale:
        scaling = existing_scaling
    elif "policy" in existing_scaling:
        # fal's protocol has no field for the kubefal scaling policy: a deploy keeps it.
        scaling["policy"] = existing_scaling["policy"]
    if scaling:
        spec["scaling"] = scaling
    if request.HasField("health_check_config"):
        check = request.health_check_config
        health: dict[str, Any] = {"path": check.path}
        for proto_field, spec_field in (
            ("start_period_seconds", "startPeriodSeconds"),
            ("timeout_seconds", "timeoutSeconds"),
            ("failure_threshold", "failureThreshold"),
        ):
            value = _optional(check, proto_field)
            if value is not None:
                health[spec_field] = value
        if check.HasField("call_regularly"):
            health["callRegularly"] = check.call_regularly
        if check.HasField("method"):
            health["method"] = "GET" if check.method == check.Method.GET else "POST"
        spec["healthCheck"] = health
    conditions = []
    for condition in request.skip_retry_conditions:
        if condition not in RETRY_CONDITIONS:
            raise errors.invalid_argument(
                "skip_retry_conditions",
                "kubefal can skip retries on timeout, server_error and connection_error only",
            )
        conditions.append(RETRY_CONDITIONS[condition].value)
    if conditions:
        spec["skipRetryConditions"] = sorted(set(conditions))
    spec = merged_spec(spec, existing)
    try:
        v1alpha1.FalAppSpec.model_validate(spec)
    except ValueError as error:
        entries: list[Any] = getattr(error, "errors", lambda: [])()
        where = ".".join(str(part) for part in entries[0]["loc"]) if entries else "spec"
        message = entries[0]["msg"] if entries else str(error)
        top = str(entries[0]["loc"][0]) if entries and entries[0]["loc"] else ""
        field = SPEC_REQUEST_FIELDS.get(top, "machine_requirements")
        raise errors.invalid_argument(field, f"{where}: {message}") from error
    return spec


SPEC_REQUEST_FIELDS: Final = {
    "requirements": "environments",
    "requirementLayers": "environments",
    "requirement_layers": "environments",
    "healthCheck": "health_check_config",
    "health_check": "health_check_config",
    "skipRetryConditions": "skip_retry_conditions",
    "skip_retry_conditions": "skip_retry_conditions",
}
"""The request field a spec validation error comes from (the rest: machine_requirements)."""

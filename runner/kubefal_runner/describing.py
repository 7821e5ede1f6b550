"""The app's normalized fal configuration, as the SDK itself computes it for `fal deploy`.

`fal.app.wrap_app` merges class attributes, class keyword arguments and the SDK defaults into the
options `fal deploy` would send (machine types, scaling, timeouts, health check, OpenAPI). It needs
no network and no credentials. The runner serves the result on ``/_kubefal/info`` so the CLI and
the operator read an app's configuration from the SDK rather than re-implementing its rules.
"""

from __future__ import annotations

import collections.abc
from typing import Any

import fal
import fal.app

SCALING_FIELDS = (
    "min_concurrency",
    "max_concurrency",
    "concurrency_buffer",
    "concurrency_buffer_perc",
    "scaling_delay",
    "max_multiplexing",
)
TIMEOUT_FIELDS = ("request_timeout", "request_start_timeout", "startup_timeout")
HEALTH_CHECK_FIELDS = (
    "path",
    "method",
    "start_period_seconds",
    "timeout_seconds",
    "failure_threshold",
    "call_regularly",
)


def json_safe(value: Any) -> Any:
    """Turn SDK option values into JSON: containers recursively, anything unknown as a string."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, collections.abc.Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    return str(value)


def _machine_types(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    return [str(item) for item in raw]


def health_check_of(app_class: type[fal.App]) -> dict[str, Any] | None:
    """The app's configured health check (``@fal.endpoint(..., health_check=...)``), if any."""
    config = app_class.get_health_check_config()
    if config is None:
        return None
    described = {field: getattr(config, field, None) for field in HEALTH_CHECK_FIELDS}
    described["method"] = described["method"] or "POST"
    return described


def describe_app(app_class: type[fal.App]) -> dict[str, Any]:
    """The normalized configuration of ``app_class``, JSON-ready."""
    wrapped = fal.app.wrap_app(app_class)
    host: dict[str, Any] = dict(wrapped.options.host)
    metadata: dict[str, Any] = host.get("metadata") or {}
    routes = app_class(_allow_init=True).collect_routes()
    user_requirements = json_safe(app_class.requirements)
    return {
        "app_name": wrapped.app_name,
        "auth": wrapped.app_auth,
        "class_name": app_class.__name__,
        "version": app_class.version,
        "machine_types": _machine_types(host.get("machine_type")),
        "num_gpus": host.get("num_gpus"),
        "regions": json_safe(host.get("regions")),
        "keep_alive": host.get("keep_alive"),
        "scaling": {field: host.get(field) for field in SCALING_FIELDS},
        "timeouts": {field: host.get(field) for field in TIMEOUT_FIELDS},
        "termination_grace_period_seconds": host.get("termination_grace_period_seconds"),
        "skip_retry_conditions": json_safe(host.get("skip_retry_conditions")),
        "health_check": health_check_of(app_class),
        "endpoints": sorted(app_class.get_endpoints()),
        "routes": [
            {
                "path": signature.path,
                "websocket": bool(signature.is_websocket),
                "realtime_mode": json_safe(getattr(signature, "realtime_mode", None)),
            }
            for signature in routes
        ],
        "requirements": user_requirements,
        "openapi": json_safe(metadata.get("openapi")),
    }
